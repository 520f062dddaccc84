// SPDX-License-Identifier: GPL-2.0
//! Sysctl tables under `net.lazarus.<module>` (include/linux/sysctl.h,
//! include/net/net_namespace.h).
//!
//! Values are never exposed to the C side directly: each entry has a handler that
//! parses into a scratch variable with the kernel's own parsers (`proc_dointvec_minmax`,
//! `proc_dostring`), validates, and only then calls the module's setter. A bad write
//! fails with `EINVAL` and changes nothing.

use super::net::Net;
use core::ffi::{c_int, c_void, CStr};
use core::pin::Pin;
use kernel::bindings;
use kernel::prelude::*;

/// Most entries in one table.
const MAX_ENTRIES: usize = 8;
/// Longest text value of a string entry, NUL excluded.
pub const MAX_TEXT: usize = 511;

/// An integer sysctl.
pub trait IntValue: Send + Sync {
    /// Smallest accepted value.
    const MIN: i32;
    /// Largest accepted value.
    const MAX: i32;
    /// Current value.
    fn get(&self) -> i32;
    /// Apply a value already checked against `MIN..=MAX`.
    fn set(&self, v: i32) -> Result;
}

/// A text sysctl.
pub trait TextValue: Send + Sync {
    /// Write the current value into `out`; returns the length used.
    fn show(&self, out: &mut [u8]) -> usize;
    /// Parse and apply `text` (without the trailing NUL); errors change nothing.
    fn store(&self, text: &[u8]) -> Result;
}

