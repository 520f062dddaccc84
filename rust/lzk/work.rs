// SPDX-License-Identifier: GPL-2.0
//! Delayed work on the system workqueue (include/linux/workqueue.h), for periodic jobs
//! that may sleep.

use core::pin::Pin;
use kernel::bindings;
use kernel::prelude::*;

/// A periodic or one-shot job. Runs in process context on the system workqueue.
pub trait WorkHandler: Send + Sync + 'static {
    /// Do the job; return `Some(ms)` to run again after `ms` milliseconds.
    fn run(&self) -> Option<u32>;
}

#[repr(C)]
struct Inner<T: WorkHandler> {
    dwork: bindings::delayed_work,
    handler: T,
}

/// A delayed work item owning its handler.
///
/// # Invariants
///
/// `inner.dwork` was initialized with `INIT_DELAYED_WORK` to run `trampoline::<T>`,
/// lives in pinned memory, and is cancelled synchronously in `Drop` before the memory
/// is freed, so the work never runs on freed memory.
pub struct DelayedWork<T: WorkHandler> {
    inner: Pin<KBox<Inner<T>>>,
}

// SAFETY: The work item is only touched through the workqueue API, which is
// thread-safe; the handler is `Send`.
unsafe impl<T: WorkHandler> Send for DelayedWork<T> {}
// SAFETY: As above; the handler is `Sync`.
unsafe impl<T: WorkHandler> Sync for DelayedWork<T> {}

impl<T: WorkHandler> DelayedWork<T> {
    /// Create an idle work item.
    pub fn new(handler: T) -> Result<Self> {
        let mut inner = KBox::pin(
            Inner {
                // SAFETY: Zeroed memory is initialized by `INIT_DELAYED_WORK` below
                // before any use.
                dwork: unsafe { core::mem::zeroed() },
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: Initialization in place of the pinned work item.
        unsafe {
            let i = inner.as_mut().get_unchecked_mut();
            bindings::lz_init_delayed_work(&mut i.dwork, Some(trampoline::<T>));
        }
        Ok(DelayedWork { inner })
    }

    /// Run after `ms` milliseconds (or now for 0); a pending run is left as it is.
    pub fn schedule(&self, ms: u32) {
        // SAFETY: The work item is initialized and pinned (type invariant); queueing
        // an already pending item is a no-op.
        unsafe {
            let j = bindings::msecs_to_jiffies(ms);
            bindings::queue_delayed_work(bindings::lz_system_wq(), &self.inner.dwork as *const _ as *mut _, j);
        }
    }

    /// The handler.
    pub fn handler(&self) -> &T {
        &self.inner.handler
    }
}

impl<T: WorkHandler> Drop for DelayedWork<T> {
    fn drop(&mut self) {
        // SAFETY: Cancels a pending run and waits for a running one, which may re-queue
        // itself: `cancel_delayed_work_sync` handles self-requeueing work.
        unsafe { bindings::cancel_delayed_work_sync(&self.inner.dwork as *const _ as *mut _) };
    }
}

unsafe extern "C" fn trampoline<T: WorkHandler>(work: *mut bindings::work_struct) {
    // SAFETY: `work` is the `work` field of the `delayed_work` that is the first field
    // of a `repr(C)` `Inner<T>` (type invariant), alive until `Drop` cancels it.
    let inner = unsafe { &*(work as *const Inner<T>) };
    if let Some(ms) = inner.handler.run() {
        // SAFETY: As in `schedule`.
        unsafe {
            let j = bindings::msecs_to_jiffies(ms);
            bindings::queue_delayed_work(bindings::lz_system_wq(), &inner.dwork as *const _ as *mut _, j);
        }
    }
}
