//! A real node next to a [`ControlPlane`]: a real kubelet, containerd and runc running real pods,
//! where the NVIDIA device plugin (v0.18.0, in a pod) registers `nvidia.com/gpu` with the
//! kubelet's device manager — over a mock NVML (go-nvml's dgxa100: 8 simulated A100s) on GPU
//! nodes, since no GPU exists here.
//!
//! ```no_run
//! # async fn example() -> Result<(), testenv::Error> {
//! use testenv::ControlPlane;
//! use testenv::real_node::{RealNode, RealNodeOptions};
//!
//! let plane = ControlPlane::start().await?;
//! let node = RealNode::start(
//!     &plane,
//!     RealNodeOptions::aks_gpu("aks-gpu-12345678-vmss000000", "gpu").taint("sku", "gpu", "NoSchedule"),
//! )
//! .await?; // returns once the Node is Ready
//! // ... create the device plugin's DaemonSet (image nvcr.io/nvidia/k8s-device-plugin:v0.18.0,
//! // which on this node is the mock-GPU build), wait for nvidia.com/gpu: 8 ...
//! node.restart_kubelet().await?;
//! # Ok(()) }
//! ```
//!
//! Images come from `hack/real-node/build.sh` (or `$GPUPOOL_REAL_NODE_DIR`), imported into the
//! node's containerd; pods must use `imagePullPolicy: Never` or `IfNotPresent` (no registry is
//! reachable). On a node with [`Gpus::MockDgxA100`], upstream's plugin tag
//! (`nvcr.io/nvidia/k8s-device-plugin:v0.18.0`, gpupool's default image) *is* the mock-GPU build,
//! as a GPU node's plugin would find GPUs; with [`Gpus::None`] it is the real build, which finds
//! no NVML. The mock build is also tagged `...:v0.18.0-mockgpu` on every node.
//!
//! One real node runs on a machine at a time: the kubelet serves its device-plugin socket in
//! `/var/lib/kubelet/device-plugins` whatever its root directory (that path is compiled into the
//! kubelet and into every device plugin), so a second kubelet would take the first one's socket.
//! [`RealNode::start`] waits for a node of another test (or test binary) to be dropped.
//!
//! Needs root (cgroups, mounts, network namespaces) and the packages `hack/real-node/install.sh`
//! installs. Dropping the node stops the kubelet, every container and containerd, and undoes what
//! they made on the machine (see [`host`]).

mod artifacts;
mod config;
mod host;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

pub use artifacts::{Image, Images};
use config::{KubeletSettings, Layout};
use host::{Cgroups, MachineLock};

use crate::{ChildProcess, ControlPlane, Error, process};

/// GPUs of a real node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpus {
    /// No GPUs: upstream's plugin tag is the real plugin build, which finds no NVML library.
    None,
    /// Eight mock A100s: upstream's plugin tag is the build over go-nvml's dgxa100 mock NVML.
    MockDgxA100,
}

/// How to start a [`RealNode`]; build with [`RealNodeOptions::aks_gpu`] or
/// [`RealNodeOptions::aks_cpu`] and the setters.
#[derive(Debug, Clone)]
pub struct RealNodeOptions {
    /// The Node's name (the kubelet's `--hostname-override`).
    pub name: String,
    /// `--node-labels` (labels in the kubernetes.io and k8s.io namespaces are limited to the
    /// ones a kubelet may set; the kubelet adds kubernetes.io/hostname, os and arch itself).
    pub labels: BTreeMap<String, String>,
    /// `registerWithTaints`: `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
    pub gpus: Gpus,
    /// The address the Node reports and the kubelet serves on (the API server dials it for logs
    /// and exec). Default: this machine's own non-loopback IPv4 address.
    pub node_ip: Option<String>,
    /// The kubelet's `nodeStatusUpdateFrequency` (upstream default 10 s). Default 1 s, so that a
    /// device plugin's registration shows in the Node's status within a second or so.
    pub node_status_update_frequency: Duration,
    /// How long [`RealNode::start`] waits for the Node to be Ready. Default 120 s.
    pub ready_timeout: Duration,
}