/// One entry: a name and a value object the table borrows for its lifetime.
pub enum Entry {
    /// Integer entry.
    Int(&'static CStr, *const c_void, bindings::proc_handler),
    /// Text entry.
    Text(&'static CStr, *const c_void, bindings::proc_handler),
}

impl Entry {
    /// An integer entry backed by `v`.
    ///
    /// # Safety
    ///
    /// `v` must outlive the [`Table`] the entry is registered in.
    pub unsafe fn int<V: IntValue>(name: &'static CStr, v: &V) -> Entry {
        Entry::Int(name, v as *const V as *const c_void, Some(int_handler::<V>))
    }

    /// A text entry backed by `v`.
    ///
    /// # Safety
    ///
    /// `v` must outlive the [`Table`] the entry is registered in.
    pub unsafe fn text<V: TextValue>(name: &'static CStr, v: &V) -> Entry {
        Entry::Text(name, v as *const V as *const c_void, Some(text_handler::<V>))
    }
}

struct Inner {
    entries: [bindings::ctl_table; MAX_ENTRIES],
    header: *mut bindings::ctl_table_header,
}

/// A registered sysctl table.
///
/// # Invariants
///
/// `inner.header` is the non-null result of `register_net_sysctl_sz` for
/// `inner.entries` (pinned, so the kernel's pointers stay valid), unregistered in
/// `Drop`. Each entry's `extra1` points to a value object that outlives the table
/// (the safety contract of [`Entry::int`] and [`Entry::text`]).
pub struct Table {
    inner: Pin<KBox<Inner>>,
}

// SAFETY: The raw pointers refer to the pinned table and to `Sync` value objects.
unsafe impl Send for Table {}
// SAFETY: As above; `Table` has no methods that mutate through `&self`.
unsafe impl Sync for Table {}

impl Table {
    /// Register `entries` at `path` (for example `c"net/lazarus/core"`) in `net`.
    pub fn register(net: &'static Net, path: &'static CStr, entries: &[Entry]) -> Result<Self> {
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            return Err(EINVAL);
        }
        let mut inner = KBox::pin(
            Inner {
                // SAFETY: All-zero `ctl_table`s are unset entries.
                entries: unsafe { core::mem::zeroed() },
                header: core::ptr::null_mut(),
            },
            GFP_KERNEL,
        )?;
        // SAFETY: Initialization in place; nothing moves out of the pin.
        let i = unsafe { inner.as_mut().get_unchecked_mut() };
        for (t, e) in i.entries.iter_mut().zip(entries) {
            let (name, value, handler) = match *e {
                Entry::Int(n, v, h) | Entry::Text(n, v, h) => (n, v, h),
            };
            t.procname = name.as_ptr().cast();
            t.mode = 0o644;
            t.proc_handler = handler;
            t.extra1 = value as *mut c_void;
            t.maxlen = 0;
        }
        // SAFETY: `path` is static; the table is pinned and outlives the registration.
        let header = unsafe {
            bindings::register_net_sysctl_sz(net.as_ptr(), path.as_ptr().cast(), i.entries.as_mut_ptr(), entries.len())
        };
        if header.is_null() {
            return Err(ENOMEM);
        }
        i.header = header;
        Ok(Table { inner })
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: `header` is registered (type invariant); unregistering waits for
        // running handlers, after which the table may be freed.
        unsafe { bindings::unregister_net_sysctl_table(self.inner.header) };
    }
}

unsafe extern "C" fn int_handler<V: IntValue>(
    table: *const bindings::ctl_table,
    write: c_int,
    buffer: *mut c_void,
    lenp: *mut usize,
    ppos: *mut bindings::loff_t,
) -> c_int {
    // SAFETY: `extra1` was set to a `V` that outlives the table (type invariant of
    // `Table`), and the kernel passes a valid table for the call.
    let v = unsafe { &*((*table).extra1 as *const V) };
    let mut scratch: c_int = v.get();
    let (mut min, mut max) = (V::MIN, V::MAX);
    // SAFETY: Copy the entry, then point it at locals that live through the call.
    let mut tmp: bindings::ctl_table = unsafe { *table };
    tmp.data = &mut scratch as *mut c_int as *mut c_void;
    tmp.maxlen = core::mem::size_of::<c_int>() as c_int;
    tmp.extra1 = &mut min as *mut i32 as *mut c_void;
    tmp.extra2 = &mut max as *mut i32 as *mut c_void;
    // SAFETY: `tmp` is a valid table for an int with bounds; the user buffer
    // arguments are passed through unchanged from the kernel.
    let ret = unsafe { bindings::proc_dointvec_minmax(&tmp, write, buffer, lenp, ppos) };
    commit(ret, write, || v.set(scratch))
}

/// The end of every handler: a failed parse or a read returns the kernel parser's
/// result; a parsed write is applied, and its error (if any) returned.
fn commit(ret: c_int, write: c_int, apply: impl FnOnce() -> Result) -> c_int {
    if ret != 0 || write == 0 {
        return ret;
    }
    match apply() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn text_handler<V: TextValue>(
    table: *const bindings::ctl_table,
    write: c_int,
    buffer: *mut c_void,
    lenp: *mut usize,
    ppos: *mut bindings::loff_t,
) -> c_int {
    // SAFETY: As in `int_handler`.
    let v = unsafe { &*((*table).extra1 as *const V) };
    let mut buf = [0u8; MAX_TEXT + 1];
    if write == 0 {
        let n = v.show(&mut buf[..MAX_TEXT]).min(MAX_TEXT);
        buf[n] = 0;
    } else {
        // `proc_dostring` would silently truncate a long value; refuse it instead.
        // SAFETY: `lenp` is valid for the call.
        if unsafe { *lenp } > MAX_TEXT {
            return -(bindings::EINVAL as c_int);
        }
        // Partial writes at an offset would apply half a value.
        // SAFETY: `ppos` is valid for the call.
        if unsafe { *ppos } != 0 {
            return -(bindings::EINVAL as c_int);
        }
    }
    // SAFETY: Copy the entry and point it at our local buffer for the call.
    let mut tmp: bindings::ctl_table = unsafe { *table };
    tmp.data = buf.as_mut_ptr() as *mut c_void;
    tmp.maxlen = buf.len() as c_int;
    // SAFETY: `tmp` describes a string of `buf.len()` bytes, NUL-terminated on read.
    let ret = unsafe { bindings::proc_dostring(&tmp, write, buffer, lenp, ppos) };
    commit(ret, write, || {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        v.store(&buf[..end])
    })
}
