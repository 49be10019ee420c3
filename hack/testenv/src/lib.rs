//! A private, real Kubernetes control plane for gpupool's integration tests and demo.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! [kwok](https://kwok.sigs.k8s.io) (fake kubelets) as child processes on free loopback ports in a
//! fresh temp dir. Nothing is mocked: the operator under test talks to the same API server,
//! admission chain, RBAC, garbage collector, DaemonSet/Job controllers and scheduler as in a real
//! cluster; only the nodes are simulated (see [`nodes`]).
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

pub mod bench;
mod child;
pub mod http;
pub mod nodes;
mod pki;
mod process;
mod stages;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use process::{Running, Spec};

pub use child::ChildProcess;
pub use stages::NODE_STATUS_HEARTBEAT_MS;

/// Everything that can go wrong while starting or driving a control plane. The messages name the
/// component, command or file involved and, for components, carry the tail of their log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot locate the control-plane binaries: {0}")]
    Binaries(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("invalid configuration, {what}: {detail}")]
    Config { what: String, detail: String },
    #[error("cannot start {component} ({program}): {detail}")]
    Spawn {
        component: String,
        program: PathBuf,
        detail: String,
    },
    #[error("{component} exited unexpectedly ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        component: &'static str,
        status: String,
        log_tail: String,
    },
    #[error(
        "timed out after {timeout:?} waiting for {what} (last observation: {last}); last lines of the {component} log:\n{log_tail}"
    )]
    Timeout {
        what: String,
        component: &'static str,
        timeout: Duration,
        last: String,
        log_tail: String,
    },
    #[error(
        "{source}\n(control plane directory kept for inspection: {})\nlast lines of every component's log:\n{logs}",
        dir.display()
    )]
    Startup {
        source: Box<Error>,
        dir: PathBuf,
        logs: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("HTTP request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Polls `f` every 200 ms until it returns `Some`, and panics naming `what` after `timeout`.
///
/// Tests must wait on an observable condition with a deadline, never sleep and hope: this keeps
/// them fast when things are fast and gives a clear failure when they are not.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names of the components, in start order.
const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";
const KWOK: &str = "kwok";
const COMPONENTS: [&str; 5] = [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KWOK];

/// Binaries that must be present in the bin folder.
const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(90);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM'd components get before SIGKILL when the plane is dropped. Short: the
/// directory is deleted right after, so a graceful shutdown buys nothing (kube-apiserver would
/// otherwise linger for seconds after it stopped listening).
const DROP_GRACE: Duration = Duration::from_secs(1);
/// Grace for kube-apiserver and etcd in `restart_apiserver`: enough to close connections the
/// way a rolling restart does, short enough to keep fault tests fast.
const RESTART_GRACE: Duration = Duration::from_secs(2);

/// How to start a plane; [`Options::default`] is what [`ControlPlane::start`] uses. Benchmarks and
/// fault tests use the rest.
#[derive(Debug, Clone)]
pub struct Options {
    /// Period of kwok's node status heartbeat (each fake node's status is rewritten this often,
    /// plus up to 120% jitter). Default [`NODE_STATUS_HEARTBEAT_MS`].
    pub node_status_heartbeat: Duration,
    /// `--node-lease-duration-seconds` of kwok (leases are renewed every quarter of it).
    pub node_lease_duration_seconds: u32,
    /// An audit policy (YAML) for kube-apiserver; events go to [`ControlPlane::audit_log_path`]
    /// as JSON lines. None: no auditing.
    pub audit_policy: Option<String>,
    /// Extra kube-apiserver flags (e.g. `--watch-cache=false`), appended last so they win.
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags (e.g. `--node-monitor-grace-period=5m` when node
    /// leases are renewed slowly at scale), appended last.
    pub controller_manager_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_status_heartbeat: Duration::from_millis(NODE_STATUS_HEARTBEAT_MS),
            node_lease_duration_seconds: 40,
            audit_policy: None,
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

/// A running private control plane. Dropping it stops every process and deletes its directory
/// (set `GPUPOOL_TESTENV_KEEP=1` to keep the directory, with logs and etcd data, for debugging).
pub struct ControlPlane {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin_dir: PathBuf,
    server_url: String,
    kubeconfig: PathBuf,
    ca_pem: Vec<u8>,
    etcd: Spec,
    apiserver: Spec,
    etcd_client_url: String,
    procs: Mutex<Vec<Running>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.root)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on free
    /// loopback ports in a fresh temp dir, and returns once the API server is ready and the
    /// controller-manager has created the `default` ServiceAccount (pods can be created then).
    pub async fn start() -> Result<ControlPlane, Error> {
        Self::start_with(Options::default()).await
    }

    /// [`ControlPlane::start`] with [`Options`] (heartbeat period, audit log, API server flags).
    pub async fn start_with(options: Options) -> Result<ControlPlane, Error> {
        let bin_dir = bin_dir()?;
        let base = std::env::temp_dir().join("gpupool-testenv");
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
        remove_stale_dirs(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("plane-{}-", std::process::id()))
            .tempdir_in(&base)
            .map_err(|e| Error::io(format!("creating a temp dir in {}", base.display()), e))?;
        let root = dir.path().to_path_buf();
        for sub in ["logs", "pki", "kubeconfigs"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(|e| Error::io(format!("creating {}", root.join(sub).display()), e))?;
        }

        let pki = pki::generate(&root.join("pki"))?;
        let ca_pem = pki.ca_pem.clone();

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let etcd_client_url = format!("http://127.0.0.1:{etcd_port}");

        // Static bearer tokens: one identity per component, as in a real cluster, so that RBAC's
        // bootstrap roles apply to the controller-manager and scheduler exactly as there.
        let admin_token = pki::random_token()?;
        let kcm_token = pki::random_token()?;
        let scheduler_token = pki::random_token()?;
        let kwok_token = pki::random_token()?;
        let token_file = root.join("pki/tokens.csv");
        process::write_private(
            &token_file,
            format!(
                "{admin_token},admin,uid-admin,\"system:masters\"\n\
                 {kcm_token},system:kube-controller-manager,uid-kube-controller-manager\n\
                 {scheduler_token},system:kube-scheduler,uid-kube-scheduler\n\
                 {kwok_token},kwok,uid-kwok,\"system:masters\"\n"
            )
            .as_bytes(),
        )?;
        let kubeconfig = root.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server_url, &ca_pem, "admin", &admin_token)?;
        let kcm_kubeconfig = root.join("kubeconfigs/kube-controller-manager.yaml");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server_url,
            &ca_pem,
            "system:kube-controller-manager",
            &kcm_token,
        )?;
        let scheduler_kubeconfig = root.join("kubeconfigs/kube-scheduler.yaml");
        write_kubeconfig(
            &scheduler_kubeconfig,
            &server_url,
            &ca_pem,
            "system:kube-scheduler",
            &scheduler_token,
        )?;
        let kwok_kubeconfig = root.join("kubeconfigs/kwok.yaml");
        write_kubeconfig(&kwok_kubeconfig, &server_url, &ca_pem, "kwok", &kwok_token)?;

        let spec = |name: &'static str, args: Vec<OsString>| Spec {
            name,
            program: bin_dir.join(name),
            args,
            log: root.join("logs").join(format!("{name}.log")),
            workdir: root.clone(),
        };
        let etcd = spec(
            ETCD,
            args([
                "--name=testenv".into(),
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_client_url}"),
                format!("--advertise-client-urls={etcd_client_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=testenv=http://127.0.0.1:{etcd_peer_port}"),
                // Test data is throwaway: fsync only costs time.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ]),
        );
        let audit_log = root.join("logs/audit.log");
        let mut apiserver_args = args([
            format!("--etcd-servers={etcd_client_url}"),
            format!("--cert-dir={}", root.join("pki").display()),
            format!("--tls-cert-file={}", pki.server_crt.display()),
            format!("--tls-private-key-file={}", pki.server_key.display()),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--token-auth-file={}", token_file.display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            // No API Priority and Fairness and generous in-flight limits: tests and
            // benchmarks must measure the operator, not the apiserver's throttling.
            "--enable-priority-and-fairness=false".into(),
            "--max-requests-inflight=3000".into(),
            "--max-mutating-requests-inflight=1000".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // The `kubernetes` Service's endpoints cannot hold a loopback address (the
            // reconciler would log an error every 10 s), and nothing runs in-cluster here.
            "--endpoint-reconciler-type=none".into(),
        ]);
        if let Some(policy) = &options.audit_policy {
            let policy_path = root.join("audit-policy.yaml");
            std::fs::write(&policy_path, policy)
                .map_err(|e| Error::io(format!("writing {}", policy_path.display()), e))?;
            apiserver_args.extend(
                [
                    format!("--audit-policy-file={}", policy_path.display()),
                    format!("--audit-log-path={}", audit_log.display()),
                    "--audit-log-format=json".into(),
                    "--audit-log-maxsize=0".into(),
                    // Batches keep auditing off the request path at benchmark rates.
                    "--audit-log-mode=batch".into(),
                    "--audit-log-batch-max-wait=1s".into(),
                    "--audit-log-batch-max-size=1000".into(),
                ]
                .map(OsString::from),
            );
        }
        apiserver_args.extend(options.apiserver_args.iter().map(OsString::from));
        let apiserver = spec(APISERVER, apiserver_args);
        let scheduler_config = root.join("kube-scheduler.yaml");
        std::fs::write(
            &scheduler_config,
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\n\
                 kind: KubeSchedulerConfiguration\n\
                 clientConnection:\n  kubeconfig: {}\n  qps: 200\n  burst: 400\n\
                 leaderElection:\n  leaderElect: false\n",
                scheduler_kubeconfig.display()
            ),
        )
        .map_err(|e| Error::io(format!("writing {}", scheduler_config.display()), e))?;
        let mut controller_manager_args = args([
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_crt.display()),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            // No serving endpoint: nothing scrapes it, and it saves a port.
            "--secure-port=0".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
        ]);
        controller_manager_args.extend(options.controller_manager_args.iter().map(OsString::from));
        let controller_manager = spec(CONTROLLER_MANAGER, controller_manager_args);
        let scheduler = spec(
            SCHEDULER,
            args([
                format!("--config={}", scheduler_config.display()),
                "--secure-port=0".into(),
            ]),
        );
        let kwok_stages = stages::prepare(&bin_dir, &root, options.node_status_heartbeat)?;
        let kwok = spec(
            KWOK,
            args([
                format!("--kubeconfig={}", kwok_kubeconfig.display()),
                format!("--config={}", kwok_stages.display()),
                // Only nodes made by `nodes::create_node` are fake; anything else is left alone.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!(
                    "--node-lease-duration-seconds={}",
                    options.node_lease_duration_seconds
                ),
                // Pod IPs; kept apart from the service range.
                "--cidr=10.244.0.0/16".into(),
            ]),
        );

        let mut plane = ControlPlane {
            dir: Some(dir),
            root,
            bin_dir,
            server_url,
            kubeconfig,
            ca_pem,
            etcd,
            apiserver,
            etcd_client_url,
            procs: Mutex::new(Vec::new()),
        };
        // From here on, dropping `plane` stops whatever was started. On failure the directory is
        // kept, so the complete logs can be read.
        if let Err(e) = plane.boot(&[controller_manager, scheduler, kwok]).await {
            let logs = plane.logs_tail(15);
            let dir = plane.keep_dir();
            return Err(Error::Startup {
                source: Box::new(e),
                dir,
                logs,
            });
        }
        Ok(plane)
    }

    /// One plane per test binary (process), started on first use and shared by all its tests.
    ///
    /// It is never dropped: its processes are killed by the kernel when the test process exits
    /// (see the crate docs) and its temp dir is removed by the next `start` on this machine.
    /// Panics with the reason and the components' log tails if the plane cannot start; later
    /// callers then panic with the same message instead of trying again.
    pub async fn shared() -> &'static ControlPlane {
        static SHARED: tokio::sync::OnceCell<Result<ControlPlane, String>> =
            tokio::sync::OnceCell::const_new();
        let result = SHARED
            .get_or_init(|| async {
                let started = Instant::now();
                let plane = ControlPlane::start()
                    .await
                    .map_err(|e| format!("the shared test control plane could not start: {e}"))?;
                tracing::info!(
                    elapsed = ?started.elapsed(),
                    dir = %plane.root.display(),
                    "shared test control plane is up"
                );
                Ok(plane)
            })
            .await;
        match result {
            Ok(plane) => plane,
            Err(message) => panic!("{message}"),
        }
    }

    /// Admin kubeconfig (user `admin`, group `system:masters`); self-contained.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where kube-apiserver writes audit events (JSON lines) when [`Options::audit_policy`] is set.
    pub fn audit_log_path(&self) -> PathBuf {
        self.root.join("logs/audit.log")
    }

    /// Compacts etcd's history up to its current revision (physically), so any watch or list
    /// asking for an older resourceVersion gets `410 Gone` from etcd. Returns that revision.
    pub async fn compact_etcd(&self) -> Result<i64, Error> {
        let range = etcd_post(
            &self.etcd_client_url,
            "/v3/kv/range",
            serde_json::json!({"key": "AA==", "limit": 1}),
        )
        .await?;
        let revision = range
            .get("header")
            .and_then(|h| h.get("revision"))
            .and_then(|r| {
                r.as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .or(r.as_i64())
            })
            .ok_or_else(|| Error::Command {
                what: "etcd range (reading the current revision)".into(),
                detail: range.to_string(),
            })?;
        etcd_post(
            &self.etcd_client_url,
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .await?;
        Ok(revision)
    }

    /// Process ids of the running components (name, pid), for resource accounting.
    pub fn component_pids(&self) -> Vec<(&'static str, u32)> {
        self.procs()
            .iter()
            .map(|r| (r.name, r.child.id()))
            .collect()
    }

    /// A new admin client. A kube `Client` belongs to the tokio runtime it was made in, and each
    /// `#[tokio::test]` has its own runtime, so this makes a fresh one on every call.
    /// Panics if the kubeconfig cannot be loaded (a broken harness, not a test condition).
    pub async fn client(&self) -> kube::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("cannot build a client for the test control plane: {e}"))
    }

    async fn try_client(&self) -> Result<kube::Client, Error> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Folder with the control-plane binaries (etcd, kube-*, kubectl, kwok).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The plane's private directory (logs/, pki/, etcd/, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`; add arguments and run it.
    /// Applies a CRD manifest (server-side, as a user would) and waits until `crd_name` is
    /// Established, i.e. served.
    pub fn apply_crd(&self, manifest: &Path, crd_name: &str) -> Result<(), Error> {
        let run = |what: &str, args: &[&std::ffi::OsStr]| -> Result<(), Error> {
            let out = self
                .kubectl()
                .args(args)
                .output()
                .map_err(|e| Error::io("running kubectl", e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::Command {
                    what: what.into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        run(
            "kubectl apply CRD",
            &[
                "apply".as_ref(),
                "--server-side".as_ref(),
                "-f".as_ref(),
                manifest.as_os_str(),
            ],
        )?;
        let target = format!("crd/{crd_name}");
        run(
            "waiting for the CRD to be established",
            &[
                "wait".as_ref(),
                "--for=condition=Established".as_ref(),
                "--timeout=60s".as_ref(),
                target.as_ref(),
            ],
        )
    }

    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The last `lines` lines of each component's log, for test failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in COMPONENTS {
            let path = self.root.join("logs").join(format!("{name}.log"));
            out.push_str(&format!(
                "===== {name} ({}) =====\n{}\n",
                path.display(),
                process::tail(&path, lines)
            ));
        }
        out
    }

    /// Creates a token for a ServiceAccount through the TokenRequest API and writes a kubeconfig
    /// that uses it, so tests can run the operator with exactly the RBAC it ships with.
    /// The token is valid for 24 hours.
    pub async fn kubeconfig_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.try_client().await?, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None, // the API server's own audience
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: None,
            }),
            ..Default::default()
        };
        let response = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        let token = response
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Command {
                what: format!("TokenRequest for ServiceAccount {namespace}/{name}"),
                detail: "the API server returned no token".into(),
            })?;
        let path = self
            .root
            .join("kubeconfigs")
            .join(format!("sa-{namespace}-{name}.yaml"));
        write_kubeconfig(
            &path,
            &self.server_url,
            &self.ca_pem,
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
        )?;
        Ok(path)
    }

    /// Stops kube-apiserver and etcd (SIGTERM, then SIGKILL after a grace period) and starts them
    /// again on the same ports with the same etcd data, returning once the API server is ready.
    /// Clients see connection errors meanwhile and watches are broken — that is the point: fault
    /// tests use it to check the operator recovers. It disrupts every user of the plane, so use it
    /// on a plane of your own, not on [`ControlPlane::shared`].
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        let mut stopped: Vec<Running> = {
            let mut procs = self.procs();
            let (taken, kept): (Vec<_>, Vec<_>) = procs
                .drain(..)
                .partition(|r| r.name == APISERVER || r.name == ETCD);
            *procs = kept;
            taken
        };
        // The API server first, so it does not spend its shutdown complaining about etcd.
        stopped.sort_by_key(|r| r.name != APISERVER);
        for r in stopped.iter_mut() {
            process::terminate_async(std::slice::from_mut(r), RESTART_GRACE).await;
        }
        self.start_storage_and_apiserver().await
    }

    /// Everything after the directory is prepared: etcd, kube-apiserver, then the rest.
    async fn boot(&self, others: &[Spec]) -> Result<(), Error> {
        self.start_storage_and_apiserver().await?;
        for spec in others {
            let running = process::spawn(spec)?;
            self.procs().push(running);
        }
        let client = self.try_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        self.wait_ready(
            "the controller-manager to create the default ServiceAccount",
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER_TIMEOUT,
            || async {
                match sas.get_opt("default").await {
                    Ok(Some(_)) => Ok(true),
                    Ok(None) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Makes `Drop` leave the directory in place; returns its path.
    fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.root.clone()
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        // A panic while holding the lock cannot leave the Vec inconsistent; keep going.
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts etcd, waits for `/health`, starts kube-apiserver, waits for `/readyz`.
    async fn start_storage_and_apiserver(&self) -> Result<(), Error> {
        let running = process::spawn(&self.etcd)?;
        self.procs().push(running);
        self.wait_ready("etcd to report healthy", ETCD, ETCD_TIMEOUT, || {
            etcd_healthy(&self.etcd_client_url)
        })
        .await?;

        let running = process::spawn(&self.apiserver)?;
        self.procs().push(running);
        let client = self.try_client().await?;
        self.wait_ready(
            "kube-apiserver /readyz",
            APISERVER,
            APISERVER_TIMEOUT,
            || async {
                let request = ::http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                match client.request_text(request).await {
                    Ok(body) => Ok(body.trim() == "ok"),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Polls `probe` until it says ready, failing fast (with the log) if any component exits.
    async fn wait_ready<F, Fut>(
        &self,
        what: &str,
        component: &'static str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => "not ready".to_owned(),
                Ok(Err(e)) => e,
                Err(_) => "probe timed out after 5s".to_owned(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.into(),
                    component,
                    timeout,
                    last,
                    log_tail: process::tail(
                        &self.root.join("logs").join(format!("{component}.log")),
                        40,
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if any started component has exited.
    fn check_alive(&self) -> Result<(), Error> {
        let mut procs = self.procs();
        for r in procs.iter_mut() {
            if let Some(status) = process::exited(r) {
                return Err(Error::Exited {
                    component: r.name,
                    status: status.to_string(),
                    log_tail: process::tail(&r.log, 40),
                });
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut procs = std::mem::take(&mut *self.procs());
        // Reverse start order: clients of the API server first, etcd last.
        procs.reverse();
        process::terminate_blocking(&mut procs, DROP_GRACE);
        if self.dir.is_some() && std::env::var_os("GPUPOOL_TESTENV_KEEP").is_some_and(|v| v != "0")
        {
            let kept = self.keep_dir();
            eprintln!("testenv: kept control plane dir {}", kept.display());
        }
    }
}

fn args<const N: usize>(list: [String; N]) -> Vec<OsString> {
    list.into_iter().map(OsString::from).collect()
}

/// Builds a client from a kubeconfig file (used for admin and ServiceAccount kubeconfigs).
async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Writes a self-contained kubeconfig (CA inline) with a bearer token.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &[u8],
    user: &str,
    token: &str,
) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "gpupool-testenv",
            "cluster": {
                "server": server,
                "certificate-authority-data": pki::base64(ca_pem),
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": "gpupool-testenv",
            "context": { "cluster": "gpupool-testenv", "user": user },
        }],
        "current-context": "gpupool-testenv",
    });
    let text = yaml_serde::to_string(&doc).map_err(|e| Error::Config {
        what: format!("serializing kubeconfig {}", path.display()),
        detail: e.to_string(),
    })?;
    process::write_private(path, text.as_bytes())
}

/// JSON POST to etcd's gRPC gateway; returns the parsed response body.
async fn etcd_post(
    client_url: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let url = format!("{client_url}{path}");
    let fail = |detail: String| Error::Command {
        what: format!("etcd POST {path}"),
        detail,
    };
    match http::post_json(&url, &body).await? {
        (200, payload) => {
            serde_json::from_str(&payload).map_err(|e| fail(format!("{e}: {payload}")))
        }
        (status, payload) => Err(fail(format!("HTTP {status}: {payload}"))),
    }
}

/// `GET /health` against etcd's client URL.
async fn etcd_healthy(client_url: &str) -> Result<bool, String> {
    let (_, body) = http::get(&format!("{client_url}/health"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.contains("\"health\":\"true\""))
}

/// A loopback port nobody listens on right now. Ports handed out earlier in this process are
/// never handed out again, so planes and operators started concurrently cannot collide with each
/// other. (Another process may still take it before it is used: only use it on loopback, where
/// that means a test machine running something else at the same time.)
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading the address of a bound socket", e))?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Command {
        what: "finding a free loopback port".into(),
        detail: "no port not handed out before in 100 tries".into(),
    })
}

/// Finds the binaries: `$GPUPOOL_CONTROL_PLANE_BIN`, else the last stdout line of
/// `hack/build-control-plane.sh` (cached for the process).
fn bin_dir() -> Result<PathBuf, Error> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| locate_binaries().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Binaries)
}

fn locate_binaries() -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("GPUPOOL_CONTROL_PLANE_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build-control-plane.sh");
            // stderr is inherited: a cold build takes many minutes and prints progress there.
            let out = std::process::Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
            if !out.status.success() {
                return Err(Error::Command {
                    what: script.display().to_string(),
                    detail: format!("{} (see its messages on stderr above)", out.status),
                });
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
            PathBuf::from(last.ok_or_else(|| Error::Command {
                what: script.display().to_string(),
                detail: "printed nothing on stdout (expected the bin folder)".into(),
            })?)
        }
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Binaries(format!(
            "{} lacks {missing:?} (set GPUPOOL_CONTROL_PLANE_BIN or run hack/build-control-plane.sh)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Removes `plane-<pid>-*` dirs left by processes that no longer exist (the shared plane is never
/// dropped, and a killed test process cannot clean up). etcd preallocates 64 MB of WAL per plane,
/// so leftovers add up.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("plane-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
