//! Heap accounting: how many bytes of Skiff objects are alive on this thread.
//!
//! Every heap object (string, bytes, list, map, range, closure, cell) holds a [`Charge`] for
//! its approximate size; creating it adds to the thread's live-byte count and dropping it
//! subtracts. An execution runs with a byte limit installed ([`set_limit`]); the interpreter
//! polls [`over_limit`] after allocating instructions and builtins, and builtins that would
//! allocate a size computed from their arguments call [`reserve`] first, so a single request
//! for an absurd size is refused before any allocation happens.
//!
//! Invariants:
//! - The count is per thread: executions are pinned to the thread that created them
//!   (values are `Rc`-based and not `Send`), so no synchronisation is needed.
//! - Live bytes never exceed the limit by more than one object's worth before the
//!   interpreter notices, and no single builtin allocation exceeds it at all.

use std::cell::Cell;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Bytes charged for an object; released when dropped.
#[derive(Debug)]
pub struct Charge(Cell<usize>);

impl Charge {
    /// Charges `bytes` to this thread's live count.
    pub fn new(bytes: usize) -> Charge {
        LIVE.with(|l| l.set(l.get().saturating_add(bytes)));
        Charge(Cell::new(bytes))
    }

    /// A charge of nothing (the live count is left alone); [`Charge::resize`] charges it.
    pub const fn none() -> Charge {
        Charge(Cell::new(0))
    }

    /// Re-sizes the charge (a list or map grew or shrank).
    pub fn resize(&self, bytes: usize) {
        let old = self.0.replace(bytes);
        LIVE.with(|l| l.set(l.get().saturating_sub(old).saturating_add(bytes)));
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let bytes = self.0.get();
        LIVE.with(|l| l.set(l.get().saturating_sub(bytes)));
    }
}

/// Live bytes of Skiff objects on this thread.
pub fn live() -> usize {
    LIVE.with(Cell::get)
}

/// Installs the byte limit checked by [`over_limit`] and [`reserve`]; returns the old one.
pub fn set_limit(limit: usize) -> usize {
    LIMIT.with(|l| l.replace(limit))
}

/// Whether live bytes exceed the installed limit.
pub fn over_limit() -> bool {
    live() > LIMIT.with(Cell::get)
}

/// Refuses an allocation of `bytes` more that would exceed the limit.
pub fn reserve(bytes: usize) -> Result<(), MemoryLimitExceeded> {
    let limit = LIMIT.with(Cell::get);
    let wanted = live().saturating_add(bytes);
    if wanted > limit {
        Err(MemoryLimitExceeded { wanted, limit })
    } else {
        Ok(())
    }
}

/// An allocation would pass the execution's heap limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("heap limit of {limit} bytes exceeded ({wanted} bytes wanted)")]
pub struct MemoryLimitExceeded {
    pub wanted: usize,
    pub limit: usize,
}
