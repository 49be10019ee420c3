//! The five components of a plane and their command lines, decided before anything starts (and
//! kept, so `restart_apiserver` can run the same commands again).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::kubeconfig::StaticUsers;
use crate::pki::Pki;
use crate::process::Spec;
use crate::{Error, Options, etcd, stages};

/// Names of the components, in start order; also their binaries' and log files' names.
pub(crate) const ETCD: &str = "etcd";
pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub(crate) const SCHEDULER: &str = "kube-scheduler";
pub(crate) const KWOK: &str = "kwok";
pub(crate) const COMPONENTS: [&str; 5] = [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KWOK];

/// Where a plane's files are and which loopback ports it listens on.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub api_port: u16,
    pub etcd_client_url: String,
    pub etcd_peer_port: u16,
}

impl Layout {
    /// A layout in `root` with freshly allocated ports.
    pub fn new(root: PathBuf, bin_dir: PathBuf) -> Result<Layout, Error> {
        Ok(Layout {
            root,
            bin_dir,
            api_port: crate::free_port()?,
            etcd_client_url: format!("http://127.0.0.1:{}", crate::free_port()?),
            etcd_peer_port: crate::free_port()?,
        })
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn log(&self, component: &str) -> PathBuf {
        self.root.join("logs").join(format!("{component}.log"))
    }

    pub fn audit_log(&self) -> PathBuf {
        self.log("audit")
    }

    fn spec(&self, name: &'static str, args: Vec<OsString>) -> Spec {
        Spec {
            name,
            program: self.bin_dir.join(name),
            args,
            log: self.log(name),
            workdir: self.root.clone(),
        }
    }
}

/// Every component's command line.
#[derive(Debug, Clone)]
pub(crate) struct Specs {
    pub etcd: Spec,
    pub apiserver: Spec,
    /// Controller-manager, scheduler and kwok: started after the API server is ready.
    pub clients: Vec<Spec>,
}

/// Writes the components' configuration files and returns their command lines.
pub(crate) fn specs(
    layout: &Layout,
    pki: &Pki,
    users: &StaticUsers,
    options: &Options,
) -> Result<Specs, Error> {
    let etcd_args = etcd::args(
        &layout.root.join("etcd"),
        &layout.etcd_client_url,
        layout.etcd_peer_port,
    );
    let mut controller_manager_args = controller_manager_args(pki, users);
    controller_manager_args.extend(options.controller_manager_args.iter().map(OsString::from));
    Ok(Specs {
        etcd: layout.spec(ETCD, etcd_args),
        apiserver: layout.spec(APISERVER, apiserver_args(layout, pki, users, options)?),
        clients: vec![
            layout.spec(CONTROLLER_MANAGER, controller_manager_args),
            layout.spec(SCHEDULER, scheduler_args(layout, users)?),
            layout.spec(KWOK, kwok_args(layout, users, options)?),
        ],
    })
}

fn apiserver_args(
    layout: &Layout,
    pki: &Pki,
    users: &StaticUsers,
    options: &Options,
) -> Result<Vec<OsString>, Error> {
    let mut args = strings([
        format!("--etcd-servers={}", layout.etcd_client_url),
        format!("--cert-dir={}", layout.root.join("pki").display()),
        format!("--tls-cert-file={}", pki.server_crt.display()),
        format!("--tls-private-key-file={}", pki.server_key.display()),
        format!("--secure-port={}", layout.api_port),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--token-auth-file={}", users.token_file.display()),
        // Client certificates from the plane's CA (a real node's kubelet is system:node:<name>,
        // see RealNode), and the API server's own towards kubelets (logs, exec), dialled at their
        // InternalIP (their hostnames need not resolve).
        format!("--client-ca-file={}", pki.ca_crt.display()),
        format!(
            "--kubelet-client-certificate={}",
            pki.kubelet_client_crt.display()
        ),
        format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        // As kubeadm and AKS: a kubelet may only modify its own Node and its pods' status. Only
        // requests of system:nodes users (a real node's kubelet) are affected.
        "--enable-admission-plugins=NodeRestriction".into(),
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
        let policy_path = layout.root.join("audit-policy.yaml");
        write(&policy_path, policy)?;
        args.extend(strings([
            format!("--audit-policy-file={}", policy_path.display()),
            format!("--audit-log-path={}", layout.audit_log().display()),
            "--audit-log-format=json".into(),
            "--audit-log-maxsize=0".into(),
            // Batches keep auditing off the request path at benchmark rates.
            "--audit-log-mode=batch".into(),
            "--audit-log-batch-max-wait=1s".into(),
            "--audit-log-batch-max-size=1000".into(),
            // The batch backend drops events once its buffer (10,000 by default) is full, which
            // a loaded machine can reach: counts read from the log must be complete.
            "--audit-log-batch-buffer-size=1000000".into(),
        ]));
    }
    // An extra flag replaces a default of the same name (list flags such as
    // `--authorization-mode` would otherwise be given twice, which the API server refuses).
    let name = |arg: &str| arg.split('=').next().unwrap_or_default().to_string();
    let replaced: Vec<String> = options.apiserver_args.iter().map(|a| name(a)).collect();
    args.retain(|a| !replaced.contains(&name(&a.to_string_lossy())));
    args.extend(options.apiserver_args.iter().map(OsString::from));
    Ok(args)
}

fn controller_manager_args(pki: &Pki, users: &StaticUsers) -> Vec<OsString> {
    strings([
        format!("--kubeconfig={}", users.controller_manager.display()),
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
    ])
}

fn scheduler_args(layout: &Layout, users: &StaticUsers) -> Result<Vec<OsString>, Error> {
    let config = layout.root.join("kube-scheduler.yaml");
    write(
        &config,
        &format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\n\
             kind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {}\n  qps: 200\n  burst: 400\n\
             leaderElection:\n  leaderElect: false\n",
            users.scheduler.display()
        ),
    )?;
    Ok(strings([
        format!("--config={}", config.display()),
        "--secure-port=0".into(),
    ]))
}

fn kwok_args(
    layout: &Layout,
    users: &StaticUsers,
    options: &Options,
) -> Result<Vec<OsString>, Error> {
    let stages = stages::prepare(&layout.bin_dir, &layout.root, options)?;
    Ok(strings([
        format!("--kubeconfig={}", users.kwok.display()),
        format!("--config={}", stages.display()),
        // Only nodes made by `nodes::create_node` are fake; anything else is left alone.
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
        format!(
            "--node-lease-duration-seconds={}",
            options.node_lease_duration_seconds
        ),
        // Pod IPs; kept apart from the service range.
        "--cidr=10.244.0.0/16".into(),
    ]))
}

fn strings<const N: usize>(list: [String; N]) -> Vec<OsString> {
    list.into_iter().map(OsString::from).collect()
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
