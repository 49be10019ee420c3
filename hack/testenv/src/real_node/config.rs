//! A real node's files: containerd's config, the CNI network, the kubelet's configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

/// The CNI network's name.
pub(crate) const CNI_NETWORK: &str = "gpupool-real-node";
/// Pod addresses. One real node runs at a time on a machine (see `RealNode`), so one subnet does;
/// kept apart from kwok's 10.244.0.0/16 and the plane's service range 10.0.0.0/24.
pub(crate) const POD_SUBNET: &str = "10.246.0.0/24";

/// Where a real node's files are, all inside its folder in the plane's directory (except the
/// logs, which go to the plane's `logs/` with the other components').
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub dir: PathBuf,
    pub containerd_config: PathBuf,
    pub containerd_root: PathBuf,
    pub containerd_state: PathBuf,
    pub containerd_socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_ipam_dir: PathBuf,
    pub kubelet_config: PathBuf,
    pub kubelet_root: PathBuf,
    pub pod_logs: PathBuf,
    pub containerd_log: PathBuf,
    pub kubelet_log: PathBuf,
}

impl Layout {
    pub fn new(dir: PathBuf, logs: &Path, name: &str) -> Layout {
        Layout {
            containerd_config: dir.join("containerd/config.toml"),
            containerd_root: dir.join("containerd/root"),
            containerd_state: dir.join("containerd/state"),
            containerd_socket: dir.join("containerd/containerd.sock"),
            cni_conf_dir: dir.join("cni/net.d"),
            cni_ipam_dir: dir.join("cni/ipam"),
            kubelet_config: dir.join("kubelet/config.yaml"),
            kubelet_root: dir.join("kubelet/root"),
            pod_logs: dir.join("kubelet/pod-logs"),
            containerd_log: logs.join(format!("real-node-{name}-containerd.log")),
            kubelet_log: logs.join(format!("real-node-{name}-kubelet.log")),
            dir,
        }
    }
}

/// containerd 1.6's config (version 2): everything under the node's folder (root, state, runc's
/// state, netns mounts, /opt), overlayfs, runc with cgroupfs, the local pause image, the CNI
/// plugins from Debian's containernetworking-plugins, and `restrict_oom_score_adj`: processes here
/// lack CAP_SYS_RESOURCE, so runc could not set a sandbox's oom_score_adj of -998 and every pod
/// sandbox would fail ("can't get final child's PID from pipe: EOF").
pub(crate) fn containerd_config(layout: &Layout, sandbox_image: &str) -> String {
    let p = |p: &Path| p.display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        root = p(&layout.containerd_root),
        state = p(&layout.containerd_state),
        socket = p(&layout.containerd_socket),
        opt = p(&layout.dir.join("containerd/opt")),
        runc_root = p(&layout.containerd_state.join("runc")),
        cni_conf = p(&layout.cni_conf_dir),
    )
}

/// A bridge on a private subnet, addresses from host-local (its allocations kept in the node's
/// folder). No masquerading: pods talk to the node and to each other, nothing leaves the machine.
pub(crate) fn cni_conflist(layout: &Layout, bridge: &str) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "dataDir": layout.cni_ipam_dir,
            },
        }],
    })
    .to_string()
}

/// What the kubelet's configuration depends on.
#[derive(Debug, Clone)]
pub(crate) struct KubeletSettings<'a> {
    pub node_ip: &'a str,
    pub port: u16,
    pub healthz_port: u16,
    pub ca_file: &'a Path,
    pub cgroup_root: &'a str,
    pub taints: &'a [(String, String, String)],
    pub node_status_update_frequency: Duration,
}

/// The KubeletConfiguration: cgroup v1 allowed (`failCgroupV1: false`; this machine has no v2
/// controllers), cgroupfs under a cgroup of our own, no swap check, containerd's socket, no
/// iptables chains, no kernel-default checks, webhook authentication and authorization (x509 from
/// the plane's CA: the API server's kubelet client certificate), serving on the node's address,
/// healthz on loopback, pod logs in the node's folder, registration taints, and image garbage
/// collection off (the imported images are the only copies: nothing can pull them again).
pub(crate) fn kubelet_config(layout: &Layout, s: &KubeletSettings) -> Result<String, Error> {
    let taints: Vec<_> = s
        .taints
        .iter()
        .map(|(key, value, effect)| {
            serde_json::json!({ "key": key, "value": value, "effect": effect })
        })
        .collect();
    let doc = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": s.node_ip,
        "port": s.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": s.healthz_port,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": s.ca_file },
        },
        "authorization": { "mode": "Webhook" },
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": s.cgroup_root,
        "failSwapOn": false,
        "containerRuntimeEndpoint": format!("unix://{}", layout.containerd_socket.display()),
        "protectKernelDefaults": false,
        "makeIPTablesUtilChains": false,
        "podLogsDir": layout.pod_logs,
        "registerNode": true,
        "registerWithTaints": taints,
        "nodeStatusUpdateFrequency": format!("{}ms", s.node_status_update_frequency.as_millis()),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": false,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
    });
    yaml_serde::to_string(&doc).map_err(|e| Error::Config {
        what: "serializing the kubelet configuration".into(),
        detail: e.to_string(),
    })
}

pub(crate) fn write(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
