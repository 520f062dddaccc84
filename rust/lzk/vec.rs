// SPDX-License-Identifier: GPL-2.0
//! What the kernel's `KVec` lacks here (6.12 has no `retain`, `remove` or `clear`).

use kernel::prelude::*;

/// Keep the elements for which `keep` is true, in order, and drop the others, in
/// place (no allocation).
pub fn retain<T>(v: &mut KVec<T>, mut keep: impl FnMut(&T) -> bool) {
    let len = v.len();
    let p = v.as_mut_ptr();
    // SAFETY: The length is set to 0 first, so that if `keep` or a destructor
    // panics the remaining elements leak instead of being dropped twice. Elements
    // `0..len` are initialized; each is either moved down to slot `w <= r` (slots
    // below `r` already moved out or kept) or dropped exactly once; finally the
    // first `w` slots hold the kept elements.
    unsafe {
        v.set_len(0);
        let mut w = 0;
        for r in 0..len {
            let item = p.add(r);
            if keep(&*item) {
                if r != w {
                    core::ptr::copy_nonoverlapping(item, p.add(w), 1);
                }
                w += 1;
            } else {
                core::ptr::drop_in_place(item);
            }
        }
        v.set_len(w);
    }
}

/// Drop every element.
pub fn clear<T>(v: &mut KVec<T>) {
    retain(v, |_| false);
}
