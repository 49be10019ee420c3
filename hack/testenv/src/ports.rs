//! Free loopback ports for the plane's components and for whatever tests run next to it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::Error;

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
