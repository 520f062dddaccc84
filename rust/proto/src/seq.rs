// SPDX-License-Identifier: GPL-2.0
//! TCP sequence numbers: arithmetic modulo 2^32 (RFC 9293 §3.4).
//!
//! Two sequence numbers are ordered by the sign of their 32-bit difference, which is
//! meaningful while they are less than 2^31 apart. Every window TCP uses is far smaller.

use core::fmt;

/// A TCP sequence number. Comparison methods, not `Ord`, because the order is only
/// defined between numbers less than 2^31 apart (and is not transitive in general).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// `self + n` modulo 2^32.
    #[inline]
    pub const fn add(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// `self - n` modulo 2^32.
    #[inline]
    pub const fn sub(self, n: u32) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }

    /// Signed distance from `other` to `self`: positive when `self` is after `other`.
    #[inline]
    pub const fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self` strictly before `other`.
    #[inline]
    pub const fn lt(self, other: Seq) -> bool {
        self.diff(other) < 0
    }

    /// `self` before or equal to `other`.
    #[inline]
    pub const fn le(self, other: Seq) -> bool {
        self.diff(other) <= 0
    }

    /// `self` strictly after `other`.
    #[inline]
    pub const fn gt(self, other: Seq) -> bool {
        self.diff(other) > 0
    }

    /// `self` after or equal to `other`.
    #[inline]
    pub const fn ge(self, other: Seq) -> bool {
        self.diff(other) >= 0
    }

    /// The later of two sequence numbers.
    #[inline]
    pub const fn max(self, other: Seq) -> Seq {
        if self.ge(other) {
            self
        } else {
            other
        }
    }

    /// The earlier of two sequence numbers.
    #[inline]
    pub const fn min(self, other: Seq) -> Seq {
        if self.le(other) {
            self
        } else {
            other
        }
    }

    /// `start <= self < end`, where the range has length `end - start` < 2^31.
    #[inline]
    pub const fn in_range(self, start: Seq, end: Seq) -> bool {
        self.0.wrapping_sub(start.0) < end.0.wrapping_sub(start.0)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A constant offset between two sequence spaces (for example a server's restarted
/// connection and the client's view of the original one). Applying and removing it
/// are exact inverses for every value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SeqOffset(pub u32);

impl SeqOffset {
    /// The offset that maps `from` onto `to`.
    #[inline]
    pub const fn between(from: Seq, to: Seq) -> SeqOffset {
        SeqOffset(to.0.wrapping_sub(from.0))
    }

    /// Map a number from the source space into the target space.
    #[inline]
    pub const fn apply(self, s: Seq) -> Seq {
        s.add(self.0)
    }

    /// Map a number from the target space back into the source space.
    #[inline]
    pub const fn unapply(self, s: Seq) -> Seq {
        s.sub(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_zero() {
        let a = Seq(u32::MAX - 1);
        let b = a.add(3);
        assert_eq!(b, Seq(1));
        assert!(a.lt(b));
        assert!(b.gt(a));
        assert_eq!(b.diff(a), 3);
        assert_eq!(a.diff(b), -3);
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
    }

    #[test]
    fn range_across_wrap() {
        let start = Seq(u32::MAX - 10);
        let end = start.add(20);
        assert!(Seq(0).in_range(start, end));
        assert!(start.in_range(start, end));
        assert!(!end.in_range(start, end));
        assert!(!Seq(100).in_range(start, end));
    }

    proptest! {
        #[test]
        fn order_matches_difference(a: u32, d in 1u32..(1 << 31)) {
            let x = Seq(a);
            let y = x.add(d);
            prop_assert!(x.lt(y));
            prop_assert!(y.gt(x));
            prop_assert!(x.le(y) && !x.ge(y));
            prop_assert_eq!(y.diff(x) as i64, d as i64);
            prop_assert_eq!(y.sub(d), x);
        }

        #[test]
        fn offset_roundtrip(from: u32, to: u32, v: u32) {
            let off = SeqOffset::between(Seq(from), Seq(to));
            prop_assert_eq!(off.apply(Seq(from)), Seq(to));
            prop_assert_eq!(off.unapply(off.apply(Seq(v))), Seq(v));
        }

        #[test]
        fn in_range_is_distance_check(s: u32, len in 0u32..(1 << 31), v: u32) {
            let start = Seq(s);
            let end = start.add(len);
            // Oracle in 64-bit arithmetic: distance of v past s, modulo 2^32.
            let dist = (v as u64 + (1u64 << 32) - s as u64) % (1u64 << 32);
            prop_assert_eq!(Seq(v).in_range(start, end), dist < len as u64);
        }
    }
}
