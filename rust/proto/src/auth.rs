// SPDX-License-Identifier: GPL-2.0
//! Authentication of the datagrams two nodes exchange (heartbeats and progress
//! reports): a per-cluster key, a sequence number and a truncated HMAC-SHA256 tag.
//!
//! A sealed datagram is the message followed by a 24-byte trailer:
//!
//! ```text
//!  0  sequence number, 64 bits big-endian: the sender's real-time clock in
//!     nanoseconds, made strictly increasing
//!  8  tag: the first 16 bytes of HMAC-SHA256(key, "LZA1" ‖ sender's role ‖ message ‖
//!     sequence number)
//! ```
//!
//! The receiver refuses, and counts by reason:
//! - a datagram too short to hold a trailer (truncated);
//! - a wrong tag: forged, altered, cut short, sealed with another key, or sent by a
//!   node in the receiver's own role (a reflected datagram: the role is part of
//!   what the tag covers);
//! - a sequence number not above the highest accepted from the peer (replayed; a
//!   datagram the network reordered is dropped the same way, which heartbeats and
//!   progress reports tolerate since the next one follows within an interval);
//! - a sequence number further than [`MAX_SKEW_NS`] from the receiver's own clock
//!   (stale: the replay of an old capture to a receiver that restarted and so no
//!   longer knows the highest number). This needs the nodes' clocks to agree within
//!   that bound, as NTP keeps them.
//!
//! A 16-byte tag leaves a forger a 2^-128 chance per try; the key is never sent.

use super::sha256::{ct_eq, HmacKey};

/// Trailer size.
pub const TRAILER_LEN: usize = 24;
/// Bytes of the HMAC kept as the tag.
pub const TAG_LEN: usize = 16;
/// Shortest and longest keys accepted.
pub const MIN_KEY_LEN: usize = 16;
/// See [`MIN_KEY_LEN`].
pub const MAX_KEY_LEN: usize = 64;
/// How far a sequence number may be from the receiver's clock (60 s).
pub const MAX_SKEW_NS: u64 = 60_000_000_000;
/// Domain separation: a tag made for these datagrams is worthless anywhere else.
const LABEL: &[u8; 4] = b"LZA1";

/// Why a datagram was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reject {
    /// Shorter than a trailer.
    Truncated,
    /// The tag does not match.
    Forged,
    /// Not newer than one already accepted.
    Replayed,
    /// Its sequence number is too far from this node's clock.
    Stale,
}

/// A cluster key, ready for use.
#[derive(Clone, Copy)]
pub struct Key {
    hmac: HmacKey,
    fingerprint: u64,
}

impl Key {
    /// A key of [`MIN_KEY_LEN`]..=[`MAX_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Option<Key> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return None;
        }
        let hmac = HmacKey::new(bytes);
        // Shown to operators so that two nodes can be compared without the key
        // itself leaving either; derived through the HMAC so it reveals nothing.
        let f = hmac.mac(&[b"LZA1 fingerprint"]);
        let fingerprint = u64::from_be_bytes([f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]]);
        Some(Key { hmac, fingerprint })
    }

    /// A short identifier of the key that says nothing about it.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn tag(&self, sender_role: u8, msg: &[u8], seq: u64) -> [u8; TAG_LEN] {
        let mac = self.hmac.mac(&[LABEL, &[sender_role], msg, &seq.to_be_bytes()]);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&mac[..TAG_LEN]);
        t
    }

    /// Append the trailer to the `len`-byte message at the start of `buf`, as sent by
    /// a node in `sender_role`. Returns the sealed length, or `None` if `buf` has no
    /// room.
    pub fn seal(&self, buf: &mut [u8], len: usize, sender_role: u8, seq: u64) -> Option<usize> {
        let end = len.checked_add(TRAILER_LEN)?;
        let out = buf.get_mut(..end)?;
        let tag = self.tag(sender_role, &out[..len], seq);
        out[len..len + 8].copy_from_slice(&seq.to_be_bytes());
        out[len + 8..].copy_from_slice(&tag);
        Some(end)
    }

    /// Check a datagram sealed by a node in `sender_role`: the message and its
    /// sequence number if the tag is right. Replay is the caller's [`Replay`] check.
    pub fn open<'a>(&self, datagram: &'a [u8], sender_role: u8) -> Result<(&'a [u8], u64), Reject> {
        let len = datagram.len().checked_sub(TRAILER_LEN).ok_or(Reject::Truncated)?;
        let (msg, trailer) = datagram.split_at(len);
        let mut s = [0u8; 8];
        s.copy_from_slice(&trailer[..8]);
        let seq = u64::from_be_bytes(s);
        if !ct_eq(&self.tag(sender_role, msg, seq), &trailer[8..]) {
            return Err(Reject::Forged);
        }
        Ok((msg, seq))
    }
}

/// The sender's sequence numbers: its real-time clock in nanoseconds, never repeated
/// nor going back even if the clock does.
#[derive(Clone, Copy, Default, Debug)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// The number for a datagram sent at `now_ns`.
    pub fn next(&mut self, now_ns: u64) -> u64 {
        self.last = now_ns.max(self.last.saturating_add(1));
        self.last
    }
}

