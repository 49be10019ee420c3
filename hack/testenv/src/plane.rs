//! [`ControlPlane`]: starting, driving and stopping one private control plane.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::components::{self, APISERVER, COMPONENTS, CONTROLLER_MANAGER, ETCD, Layout};
use crate::process::{self, Running, Spec};
use crate::{Error, NODE_STATUS_HEARTBEAT_MS, binaries, etcd, kubeconfig, pki};

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
    /// as JSON lines. None: no auditing. Default: the requests of ServiceAccounts in
    /// [`crate::audit::AUDITED_NAMESPACE`] (an operator run as one of them).
    pub audit_policy: Option<String>,
    /// Extra kube-apiserver flags (e.g. `--watch-cache=false`), appended last so they win.
    pub apiserver_args: Vec<String>,
    /// How long a deleted device-plugin pod (label `name=nvidia-device-plugin-ds`) stays
    /// Terminating before kwok removes it, as a real plugin's shutdown takes a moment; every other
    /// pod goes at once. Default 3 s.
    pub plugin_pod_termination: Duration,
    /// Extra kube-controller-manager flags (e.g. `--node-monitor-grace-period=5m` when node
    /// leases are renewed slowly at scale), appended last.
    pub controller_manager_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_status_heartbeat: Duration::from_millis(NODE_STATUS_HEARTBEAT_MS),
            node_lease_duration_seconds: 40,
            audit_policy: Some(crate::audit::default_policy()),
            apiserver_args: Vec::new(),
            plugin_pod_termination: Duration::from_secs(3),
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
        let bin_dir = binaries::bin_dir()?;
        let dir = private_dir()?;
        let layout = Layout::new(dir.path().to_path_buf(), bin_dir)?;
        let pki = pki::generate(&layout.root.join("pki"))?;
        let server_url = layout.server_url();
        let users = kubeconfig::static_users(&layout.root, &server_url, &pki.ca_pem)?;
        let specs = components::specs(&layout, &pki, &users, &options)?;

        let mut plane = ControlPlane {
            dir: Some(dir),
            root: layout.root,
            bin_dir: layout.bin_dir,
            server_url,
            kubeconfig: users.admin,
            ca_pem: pki.ca_pem,
            etcd: specs.etcd,
            apiserver: specs.apiserver,
            etcd_client_url: layout.etcd_client_url,
            procs: Mutex::new(Vec::new()),
        };
        // From here on, dropping `plane` stops whatever was started. On failure the directory is
        // kept, so the complete logs can be read.
        if let Err(e) = plane.boot(&specs.clients).await {
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
        static SHARED: tokio::sync::OnceCell<Result<ControlPlane, Error>> =
            tokio::sync::OnceCell::const_new();
        let result = SHARED
            .get_or_init(|| async {
                let started = Instant::now();
                let plane = ControlPlane::start().await?;
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
            Err(e) => panic!("the shared test control plane could not start: {e}"),
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
        etcd::compact(&self.etcd_client_url).await
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
        kubeconfig::client(&self.kubeconfig).await
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
        kubeconfig::write(
            &path,
            &self.server_url,
            &self.ca_pem,
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
        )?;
        Ok(path)
    }

    /// Writes a kubeconfig for user `user` in group `group` that authenticates with a client
    /// certificate from the plane's CA (the API server trusts it through `--client-ca-file`):
    /// the identity a real kubelet needs, `system:node:<name>` in `system:nodes`, which the Node
    /// authorizer keys on (a static token cannot be added once the API server runs).
    pub fn kubeconfig_for_certificate(&self, user: &str, group: &str) -> Result<PathBuf, Error> {
        let (cert, key) = pki::client_certificate(&self.root.join("pki"), user, group)?;
        let path = self
            .root
            .join("kubeconfigs")
            .join(format!("cert-{}.yaml", user.replace(':', "-")));
        kubeconfig::write_with_certificate(
            &path,
            &self.server_url,
            &self.ca_pem,
            user,
            &cert,
            &key,
        )?;
        Ok(path)
    }

    /// The plane's CA certificate (PEM file): what its API server's serving certificate and every
    /// client certificate it accepts are signed by.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("pki/ca.crt")
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
            || async { Ok(sas.get_opt("default").await?.is_some()) },
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
            etcd::healthy(&self.etcd_client_url)
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
                    .map_err(|e| Error::Http {
                        url: "/readyz".into(),
                        detail: e.to_string(),
                    })?;
                Ok(client.request_text(request).await?.trim() == "ok")
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
        Fut: Future<Output = Result<bool, Error>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => "not ready".to_owned(),
                Ok(Err(e)) => e.to_string(),
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

/// A fresh directory for one plane under `$TMPDIR/gpupool-testenv`, with its `logs`, `pki` and
/// `kubeconfigs` folders, after removing what planes of dead processes left there.
fn private_dir() -> Result<tempfile::TempDir, Error> {
    let base = std::env::temp_dir().join("gpupool-testenv");
    std::fs::create_dir_all(&base)
        .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
    remove_stale_dirs(&base);
    let dir = tempfile::Builder::new()
        .prefix(&format!("plane-{}-", std::process::id()))
        .tempdir_in(&base)
        .map_err(|e| Error::io(format!("creating a temp dir in {}", base.display()), e))?;
    for sub in ["logs", "pki", "kubeconfigs"] {
        let path = dir.path().join(sub);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
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
