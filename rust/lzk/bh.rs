// SPDX-License-Identifier: GPL-2.0
//! Bottom-half exclusion (include/linux/bottom_half.h).
//!
//! State shared between packet hooks (softirq) and process context must be locked
//! with bottom halves disabled on the process side, or a softirq on the same CPU
//! could spin forever on a lock its own CPU holds. Take a [`BhGuard`] before such a
//! lock, in every context (nesting is allowed), and keep it for as long as the lock.

use core::marker::PhantomData;
use kernel::bindings;

/// While alive, softirqs do not run on this CPU.
///
/// # Invariants
///
/// Created by `local_bh_disable`, released exactly once by `local_bh_enable` in `Drop`,
/// on the same CPU: the guard is `!Send`, and disabled bottom halves keep the task from
/// migrating.
pub struct BhGuard {
    _not_send: PhantomData<*mut ()>,
}

impl BhGuard {
    /// Disable bottom halves until the guard is dropped.
    pub fn new() -> Self {
        // SAFETY: Always allowed; balanced by `Drop`.
        unsafe { bindings::local_bh_disable() };
        BhGuard { _not_send: PhantomData }
    }
}

impl Default for BhGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BhGuard {
    fn drop(&mut self) {
        // SAFETY: Balances the `local_bh_disable` of `new` on the same CPU (type
        // invariant). This may run pending softirqs, which is allowed here.
        unsafe { bindings::local_bh_enable() };
    }
}