/// The receiver's replay check for one peer.
#[derive(Clone, Copy, Default, Debug)]
pub struct Replay {
    highest: Option<u64>,
}

impl Replay {
    /// Accept `seq` (from a datagram whose tag was right) at local time `now_ns`, or
    /// say why not. Only an accepted number moves the window.
    pub fn accept(&mut self, seq: u64, now_ns: u64) -> Result<(), Reject> {
        if self.highest.is_some_and(|h| seq <= h) {
            return Err(Reject::Replayed);
        }
        if seq.abs_diff(now_ns) > MAX_SKEW_NS {
            return Err(Reject::Stale);
        }
        self.highest = Some(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_790_000_000_000_000_000;
    const PRIMARY: u8 = 1;
    const BACKUP: u8 = 2;

    fn key(b: u8) -> Key {
        Key::new(&[b; 32]).unwrap()
    }

    fn sealed(k: &Key, msg: &[u8], role: u8, seq: u64) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + TRAILER_LEN];
        buf[..msg.len()].copy_from_slice(msg);
        assert_eq!(k.seal(&mut buf, msg.len(), role, seq), Some(msg.len() + TRAILER_LEN));
        buf
    }

    #[test]
    fn key_length_is_bounded() {
        assert!(Key::new(&[1; 15]).is_none());
        assert!(Key::new(&[1; 16]).is_some());
        assert!(Key::new(&[1; 64]).is_some());
        assert!(Key::new(&[1; 65]).is_none());
        assert_ne!(key(1).fingerprint(), key(2).fingerprint());
        assert_eq!(key(1).fingerprint(), key(1).fingerprint());
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let d = sealed(&k, b"LZHB heartbeat", PRIMARY, NOW);
        assert_eq!(k.open(&d, PRIMARY), Ok((&b"LZHB heartbeat"[..], NOW)));
        let mut r = Replay::default();
        assert_eq!(r.accept(NOW, NOW + 1000), Ok(()));
    }

    #[test]
    fn refusals_by_reason() {
        let k = key(7);
        let d = sealed(&k, b"message", PRIMARY, NOW);
        assert_eq!(k.open(&d[..TRAILER_LEN - 1], PRIMARY), Err(Reject::Truncated));
        // Cut short: the last bytes of the message become part of the trailer.
        assert_eq!(k.open(&d[..d.len() - 1], PRIMARY), Err(Reject::Forged));
        // Another key, or reflected back to a node of the sender's role.
        assert_eq!(key(8).open(&d, PRIMARY), Err(Reject::Forged));
        assert_eq!(k.open(&d, BACKUP), Err(Reject::Forged));
        // A changed sequence number.
        let mut e = d.clone();
        e[7] ^= 1;
        assert_eq!(k.open(&e, PRIMARY), Err(Reject::Forged));
        // An empty message seals and opens too.
        let z = sealed(&k, b"", BACKUP, NOW);
        assert_eq!(k.open(&z, BACKUP), Ok((&b""[..], NOW)));
        assert!(k.seal(&mut [0u8; 30], 7, PRIMARY, NOW).is_none());
    }

    #[test]
    fn replays_and_stale_numbers() {
        let mut r = Replay::default();
        assert_eq!(r.accept(NOW, NOW), Ok(()));
        assert_eq!(r.accept(NOW, NOW), Err(Reject::Replayed));
        assert_eq!(r.accept(NOW - 1, NOW), Err(Reject::Replayed));
        assert_eq!(r.accept(NOW + 1, NOW), Ok(()));
        // A receiver that restarted does not know the highest number: the clock
        // refuses an old capture.
        let mut fresh = Replay::default();
        assert_eq!(fresh.accept(NOW - MAX_SKEW_NS - 1, NOW), Err(Reject::Stale));
        assert_eq!(fresh.accept(NOW + MAX_SKEW_NS + 1, NOW), Err(Reject::Stale));
        // A refused number does not move the window.
        assert_eq!(fresh.accept(NOW - 5, NOW), Ok(()));
    }

    #[test]
    fn sequence_numbers_never_repeat() {
        let mut s = Sequencer::default();
        assert_eq!(s.next(NOW), NOW);
        assert_eq!(s.next(NOW), NOW + 1);
        // The clock went back: numbers still go up.
        assert_eq!(s.next(NOW - 1000), NOW + 2);
        assert_eq!(s.next(NOW + 50), NOW + 50);
    }

    proptest! {
        /// Any change of any byte of a sealed datagram is refused.
        #[test]
        fn any_altered_byte_is_refused(msg in proptest::collection::vec(any::<u8>(), 0..200),
                                       at in any::<usize>(), bit in 0u8..8) {
            let k = key(3);
            let mut d = sealed(&k, &msg, BACKUP, NOW);
            let i = at % d.len();
            d[i] ^= 1 << bit;
            prop_assert_eq!(k.open(&d, BACKUP), Err(Reject::Forged));
        }

        /// Arbitrary bytes never open (and never panic).
        #[test]
        fn garbage_is_refused(d in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert!(key(3).open(&d, PRIMARY).is_err());
        }
    }
}
