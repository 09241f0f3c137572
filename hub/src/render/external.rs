//! The external renderers' tools (`helm`, `kustomize` or `kubectl kustomize`) and how one run of them is
//! bounded: a private working directory, an emptied environment, a time box that kills the whole process
//! group, and caps on what it may print.
//!
//! This is the one place rendering does IO. A tool run is treated as a pure function of the files and
//! arguments it is given (they are all in the render's input digest), which is what makes memoizing its
//! output sound.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RenderError;

/// Default time box for one external render.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of a tool's error output kept for the message.
const MAX_STDERR_BYTES: usize = 16 * 1024;

/// How `kustomize build` is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KustomizeTool {
    /// A standalone `kustomize` binary: `kustomize build DIR`.
    Kustomize(PathBuf),
    /// `kubectl kustomize DIR`.
    Kubectl(PathBuf),
}

/// The tools external renders use and their bounds.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `helm`, if found.
    pub helm: Option<PathBuf>,
    /// kustomize, if found.
    pub kustomize: Option<KustomizeTool>,
    /// Time box for one run.
    pub timeout: Duration,
    /// Where private working directories are made (the system's temporary directory by default).
    pub work_root: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            helm: None,
            kustomize: None,
            timeout: DEFAULT_TOOL_TIMEOUT,
            work_root: std::env::temp_dir(),
        }
    }
}

impl Tools {
    /// Finds the tools: `$FLOTILLA_HELM`, else `helm` on `PATH`; `$FLOTILLA_KUSTOMIZE` (a `kustomize` or a
    /// `kubectl`, told apart by its file name), else `kustomize` on `PATH`, else `kubectl` on `PATH`.
    pub fn discover() -> Tools {
        let helm = env_path("FLOTILLA_HELM").or_else(|| on_path("helm"));
        let kustomize = env_path("FLOTILLA_KUSTOMIZE")
            .map(|p| {
                let is_kubectl = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kubectl"));
                if is_kubectl {
                    KustomizeTool::Kubectl(p)
                } else {
                    KustomizeTool::Kustomize(p)
                }
            })
            .or_else(|| on_path("kustomize").map(KustomizeTool::Kustomize))
            .or_else(|| on_path("kubectl").map(KustomizeTool::Kubectl));
        Tools {
            helm,
            kustomize,
            ..Tools::default()
        }
    }

    /// `helm`, or an error naming what to install or set.
    pub(crate) fn helm(&self) -> Result<&Path, RenderError> {
        self.helm.as_deref().ok_or(RenderError::ToolMissing {
            tool: "helm",
            hint: "install helm on the hub's PATH or set FLOTILLA_HELM to its path",
        })
    }

    /// kustomize, or an error naming what to install or set.
    pub(crate) fn kustomize(&self) -> Result<&KustomizeTool, RenderError> {
        self.kustomize.as_ref().ok_or(RenderError::ToolMissing {
            tool: "kustomize",
            hint: "install kustomize or kubectl on the hub's PATH or set FLOTILLA_KUSTOMIZE to one of them",
        })
    }

    /// A new private (0700) working directory, removed when dropped.
    pub(crate) fn work_dir(&self) -> Result<tempfile::TempDir, RenderError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.work_root)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("flotilla-render-")
                    .tempdir_in(&self.work_root)
            })
            .map_err(|e| RenderError::Io {
                what: format!(
                    "cannot create a working directory under {}",
                    self.work_root.display()
                ),
                message: e.to_string(),
            })
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
}

/// One tool invocation.
pub(crate) struct ToolRun<'a> {
    /// `helm` or `kustomize`, for messages.
    pub tool: &'static str,
    /// What is being rendered (a repository path), for messages.
    pub subject: &'a str,
    /// The program and its arguments.
    pub program: &'a Path,
    pub args: Vec<String>,
    /// Working directory; also the tool's `HOME`, so nothing outside it is read or written by default.
    pub dir: &'a Path,
    /// Most bytes of output accepted.
    pub max_output: u64,
    /// Time box.
    pub timeout: Duration,
}

