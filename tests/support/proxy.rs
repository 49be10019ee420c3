//! A TCP proxy between a client under test (the operator) and the API server, to make the
//! network misbehave the way an overloaded or partitioned control plane does: traffic passes,
//! stalls (bytes held, connections kept open, as a hung load balancer does), or every open
//! connection is cut at once. TLS passes through untouched: the operator still talks to the real
//! API server, with its real certificate, answers and errors.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Pass,
    /// Nothing is forwarded (in either direction) until the flow passes again; connections stay
    /// open and new ones are accepted.
    Stall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    flow: Flow,
    /// Connections opened before the latest cut are closed.
    cuts: u64,
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct TcpProxy {
    port: u16,
    state: Arc<watch::Sender<State>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a loopback port for the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(watch::Sender::new(State {
            flow: Flow::Pass,
            cuts: 0,
        }));
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = accepting.subscribe();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, state).await;
                    }
                });
            }
        });
        TcpProxy {
            port,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, flow: Flow) {
        self.state.send_modify(|s| s.flow = flow);
    }

    /// Closes every connection open now (as a restarted load balancer does); new ones pass.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cuts += 1);
    }

    /// Writes a copy of `kubeconfig` whose server is this proxy (same scheme and certificate
    /// checks: the API server's certificate names 127.0.0.1, whatever the port).
    pub fn kubeconfig(&self, kubeconfig: &Path, to: &Path) {
        let text = std::fs::read_to_string(kubeconfig).expect("the kubeconfig to copy");
        let mut doc: serde_json::Value = yaml_serde::from_str(&text).expect("a YAML kubeconfig");
        for cluster in doc["clusters"].as_array_mut().into_iter().flatten() {
            cluster["cluster"]["server"] = format!("https://127.0.0.1:{}", self.port).into();
        }
        std::fs::write(to, yaml_serde::to_string(&doc).unwrap()).expect("the proxied kubeconfig");
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every relay ends at the next cut.
        self.cut();
    }
}

/// Copies both ways while the flow passes, holds while it stalls, ends at a cut or a close.
async fn relay(client: TcpStream, server: TcpStream, mut state: watch::Receiver<State>) {
    let born = state.borrow().cuts;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        // Reads wait while stalled: bytes stay in the kernel's buffers, unforwarded.
        let now = *state.borrow_and_update();
        if now.cuts != born {
            return;
        }
        if now.flow == Flow::Stall {
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}