impl RealNodeOptions {
    /// A node of AKS agent pool `agentpool` as AKS labels a GPU VM (`Standard_ND96asr_v4`, 8
    /// A100s): `agentpool`, `kubernetes.azure.com/agentpool`, `kubernetes.azure.com/mode=user`,
    /// `kubernetes.azure.com/os-sku`, the standard node image, `node.kubernetes.io/instance-type`,
    /// `kubernetes.azure.com/accelerator=nvidia` and `accelerator=nvidia`; mock GPUs; no taints.
    pub fn aks_gpu(name: &str, agentpool: &str) -> Self {
        let mut options = Self::aks_cpu(name, agentpool);
        options.gpus = Gpus::MockDgxA100;
        options
            .label("node.kubernetes.io/instance-type", "Standard_ND96asr_v4")
            .label("kubernetes.azure.com/accelerator", "nvidia")
            .label("accelerator", "nvidia")
    }

    /// A CPU node (`Standard_D4s_v3`) of AKS agent pool `agentpool`: no GPUs.
    pub fn aks_cpu(name: &str, agentpool: &str) -> Self {
        let labels = [
            ("agentpool", agentpool),
            ("kubernetes.azure.com/agentpool", agentpool),
            ("kubernetes.azure.com/mode", "user"),
            ("kubernetes.azure.com/os-sku", "Ubuntu"),
            (
                "kubernetes.azure.com/node-image-version",
                crate::nodes::STANDARD_IMAGE,
            ),
            ("node.kubernetes.io/instance-type", "Standard_D4s_v3"),
        ];
        RealNodeOptions {
            name: name.to_owned(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            taints: Vec::new(),
            gpus: Gpus::None,
            node_ip: None,
            node_status_update_frequency: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(120),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints
            .push((key.to_owned(), value.to_owned(), effect.to_owned()));
        self
    }

    pub fn gpus(mut self, gpus: Gpus) -> Self {
        self.gpus = gpus;
        self
    }

    pub fn node_ip(mut self, ip: &str) -> Self {
        self.node_ip = Some(ip.to_owned());
        self
    }
}

/// The NVIDIA device plugin binary (v0.18.0, the real build: the one in upstream's image) that
/// `hack/real-node/build.sh` builds, for checks that need no node (`--config-file` prints the
/// merged config or refuses it before it looks for GPUs). Builds it first if needed.
pub fn device_plugin_binary() -> Result<PathBuf, Error> {
    Ok(artifacts::artifacts()?.device_plugin)
}

const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
const KUBELET_HEALTHZ_TIMEOUT: Duration = Duration::from_secs(60);
/// Waiting for another real node on this machine to go away.
const LOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// The device plugin's folder the mock NVML reads XID files from (see hack/real-node).
const MOCK_XID_DIR: &str = "/var/lib/kubelet/device-plugins/mock-nvml";

/// A running real node; see the [module docs](self).
pub struct RealNode<'a> {
    plane: &'a ControlPlane,
    name: String,
    node_ip: String,
    layout: Layout,
    images: Images,
    kubelet_program: PathBuf,
    kubelet_args: Vec<OsString>,
    healthz_port: u16,
    bridge: String,
    kubelet: Mutex<Option<ChildProcess>>,
    containerd: Mutex<Option<ChildProcess>>,
    cgroups: Mutex<Option<Cgroups>>,
    // Last: released after the cleanup in Drop.
    _lock: MachineLock,
}

impl std::fmt::Debug for RealNode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNode")
            .field("name", &self.name)
            .field("node_ip", &self.node_ip)
            .field("dir", &self.layout.dir)
            .finish_non_exhaustive()
    }
}

