//! Spawning and stopping the control-plane processes.
//!
//! Every child is forked from one dedicated thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG = SIGKILL`. Linux sends the death signal when the *thread* that forked the
//! child exits, so forking from a test thread (or a tokio worker) would kill the control plane as
//! soon as that thread ends, and forking from a thread that never ends makes the kernel kill every
//! child when the process exits — after a panic, `std::process::exit`, SIGKILL of the test binary,
//! or when the `static` holding [`crate::ControlPlane::shared`] is never dropped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;

/// How to (re)start one component: kept so `restart_apiserver` can start the same command again.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// stdout and stderr of the component, appended across restarts.
    pub log: PathBuf,
    pub workdir: PathBuf,
}

/// A running component.
#[derive(Debug)]
pub(crate) struct Running {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The spawner thread's mailbox. The thread is created on first use and never exits (see the
/// module docs for why that matters).
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                // The sender lives in a static and is never dropped, so `recv` only fails if
                // that ever changes; even then this thread must not exit (children would die).
                while let Ok(mut req) = rx.recv() {
                    let _ = req.reply.send(req.command.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("cannot start the testenv spawner thread");
        tx
    })
}

/// Starts `spec` from the spawner thread, with its output appended to `spec.log`.
pub(crate) fn spawn(spec: &Spec) -> Result<Running, Error> {
    let mut command = Command::new(&spec.program);
    command.args(&spec.args).current_dir(&spec.workdir);
    let child = spawn_logged(spec.name, command, &spec.log)?;
    Ok(Running {
        name: spec.name,
        child,
        log: spec.log.clone(),
    })
}

/// Starts `command` from the spawner thread with stdin closed and stdout+stderr appended to
/// `log` (after a header line with the command), so it dies with this process.
pub(crate) fn spawn_logged(name: &str, mut command: Command, log: &Path) -> Result<Child, Error> {
    let program = PathBuf::from(command.get_program());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening log file {}", log.display()), e))?;
    let _ = writeln!(
        file,
        "==== testenv: starting {name} at unix time {}: {} {}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        program.display(),
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stderr = file
        .try_clone()
        .map_err(|e| Error::io(format!("duplicating log file {}", log.display()), e))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr));
    set_parent_death_signal(&mut command);

    let spawn_failed = |detail: String| Error::Spawn {
        component: name.to_owned(),
        program: program.clone(),
        detail,
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .send(SpawnRequest {
            command,
            reply: reply_tx,
        })
        .map_err(|_| spawn_failed("the spawner thread is gone".into()))?;
    reply_rx
        .recv()
        .map_err(|_| spawn_failed("the spawner thread did not answer".into()))?
        .map_err(|e| spawn_failed(e.to_string()))
}

fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: getpid is async-signal-safe and called before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions
    // (prctl, getppid) and builds an io::Error without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to a child unless it was already reaped.
pub(crate) fn signal(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: plain kill(2) on our own, not yet reaped child: the pid cannot have been reused.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }
}

/// Stops children without blocking the async runtime: SIGTERM, wait up to `grace`, then SIGKILL.
/// Used by `restart_apiserver`, where an operator under test may share the runtime.
pub(crate) async fn terminate_async(children: &mut [Running], grace: Duration) {
    for r in children.iter_mut() {
        signal(&mut r.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let all_done = children
            .iter_mut()
            .all(|r| !matches!(r.child.try_wait(), Ok(None)));
        if all_done {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for r in children.iter_mut() {
        signal(&mut r.child, libc::SIGKILL);
        let _ = r.child.wait();
    }
}

/// Blocking variant of [`terminate_async`] for `Drop`.
pub(crate) fn terminate_blocking(children: &mut [Running], grace: Duration) {
    for r in children.iter_mut() {
        signal(&mut r.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && children
            .iter_mut()
            .any(|r| matches!(r.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    for r in children.iter_mut() {
        signal(&mut r.child, libc::SIGKILL);
        let _ = r.child.wait();
    }
}

/// Returns the exit status of a child that has exited on its own.
pub(crate) fn exited(r: &mut Running) -> Option<ExitStatus> {
    r.child.try_wait().ok().flatten()
}

/// Last `lines` lines of a log file (or a note saying why it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => "<no log: not started>".to_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Creates a file readable only by us (tokens and keys live in these).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
