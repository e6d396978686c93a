//! A waker that remembers it was woken: for a source the driver task polls only after a
//! wake-up of its own.
//!
//! A task's wake-up does not say which of its sources woke it. Polling every source on every
//! wake-up is wasteful when polling one costs something beyond its own state — polling a
//! quinn stream or accept future takes the connection's lock, which quinn's connection task
//! holds while it handles packets — so such a source is polled with a [`Due`] waker instead,
//! and only while [`Due::take`] says it may have something.
//!
//! Invariant: a source polled with this waker is polled again after every wake-up it gives
//! (the flag is set before the task is woken, and cleared only by the poll that follows),
//! and after anything else that may have made it ready without a wake-up (whoever does that
//! calls [`Due::mark`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// The flag, and the driver task's waker to pass wake-ups on to.
pub(super) struct Due {
    due: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Due {
    /// A flag, set or not at first; until [`Due::set_task`], a wake-up only sets it.
    pub fn new(due: bool) -> Arc<Due> {
        Arc::new(Due {
            due: AtomicBool::new(due),
            task: Mutex::new(None),
        })
    }

    /// The task to wake from now on.
    pub fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        *task = Some(waker.clone());
    }

    /// Whether the source may have something, clearing the flag: the caller polls it now.
    pub fn take(&self) -> bool {
        self.due.swap(false, Ordering::AcqRel)
    }

    /// Whether the source may have something, leaving the flag as it is.
    pub fn is_due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    /// The source may have something without having woken (it was given new work, or its
    /// poll stopped before it was done): poll it next time.
    pub fn mark(&self) {
        self.due.store(true, Ordering::Release);
    }
}

impl Wake for Due {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = &*task {
            waker.wake_by_ref();
        }
    }
}
