//! Test support every crate can use (it depends on no Flotilla crate): Git
//! repositories built with the real `git` binary, isolated from the user's
//! and the system's Git configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git` in `dir` with no user or system config and a fixed identity;
/// panics with git's stderr on failure; returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Flotilla Test")
        .env("GIT_AUTHOR_EMAIL", "test@flotilla.invalid")
        .env("GIT_COMMITTER_NAME", "Flotilla Test")
        .env("GIT_COMMITTER_EMAIL", "test@flotilla.invalid")
        .output()
        .expect("the git binary runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `text` to `dir/rel`, creating directories.
pub fn write(dir: &Path, rel: &str, text: &str) {
    let full = dir.join(rel);
    std::fs::create_dir_all(full.parent().expect("a file in a directory")).expect("mkdir");
    std::fs::write(full, text).expect("write file");
}

/// A Git work tree driven with the `git` binary.
pub struct GitRepo {
    /// Work tree.
    pub path: PathBuf,
}

impl GitRepo {
    /// `git init` on branch `main` at `path`.
    pub fn init(path: &Path) -> Self {
        std::fs::create_dir_all(path).expect("create repo dir");
        git(path, &["init", "-q", "-b", "main"]);
        GitRepo {
            path: path.to_path_buf(),
        }
    }

    /// Runs git in the repository; see [`git`].
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// Writes a file (creating directories).
    pub fn write(&self, rel: &str, text: &str) -> &Self {
        write(&self.path, rel, text);
        self
    }

    /// Creates a symlink `rel` pointing at `target`.
    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let full = self.path.join(rel);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, full).expect("symlink");
        self
    }

    /// Stages everything and commits; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `file://` URL of the repository.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// A `helm` for tests: `$FLOTILLA_HELM` when set, else the project's shim (tools/helm) over Helm's real
/// engine, installed on first use by tools/install-helm-sdk (a private virtualenv with `helm-python-sdk`
/// from PyPI, reused across runs). Panics with the installer's message when it cannot be installed.
pub fn helm() -> std::path::PathBuf {
    static HELM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var_os("FLOTILLA_HELM").filter(|p| !p.is_empty()) {
            return path.into();
        }
        let installer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/install-helm-sdk");
        let out = std::process::Command::new(&installer)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", installer.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            installer.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!path.is_empty(), "{} printed no path", installer.display());
        path.into()
    })
    .clone()
}
