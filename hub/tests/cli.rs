//! The `flotilla-hub` binary's command line: init, and config validated before any port opens.

use std::process::Command;

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
}

#[test]
fn init_creates_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let out = hub()
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "pki/ca.pem",
        "pki/ca-key.pem",
        "pki/signing.key",
        "admin/admin.pem",
        "admin/admin-key.pem",
    ] {
        assert!(data.join(f).is_file(), "{f}");
    }
    let again = hub()
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialized"));

    // --if-missing (the init container's form) succeeds and keeps the keys.
    let key = std::fs::read(data.join("pki/signing.key")).unwrap();
    let kept = hub()
        .args(["init", "--if-missing", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    assert_eq!(std::fs::read(data.join("pki/signing.key")).unwrap(), key);
}

#[test]
fn run_refuses_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    assert!(
        hub()
            .arg("init")
            .arg("--data-dir")
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    let config = dir.path().join("hub.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nsources:\n  - {name: main, url: file:///x, interval: soon}\n",
    )
    .unwrap();
    let out = hub()
        .args(["run", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sources[0].interval"), "{err}");
    assert!(!data.join("hub.addr").exists(), "nothing was bound");
}

#[test]
fn run_without_init_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:0\n").unwrap();
    let out = hub()
        .args(["run", "--data-dir"])
        .arg(dir.path().join("nothing"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("flotilla-hub init"));
}
