// SPDX-License-Identifier: GPL-2.0
//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are carried as unfolded `u32` one's-complement accumulators; [`fold`] reduces
//! one to 16 bits. A checksum *field* holds the complement of the folded sum, except
//! in the kernel's `CHECKSUM_PARTIAL` state, where the TCP field holds the folded,
//! uncomplemented sum of the pseudo-header only and the NIC (or the stack) adds the
//! rest later. Both cases have an update function here.

/// Add `data` to a one's-complement accumulator, as big-endian 16-bit words.
/// An odd trailing byte is padded with zero, as RFC 1071 requires.
pub fn add_bytes(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    // A u64 accumulator cannot overflow for any slice that fits in memory
    // (2^48 words), so carries are folded once at the end.
    let mut wide = acc as u64;
    for w in &mut chunks {
        wide += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        wide += (*last as u64) << 8;
    }
    while wide > 0xffff_ffff {
        wide = (wide & 0xffff_ffff) + (wide >> 32);
    }
    acc = wide as u32;
    acc
}

/// Add one 16-bit word to an accumulator.
#[inline]
pub const fn add16(acc: u32, w: u16) -> u32 {
    let (s, c) = acc.overflowing_add(w as u32);
    s.wrapping_add(c as u32)
}

/// Add a 32-bit value, as two 16-bit words, to an accumulator.
#[inline]
pub const fn add32(acc: u32, v: u32) -> u32 {
    add16(add16(acc, (v >> 16) as u16), v as u16)
}

/// Fold an accumulator to 16 bits with end-around carry (not complemented).
#[inline]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for `data`: the complement of its folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_bytes(0, data))
}

/// Accumulator over the TCP/UDP IPv4 pseudo-header (RFC 9293 §3.1).
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u32 {
    let mut acc = add32(0, u32::from_be_bytes(src));
    acc = add32(acc, u32::from_be_bytes(dst));
    acc = add16(acc, protocol as u16);
    add16(acc, l4_len)
}

/// Full TCP/UDP checksum of `segment` (header with its checksum field zeroed, plus
/// payload) under the given pseudo-header.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    !fold(add_bytes(pseudo_header(src, dst, protocol, segment.len() as u16), segment))
}

/// True when `segment`, checksum field included, verifies under the pseudo-header.
pub fn l4_verify(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> bool {
    fold(add_bytes(pseudo_header(src, dst, protocol, segment.len() as u16), segment)) == 0xffff
}

/// RFC 1624 eqn. 3: the new checksum field after a 16-bit word of the covered data
/// changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(add16(add16(!check as u32, !old), new))
}

/// [`update16`] for a 32-bit field (two adjacent words).
#[inline]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc = add16(add16(!check as u32, !(old >> 16) as u16), !(old as u16));
    !fold(add16(add16(acc, (new >> 16) as u16), new as u16))
}

/// Update a `CHECKSUM_PARTIAL` field, which holds the folded, uncomplemented sum of the
/// pseudo-header, after a pseudo-header word changed from `old` to `new`.
/// Changes outside the pseudo-header must not touch such a field: the final checksum
/// is computed over the data as it is when the packet leaves.
#[inline]
pub const fn update32_partial(partial: u16, old: u32, new: u32) -> u16 {
    let acc = add16(add16(partial as u32, !(old >> 16) as u16), !(old as u16));
    fold(add16(add16(acc, (new >> 16) as u16), new as u16))
}

/// [`update32_partial`] for a 16-bit pseudo-header word (the segment length).
#[inline]
pub const fn update16_partial(partial: u16, old: u16, new: u16) -> u16 {
    fold(add16(add16(partial as u32, !old), new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(add_bytes(0, &[0xab])), 0xab00);
        assert_eq!(fold(add_bytes(0, &[0x12, 0x34, 0xab])), 0x1234 + 0xab00);
    }

    #[test]
    fn known_ipv4_header() {
        // A real IPv4 header (from a capture) whose checksum field is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    fn with_check(data: &[u8], at: usize) -> Vec<u8> {
        let mut v = data.to_vec();
        v[at] = 0;
        v[at + 1] = 0;
        let c = checksum(&v);
        v[at..at + 2].copy_from_slice(&c.to_be_bytes());
        v
    }

    proptest! {
        #[test]
        fn incremental16_matches_recompute(
            data in proptest::collection::vec(any::<u8>(), 4..200),
            word_idx: prop::sample::Index,
            new: u16,
        ) {
            // Checksum field in words 0..2, the changed word elsewhere.
            let v = with_check(&data, 0);
            let words = v.len() / 2;
            prop_assume!(words > 1);
            let i = 1 + word_idx.index(words - 1);
            let old = u16::from_be_bytes([v[2 * i], v[2 * i + 1]]);
            let mut w = v.clone();
            w[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(u16::from_be_bytes([v[0], v[1]]), old, new);
            w[0..2].copy_from_slice(&inc.to_be_bytes());
            // The updated packet verifies, and equals a recomputation up to the
            // one's-complement zero ambiguity.
            prop_assert_eq!(fold(add_bytes(0, &w)), 0xffff);
            let recomputed = with_check(&w, 0);
            let a = u16::from_be_bytes([recomputed[0], recomputed[1]]);
            prop_assert!(a == inc || (a == 0 && inc == 0xffff) || (a == 0xffff && inc == 0));
        }

        #[test]
        fn incremental32_matches_recompute(
            data in proptest::collection::vec(any::<u8>(), 8..200),
            new: u32,
        ) {
            let v = with_check(&data, 0);
            let old = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
            let mut w = v.clone();
            w[4..8].copy_from_slice(&new.to_be_bytes());
            let inc = update32(u16::from_be_bytes([v[0], v[1]]), old, new);
            w[0..2].copy_from_slice(&inc.to_be_bytes());
            prop_assert_eq!(fold(add_bytes(0, &w)), 0xffff);
        }

        #[test]
        fn partial_tracks_pseudo_header(src: [u8; 4], dst: [u8; 4], new_dst: [u8; 4], len: u16, new_len: u16) {
            let p = fold(pseudo_header(src, dst, 6, len));
            let p2 = update32_partial(p, u32::from_be_bytes(dst), u32::from_be_bytes(new_dst));
            let p3 = update16_partial(p2, len, new_len);
            let want = fold(pseudo_header(src, new_dst, 6, new_len));
            // Same value modulo the one's-complement representation of zero.
            prop_assert!(p3 == want || (p3 == 0 && want == 0xffff) || (p3 == 0xffff && want == 0));
        }

        #[test]
        fn l4_checksum_verifies(src: [u8; 4], dst: [u8; 4], seg in proptest::collection::vec(any::<u8>(), 20..300)) {
            let mut s = seg.clone();
            s[16] = 0;
            s[17] = 0;
            let c = l4_checksum(src, dst, 6, &s);
            s[16..18].copy_from_slice(&c.to_be_bytes());
            prop_assert!(l4_verify(src, dst, 6, &s));
            s[19] ^= 0x01;
            prop_assert!(!l4_verify(src, dst, 6, &s));
        }
    }
}
