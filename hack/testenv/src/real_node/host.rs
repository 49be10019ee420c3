//! What a real node does to the machine outside its own folder, and how it is undone — by what
//! was made, never by a broad name:
//!
//! - the kubelet's cgroups: the kubelet gets a cgroup root of our own (`gpupool-node-<pid>`,
//!   nested under this process's memory cgroup, made in every cgroup v1 hierarchy), so everything
//!   it creates (`kubepods`, pod and container cgroups) is inside it;
//! - the CNI bridge (`gpn<pid>`), made by the bridge plugin for the first pod;
//! - `/var/lib/kubelet/device-plugins`: the kubelet serves its device-plugin socket there whatever
//!   its `--root-dir` (hard-coded in the kubelet, and where plugins look), so one real node runs at
//!   a time on a machine ([`MachineLock`]);
//! - `/var/log/containers`: the kubelet always links container logs there;
//! - `/run/containerd/s`: containerd's shims put their sockets there whatever containerd's state
//!   folder;
//! - folders that did not exist before (those above, the cgroups' parents, `/var/lib/cni`): noted
//!   in a registry (`/run/gpupool-testenv-real-node.made`) and removed once empty;
//! - libcni's result cache (`/var/lib/cni/results/*`) of our sandboxes (by their network
//!   namespace's path, in the node's folder);
//! - mounts under the node's folder (the kubelet's root, pod volumes, containers' root
//!   filesystems, sandboxes' /dev/shm and network namespaces).
//!
//! [`reap_stale`] undoes what nodes of test processes that no longer exist left behind (a killed
//! test process cannot clean up; its kubelet and containerd die with it, but containerd's shims and
//! the containers they run do not).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
const VAR_LIB_KUBELET: &str = "/var/lib/kubelet";
/// The registry of folders a node made, or that did not exist before it started and that the
/// kubelet, containerd, its shims or libcni make (one file per folder, holding its path): removed
/// (when empty) by the node's cleanup, or by the next node's if this process was killed.
const MADE_DIR: &str = "/run/gpupool-testenv-real-node.made";
/// Folders outside the node's own that the kubelet, containerd's shims and libcni make.
const OUTSIDE_FOLDERS: [&str; 7] = [
    VAR_LIB_KUBELET,
    DEVICE_PLUGIN_DIR,
    CONTAINER_LOGS,
    "/var/lib/cni",
    CNI_RESULTS,
    "/run/containerd",
    "/run/containerd/s",
];
const CONTAINER_LOGS: &str = "/var/log/containers";
const CNI_RESULTS: &str = "/var/lib/cni/results";
const LOCK_PATH: &str = "/run/gpupool-testenv-real-node.lock";
pub(crate) const CGROUP_PREFIX: &str = "gpupool-node-";
pub(crate) const BRIDGE_PREFIX: &str = "gpn";

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

/// One real node per machine at a time (the device-plugin folder is global): an exclusive
/// `flock` held for the node's life, released when it is dropped or the process dies.
#[derive(Debug)]
pub(crate) struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    /// Waits up to `timeout` for the lock (another test's node may be running).
    pub async fn acquire(timeout: Duration) -> Result<MachineLock, Error> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(io_err(format!("opening {LOCK_PATH}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(MachineLock { _file: file });
            }
            if Instant::now() >= deadline {
                return Err(Error::Deadline {
                    what: format!("the machine-wide real-node lock {LOCK_PATH}"),
                    timeout,
                    detail: "\nanother real node runs on this machine (one at a time: the \
                             kubelet's device-plugin folder is /var/lib/kubelet/device-plugins)"
                        .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The machine's own non-loopback IPv4 address (the kubelet refuses a loopback `--node-ip`).
pub(crate) fn machine_address() -> Result<String, Error> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global", "up"])
        .output()
        .map_err(io_err("running `ip -4 -o addr show`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .ok_or_else(|| Error::Command {
            what: "finding this machine's IPv4 address".into(),
            detail: format!("no global IPv4 address in `ip -4 -o addr show`: {text}"),
        })
}

// --- cgroups -------------------------------------------------------------------------------------

/// Mount points of the cgroup hierarchies (v1 controllers, name=systemd, and the v2 one).
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// This process's cgroup in the memory hierarchy ("/" when there is none).
fn own_memory_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
        })
        .unwrap_or_else(|| "/".to_owned())
}

/// The kubelet's cgroup root, made in every hierarchy (cgroup v1 with the cgroupfs driver needs
/// it in each), the folders made for it noted in the registry of made folders.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// E.g. `/process_api/abc/gpupool-node-1234`: the kubelet's `cgroupRoot`.
    pub root: String,
}

