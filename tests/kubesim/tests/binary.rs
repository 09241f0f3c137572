//! The `kubesim` binary: writes a kubeconfig, prints its path, serves kubectl, stops on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kubectl_binary, wait_until};

#[test]
fn binary_prints_kubeconfig_serves_kubectl_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let kubeconfig = line.trim().to_string();
    assert_eq!(kubeconfig, dir.path().join("kubeconfig").to_str().unwrap());
    let out = Command::new(kubectl_binary())
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "namespaces",
            "-o",
            "name",
        ])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout).unwrap();
    assert!(names.lines().any(|l| l == "namespace/default"), "{names}");

    nix_kill(child.id());
    let mut status = None;
    wait_until("kubesim exits", Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(
        status.unwrap().success(),
        "kubesim exits cleanly on SIGTERM"
    );
}

fn nix_kill(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}
