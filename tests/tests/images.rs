//! The container images built by deploy/images/build.sh really start: a hub
//! and an agent in separate containers on a private Docker network register
//! and converge over mTLS, and three hub containers form one replicated hub
//! that survives `docker network disconnect` and `docker kill` of its leader. Outside CI the test skips when no Docker engine
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

/// A container's output, stdout and stderr (where the binaries log).
fn docker_logs(container: &str) -> String {
    match Command::new("docker").args(["logs", container]).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => e.to_string(),
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

/// Builds the images from the test binaries with deploy/images/build.sh under a tag unique to this
/// run (`PREFIX-ID`); returns the binaries, the id (for container names) and the cleanup that
/// removes the images, the network `flotilla-PREFIX-ID` and the containers the test adds.
fn build_images(prefix: &str) -> (Binaries, String, Cleanup) {
    let bins = Binaries::locate().expect("binaries built");
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let tag = format!("{prefix}-{id}");
    let cleanup = Cleanup {
        containers: Vec::new(),
        network: format!("flotilla-{prefix}-{id}"),
        images: vec![
            format!("flotilla/hub:{tag}"),
            format!("flotilla/agent:{tag}"),
        ],
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/images/build.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(bins.hub.parent().unwrap())
        .arg(&tag)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    (bins, id, cleanup)
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
    if !docker_available() {
        return;
    }
    let (_, id, mut cleanup) = build_images("test");

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
                "hub container never answered: {e}; logs:\n{}",
                docker_logs(&hub_name)
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
                "agent container did not converge: {clusters:?}\nagent logs:\n{}",
                docker_logs(&agent_name)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cleanup);
}

/// Whether a Docker engine answers; under CI a missing one fails the test.
fn docker_available() -> bool {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs a Docker engine: {e}"
            );
            eprintln!("skipped: no Docker engine answers ({e})");
            false
        }
    }
}

/// The `https://127.0.0.1:PORT` a container's 7443 is published on.
fn published_url(container: &str) -> String {
    let published = docker(&["port", container, "7443/tcp"]).unwrap();
    format!("https://{}", published.lines().next().unwrap())
}

