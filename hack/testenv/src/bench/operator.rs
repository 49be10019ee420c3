//! The operator under measurement: its own process, with its metrics endpoint on a free port.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{ChildProcess, ControlPlane, Error, http};

pub(super) struct Operator {
    pub process: ChildProcess,
    metrics_url: String,
    pub started: Instant,
}

impl Operator {
    /// Starts `binary run` as the identity of `kubeconfig`, logging to the plane's logs/`name`.log.
    pub fn start(
        plane: &ControlPlane,
        binary: &Path,
        kubeconfig: &Path,
        name: &str,
    ) -> Result<Operator, Error> {
        let metrics_addr = format!("127.0.0.1:{}", crate::free_port()?);
        let mut cmd = std::process::Command::new(binary);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("GPUPOOL_LOG", "info")
            .args(["run", "--metrics-addr", &metrics_addr]);
        let started = Instant::now();
        let log = plane.dir().join("logs").join(format!("{name}.log"));
        Ok(Operator {
            process: ChildProcess::spawn(name, cmd, &log)?,
            metrics_url: format!("http://{metrics_addr}"),
            started,
        })
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop(mut self) {
        self.process.stop(Duration::from_secs(5)).await;
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Time from the start until `/readyz` says the caches are synced.
    pub async fn wait_synced(&mut self, timeout: Duration) -> Result<Duration, Error> {
        let deadline = Instant::now() + timeout;
        let readyz = format!("{}/readyz", self.metrics_url);
        loop {
            if let Some(status) = self.process.try_wait() {
                return Err(Error::Exited {
                    component: "gpupool-operator",
                    status: status.to_string(),
                    log_tail: self.process.log_tail(30),
                });
            }
            if let Ok((200, _)) = http::get(&readyz).await {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(Error::Deadline {
                    what: "the operator's caches to sync".into(),
                    timeout,
                    detail: format!("; its log ends with:\n{}", self.process.log_tail(30)),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `controller_runtime_reconcile_total` (every result) and
    /// `controller_runtime_reconcile_time_seconds_sum`, from `/metrics`.
    pub async fn reconcile_metrics(&self) -> Option<(f64, f64)> {
        let (_, body) = http::get(&format!("{}/metrics", self.metrics_url))
            .await
            .ok()?;
        let sum = |prefix: &str| -> f64 {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Some((
            sum("controller_runtime_reconcile_total"),
            sum("controller_runtime_reconcile_time_seconds_sum"),
        ))
    }
}

/// The version the operator binary reports (`gpupool-operator --version`: "name X.Y.Z").
pub(super) fn version(binary: &Path) -> Result<String, Error> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(format!("running {} --version", binary.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().last() {
        Some(version) if out.status.success() => Ok(version.to_owned()),
        _ => Err(Error::Command {
            what: format!("{} --version", binary.display()),
            detail: format!("{}: {text}", out.status),
        }),
    }
}
