//! Free loopback ports for the plane's components and for whatever tests run next to it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::Error;

/// The lowest port the kernel hands out on its own (to `bind(0)` and to outgoing connections):
/// ports below it are taken only by explicit binds.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port nobody listens on right now, for a process that binds it a moment later.
///
/// It comes from below the kernel's ephemeral range: a port from `bind(0)` could be taken
/// between this check and its use by any outgoing connection on the machine (a kubectl, an
/// operator dialling the API server) or by another `bind(0)`; these only by another explicit
/// bind of the same port. Ports handed out earlier in this process are never handed out again,
/// and each process starts at its own random place in the range, so planes and operators
/// started together (in one test binary, or in several) do not collide.
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let low: u16 = 10_000;
    let high = ephemeral_start().max(low + 1000);
    let span = high - low;
    let mut seed = [0u8; 2];
    getrandom::fill(&mut seed).map_err(|e| Error::Command {
        what: "picking a random port".into(),
        detail: e.to_string(),
    })?;
    let start = u16::from_le_bytes(seed) % span;
    for i in 0..span {
        let port = low + (start + i) % span;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(Error::Command {
        what: "finding a free loopback port".into(),
        detail: format!("every port from {low} to {high} is taken or was handed out"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_never_twice() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        for port in [a, b] {
            assert!(
                port >= 10_000 && port < ephemeral_start().max(11_000),
                "{port}"
            );
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("free to bind");
        }
    }
}
