//! Locks on plain data shared between tasks.

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock only means a panic elsewhere; the data is plain and still consistent.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
