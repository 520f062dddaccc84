// SPDX-License-Identifier: GPL-2.0
//! A fixed-capacity store of objects named by 32-bit handles that go stale when the
//! object is removed.
//!
//! A handle is the slot index in the low 16 bits and the slot's generation in the
//! high 16: removing an object bumps the generation, so a handle a program kept
//! after the object ended (a splice id, say) finds nothing instead of whatever took
//! the slot next. Storage is allocated by the caller once (a `Vec` on the host, a
//! kernel vector in a module); nothing allocates afterwards, so the store can be
//! used under a spinlock in softirq context.

use core::ops::DerefMut;

/// Most slots a store can have: the index must fit 16 bits.
pub const MAX_SLOTS: usize = 1 << 16;

/// One slot.
#[derive(Clone, Copy, Debug)]
pub struct SlabSlot<T> {
    generation: u16,
    value: Option<T>,
}

// Not derived: an empty slot needs no `T: Default`.
impl<T> Default for SlabSlot<T> {
    fn default() -> Self {
        SlabSlot { generation: 0, value: None }
    }
}

/// The store over caller-provided storage `S`.
///
/// # Invariants
///
/// `slots.len() <= MAX_SLOTS`; `count` is the number of occupied slots.
pub struct Slab<T, S> {
    slots: S,
    /// Where the search for a free slot starts (after the last one taken), so that
    /// slots are reused round-robin and a stale handle stays stale for long.
    cursor: usize,
    count: usize,
    _t: core::marker::PhantomData<T>,
}

impl<T, S: DerefMut<Target = [SlabSlot<T>]>> Slab<T, S> {
    /// Wrap `slots` (all empty, at most [`MAX_SLOTS`]). `None` otherwise.
    pub fn new(slots: S) -> Option<Self> {
        if slots.len() > MAX_SLOTS || slots.iter().any(|s| s.value.is_some()) {
            return None;
        }
        Some(Slab { slots, cursor: 0, count: 0, _t: core::marker::PhantomData })
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Most objects the store holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn handle(&self, i: usize) -> u32 {
        (self.slots[i].generation as u32) << 16 | i as u32
    }

    fn index(&self, handle: u32) -> Option<usize> {
        let i = (handle & 0xffff) as usize;
        let s = self.slots.get(i)?;
        (s.value.is_some() && s.generation as u32 == handle >> 16).then_some(i)
    }

    /// Store `value`; its handle, or `Err(value)` when every slot is taken.
    pub fn insert(&mut self, value: T) -> Result<u32, T> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if self.slots[i].value.is_none() {
                self.slots[i].value = Some(value);
                self.cursor = (i + 1) % n;
                self.count += 1;
                return Ok(self.handle(i));
            }
        }
        Err(value)
    }

    /// The object named by `handle`, if it is still there.
    pub fn get_mut(&mut self, handle: u32) -> Option<&mut T> {
        let i = self.index(handle)?;
        self.slots[i].value.as_mut()
    }

    /// The object named by `handle`, if it is still there.
    pub fn get(&self, handle: u32) -> Option<&T> {
        let i = self.index(handle)?;
        self.slots[i].value.as_ref()
    }

    /// Take the object named by `handle` out; the handle goes stale.
    pub fn remove(&mut self, handle: u32) -> Option<T> {
        let i = self.index(handle)?;
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        self.count -= 1;
        s.value.take()
    }

    /// Visit up to `max` objects from slot `from` on, with their handles. Returns the
    /// slot to continue from, or `None` at the end (for a dump spread over several
    /// calls).
    pub fn walk(&self, from: usize, max: usize, mut f: impl FnMut(u32, &T)) -> Option<usize> {
        let mut seen = 0;
        for i in from..self.slots.len() {
            if let Some(v) = &self.slots[i].value {
                if seen == max {
                    return Some(i);
                }
                f(self.handle(i), v);
                seen += 1;
            }
        }
        None
    }

    /// The handles of up to `out.len()` objects for which `pick` says yes, starting at
    /// slot `from`; returns how many were written and where to continue (`None` at
    /// the end). For removing objects in batches without allocating.
    pub fn select(&mut self, from: usize, out: &mut [u32], mut pick: impl FnMut(&mut T) -> bool) -> (usize, Option<usize>) {
        let mut n = 0;
        for i in from..self.slots.len() {
            if n == out.len() {
                return (n, Some(i));
            }
            let h = self.handle(i);
            if let Some(v) = self.slots[i].value.as_mut() {
                if pick(v) {
                    out[n] = h;
                    n += 1;
                }
            }
        }
        (n, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slab(n: usize) -> Slab<u32, Vec<SlabSlot<u32>>> {
        Slab::new(vec![SlabSlot::default(); n]).unwrap()
    }

    #[test]
    fn handles_go_stale_when_the_object_is_removed() {
        let mut s = slab(2);
        let a = s.insert(10).unwrap();
        assert_eq!(s.get(a), Some(&10));
        assert_eq!(s.remove(a), Some(10));
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        // The slot is reused under a new generation.
        let b = s.insert(11).unwrap();
        let c = s.insert(12).unwrap();
        assert!(b != a && c != a);
        assert_eq!(s.get(a), None);
        assert_eq!((s.get(b), s.get(c)), (Some(&11), Some(&12)));
    }

    #[test]
    fn a_full_store_hands_the_value_back() {
        let mut s = slab(1);
        s.insert(1).unwrap();
        assert_eq!(s.insert(2), Err(2));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn handles_outside_the_store_find_nothing() {
        let mut s = slab(4);
        s.insert(1).unwrap();
        assert_eq!(s.get(0xffff_ffff), None);
        assert_eq!(s.get(3), None);
        assert!(s.get_mut(7).is_none());
    }

    #[test]
    fn walks_and_selections_resume_where_they_stopped() {
        let mut s = slab(8);
        let hs: Vec<u32> = (0..5).map(|v| s.insert(v).unwrap()).collect();
        let mut seen = vec![];
        let mut from = Some(0);
        while let Some(f) = from {
            from = s.walk(f, 2, |h, v| seen.push((h, *v)));
        }
        assert_eq!(seen.iter().map(|x| x.0).collect::<Vec<_>>(), hs);
        let mut out = [0u32; 2];
        let (n, next) = s.select(0, &mut out, |v| *v % 2 == 0);
        assert_eq!((n, out), (2, [hs[0], hs[2]]));
        let (n, next) = s.select(next.unwrap(), &mut out, |v| *v % 2 == 0);
        assert_eq!((n, out[0], next), (1, hs[4], None));
    }

    #[test]
    fn oversized_or_used_storage_is_refused() {
        assert!(Slab::<u8, _>::new(vec![SlabSlot::default(); MAX_SLOTS + 1]).is_none());
        let mut v = vec![SlabSlot::default(); 2];
        v[1].value = Some(1u8);
        assert!(Slab::new(v).is_none());
    }
}
