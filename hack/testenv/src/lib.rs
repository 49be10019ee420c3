//! A private, real Kubernetes control plane for gpupool's integration tests and demo.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! [kwok](https://kwok.sigs.k8s.io) (fake kubelets) as child processes on free loopback ports in a
//! fresh temp dir. Nothing is mocked: the operator under test talks to the same API server,
//! admission chain, RBAC, garbage collector, DaemonSet/Job controllers and scheduler as in a real
//! cluster; only the nodes are simulated (see [`nodes`]): kwok plays their kubelets (deleted
//! device-plugin pods take [`Options::plugin_pod_termination`] to go),
//! [`simulate::ValidationPods`] finishes GPU validation pods as real nodes would, and
//! [`simulate::PluginGpus`] plays the device manager of nodes that opt in, so that their
//! `nvidia.com/gpu` follows the device-plugin pod running there.
//!
//! [`real_node::RealNode`] adds a real node instead: a real kubelet, containerd and runc, where
//! the NVIDIA device plugin runs in a pod over a mock NVML and `nvidia.com/gpu` comes from the
//! kubelet's device manager.
//!
//! Also here: [`http`] (a plain-HTTP client for the operator's endpoints), [`free_port`],
//! [`wait_for`]/[`poll_until`], and the scale benchmark ([`bench`](mod@bench)).
//!
//! Binaries come from `$GPUPOOL_CONTROL_PLANE_BIN`, or else from `hack/build-control-plane.sh`
//! (which builds the pinned versions once and prints their folder).
//!
//! Tests should share one plane per test binary through [`ControlPlane::shared`] (startup takes
//! seconds) and isolate themselves with their own namespaces and node names. Tests that break the
//! plane on purpose ([`ControlPlane::restart_apiserver`]) should start their own.
//!
//! Processes never outlive the test process: they are forked from one long-lived thread with
//! `PR_SET_PDEATHSIG`, and [`Drop`] stops them too.

/// `kube::Resource` for a core/v1 kind decoded slim (only the fields a watch of this crate reads):
/// its kind, plural and scope, and where its metadata is (`self.0.metadata` for a newtype around
/// the full object, or the named field).
macro_rules! slim_core_v1 {
    ($slim:ident, $kind:literal, $plural:literal, $scope:ty) => {
        slim_core_v1!(@impl $slim, $kind, $plural, $scope, |s| s.0.metadata);
    };
    ($slim:ident, $kind:literal, $plural:literal, $scope:ty, field $field:ident) => {
        slim_core_v1!(@impl $slim, $kind, $plural, $scope, |s| s.$field);
    };
    (@impl $slim:ident, $kind:literal, $plural:literal, $scope:ty, |$s:ident| $($meta:tt)+) => {
        impl kube::Resource for $slim {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                let $s = self;
                &$($meta)+
            }
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                let $s = self;
                &mut $($meta)+
            }
        }
    };
}

pub mod audit;
pub mod bench;
mod binaries;
mod child;
mod components;
mod error;
mod etcd;
pub mod http;
mod kubeconfig;
pub mod nodes;
mod pki;
mod plane;
mod ports;
mod process;
pub mod real_node;
pub mod simulate;
mod stages;

use std::future::Future;
use std::time::{Duration, Instant};

pub use child::ChildProcess;
pub use error::Error;
pub use plane::{ControlPlane, Options};
pub use ports::free_port;
pub use stages::{DEVICE_PLUGIN_POD_LABEL, NODE_STATUS_HEARTBEAT_MS};

/// Polls `f` every 200 ms until it returns `Some`, and panics naming `what` after `timeout`.
///
/// Tests must wait on an observable condition with a deadline, never sleep and hope: this keeps
/// them fast when things are fast and gives a clear failure when they are not.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, timeout, Duration::from_millis(200), f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` every `every` until it returns `Some`; [`Error::Deadline`] naming `what` after
/// `timeout`. [`wait_for`] for code that returns errors instead of panicking.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::Deadline {
                what: what.into(),
                timeout,
                detail: String::new(),
            });
        }
        tokio::time::sleep(every).await;
    }
}
