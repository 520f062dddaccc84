// SPDX-License-Identifier: GPL-2.0
//! A fixed-capacity hash table of TCP connections keyed by their 4-tuple.
//!
//! Packet hooks look connections up in softirq context, where nothing may sleep and
//! allocation may fail, so the table never grows: its slots are allocated once, when
//! a service is configured, and an insert into a full table fails (the caller counts
//! and reports it). Open addressing with linear probing keeps a lookup to a few
//! adjacent cache lines; deletion shifts the following entries back, so there are no
//! tombstones and lookups never degrade with churn.
//!
//! The hash is keyed with a secret seed chosen at allocation, so clients cannot pick
//! port numbers that collide on purpose.

use core::ops::DerefMut;

/// The 4-tuple of a connection to a service, seen from the service side.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct FlowKey {
    /// Client address (network byte order bytes).
    pub client: [u8; 4],
    /// Client port.
    pub client_port: u16,
    /// Service address.
    pub service: [u8; 4],
    /// Service port.
    pub service_port: u16,
}

impl FlowKey {
    fn hash(&self, seed: u64) -> u64 {
        let a = u32::from_be_bytes(self.client) as u64;
        let b = u32::from_be_bytes(self.service) as u64;
        let p = ((self.client_port as u64) << 16) | self.service_port as u64;
        mix(mix(mix(seed ^ a) ^ b) ^ p)
    }
}

/// A 64-bit finalizer (splitmix64): every input bit affects every output bit.
const fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One slot of the table.
#[derive(Clone, Copy, Debug, Default)]
pub enum Slot<T> {
    /// Free.
    #[default]
    Empty,
    /// Holds a connection.
    Full(FlowKey, T),
}

/// Why an insert failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableFull {
    /// Every usable slot is taken (the load is capped at 7/8 so probes stay short).
    Full,
}

/// The table over caller-provided storage `S` (a `Vec` on the host, a kernel vector in
/// a module).
///
/// # Invariants
///
/// Every `Full` entry is reachable by linear probing from its home slot
/// (`hash % len`) without crossing an `Empty` slot; `count` is the number of `Full`
/// slots and never exceeds `limit`, which is less than the slot count, so at least
/// one slot is always empty and probing terminates.
pub struct FlowTable<T, S> {
    slots: S,
    seed: u64,
    count: usize,
    limit: usize,
    _t: core::marker::PhantomData<T>,
}

impl<T, S: DerefMut<Target = [Slot<T>]>> FlowTable<T, S> {
    /// Wrap `slots` (all `Empty`, at least two) with the hash seed `seed`.
    /// Returns `None` for storage that is too small or not empty.
    pub fn new(slots: S, seed: u64) -> Option<Self> {
        let n = slots.len();
        if n < 2 || slots.iter().any(|s| matches!(s, Slot::Full(..))) {
            return None;
        }
        let limit = (n - n / 8).min(n - 1);
        Some(FlowTable { slots, seed, count: 0, limit, _t: core::marker::PhantomData })
    }

    /// Number of connections held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Most connections the table accepts.
    pub fn capacity(&self) -> usize {
        self.limit
    }

    fn home(&self, key: &FlowKey) -> usize {
        (key.hash(self.seed) % self.slots.len() as u64) as usize
    }

    fn find(&self, key: &FlowKey) -> Result<usize, usize> {
        let n = self.slots.len();
        let mut i = self.home(key);
        // Terminates: at least one slot is empty (type invariant).
        loop {
            match &self.slots[i] {
                Slot::Empty => return Err(i),
                Slot::Full(k, _) if k == key => return Ok(i),
                Slot::Full(..) => i = (i + 1) % n,
            }
        }
    }

    /// The connection stored under `key`.
    pub fn get(&self, key: &FlowKey) -> Option<&T> {
        match self.find(key) {
            Ok(i) => match &self.slots[i] {
                Slot::Full(_, v) => Some(v),
                Slot::Empty => None,
            },
            Err(_) => None,
        }
    }

