// SPDX-License-Identifier: GPL-2.0
//! What the proxies of a splicing cluster tell each other (lzproxy's peer channel,
//! UDP, every datagram sealed with the cluster key by [`super::auth`]).
//!
//! The active proxy, which holds the service address, sends heartbeats, and the state
//! of each splice it holds: at once when it is made ([`Msg::Splice`]), and all of them
//! again every second followed by [`Msg::SyncDone`], so a standby that missed a
//! datagram or started late catches up, and learns of splices that ended without it
//! hearing [`Msg::End`]. A standby installs each splice in its own kernel, so that
//! when it takes the address over, every spliced connection goes on through it.
//!
//! Layout (big-endian): a type byte, then
//!
//! ```text
//! Beat      active u8, boot u32, splices u32
//! Splice    origin u32, client side, backend side, shift flags u8, to-backend u32, to-client u32
//! End       origin u32
//! SyncDone  generation u32, count u32
//! side      local addr 4, local port 2, remote addr 4, remote port 2, snd_nxt 4,
//!           rcv_nxt 4, peer wscale 1, own wscale 1, flags 1 (bit 0 timestamps,
//!           bit 1 SACK), ts_now 4
//! ```

use super::seq::Seq;
use super::splice::{validate_pair, Endpoint, Side, SideError};

/// The UDP port of the peer channel unless configured otherwise.
pub const DEFAULT_PORT: u16 = 7402;
/// Longest message.
pub const MAX_LEN: usize = 1 + 4 + 2 * SIDE_LEN + 9;
const SIDE_LEN: usize = 27;

const BEAT: u8 = 1;
const SPLICE: u8 = 2;
const END: u8 = 3;
const SYNC_DONE: u8 = 4;

/// A splice as a peer needs it: both sides and the fixed timestamp shifts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpliceState {
    pub client: Side,
    pub backend: Side,
    /// To the backend, to the client.
    pub shifts: [Option<u32>; 2],
}

/// One message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Msg {
    /// I am alive; `active`: I hold the service address. `boot` changes when the
    /// sender restarts; `splices` is how many it holds.
    Beat { active: bool, boot: u32, splices: u32 },
    /// A splice the sender holds, under the sender's id `origin`.
    Splice { origin: u32, state: SpliceState },
    /// The sender's splice `origin` has ended.
    End { origin: u32 },
    /// A full round of [`Msg::Splice`] messages is done: `count` were sent.
    SyncDone { generation: u32, count: u32 },
}

/// Why a message was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MsgError {
    /// Too short for its type.
    Truncated,
    /// Longer than its type.
    TrailingBytes,
    /// An unknown type byte.
    UnknownType(u8),
    /// A splice whose sides are not acceptable.
    BadSplice(SideError),
    /// A flag byte with unknown bits.
    BadFlags,
}

impl MsgError {
    /// A short explanation for a log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            MsgError::Truncated => "truncated",
            MsgError::TrailingBytes => "trailing bytes",
            MsgError::UnknownType(_) => "unknown type",
            MsgError::BadSplice(e) => e.as_str(),
            MsgError::BadFlags => "unknown flag bits",
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        self.buf.get_mut(self.at..self.at + b.len())?.copy_from_slice(b);
        self.at += b.len();
        Some(())
    }
    fn u8(&mut self, v: u8) -> Option<()> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn side(&mut self, s: &Side) -> Option<()> {
        self.put(&s.local.addr)?;
        self.u16(s.local.port)?;
        self.put(&s.remote.addr)?;
        self.u16(s.remote.port)?;
        self.u32(s.snd_nxt.0)?;
        self.u32(s.rcv_nxt.0)?;
        self.u8(s.peer_wscale)?;
        self.u8(s.own_wscale)?;
        self.u8(s.ts_now.is_some() as u8 | (s.sack as u8) << 1)?;
        self.u32(s.ts_now.unwrap_or(0))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        let b = self.buf.get(self.at..self.at + N).ok_or(MsgError::Truncated)?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MsgError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, MsgError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn side(&mut self) -> Result<Side, MsgError> {
        let local = Endpoint { addr: self.take()?, port: self.u16()? };
        let remote = Endpoint { addr: self.take()?, port: self.u16()? };
        let snd_nxt = Seq(self.u32()?);
        let rcv_nxt = Seq(self.u32()?);
        let peer_wscale = self.u8()?;
        let own_wscale = self.u8()?;
        let flags = self.u8()?;
        if flags & !3 != 0 {
            return Err(MsgError::BadFlags);
        }
        let ts = self.u32()?;
        Ok(Side { local, remote, snd_nxt, rcv_nxt, peer_wscale, own_wscale, ts_now: (flags & 1 != 0).then_some(ts), sack: flags & 2 != 0 })
    }
    fn end(&self) -> Result<(), MsgError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(MsgError::TrailingBytes)
        }
    }
}

