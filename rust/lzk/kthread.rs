// SPDX-License-Identifier: GPL-2.0
//! Kernel threads (include/linux/kthread.h) for loops that block, such as a socket
//! server.

use core::ffi::{c_int, c_void, CStr};
use kernel::bindings;
use kernel::prelude::*;

/// The body of a kernel thread.
pub trait ThreadBody: Send + Sync + 'static {
    /// Run until [`should_stop`] returns true. The body must not return earlier: the
    /// owner's `kthread_stop` relies on the thread still existing.
    fn run(&self);

    /// Called before the thread is told to stop, to wake it from a blocking call
    /// (for example by shutting a socket down).
    fn wake(&self) {}
}

/// True once the owner asked the current kernel thread to stop.
pub fn should_stop() -> bool {
    // SAFETY: Called from a kthread body, as `kthread_should_stop` requires.
    unsafe { bindings::kthread_should_stop() }
}

/// Sleep for `ms` milliseconds (process context).
pub fn sleep_ms(ms: u32) {
    // SAFETY: `msleep` only requires process context, which kthread bodies have.
    unsafe { bindings::msleep(ms) };
}

/// A running kernel thread that owns its body.
///
/// # Invariants
///
/// `task` is a thread started on `trampoline::<T>` with `body` as its argument; it
/// runs until `kthread_stop`, which `Drop` calls before freeing `body`.
pub struct Thread<T: ThreadBody> {
    task: *mut bindings::task_struct,
    body: KBox<T>,
}

// SAFETY: The task pointer is only used for `kthread_stop`, callable from any thread.
unsafe impl<T: ThreadBody> Send for Thread<T> {}
// SAFETY: Shared access only reads the `Sync` body.
unsafe impl<T: ThreadBody> Sync for Thread<T> {}

impl<T: ThreadBody> Thread<T> {
    /// Start a thread named `name` running `body`.
    pub fn spawn(name: &'static CStr, body: T) -> Result<Self> {
        let body = KBox::new(body, GFP_KERNEL)?;
        let arg = &*body as *const T as *mut c_void;
        // SAFETY: `name` is a static NUL-terminated string used as a plain "%s"-free
        // format; `arg` points to the boxed body, which outlives the thread (see Drop).
        let task = unsafe {
            bindings::kthread_create_on_node(Some(trampoline::<T>), arg, bindings::NUMA_NO_NODE, c"%s".as_ptr().cast(), name.as_ptr())
        };
        // SAFETY: `task` is either a valid task or an error pointer.
        if unsafe { kernel::bindings::IS_ERR(task as *const c_void) } {
            // SAFETY: `task` is an error pointer, as just checked.
            return Err(Error::from_errno(unsafe { bindings::PTR_ERR(task as *const c_void) } as i32));
        }
        // SAFETY: A freshly created kthread waits to be woken.
        unsafe { bindings::wake_up_process(task) };
        Ok(Thread { task, body })
    }

    /// The body.
    pub fn body(&self) -> &T {
        &self.body
    }
}

impl<T: ThreadBody> Drop for Thread<T> {
    fn drop(&mut self) {
        self.body.wake();
        // SAFETY: The thread is alive until stopped (type invariant); `kthread_stop`
        // waits for it to return, after which `body` is no longer used.
        unsafe { bindings::kthread_stop(self.task) };
    }
}

unsafe extern "C" fn trampoline<T: ThreadBody>(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the boxed body, alive until `kthread_stop` returns.
    let body = unsafe { &*(arg as *const T) };
    body.run();
    // Never return before being asked to (see `ThreadBody::run`).
    while !should_stop() {
        sleep_ms(20);
    }
    0
}
