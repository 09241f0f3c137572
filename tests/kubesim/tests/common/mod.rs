//! Shared harness: a simulator in this process and the real `kubectl` with a private HOME.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_kubesim::KubeSim;
use serde_json::Value;

/// Finds `kubectl` on PATH, failing the test with a clear message when it is missing.
pub fn kubectl_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .expect("the kubesim fidelity tests need the real `kubectl` on PATH, and none was found")
}

/// A simulator and a kubectl pointed at it.
pub struct Cluster {
    pub sim: KubeSim,
    pub dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Cluster {
    /// Starts a simulator (on its own runtime: the tests are synchronous).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = KubeSim::start(dir.path()).expect("kubesim starts");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self {
            sim,
            dir,
            kubectl: kubectl_binary(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(self.sim.kubeconfig_path());
        cmd.args(args);
        cmd.env("HOME", self.dir.path().join("home"));
        cmd.env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl, feeding `stdin`.
    pub fn run_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "")
    }

    /// Like [`Cluster::ok`], with stdin.
    pub fn ok_with(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl expecting failure and returns stderr.
    pub fn fails_with(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `kubectl apply -f -` with the given flags.
    pub fn apply(&self, flags: &[&str], yaml: &str) -> String {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(flags);
        self.ok_with(&args, yaml)
    }

    /// `kubectl get ... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    /// Writes a file under the test directory and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> String {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

/// Polls `check` until it returns true, failing after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
