//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

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
    #[error("timed out after {timeout:?} waiting for {what}{detail}")]
    Deadline {
        what: String,
        timeout: Duration,
        /// Empty, or a newline and what was seen last (a log tail, a last observation).
        detail: String,
    },
    #[error("interrupted while {0}")]
    Interrupted(&'static str),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