impl Msg {
    /// Write the message into `out`; its length, or `None` when `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Writer { buf: out, at: 0 };
        match *self {
            Msg::Beat { active, boot, splices } => {
                w.u8(BEAT)?;
                w.u8(active as u8)?;
                w.u32(boot)?;
                w.u32(splices)?;
            }
            Msg::Splice { origin, state } => {
                w.u8(SPLICE)?;
                w.u32(origin)?;
                w.side(&state.client)?;
                w.side(&state.backend)?;
                w.u8(state.shifts[0].is_some() as u8 | (state.shifts[1].is_some() as u8) << 1)?;
                w.u32(state.shifts[0].unwrap_or(0))?;
                w.u32(state.shifts[1].unwrap_or(0))?;
            }
            Msg::End { origin } => {
                w.u8(END)?;
                w.u32(origin)?;
            }
            Msg::SyncDone { generation, count } => {
                w.u8(SYNC_DONE)?;
                w.u32(generation)?;
                w.u32(count)?;
            }
        }
        Some(w.at)
    }

    /// Read a message (already authenticated; its contents are still checked).
    pub fn decode(buf: &[u8]) -> Result<Msg, MsgError> {
        let mut r = Reader { buf, at: 0 };
        let msg = match r.u8()? {
            BEAT => {
                let active = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(MsgError::BadFlags),
                };
                Msg::Beat { active, boot: r.u32()?, splices: r.u32()? }
            }
            SPLICE => {
                let origin = r.u32()?;
                let client = r.side()?;
                let backend = r.side()?;
                let flags = r.u8()?;
                if flags & !3 != 0 {
                    return Err(MsgError::BadFlags);
                }
                let (a, b) = (r.u32()?, r.u32()?);
                validate_pair(&client, &backend).map_err(MsgError::BadSplice)?;
                let shifts = [(flags & 1 != 0).then_some(a), (flags & 2 != 0).then_some(b)];
                Msg::Splice { origin, state: SpliceState { client, backend, shifts } }
            }
            END => Msg::End { origin: r.u32()? },
            SYNC_DONE => Msg::SyncDone { generation: r.u32()?, count: r.u32()? },
            t => return Err(MsgError::UnknownType(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> SpliceState {
        let client = Side {
            local: Endpoint { addr: [10, 77, 0, 100], port: 80 },
            remote: Endpoint { addr: [10, 77, 0, 1], port: 40000 },
            snd_nxt: Seq(1),
            rcv_nxt: Seq(u32::MAX),
            peer_wscale: 7,
            own_wscale: 9,
            ts_now: Some(12345),
            sack: true,
        };
        let backend = Side {
            local: Endpoint { addr: [10, 77, 0, 100], port: 51000 },
            remote: Endpoint { addr: [10, 77, 0, 13], port: 8080 },
            snd_nxt: Seq(77),
            rcv_nxt: Seq(88),
            peer_wscale: 0,
            own_wscale: 14,
            ts_now: None,
            sack: false,
        };
        SpliceState { client, backend, shifts: [Some(5), None] }
    }

    fn all() -> [Msg; 4] {
        [
            Msg::Beat { active: true, boot: 7, splices: 3 },
            Msg::Splice { origin: 0x1_0002, state: state() },
            Msg::End { origin: 9 },
            Msg::SyncDone { generation: 4, count: 1000 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let mut buf = [0u8; MAX_LEN];
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(Msg::decode(&buf[..n]), Ok(m));
            // Every shorter prefix is refused, and so is a longer message.
            for k in 0..n {
                assert!(Msg::decode(&buf[..k]).is_err(), "{m:?} cut to {k}");
            }
            let mut longer = [0u8; MAX_LEN + 1];
            longer[..n].copy_from_slice(&buf[..n]);
            assert_eq!(Msg::decode(&longer[..n + 1]), Err(MsgError::TrailingBytes));
        }
    }

    #[test]
    fn a_splice_with_bad_sides_is_refused() {
        let mut s = state();
        s.backend.own_wscale = 15;
        let mut buf = [0u8; MAX_LEN];
        let n = Msg::Splice { origin: 1, state: s }.encode(&mut buf).unwrap();
        assert_eq!(Msg::decode(&buf[..n]), Err(MsgError::BadSplice(SideError::BadWscale)));
        assert_eq!(Msg::decode(&[99]), Err(MsgError::UnknownType(99)));
        assert_eq!(Msg::decode(&[BEAT, 2, 0, 0, 0, 0, 0, 0, 0, 0]), Err(MsgError::BadFlags));
    }

    #[test]
    fn a_small_buffer_is_refused_not_overrun() {
        let mut buf = [0u8; 10];
        assert_eq!(Msg::Splice { origin: 1, state: state() }.encode(&mut buf), None);
    }

    proptest! {
        /// Whatever arrives, decoding returns; what decodes encodes to the same bytes.
        #[test]
        fn fuzz_decode(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_LEN + 8)) {
            if let Ok(m) = Msg::decode(&bytes) {
                let mut buf = [0u8; MAX_LEN];
                let n = m.encode(&mut buf).unwrap();
                prop_assert_eq!(Msg::decode(&buf[..n]), Ok(m));
            }
        }

        /// Mutations of valid messages never panic.
        #[test]
        fn fuzz_mutations(which in 0usize..4, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let m = all()[which];
            let mut buf = [0u8; MAX_LEN];
            let n = m.encode(&mut buf).unwrap();
            buf[at.index(n)] = byte;
            let _ = Msg::decode(&buf[..n]);
        }
    }
}