    /// Mutable access to the connection stored under `key`.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut T> {
        match self.find(key) {
            Ok(i) => match &mut self.slots[i] {
                Slot::Full(_, v) => Some(v),
                Slot::Empty => None,
            },
            Err(_) => None,
        }
    }

    /// The connection under `key`, inserted with `make()` when absent.
    pub fn get_or_insert_with(&mut self, key: FlowKey, make: impl FnOnce() -> T) -> Result<&mut T, TableFull> {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                if self.count >= self.limit {
                    return Err(TableFull::Full);
                }
                self.slots[i] = Slot::Full(key, make());
                self.count += 1;
                i
            }
        };
        match &mut self.slots[i] {
            Slot::Full(_, v) => Ok(v),
            Slot::Empty => Err(TableFull::Full),
        }
    }

    /// Remove and return the connection under `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<T> {
        let i = self.find(key).ok()?;
        Some(self.remove_at(i))
    }

    /// Empty slot `i` (which must be full) and shift later entries of the probe run
    /// back so that each stays reachable from its home slot.
    fn remove_at(&mut self, mut hole: usize) -> T {
        let n = self.slots.len();
        let Slot::Full(_, v) = core::mem::replace(&mut self.slots[hole], Slot::Empty) else {
            unreachable!("remove_at is only called on full slots")
        };
        self.count -= 1;
        let mut j = hole;
        loop {
            j = (j + 1) % n;
            let home = match &self.slots[j] {
                Slot::Empty => break,
                Slot::Full(k, _) => self.home(k),
            };
            // The entry at j may move into the hole unless its home lies cyclically in
            // (hole, j], in which case moving it would put it before its home.
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
        v
    }

    /// Keep only the connections for which `keep` returns true. Visits every slot.
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &mut T) -> bool) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.slots.len() {
            let drop = match &mut self.slots[i] {
                Slot::Full(k, v) => !keep(k, v),
                Slot::Empty => false,
            };
            if drop {
                self.remove_at(i);
                removed += 1;
                // A later entry may have shifted into slot i: look at it again.
                continue;
            }
            i += 1;
        }
        removed
    }

    /// Visit connections in slot order starting at slot `from`, up to `max` of them,
    /// with their slot index; returns the slot to continue from, or `None` at the end. Lets a caller walk the
    /// table in short batches without holding its lock throughout (entries moved by
    /// concurrent removals may be seen twice or skipped, which batch users tolerate).
    pub fn walk(&self, from: usize, max: usize, mut f: impl FnMut(usize, &FlowKey, &T)) -> Option<usize> {
        let mut seen = 0;
        let mut i = from;
        while i < self.slots.len() {
            if let Slot::Full(k, v) = &self.slots[i] {
                if seen == max {
                    return Some(i);
                }
                f(i, k, v);
                seen += 1;
            }
            i += 1;
        }
        None
    }

    /// Like [`FlowTable::walk`], with mutable access to each connection.
    pub fn walk_mut(&mut self, from: usize, max: usize, mut f: impl FnMut(&FlowKey, &mut T)) -> Option<usize> {
        let mut seen = 0;
        let mut i = from;
        while i < self.slots.len() {
            if let Slot::Full(k, v) = &mut self.slots[i] {
                if seen == max {
                    return Some(i);
                }
                f(k, v);
                seen += 1;
            }
            i += 1;
        }
        None
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            *s = Slot::Empty;
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            client: (0x0a00_0000 | (i >> 8)).to_be_bytes(),
            client_port: (i & 0xffff) as u16,
            service: [10, 77, 0, 100],
            service_port: 80,
        }
    }

    fn table(n: usize) -> FlowTable<u32, Vec<Slot<u32>>> {
        FlowTable::new(vec![Slot::Empty; n], 42).unwrap()
    }

    #[test]
    fn fills_to_capacity_then_refuses() {
        let mut t = table(64);
        for i in 0..t.capacity() as u32 {
            *t.get_or_insert_with(key(i), || i).unwrap() += 0;
        }
        assert_eq!(t.len(), 56);
        assert_eq!(t.get_or_insert_with(key(1000), || 0).err(), Some(TableFull::Full));
        // An existing key is still found when full.
        assert_eq!(*t.get_or_insert_with(key(3), || 99).unwrap(), 3);
        for i in 0..56 {
            assert_eq!(t.get(&key(i)), Some(&i));
        }
    }

    #[test]
    fn rejects_bad_storage() {
        assert!(FlowTable::<u32, Vec<Slot<u32>>>::new(vec![Slot::Empty; 1], 0).is_none());
        assert!(FlowTable::<u32, Vec<Slot<u32>>>::new(vec![Slot::Full(key(1), 1), Slot::Empty], 0).is_none());
    }

    #[test]
    fn walk_visits_all_in_batches() {
        let mut t = table(128);
        for i in 0..100 {
            t.get_or_insert_with(key(i), || i).unwrap();
        }
        let mut seen = Vec::new();
        let mut at = Some(0);
        while let Some(from) = at {
            at = t.walk(from, 7, |_, _, v| seen.push(*v));
        }
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        // The mutable walk visits each once too, and its changes stick.
        let mut at = Some(0);
        while let Some(from) = at {
            at = t.walk_mut(from, 7, |_, v| *v += 1000);
        }
        assert!((0..100).all(|i| t.get(&key(i)) == Some(&(i + 1000))));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Remove(u16),
        RetainEven,
    }

    proptest! {
        // The table behaves like a map under any sequence of operations, including
        // removals that shift probe runs across the end of the slot array.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(prop_oneof![
            (0u16..200).prop_map(Op::Insert),
            (0u16..200).prop_map(Op::Remove),
            Just(Op::RetainEven),
        ], 1..400), size in 2usize..80, seed in any::<u64>()) {
            let mut t = FlowTable::new(vec![Slot::Empty; size], seed).unwrap();
            let mut m = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(i) => {
                        let room = m.contains_key(&i) || m.len() < t.capacity();
                        let r = t.get_or_insert_with(key(i as u32), || i as u32);
                        if room {
                            prop_assert!(r.is_ok());
                            m.insert(i, i as u32);
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Remove(i) => prop_assert_eq!(t.remove(&key(i as u32)), m.remove(&i)),
                    Op::RetainEven => {
                        t.retain(|_, v| *v % 2 == 0);
                        m.retain(|_, v| *v % 2 == 0);
                    }
                }
                prop_assert_eq!(t.len(), m.len());
                for i in 0..200u16 {
                    prop_assert_eq!(t.get(&key(i as u32)), m.get(&i));
                }
            }
        }
    }
}