/// Waits until the hub status, asked of the replicas at `urls`, satisfies `check`.
async fn wait_status(
    urls: &[String],
    admin_dir: &Path,
    what: &str,
    check: impl Fn(&flotilla_cli::replicas::HubStatusView) -> bool,
) -> flotilla_cli::replicas::HubStatusView {
    let hubs = urls.join(",");
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = None;
    loop {
        let status = client::with_admin(&hubs, admin_dir, async |admin| {
            flotilla_cli::replicas::status(admin).await
        })
        .await;
        if let Ok(status) = status {
            if check(&status) {
                return status;
            }
            last = Some(status);
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}; last status: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leader_of(status: &flotilla_cli::replicas::HubStatusView) -> Option<u64> {
    let leaders: Vec<u64> = status
        .replicas
        .iter()
        .filter(|r| r.role == "leader")
        .map(|r| r.id)
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}

/// Three hub containers on a private network form one hub the way the StatefulSet in deploy/hub
/// does (one shared hub.yaml, the keys from one `init`, `join --replica-id-from-hostname
/// --first-starts-hub`, `run --advertise`): replica 1 starts it, 2 and 3 join through
/// `replication.join`. An agent container converges; the leader is cut off with `docker network
/// disconnect` and the other two elect a leader that registers and serves a new cluster; back on
/// the network the old leader follows; then the leader is `docker kill`ed and the same holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hub_containers_survive_a_partition_and_a_kill() {
    if !docker_available() {
        return;
    }
    let (bins, id, mut cleanup) = build_images("test3");
    let (hub_image, agent_image) = (cleanup.images[0].clone(), cleanup.images[1].clone());

    // The operator's one `init`: keys for the Secret (here a mounted directory) and the admin bundle.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let keys = root.join("keys");
    let init = Command::new(&bins.hub)
        .args(["init", "--data-dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::fs::write(
        keys.join("hub.yaml"),
        "listen: 0.0.0.0:7443\nserverNames: [hub-0, hub-1, hub-2, localhost, 127.0.0.1]\nreplication:\n  listen: 0.0.0.0:7444\n  advertise: hub-0:7444\n  join: [hub-0:7444, hub-1:7444, hub-2:7444]\n",
    )
    .unwrap();
    for i in 0..3 {
        std::fs::create_dir_all(root.join(format!("data-{i}"))).unwrap();
    }
    std::fs::create_dir_all(root.join("agents")).unwrap();
    open_up(root);
    let admin_dir = keys.join("admin");

    docker(&["network", "create", &cleanup.network]).unwrap();
    let keys_volume = format!("{}:/keys:ro", keys.display());
    let mut names = Vec::new();
    for i in 0..3 {
        let host = format!("hub-{i}");
        let data = format!("{}:/data", root.join(format!("data-{i}")).display());
        docker(&[
            "run",
            "--rm",
            "--hostname",
            &host,
            "-v",
            &data,
            "-v",
            &keys_volume,
            &hub_image,
            "join",
            "--data-dir",
            "/data/hub",
            "--from",
            "/keys/pki",
            "--replica-id-from-hostname",
            "--first-starts-hub",
            "--if-missing",
        ])
        .unwrap();
        let name = format!("flotilla-hub{i}-{id}");
        cleanup.containers.push(name.clone());
        let advertise = format!("--advertise={host}:7444");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &host,
            "--network",
            &cleanup.network,
            "--network-alias",
            &host,
            "-p",
            "127.0.0.1::7443",
            "-v",
            &data,
            "-v",
            &keys_volume,
            &hub_image,
            "run",
            "--data-dir",
            "/data/hub",
            "--config",
            "/keys/hub.yaml",
            &advertise,
        ])
        .unwrap();
        names.push(name);
    }
    let urls: Vec<String> = names.iter().map(|n| published_url(n)).collect();
    let logs = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("== {n}\n{}", docker_logs(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let formed = |s: &flotilla_cli::replicas::HubStatusView| {
        s.replicas.len() == 3
            && leader_of(s).is_some()
            && s.replicas
                .iter()
                .all(|r| r.voter && (r.role == "leader" || r.role == "follower") && r.lag == 0)
    };
    let status = wait_status(&urls, &admin_dir, "three voters", formed).await;
    assert_eq!(
        status.replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3],
        "{}",
        logs(&names)
    );

    // Agents get every replica's address and register through whichever answers.
    let hub_list = "https://hub-0:7443,https://hub-1:7443,https://hub-2:7443";
    let start_agent = async |cleanup: &mut Cleanup, urls: &[String], name: &str| {
        let mut admin = client::connect_admin(&urls.join(","), &admin_dir)
            .await
            .unwrap();
        let token = client::create_token(
            &mut admin,
            Duration::from_secs(300),
            &parse_labels("env=docker").unwrap(),
            None,
        )
        .await
        .unwrap();
        let dir = root.join("agents").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), &token.token).unwrap();
        open_up(&dir);
        let container = format!("flotilla-{name}-{id}");
        cleanup.containers.push(container.clone());
        let volume = format!("{}:/agent", dir.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &cleanup.network,
            "-v",
            &volume,
            "-v",
            &keys_volume,
            &agent_image,
            "run",
            "--hub",
            hub_list,
            "--ca",
            "/keys/admin/ca.pem",
            "--token-file",
            "/agent/token",
            "--data-dir",
            "/agent/data",
            "--target",
            "dir:/agent/cluster",
            "--name",
            name,
        ])
        .unwrap();
        container
    };
    let converged = async |urls: &[String], name: &str, agent: &str| {
        let hubs = urls.join(",");
        let end = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let clusters = client::with_admin(&hubs, &admin_dir, async |admin| {
                client::clusters(admin).await
            })
            .await;
            if let Ok(clusters) = &clusters
                && clusters.iter().any(|c| {
                    c.name == name
                        && c.desired_version >= 1
                        && c.applied_version == c.desired_version
                })
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{name} did not converge: {clusters:?}\nagent logs:\n{}",
                docker_logs(agent)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let agent = start_agent(&mut cleanup, &urls, "edge-a").await;
    converged(&urls, "edge-a", &agent).await;

    // Partition: the leader's container leaves the network.
    let old = leader_of(&status).unwrap();
    let old_name = names[(old - 1) as usize].clone();
    docker(&["network", "disconnect", &cleanup.network, &old_name]).unwrap();
    let cut_at = std::time::Instant::now();
    let majority: Vec<String> = (1..=3u64)
        .filter(|r| *r != old)
        .map(|r| urls[(r - 1) as usize].clone())
        .collect();
    let cut = wait_status(
        &majority,
        &admin_dir,
        "a new leader among the other two",
        |s| leader_of(s).is_some_and(|l| l != old),
    )
    .await;
    let new = leader_of(&cut).unwrap();
    let partition_secs = cut_at.elapsed().as_secs_f64();
    let agent = start_agent(&mut cleanup, &majority, "edge-b").await;
    converged(&majority, "edge-b", &agent).await;

    // Healed: the old leader follows and catches up.
    docker(&[
        "network",
        "connect",
        "--alias",
        &format!("hub-{}", old - 1),
        &cleanup.network,
        &old_name,
    ])
    .unwrap();
    let healed = wait_status(
        &urls,
        &admin_dir,
        "the old leader back as a follower",
        |s| {
            formed(s)
                && s.replicas
                    .iter()
                    .any(|r| r.id == old && r.role == "follower")
        },
    )
    .await;
    assert_ne!(leader_of(&healed), Some(old), "{healed:#?}");

    // Node loss: the leader's container is killed; the others carry on, and it comes back.
    let leader = leader_of(&healed).unwrap();
    let leader_name = names[(leader - 1) as usize].clone();
    docker(&["kill", &leader_name]).unwrap();
    let killed_at = std::time::Instant::now();
    let rest: Vec<String> = (1..=3u64)
        .filter(|r| *r != leader)
        .map(|r| urls[(r - 1) as usize].clone())
        .collect();
    wait_status(&rest, &admin_dir, "a leader after the kill", |s| {
        leader_of(s).is_some_and(|l| l != leader)
    })
    .await;
    let kill_secs = killed_at.elapsed().as_secs_f64();
    let agent = start_agent(&mut cleanup, &rest, "edge-c").await;
    converged(&rest, "edge-c", &agent).await;
    docker(&["start", &leader_name]).unwrap();
    let mut urls = urls;
    urls[(leader - 1) as usize] = published_url(&leader_name);
    wait_status(
        &urls,
        &admin_dir,
        "the killed replica back and caught up",
        formed,
    )
    .await;
    println!(
        "three hub containers: leader {old} disconnected -> leader {new} seen in {partition_secs:.2}s; leader {leader} killed -> a new leader seen in {kill_secs:.2}s"
    );
    drop(cleanup);
}