impl Cgroups {
    pub fn create() -> Result<Cgroups, Error> {
        let parent = own_memory_cgroup();
        let root = format!(
            "{}/{CGROUP_PREFIX}{}",
            parent.trim_end_matches('/'),
            std::process::id()
        );
        let cgroups = Cgroups { root: root.clone() };
        for mount in cgroup_mounts() {
            let mut path = mount.clone();
            for part in root.split('/').filter(|p| !p.is_empty()) {
                let parent = path.clone();
                path.push(part);
                if path.is_dir() {
                    continue;
                }
                note_made(&path)?;
                fs::create_dir(&path).map_err(io_err(format!("creating {}", path.display())))?;
                // A new cpuset cgroup (v1) starts with no CPUs and memory nodes: nothing could
                // join it. Copy the parent's.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(value) = fs::read_to_string(parent.join(file)) {
                        let _ = fs::write(path.join(file), value.trim());
                    }
                }
            }
        }
        Ok(cgroups)
    }

    /// Kills whatever still runs in the root (only what our kubelet and containerd started can
    /// be there), then removes every cgroup below it (the folders made above it go with
    /// [`remove_made_folders`]).
    pub fn remove(&self) {
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(self.root.trim_start_matches('/')));
        }
    }
}

/// SIGKILLs every process in the cgroup tree at `path`, then removes its cgroups leaves first.
fn remove_cgroup_tree(path: &Path) {
    if !path.is_dir() {
        return;
    }
    for _ in 0..50 {
        let pids = tree_pids(path);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2); the pid was in our own cgroup a moment ago.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    remove_dirs_depth_first(path);
}

fn tree_pids(path: &Path) -> Vec<libc::pid_t> {
    let mut pids: Vec<libc::pid_t> = fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(tree_pids(&e.path()));
            }
        }
    }
    pids
}

fn remove_dirs_depth_first(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dirs_depth_first(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(path);
}

// --- network -------------------------------------------------------------------------------------

pub(crate) fn bridge_name() -> String {
    format!("{BRIDGE_PREFIX}{}", std::process::id())
}

/// Deletes a network link if it exists (`ip link del`).
pub(crate) fn delete_link(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .output();
    }
}

/// Removes libcni's cached results (`/var/lib/cni/results/<network>-<sandbox>-<interface>`, for
/// our bridge network and containerd's loopback one) of sandboxes whose network namespace was
/// under a path `ours` accepts: the cache outlives sandboxes that were killed rather than stopped
/// through the CRI (which is how a node is dropped).
pub(crate) fn remove_cni_cache(ours: impl Fn(&Path) -> bool) {
    let Ok(entries) = fs::read_dir(CNI_RESULTS) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let sandboxes = doc["result"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["sandbox"].as_str());
        if sandboxes.into_iter().any(|s| ours(Path::new(s))) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The socket containerd's runc v2 shim for `id` (a pod's sandbox, or a container) listens on:
/// `/run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">` (containerd 1.6's
/// `shim.SocketAddress`), whatever containerd's state folder. A shim removes it when it exits on
/// its own, not when it is killed.
pub(crate) fn shim_socket(address: &str, id: &str) -> Option<PathBuf> {
    let key = Path::new(address).join("k8s.io").join(id);
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        child
            .stdin
            .take()?
            .write_all(key.as_os_str().as_bytes())
            .ok()?;
    }
    let out = child.wait_with_output().ok()?;
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .to_owned();
    Some(Path::new("/run/containerd/s").join(hex))
}

// --- mounts --------------------------------------------------------------------------------------

/// Unmounts (lazily, deepest first) everything mounted at or below `dir`.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid C string.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// --- files the kubelet puts outside its root -----------------------------------------------------

/// Fails if a kubelet (not one of ours: we hold the [`MachineLock`]) serves the device-plugin
/// socket on this machine.
pub(crate) fn ensure_no_other_kubelet() -> Result<(), Error> {
    let socket = Path::new(DEVICE_PLUGIN_DIR).join("kubelet.sock");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(Error::Command {
            what: "starting a real node".into(),
            detail: format!(
                "a kubelet already serves {} on this machine (not one of ours)",
                socket.display()
            ),
        });
    }
    Ok(())
}

/// Notes in the registry that `path` is ours to remove (when empty) once the node is gone,
/// unless it exists already.
fn note_made(path: &Path) -> Result<(), Error> {
    if path.exists() {
        return Ok(());
    }
    fs::create_dir_all(MADE_DIR).map_err(io_err(format!("creating {MADE_DIR}")))?;
    let text = path.as_os_str().as_bytes();
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let marker = Path::new(MADE_DIR).join(format!("{hash:016x}"));
    fs::write(&marker, text).map_err(io_err(format!("writing {}", marker.display())))
}

