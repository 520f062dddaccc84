// SPDX-License-Identifier: GPL-2.0
//! The system's processes, for remote healing: a walk over every live thread group
//! leader (zombies left out) under RCU, and SIGKILL for one found in the walk.

use core::ffi::c_void;
use core::marker::PhantomData;
use kernel::bindings;
use kernel::prelude::*;

/// One process, as the walk reports it.
///
/// # Invariants
///
/// `task` is the process's task, valid for `'a`: the duration of one callback of
/// the walk, under the walk's RCU read lock.
pub struct Process<'a> {
    pub pid: i32,
    pub uid: u32,
    /// Boot-relative start time: with the pid, names one process.
    pub start_ns: u64,
    pub rss_pages: u64,
    /// NUL-padded command name.
    pub comm: [u8; 16],
    pub kthread: bool,
    task: *mut c_void,
    _walk: PhantomData<&'a ()>,
}

impl Process<'_> {
    /// Send SIGKILL.
    pub fn kill(&self) -> Result {
        // SAFETY: `task` is valid during the callback (type invariant); sending a
        // signal does not sleep, as the RCU read side requires.
        let r = unsafe { bindings::lz_kill_task(self.task) };
        if r < 0 {
            return Err(Error::from_errno(r));
        }
        Ok(())
    }
}

unsafe extern "C" fn trampoline<F: FnMut(&Process<'_>)>(ctx: *mut c_void, p: *const bindings::lz_proc_info) {
    // SAFETY: `ctx` is the `&mut F` `for_each` passed, alive for the whole walk;
    // `p` points to the helper's description of the current process.
    let (f, i) = unsafe { (&mut *(ctx as *mut F), &*p) };
    let mut comm = [0u8; 16];
    for (d, s) in comm.iter_mut().zip(i.comm.iter()) {
        *d = *s as u8;
    }
    let proc = Process {
        pid: i.pid,
        uid: i.uid,
        start_ns: i.start_ns,
        rss_pages: i.rss_pages,
        comm,
        kthread: i.kthread != 0,
        task: i.task,
        _walk: PhantomData,
    };
    f(&proc);
}

/// Call `f` for every process. `f` runs under the RCU read lock: it must not sleep
/// (no `GFP_KERNEL` allocation, no mutex).
pub fn for_each(mut f: impl FnMut(&Process<'_>)) {
    fn run<F: FnMut(&Process<'_>)>(f: &mut F) {
        // SAFETY: The callback is `trampoline::<F>`, whose context is `f`, which
        // outlives the walk (the helper returns only after the last call).
        unsafe { bindings::lz_for_each_process(Some(trampoline::<F>), f as *mut F as *mut c_void) };
    }
    run(&mut f);
}

/// Free memory and all memory, in pages.
pub fn memory_pages() -> (u64, u64) {
    // SAFETY: Both read global counters.
    unsafe { (bindings::lz_free_pages() as u64, bindings::lz_total_pages() as u64) }
}