impl<'a> RealNode<'a> {
    /// Starts containerd, imports the images, starts the kubelet (identity
    /// `system:node:<name>` from a client certificate of the plane's CA) and returns once the Node
    /// is Ready. Builds the pieces first if needed (`hack/real-node/build.sh`).
    pub async fn start(plane: &'a ControlPlane, options: RealNodeOptions) -> Result<Self, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Config {
                what: "starting a real node".into(),
                detail: "needs root (cgroups, mounts, network namespaces, /var/lib/kubelet); \
                         set GPUPOOL_SKIP_REAL_NODE=1 to skip the real-node tests"
                    .into(),
            });
        }
        let artifacts = artifacts::artifacts()?;
        let lock = MachineLock::acquire(LOCK_TIMEOUT).await?;
        host::ensure_no_other_kubelet()?;
        host::reap_stale();

        // A short folder name: containerd's sockets live in it, and unix socket paths are short.
        static NODES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = plane.dir().join(format!("node-{seq}"));
        let layout = Layout::new(dir, &plane.dir().join("logs"), &options.name);
        let socket_len = layout.containerd_socket.as_os_str().len();
        // containerd adds ".ttrpc" for its second socket, and Go allows 104 bytes.
        if socket_len > 98 {
            return Err(Error::Config {
                what: "the real node's folder".into(),
                detail: format!(
                    "containerd's socket path {} is {socket_len} bytes: with containerd's \
                     \".ttrpc\" suffix it is over the 104 Go allows for a unix socket (shorten \
                     TMPDIR)",
                    layout.containerd_socket.display()
                ),
            });
        }
        let node_ip = match &options.node_ip {
            Some(ip) => ip.clone(),
            None => host::machine_address()?,
        };
        let mut node = RealNode {
            plane,
            name: options.name.clone(),
            node_ip,
            layout,
            images: artifacts.images.clone(),
            kubelet_program: artifacts.kubelet.clone(),
            kubelet_args: Vec::new(),
            healthz_port: crate::free_port()?,
            bridge: host::bridge_name(),
            kubelet: Mutex::new(None),
            containerd: Mutex::new(None),
            cgroups: Mutex::new(None),
            _lock: lock,
        };
        // From here on, dropping `node` undoes whatever was done.
        if let Err(e) = node.boot(&options).await {
            // Exited and Deadline errors carry the log tails already.
            let logs = match e {
                Error::Exited { .. } | Error::Deadline { .. } => String::new(),
                _ => format!("\n{}", node.logs_tail(30)),
            };
            return Err(Error::Command {
                what: format!(
                    "starting real node {} in {}",
                    options.name,
                    node.layout.dir.display()
                ),
                detail: format!("{e}{logs}"),
            });
        }
        Ok(node)
    }

    async fn boot(&mut self, options: &RealNodeOptions) -> Result<(), Error> {
        host::prepare_outside_folders()?;
        let cgroups = Cgroups::create()?;
        let cgroup_root = cgroups.root.clone();
        *lock(&self.cgroups) = Some(cgroups);

        let l = &self.layout;
        for d in [
            &l.containerd_root,
            &l.containerd_state,
            &l.cni_ipam_dir,
            &l.kubelet_root,
            &l.pod_logs,
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        config::write(
            &l.containerd_config,
            &config::containerd_config(l, &self.images.pause.tag),
        )?;
        config::write(
            &l.cni_conf_dir.join("10-gpupool-real-node.conflist"),
            &config::cni_conflist(l, &self.bridge),
        )?;
        self.start_containerd().await?;
        self.import_images(options.gpus)?;

        let kubeconfig = self
            .plane
            .kubeconfig_for_certificate(&format!("system:node:{}", self.name), "system:nodes")?;
        let ca_file = self.plane.ca_cert_path();
        let kubelet_config = config::kubelet_config(
            l,
            &KubeletSettings {
                node_ip: &self.node_ip,
                port: crate::free_port()?,
                healthz_port: self.healthz_port,
                ca_file: &ca_file,
                cgroup_root: &cgroup_root,
                taints: &options.taints,
                node_status_update_frequency: options.node_status_update_frequency,
            },
        )?;
        config::write(&l.kubelet_config, &kubelet_config)?;
        let labels: Vec<String> = options
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args: Vec<OsString> = vec![
            format!("--config={}", l.kubelet_config.display()).into(),
            format!("--kubeconfig={}", kubeconfig.display()).into(),
            format!("--root-dir={}", l.kubelet_root.display()).into(),
            // Its self-signed serving certificate; the default is /var/lib/kubelet/pki whatever
            // --root-dir says.
            format!("--cert-dir={}", l.kubelet_root.join("pki").display()).into(),
            format!("--hostname-override={}", self.name).into(),
            format!("--node-ip={}", self.node_ip).into(),
            "--v=2".into(),
        ];
        if !labels.is_empty() {
            args.push(format!("--node-labels={}", labels.join(",")).into());
        }
        self.kubelet_args = args;
        self.start_kubelet().await?;
        self.wait_ready(options.ready_timeout).await?;
        Ok(())
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the Node reports (InternalIP) and the kubelet serves on.
    pub fn node_ip(&self) -> &str {
        &self.node_ip
    }

    /// The node's folder (containerd's root and state, the kubelet's root, pod logs, CNI).
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The images imported on this node, by role.
    pub fn images(&self) -> &Images {
        &self.images
    }

    pub fn kubelet_log_path(&self) -> &Path {
        &self.layout.kubelet_log
    }

    pub fn containerd_log_path(&self) -> &Path {
        &self.layout.containerd_log
    }

    /// The last `lines` lines of the kubelet's and containerd's logs, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        format!(
            "===== kubelet ({}) =====\n{}\n===== containerd ({}) =====\n{}\n",
            self.layout.kubelet_log.display(),
            process::tail(&self.layout.kubelet_log, lines),
            self.layout.containerd_log.display(),
            process::tail(&self.layout.containerd_log, lines),
        )
    }

    /// `ctr` against this node's containerd, in the kubelet's namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.layout.containerd_socket)
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// Waits until the Node is Ready (and returns it), failing early if the kubelet exits.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Node, Error> {
        let nodes: Api<Node> = Api::all(self.plane.client().await);
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not registered");
        loop {
            self.check_alive()?;
            match nodes.get_opt(&self.name).await {
                Ok(Some(node)) if crate::nodes::is_ready(&node) => return Ok(node),
                Ok(Some(node)) => last = format!("conditions {:?}", ready_condition(&node)),
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::Deadline {
                    what: format!("node {} to be Ready", self.name),
                    timeout,
                    detail: format!("\nlast: {last}\n{}", self.logs_tail(40)),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the kubelet (SIGTERM, SIGKILL after `grace`). Pods keep running in containerd,
    /// as on a real node whose kubelet restarts.
    pub async fn stop_kubelet(&self, grace: Duration) {
        let child = lock(&self.kubelet).take();
        if let Some(mut child) = child {
            child.stop(grace).await;
        }
    }

    /// Starts the kubelet (again) with the same configuration and waits for its `/healthz`.
    pub async fn start_kubelet(&self) -> Result<(), Error> {
        let mut cmd = Command::new(&self.kubelet_program);
        cmd.args(&self.kubelet_args).current_dir(&self.layout.dir);
        let child = ChildProcess::spawn("kubelet", cmd, &self.layout.kubelet_log)?;
        *lock(&self.kubelet) = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", self.healthz_port);
        self.wait_until(
            "the kubelet's /healthz",
            KUBELET_HEALTHZ_TIMEOUT,
            || async { matches!(crate::http::get(&url).await, Ok((200, _))) },
        )
        .await
    }

    /// [`stop_kubelet`](Self::stop_kubelet) (5 s grace) and [`start_kubelet`](Self::start_kubelet).
    /// Does not wait for the Node to be Ready again (use [`wait_ready`](Self::wait_ready)).
    pub async fn restart_kubelet(&self) -> Result<(), Error> {
        self.stop_kubelet(Duration::from_secs(5)).await;
        self.start_kubelet().await
    }

    /// Stops containerd (SIGTERM, SIGKILL after `grace`): containers keep running under their
    /// shims, as when containerd restarts on a real node; the kubelet sees its runtime gone.
    pub async fn stop_containerd(&self, grace: Duration) {
        let child = lock(&self.containerd).take();
        if let Some(mut child) = child {
            child.stop(grace).await;
        }
    }

    /// Starts containerd (again) and waits until it answers.
    pub async fn start_containerd(&self) -> Result<(), Error> {
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&self.layout.containerd_config)
            .current_dir(&self.layout.dir);
        let child = ChildProcess::spawn("containerd", cmd, &self.layout.containerd_log)?;
        *lock(&self.containerd) = Some(child);
        self.wait_until("containerd to answer", CONTAINERD_TIMEOUT, || async {
            self.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await
    }

    /// Restarts containerd (5 s grace). The kubelet reconnects on its own.
    pub async fn restart_containerd(&self) -> Result<(), Error> {
        self.stop_containerd(Duration::from_secs(5)).await;
        self.start_containerd().await
    }

    /// The log of a container of a pod on this node, read from the kubelet's pod log folder (the
    /// CRI log format's timestamps and stream tags stripped): the latest run's, or None if there is
    /// none yet. Needs no API server round trip to the kubelet.
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let prefix = format!("{namespace}_{pod}_");
        let pod_dir = std::fs::read_dir(&self.layout.pod_logs)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
            .path();
        let latest = std::fs::read_dir(pod_dir.join(container))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".log")?
                    .parse::<u32>()
                    .ok()
                    .map(|n| (n, e.path()))
            })
            .max_by_key(|(n, _)| *n)?
            .1;
        let text = std::fs::read_to_string(latest).ok()?;
        let mut out = String::new();
        for line in text.lines() {
            // <RFC3339 time> <stdout|stderr> <P|F> <message>
            let mut parts = line.splitn(4, ' ');
            let (_, _, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
            out.push_str(msg.unwrap_or(""));
            if tag != Some("P") {
                out.push('\n');
            }
        }
        Some(out)
    }

    /// Makes the mock NVML report a critical XID (e.g. 79, "GPU has fallen off the bus") for GPU
    /// `gpu` (0-7) once: the device plugin then marks that GPU unhealthy, as on a real node. Only
    /// for [`Gpus::MockDgxA100`] nodes (the mock polls for it every 200 ms).
    pub fn inject_xid(&self, gpu: u32, xid: u64) -> Result<(), Error> {
        std::fs::create_dir_all(MOCK_XID_DIR)
            .map_err(|e| Error::io(format!("creating {MOCK_XID_DIR}"), e))?;
        let path = Path::new(MOCK_XID_DIR).join(format!("xid-{gpu}"));
        std::fs::write(&path, xid.to_string())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    fn import_images(&self, gpus: Gpus) -> Result<(), Error> {
        let i = &self.images;
        for image in [
            &i.pause,
            &i.busybox,
            &i.cuda_sample,
            &i.device_plugin,
            &i.device_plugin_mockgpu,
        ] {
            self.ctr_ok(
                &format!("importing {}", image.tag),
                &[
                    "images".as_ref(),
                    "import".as_ref(),
                    image.archive.as_os_str(),
                ],
            )?;
        }
        if gpus == Gpus::MockDgxA100 {
            // Upstream's tag names the mock-GPU build on a GPU node.
            self.ctr_ok(
                "tagging the mock-GPU plugin with upstream's tag",
                &[
                    "images".as_ref(),
                    "tag".as_ref(),
                    "--force".as_ref(),
                    i.device_plugin_mockgpu.tag.as_ref(),
                    i.device_plugin.tag.as_ref(),
                ],
            )?;
        }
        Ok(())
    }

    fn ctr_ok(&self, what: &str, args: &[&std::ffi::OsStr]) -> Result<(), Error> {
        let out = self
            .ctr()
            .args(args)
            .output()
            .map_err(|e| Error::io("running ctr", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                what: what.into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Fails if the kubelet or containerd exited on their own.
    fn check_alive(&self) -> Result<(), Error> {
        for (name, slot, log) in [
            ("kubelet", &self.kubelet, &self.layout.kubelet_log),
            ("containerd", &self.containerd, &self.layout.containerd_log),
        ] {
            if let Some(status) = lock(slot).as_mut().and_then(|c| c.try_wait()) {
                return Err(Error::Exited {
                    component: name,
                    status: status.to_string(),
                    log_tail: process::tail(log, 40),
                });
            }
        }
        Ok(())
    }

    async fn wait_until<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if ok().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Deadline {
                    what: what.into(),
                    timeout,
                    detail: format!("\n{}", self.logs_tail(30)),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ctr` with `args`, its stdout, or nothing if it failed or took over 20 s (Drop must not
    /// hang on a containerd that does not answer).
    fn ctr_within(&self, args: &[&str]) -> Option<String> {
        let mut child = self
            .ctr()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let out = child.wait_with_output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every task and container in containerd's `k8s.io` namespace, force-deleted (with a time
    /// limit: this runs in Drop).
    /// Returns the ids of the containers there were (pod sandboxes among them).
    fn delete_all_containers(&self) -> Vec<String> {
        let list = |what: &str| -> Vec<String> {
            self.ctr_within(&[what, "ls", "-q"])
                .map(|out| out.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for id in list("tasks") {
            self.ctr_within(&["tasks", "kill", "--signal", "SIGKILL", &id]);
        }
        for id in list("tasks") {
            self.ctr_within(&["tasks", "delete", "--force", &id]);
        }
        let containers = list("containers");
        for id in &containers {
            self.ctr_within(&["containers", "delete", id]);
        }
        containers
    }

    /// SIGKILLs containerd shims serving our containerd (by the `-address` they were given):
    /// what is left when containerd could not delete their tasks. Waits (up to 5 s) until none
    /// is left: a shim exits a moment after its last task is deleted.
    fn kill_own_shims(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.signal_own_shims() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs our shims; returns how many there were.
    fn signal_own_shims(&self) -> usize {
        let mut found = 0;
        let socket = self.layout.containerd_socket.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for e in entries.flatten() {
            let Some(pid) = e
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == socket.as_bytes());
            if is_shim && ours {
                found += 1;
                // SAFETY: kill(2) of a shim our containerd started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        found
    }
}

impl Drop for RealNode<'_> {
    fn drop(&mut self) {
        // The kubelet first, so it does not restart what is being removed.
        drop(lock(&self.kubelet).take());
        let containerd_running = lock(&self.containerd).is_some();
        let containers = if containerd_running {
            self.delete_all_containers()
        } else {
            Vec::new()
        };
        drop(lock(&self.containerd).take());
        self.kill_own_shims();
        // Killed shims leave their sockets behind.
        let address = self.layout.containerd_socket.to_string_lossy();
        for id in &containers {
            if let Some(socket) = host::shim_socket(&address, id) {
                let _ = std::fs::remove_file(socket);
            }
        }
        if let Some(cgroups) = lock(&self.cgroups).take() {
            cgroups.remove();
        }
        host::unmount_below(&self.layout.dir);
        host::delete_link(&self.bridge);
        host::remove_container_log_links(&self.layout.pod_logs);
        host::remove_cni_cache(|p| p.starts_with(&self.layout.dir));
        host::clean_device_plugin_dir();
        host::remove_made_folders();
        // The folder itself goes with the plane's directory (kept with GPUPOOL_TESTENV_KEEP=1).
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ready_condition(node: &Node) -> Vec<(String, String, String)> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
