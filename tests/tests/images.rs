//! The container images built by deploy/images/build.sh really start: a hub
//! and an agent in separate containers on a private Docker network register
//! and converge over mTLS. Outside CI the test skips when no Docker engine
//! answers; under CI (`CI=true`) a missing engine is a failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_cli::client;
use flotilla_cli::fleet::Binaries;
use flotilla_common::labels::parse_labels;

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Removes the test's containers, network and images however the test ends.
struct Cleanup {
    containers: Vec<String>,
    network: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.network]);
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

fn open_up(dir: &Path) {
    // The containers run as uid 65532; the test's temp dirs belong to root.
    let ok = Command::new("chmod")
        .arg("-R")
        .arg("a+rwX")
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_agent_images_converge_across_containers() {
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs a Docker engine: {e}"
        );
        eprintln!("skipped: no Docker engine answers ({e})");
        return;
    }
    let bins = Binaries::locate().expect("binaries built");
    let bin_dir = bins.hub.parent().unwrap();
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let tag = format!("test-{id}");
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        network: format!("flotilla-test-{id}"),
        images: vec![
            format!("flotilla/hub:{tag}"),
            format!("flotilla/agent:{tag}"),
        ],
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/images/build.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(bin_dir)
        .arg(&tag)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    std::fs::write(
        data.join("hub.yaml"),
        "listen: 0.0.0.0:7443\nserverNames: [hub, localhost, 127.0.0.1]\n",
    )
    .unwrap();
    std::fs::create_dir_all(data.join("agent")).unwrap();
    open_up(data);
    let volume = format!("{}:/data", data.display());
    let hub_image = &cleanup.images[0].clone();
    let agent_image = &cleanup.images[1].clone();

    docker(&["network", "create", &cleanup.network]).unwrap();
    docker(&[
        "run",
        "--rm",
        "-v",
        &volume,
        hub_image,
        "init",
        "--data-dir",
        "/data/hub",
    ])
    .unwrap();
    let hub_name = format!("flotilla-hub-{id}");
    cleanup.containers.push(hub_name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &hub_name,
        "--network",
        &cleanup.network,
        "--network-alias",
        "hub",
        "-p",
        "127.0.0.1::7443",
        "-v",
        &volume,
        hub_image,
        "run",
        "--data-dir",
        "/data/hub",
        "--config",
        "/data/hub.yaml",
    ])
    .unwrap();
    let published = docker(&["port", &hub_name, "7443/tcp"]).unwrap();
    let url = format!("https://{}", published.lines().next().unwrap());
    let admin_dir = data.join("hub/admin");

    // The hub container is up when the admin API answers.
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut admin = loop {
        let attempt = match client::connect_admin(&url, &admin_dir).await {
            Ok(mut c) => client::clusters(&mut c)
                .await
                .map(|_| c)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!(
                "hub container never answered: {e}; logs: {:?}",
                docker(&["logs", &hub_name])
            ),
        }
    };
    let token = client::create_token(
        &mut admin,
        Duration::from_secs(300),
        &parse_labels("env=docker").unwrap(),
        None,
    )
    .await
    .unwrap();
    std::fs::write(data.join("agent/token"), &token.token).unwrap();
    open_up(&data.join("agent"));

    let agent_name = format!("flotilla-agent-{id}");
    cleanup.containers.push(agent_name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &agent_name,
        "--network",
        &cleanup.network,
        "-v",
        &volume,
        agent_image,
        "run",
        "--hub",
        "https://hub:7443",
        "--ca",
        "/data/hub/admin/ca.pem",
        "--token-file",
        "/data/agent/token",
        "--data-dir",
        "/data/agent/data",
        "--target",
        "dir:/data/agent/cluster",
        "--name",
        "in-docker",
    ])
    .unwrap();

    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let clusters = client::clusters(&mut admin).await.unwrap();
        if let [c] = clusters.as_slice()
            && c.name == "in-docker"
            && c.desired_version >= 1
            && c.applied_version == c.desired_version
        {
            assert_eq!(c.labels.get("env").map(String::as_str), Some("docker"));
            break;
        }
        if tokio::time::Instant::now() > end {
            panic!(
                "agent container did not converge: {clusters:?}\nagent logs: {:?}",
                docker(&["logs", &agent_name])
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cleanup);
}
