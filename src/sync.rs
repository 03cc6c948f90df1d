//! The one way wschat takes a std mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking a poisoned one as it is. Every wschat lock is held only for work that
/// completes each change before anything can panic (the only panic left is an allocation
/// failure, which aborts), so what a panicking thread leaves behind is still consistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
