//! Extra processes a test starts next to the plane (the operator binary, typically), with the
//! same guarantees as the plane's own components.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::{Error, process};

/// A child process that cannot outlive the test process: it is forked from the harness's
/// long-lived spawner thread with `PR_SET_PDEATHSIG = SIGKILL`, so even one kept in a `static`
/// (never dropped) dies when the test binary exits. Dropping it stops it (SIGTERM, then SIGKILL
/// after a second).
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `command` with stdin closed and stdout+stderr appended to `log` (created if
    /// missing; a header line with the command is written first). Any stdio set on `command` is
    /// replaced.
    pub fn spawn(name: &str, command: Command, log: &Path) -> Result<ChildProcess, Error> {
        let child = process::spawn_logged(name, command, log)?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log, lines)
    }

    /// `Some(status)` once the process has exited (never blocks).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. `libc::SIGTERM` to test graceful shutdown) unless the process has
    /// already been reaped.
    pub fn signal(&mut self, signal: i32) {
        process::signal(&mut self.child, signal);
    }

    /// Freezes the process (SIGSTOP), as a hung or descheduled process looks from outside.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process run on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, wait up to `grace` (without blocking the async runtime), then SIGKILL. Returns the
    /// exit status; `None` only if waiting failed.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.kill()
    }

    /// SIGKILL and reap (a crash, as far as the process is concerned).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.child.wait().ok()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
    }
}