/// Runs the tool and returns its standard output. The environment holds only `PATH`, `HOME` (the working
/// directory) and `LANG`, so the hub's own variables (credentials among them) never reach a render.
pub(crate) fn run(run: ToolRun<'_>) -> Result<Vec<u8>, RenderError> {
    let mut command = Command::new(run.program);
    command
        .args(&run.args)
        .current_dir(run.dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", run.dir)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|e| RenderError::Tool {
        tool: run.tool,
        path: run.subject.to_string(),
        message: format!("cannot start {}: {e}", run.program.display()),
    })?;
    let pgid = child.id() as i32;
    let kill_group = || {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let max_output = run.max_output;
    // The reader stops one byte past the cap and closes the pipe, so a tool that keeps printing gets
    // EPIPE and ends; the length check below turns that into the limit's error.
    let out_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        (&mut stdout)
            .take(max_output + 1)
            .read_to_end(&mut out)
            .map(|_| out)
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_STDERR_BYTES as u64)
            .read_to_end(&mut err);
        // Drain the rest so the tool never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        err
    });
    let deadline = Instant::now() + run.timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => break Err(None),
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => break Err(Some(e)),
        }
    };
    // Whatever happened, nothing the tool started outlives the render.
    kill_group();
    let _ = child.wait();
    let out = out_reader.join().unwrap_or_else(|_| Ok(Vec::new()));
    let err = err_reader.join().unwrap_or_default();
    let tool_err = |message: String| RenderError::Tool {
        tool: run.tool,
        path: run.subject.to_string(),
        message,
    };
    let out = out.map_err(|e| tool_err(format!("reading its output failed: {e}")))?;
    if out.len() as u64 > run.max_output {
        return Err(RenderError::ToolOutputTooLarge {
            tool: run.tool,
            path: run.subject.to_string(),
            limit: run.max_output,
        });
    }
    let status = match status {
        Ok(status) => status,
        Err(None) => {
            return Err(RenderError::ToolTimeout {
                tool: run.tool,
                path: run.subject.to_string(),
                timeout: run.timeout,
            });
        }
        Err(Some(e)) => {
            return Err(tool_err(format!(
                "waiting for {} failed: {e}",
                run.program.display()
            )));
        }
    };
    if !status.success() {
        return Err(tool_err(tool_message(&err, status)));
    }
    Ok(out)
}

/// The tool's own message: its error output trimmed, with `Error: ` prefixes removed.
fn tool_message(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return format!("exited with {status} and printed no error");
    }
    let joined = lines.join("; ");
    let joined = joined
        .strip_prefix("Error: ")
        .or_else(|| joined.strip_prefix("error: "))
        .unwrap_or(&joined);
    joined.chars().take(4000).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run_script(program: &Path, dir: &Path, timeout: Duration) -> Result<Vec<u8>, RenderError> {
        run(ToolRun {
            tool: "helm",
            subject: "charts/x",
            program,
            args: vec!["template".into()],
            dir,
            max_output: 1024,
            timeout,
        })
    }

    #[test]
    fn a_tool_that_hangs_is_killed_with_its_children_at_the_time_box() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("child.pid");
        let program = script(
            tmp.path(),
            "hang",
            &format!("sleep 30 & echo $! > {}\nwait", marker.display()),
        );
        let started = Instant::now();
        let err = run_script(&program, tmp.path(), Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            err.to_string().contains("did not finish within 300ms"),
            "{err}"
        );
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was in the tool's process group, so it is gone (or a zombie being reaped).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "child {pid} outlived the render");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let program = script(
            tmp.path(),
            "chatty",
            "while :; do echo 0123456789abcdef; done",
        );
        let err = run_script(&program, tmp.path(), Duration::from_secs(20)).unwrap_err();
        assert!(
            err.to_string().contains("printed more than 1024 bytes"),
            "{err}"
        );
    }

    #[test]
    fn the_hubs_environment_does_not_reach_the_tool_and_failures_carry_its_message() {
        let tmp = tempfile::tempdir().unwrap();
        let program = script(
            tmp.path(),
            "envdump",
            "env; echo 'Error: chart is broken' >&2; exit 1",
        );
        // Set for the whole test process; no other test reads it.
        unsafe { std::env::set_var("FLOTILLA_TEST_SECRET_CANARY", "s3cr3t") };
        let err = run_script(&program, tmp.path(), Duration::from_secs(20)).unwrap_err();
        assert_eq!(err.to_string(), "helm failed on charts/x: chart is broken");
        let ok = script(tmp.path(), "envok", "env");
        let out = String::from_utf8(run_script(&ok, tmp.path(), Duration::from_secs(20)).unwrap())
            .unwrap();
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(
            out.contains(&format!("HOME={}", tmp.path().display())),
            "{out}"
        );
    }

    #[test]
    fn missing_tools_are_named() {
        let tools = Tools::default();
        assert!(
            tools
                .helm()
                .unwrap_err()
                .to_string()
                .contains("FLOTILLA_HELM")
        );
        assert!(
            tools
                .kustomize()
                .unwrap_err()
                .to_string()
                .contains("FLOTILLA_KUSTOMIZE")
        );
    }
}