/// Notes the folders outside the node's own that the kubelet, containerd and libcni will make
/// if they are missing, and makes `/var/lib/kubelet/device-plugins` (where the kubelet serves
/// its socket and the plugin's pod mounts it).
pub(crate) fn prepare_outside_folders() -> Result<(), Error> {
    for folder in OUTSIDE_FOLDERS {
        note_made(Path::new(folder))?;
    }
    fs::create_dir_all(DEVICE_PLUGIN_DIR).map_err(io_err(format!("creating {DEVICE_PLUGIN_DIR}")))
}

/// Removes the registry's folders that are empty now (deepest first) and forgets those that are
/// gone; a folder with something else in it stays (and stays noted).
pub(crate) fn remove_made_folders() {
    let Ok(entries) = fs::read_dir(MADE_DIR) else {
        return;
    };
    let mut made: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&fs::read(e.path()).ok()?));
            Some((path, e.path()))
        })
        .collect();
    made.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, marker) in made {
        if !path.exists() || fs::remove_dir(&path).is_ok() {
            let _ = fs::remove_file(marker);
        }
    }
    let _ = fs::remove_dir(MADE_DIR);
}

/// Removes what a node and its plugin leave in the device-plugin folder: the kubelet's socket and
/// checkpoint, the plugins' sockets (`nvidia-*.sock`) and the mock NVML's XID folder.
pub(crate) fn clean_device_plugin_dir() {
    let Ok(entries) = fs::read_dir(DEVICE_PLUGIN_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_socket = e.file_type().is_ok_and(|t| t.is_socket());
        if (is_socket && (name == "kubelet.sock" || name.starts_with("nvidia-")))
            || name == "kubelet_internal_checkpoint"
        {
            let _ = fs::remove_file(e.path());
        } else if name == "mock-nvml" {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Removes the links in /var/log/containers that point into `pod_logs`.
pub(crate) fn remove_container_log_links(pod_logs: &Path) {
    if let Ok(entries) = fs::read_dir(CONTAINER_LOGS) {
        for e in entries.flatten() {
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(pod_logs)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

// --- leftovers of dead test processes ------------------------------------------------------------

fn pid_alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The pid in a name `<prefix><pid>`, if that process is gone.
fn dead_owner(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|p| p.parse::<libc::pid_t>().ok())
        .is_some_and(|pid| !pid_alive(pid))
}

/// Undoes what real nodes of dead test processes left (called holding the [`MachineLock`], so no
/// other node runs): their containerd shims (by their `-address` in a dead process's plane
/// folder), the processes in their cgroup roots, their mounts, bridges, links, caches and the
/// device-plugin folder.
pub(crate) fn reap_stale() {
    let base = std::env::temp_dir().join("gpupool-testenv");
    let dead_plane = |path: &str| {
        Path::new(path)
            .strip_prefix(&base)
            .ok()
            .and_then(|rest| rest.iter().next())
            .and_then(|first| first.to_str())
            .and_then(|first| first.strip_prefix("plane-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
            .is_some_and(|pid| !pid_alive(pid))
    };
    // Shims of dead planes' containerds, and their sockets.
    let mut dead_shim_sockets = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
            {
                continue;
            }
            let address = args
                .iter()
                .position(|a| a == "-address")
                .and_then(|i| args.get(i + 1));
            if let Some(address) = address.filter(|a| dead_plane(a)) {
                // SAFETY: kill(2) of a shim serving a containerd of a dead test process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                let id = args
                    .iter()
                    .position(|a| a == "-id")
                    .and_then(|i| args.get(i + 1));
                if let Some(socket) = id.and_then(|id| shim_socket(address, id)) {
                    dead_shim_sockets.push(socket);
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for socket in dead_shim_sockets {
        let _ = fs::remove_file(socket);
    }
    // Cgroup roots of dead processes: under our own memory cgroup's parent chain, where
    // `Cgroups::create` puts them.
    let parent = own_memory_cgroup();
    for mount in cgroup_mounts() {
        let dir = mount.join(parent.trim_start_matches('/'));
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if dead_owner(&e.file_name().to_string_lossy(), CGROUP_PREFIX) {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
    // Mounts in dead planes' folders.
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        let mut dead: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(unescape)
            .filter(|p| dead_plane(p))
            .map(PathBuf::from)
            .collect();
        dead.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in dead {
            unmount_below(&p);
        }
    }
    // Bridges of dead processes.
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead_owner(&name, BRIDGE_PREFIX) {
                delete_link(&name);
            }
        }
    }
    // Container log links into dead planes.
    if let Ok(entries) = fs::read_dir(CONTAINER_LOGS) {
        for e in entries.flatten() {
            if fs::read_link(e.path()).is_ok_and(|t| dead_plane(&t.to_string_lossy())) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    remove_cni_cache(|p| dead_plane(&p.to_string_lossy()));
    clean_device_plugin_dir();
    remove_made_folders();
}
