//! What a real node does to the machine outside its own folder, and how it is undone — by what
//! was made, never by a broad name:
//!
//! - the kubelet's cgroups: the kubelet gets a cgroup root of our own (`gpupool-node-<pid>`,
//!   nested under this process's memory cgroup, made in every cgroup v1 hierarchy), so everything
//!   it creates (`kubepods`, pod and container cgroups) is inside it;
//! - the CNI bridge (`gpn<pid>`), made by the bridge plugin for the first pod;
//! - `/var/lib/kubelet/device-plugins`: the kubelet serves its device-plugin socket there whatever
//!   its `--root-dir` (hard-coded in the kubelet, and where plugins look), so one real node runs at
//!   a time on a machine ([`MachineLock`]); a marker folder records whether we made it;
//! - `/var/log/containers`: the kubelet always links container logs there;
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
/// Marker folders in /var/lib/kubelet (the kubelet's start-up cleanup of the device-plugin folder
/// removes files, and this one is outside it anyway): which of the two folders a node made.
const MADE_VAR_LIB_KUBELET: &str = "/var/lib/kubelet/.gpupool-testenv-made-var-lib-kubelet";
const MADE_DEVICE_PLUGINS: &str = "/var/lib/kubelet/.gpupool-testenv-made-device-plugins";
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
/// it in each), with the folders we made for it remembered for [`Cgroups::remove`].
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// E.g. `/process_api/abc/gpupool-node-1234`: the kubelet's `cgroupRoot`.
    pub root: String,
    made: Vec<PathBuf>,
}

impl Cgroups {
    pub fn create() -> Result<Cgroups, Error> {
        let parent = own_memory_cgroup();
        let root = format!(
            "{}/{CGROUP_PREFIX}{}",
            parent.trim_end_matches('/'),
            std::process::id()
        );
        let mut cgroups = Cgroups {
            root: root.clone(),
            made: Vec::new(),
        };
        for mount in cgroup_mounts() {
            let mut path = mount.clone();
            for part in root.split('/').filter(|p| !p.is_empty()) {
                let parent = path.clone();
                path.push(part);
                if path.is_dir() {
                    continue;
                }
                fs::create_dir(&path).map_err(io_err(format!("creating {}", path.display())))?;
                cgroups.made.push(path.clone());
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
    /// be there), then removes every cgroup below it and the folders we made.
    pub fn remove(&mut self) {
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(self.root.trim_start_matches('/')));
        }
        for path in self.made.drain(..).rev() {
            let _ = fs::remove_dir(&path);
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

/// Makes `/var/lib/kubelet/device-plugins` (and `/var/lib/kubelet`) if missing, remembering that
/// with a marker.
pub(crate) fn prepare_device_plugin_dir() -> Result<(), Error> {
    if !Path::new(VAR_LIB_KUBELET).exists() {
        fs::create_dir_all(MADE_VAR_LIB_KUBELET)
            .map_err(io_err(format!("creating {MADE_VAR_LIB_KUBELET}")))?;
    }
    if !Path::new(DEVICE_PLUGIN_DIR).exists() {
        fs::create_dir_all(MADE_DEVICE_PLUGINS)
            .map_err(io_err(format!("creating {MADE_DEVICE_PLUGINS}")))?;
        fs::create_dir_all(DEVICE_PLUGIN_DIR)
            .map_err(io_err(format!("creating {DEVICE_PLUGIN_DIR}")))?;
    }
    Ok(())
}

/// Undoes [`prepare_device_plugin_dir`] and what was served there: the folders when a node made
/// them, else the sockets, checkpoint and mock-NVML folder a node and its plugin leave.
pub(crate) fn clean_device_plugin_dir() {
    let dir = Path::new(DEVICE_PLUGIN_DIR);
    if Path::new(MADE_DEVICE_PLUGINS).exists() {
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_dir(MADE_DEVICE_PLUGINS);
    } else if let Ok(entries) = fs::read_dir(dir) {
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
    if Path::new(MADE_VAR_LIB_KUBELET).exists() {
        let _ = fs::remove_dir(MADE_VAR_LIB_KUBELET);
        // Only if nothing else is in it now.
        let _ = fs::remove_dir(VAR_LIB_KUBELET);
    }
}

/// Whether /var/log/containers existed before (so it is removed after only if we made it).
pub(crate) fn container_logs_existed() -> bool {
    Path::new(CONTAINER_LOGS).exists()
}

/// Removes the links in /var/log/containers that point into `pod_logs` (and the folder itself if
/// we made it and it is empty now).
pub(crate) fn remove_container_log_links(pod_logs: &Path, made_folder: bool) {
    if let Ok(entries) = fs::read_dir(CONTAINER_LOGS) {
        for e in entries.flatten() {
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(pod_logs)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if made_folder {
        let _ = fs::remove_dir(CONTAINER_LOGS);
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
    // Shims of dead planes' containerds.
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
            if address.is_some_and(|a| dead_plane(a)) {
                // SAFETY: kill(2) of a shim serving a containerd of a dead test process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
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
}
