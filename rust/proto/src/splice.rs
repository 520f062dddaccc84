// SPDX-License-Identifier: GPL-2.0
//! CRAFT TCP splicing: a proxy's client connection and backend connection joined in
//! the kernel, so that the proxy never copies a byte of the transfer.
//!
//! The proxy accepts the client, reads the request, connects to a backend and sends
//! the request. Then it asks the kernel to splice the two connections:
//!
//! 1. **Freeze** (`PRE_SPLICE`): segments of either connection that carry data, a SYN
//!    or a FIN are held back from the proxy's sockets ([`frozen_verdict`]); pure ACKs
//!    and RSTs still reach them, so the bytes the proxy already sent can be
//!    acknowledged and a reset is still noticed.
//! 2. **Settle**: the proxy forwards any bytes left in its receive queues and waits
//!    until both send queues are empty, so nothing is left in flight that only the
//!    proxy's sockets could retransmit. From then on the two sockets cannot change.
//! 3. **Splice** (`SPLICE`): the proxy reads each socket's sequence numbers, window
//!    scales and timestamp clock (in TCP repair mode) and hands them over as two
//!    [`Side`]s. From then on each segment from one peer is rewritten into a segment
//!    of the other connection ([`Splice::plan`], [`Plan::apply`]) and sent on: the
//!    addresses and ports, the sequence and acknowledgment numbers, the SACK blocks,
//!    the window (rescaled) and the timestamps, with the checksums updated
//!    incrementally (RFC 1624). The held segments then pass the same way.
//!
//! The mapping between the two connections is fixed by the moment of the splice:
//! byte `rcv_nxt` of the client connection is byte `snd_nxt` of the backend
//! connection, and the other way round. Because the proxy settled first, each side's
//! `snd_nxt` is also its oldest unacknowledged byte, so an acknowledgment one peer
//! sends for anything before the splice maps below what the other peer has already
//! had acknowledged, which TCP ignores.
//!
//! Timestamps: each peer's clock is shifted onto the proxy's clock of the connection
//! it is forwarded on, so that the receiver's PAWS check (RFC 7323 §5) sees values
//! no older than the ones the proxy sent it ([`ts_shift`]). The module fixes the
//! shifts when splicing, from the latest value each socket saw; when a shift is not
//! known (no value seen yet), the first stamped segment fixes it. Echoes are shifted
//! back; an echo while the reverse shift is still unknown has no counterpart and is
//! sent as 0, which TCP takes as "no RTT sample".

use super::packet::{Ipv4Tcp, ParseError, Rewriter, TcpFlags, TcpOptions};
use super::seq::{Seq, SeqOffset};
use super::sha256::Sha256;

/// The largest window scale shift TCP uses (RFC 7323 §2.3).
pub const MAX_WSCALE: u8 = 14;

/// An IPv4 address and TCP port.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Endpoint {
    /// Address, network byte order bytes.
    pub addr: [u8; 4],
    /// Port.
    pub port: u16,
}

/// One of the proxy's two connections at the moment of the splice, as its socket
/// reports it once settled.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Side {
    /// The proxy's end.
    pub local: Endpoint,
    /// The peer's end.
    pub remote: Endpoint,
    /// The proxy's next sequence number to send; everything before it is acknowledged.
    pub snd_nxt: Seq,
    /// The next byte the proxy expects from the peer; the proxy has read all before it.
    pub rcv_nxt: Seq,
    /// The shift the peer announced: it scales the windows the peer advertises.
    pub peer_wscale: u8,
    /// The shift the proxy announced: the peer scales the proxy's windows by it.
    pub own_wscale: u8,
    /// The proxy's timestamp clock on this connection now; `None` when the connection
    /// does not use timestamps.
    pub ts_now: Option<u32>,
    /// SACK was negotiated on this connection. Informational: SACK blocks are
    /// mapped whenever a segment carries them, and a receiver that did not
    /// negotiate SACK ignores them.
    pub sack: bool,
}

/// Why a pair of sides cannot be spliced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SideError {
    /// A port is 0.
    ZeroPort,
    /// An address is 0.0.0.0, a multicast or broadcast address.
    BadAddress,
    /// A window scale above 14.
    BadWscale,
    /// The two connections are the same one, or share the proxy's local end and the
    /// peer (a packet could not tell which connection it belongs to).
    Ambiguous,
}

impl SideError {
    /// A short explanation for an error message.
    pub const fn as_str(self) -> &'static str {
        match self {
            SideError::ZeroPort => "a port is 0",
            SideError::BadAddress => "an address is unspecified, multicast or broadcast",
            SideError::BadWscale => "a window scale is above 14",
            SideError::Ambiguous => "the two connections have the same 4-tuple",
        }
    }
}

fn unicast(a: [u8; 4]) -> bool {
    a != [0; 4] && a[0] < 224
}

impl Side {
    /// Check what a proxy handed over.
    pub fn validate(&self) -> Result<(), SideError> {
        if self.local.port == 0 || self.remote.port == 0 {
            return Err(SideError::ZeroPort);
        }
        if !unicast(self.local.addr) || !unicast(self.remote.addr) {
            return Err(SideError::BadAddress);
        }
        if self.peer_wscale > MAX_WSCALE || self.own_wscale > MAX_WSCALE {
            return Err(SideError::BadWscale);
        }
        Ok(())
    }
}

/// Check a client side and a backend side before they are spliced.
pub fn validate_pair(client: &Side, backend: &Side) -> Result<(), SideError> {
    client.validate()?;
    backend.validate()?;
    if client.local == backend.local && client.remote == backend.remote {
        return Err(SideError::Ambiguous);
    }
    Ok(())
}

/// Which peer a segment comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// From the client, to be sent on to the backend.
    FromClient = 0,
    /// From the backend, to be sent on to the client.
    FromBackend = 1,
}

impl Dir {
    /// The other direction.
    pub const fn reverse(self) -> Dir {
        match self {
            Dir::FromClient => Dir::FromBackend,
            Dir::FromBackend => Dir::FromClient,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a segment of a frozen connection (between `PRE_SPLICE` and
/// `SPLICE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrozenVerdict {
    /// Let the proxy's socket have it: a pure ACK or an RST, which changes nothing the
    /// splice depends on.
    Pass,
    /// Keep it from the socket until the splice is set up (or the freeze is undone).
    Hold,
}

/// Decide the fate of a segment of a frozen connection.
pub fn frozen_verdict(p: &Ipv4Tcp) -> FrozenVerdict {
    let f = p.tcp.flags;
    if f.has(TcpFlags::RST) {
        return FrozenVerdict::Pass;
    }
    if p.payload_len() > 0 || f.has(TcpFlags::SYN) || f.has(TcpFlags::FIN) {
        FrozenVerdict::Hold
    } else {
        FrozenVerdict::Pass
    }
}

/// The timestamp shift for segments arriving from a peer whose latest value the
/// proxy saw is `peer_recent` and forwarded on a connection where the proxy's clock
/// reads `to_now`: every later value of the peer maps at or above what the proxy has
/// sent there, so the receiver's PAWS check passes. Fixing the shift when splicing
/// (rather than at the first stamped segment) makes it part of the state a peer proxy
/// can be given.
pub const fn ts_shift(to_now: u32, peer_recent: u32) -> u32 {
    to_now.wrapping_sub(peer_recent)
}

/// How a spliced connection is doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Carrying data.
    Open,
    /// Both FINs are sent and acknowledged, or a peer reset: only stragglers remain.
    Closed,
}

/// Per-direction counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    /// Segments forwarded.
    pub segments: u64,
    /// Payload bytes forwarded (retransmissions included).
    pub bytes: u64,
}

/// The rewrite of one segment, decided under the splice's lock and applied after.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan {
    /// New source.
    pub src: Endpoint,
    /// New destination.
    pub dst: Endpoint,
    /// Added to the sequence number.
    pub seq: SeqOffset,
    /// Added to the acknowledgment number and the SACK block edges.
    pub ack: SeqOffset,
    /// The new raw window.
    pub window: u16,
    /// New timestamp value and echo, when the segment has the option.
    pub timestamp: Option<(u32, u32)>,
    /// The receiver does not use timestamps: blank the option out.
    pub strip_timestamp: bool,
}

impl Plan {
    /// Rewrite the segment behind `rw`, which must be the one the plan was made for.
    pub fn apply(&self, rw: &mut Rewriter<'_>) -> Result<(), ParseError> {
        let p = *rw.parsed();
        rw.set_src_addr(self.src.addr);
        rw.set_dst_addr(self.dst.addr);
        rw.set_src_port(self.src.port);
        rw.set_dst_port(self.dst.port);
        rw.set_seq(self.seq.apply(p.tcp.seq));
        if p.tcp.flags.has(TcpFlags::ACK) {
            rw.set_ack(self.ack.apply(p.tcp.ack));
            let ack = self.ack;
            rw.map_sack(|s| ack.apply(s))?;
        }
        rw.set_window(self.window);
        if self.strip_timestamp {
            rw.blank_timestamp()?;
        } else if let Some((val, ecr)) = self.timestamp {
            rw.set_timestamp(val, ecr)?;
        }
        Ok(())
    }
}

/// Two spliced connections.
///
/// # Invariants
///
/// `client` and `backend` passed [`validate_pair`]. `ts_shift[d]`, once set, never
/// changes: it is what direction `d`'s timestamps are shifted by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Splice {
    client: Side,
    backend: Side,
    ts_shift: [Option<u32>; 2],
    /// One past the FIN each direction forwarded, in the receiver's space.
    fin_end: [Option<Seq>; 2],
    fin_acked: [bool; 2],
    reset: bool,
    counters: [Counters; 2],
    /// Where the response stands, for a resume or a reset after a backend failure.
    track: Track,
    /// Response bytes after the splice point, when the proxy knows where the
    /// response ends and routes each request of the connection itself: the
    /// client's next request is then held for the proxy (see
    /// [`Splice::holds_next_request`]).
    response_end: Option<u64>,
}

/// Where a splice's response stands, so that the proxy can carry the connection on
/// with another backend if this one fails, or at least reset the client at the
/// right sequence number: how far the response went and the client acknowledged
/// it, whether the client sent anything after the request, and for a resumable
/// splice the response's bytes as the client got them (their SHA-256, in order).
///
/// # Invariants
///
/// `digest`, when present, covers exactly the response bytes `[0, hashed)`
/// (offsets from the backend side's `rcv_nxt`); `ahead`, only with a digest, covers
/// `[start, end)` with `hashed <= start < end <= sent`; `hashed <= sent`; `broken` and
/// `scattered` once set stay set; without `scattered`, every response byte forwarded
/// is in `[0, hashed)` or in `ahead`'s range.
#[derive(Clone, Copy)]
struct Track {
    digest: Option<Sha256>,
    hashed: u64,
    ahead: Option<Ahead>,
    scattered: bool,
    sent: u64,
    acked: u64,
    client_sent: u64,
    client_window: u32,
    to_client_tsval: Option<u32>,
    broken: bool,
}

/// Response bytes forwarded past a hole in the digested prefix (a backend segment
/// lost or reordered on its way to the proxy): the client may hold them out of
/// order, so they get a digest of their own. One such run is kept; bytes past a
/// second hole make the splice unresumable.
#[derive(Clone, Copy)]
struct Ahead {
    start: u64,
    end: u64,
    digest: Sha256,
}

impl Ahead {
    fn view(&self) -> (u64, u64, u64) {
        (self.start, self.end, digest64(self.digest))
    }
}

impl PartialEq for Track {
    fn eq(&self, o: &Self) -> bool {
        (self.hashed, self.sent, self.acked, self.client_sent, self.client_window, self.to_client_tsval, self.broken)
            == (o.hashed, o.sent, o.acked, o.client_sent, o.client_window, o.to_client_tsval, o.broken)
            && self.digest.map(digest64) == o.digest.map(digest64)
            && self.ahead.map(|a| a.view()) == o.ahead.map(|a| a.view())
            && self.scattered == o.scattered
    }
}

impl Eq for Track {}

impl core::fmt::Debug for Track {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Track").field("hashed", &self.hashed).field("sent", &self.sent).field("acked", &self.acked).finish_non_exhaustive()
    }
}

/// The first 8 bytes of a SHA-256 digest, as a number: what a resume compares.
/// 64 bits are plenty against an accidental mismatch; the backends are trusted.
pub fn digest64(d: Sha256) -> u64 {
    let full = d.finish();
    let mut w = [0u8; 8];
    w.copy_from_slice(&full[..8]);
    u64::from_be_bytes(w)
}

/// Where a splice stands, read when its backend has failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ResumePoint {
    /// The splice was made resumable: `hashed` and `digest` mean something.
    pub resumable: bool,
    /// Response bytes the client may have, in order, all covered by `digest`.
    pub hashed: u64,
    /// One past the last response byte forwarded to the client.
    pub sent: u64,
    /// Response bytes the client acknowledged.
    pub acked: u64,
    /// Client bytes (a FIN counting one) forwarded to the backend after the splice
    /// point: a request the proxy never saw.
    pub client_sent: u64,
    /// The client's latest window, in bytes.
    pub client_window: u32,
    /// The latest timestamp value sent to the client (on the client connection's
    /// clock), when the connection uses timestamps.
    pub to_client_tsval: Option<u32>,
    /// [`digest64`] of the first `hashed` response bytes.
    pub digest: u64,
    /// Response bytes `[ahead_start, ahead_end)` were forwarded past a hole after
    /// `hashed` (empty when `ahead_end == ahead_start`): the client may hold them
    /// out of order. `ahead_digest` is their [`digest64`].
    pub ahead_start: u64,
    pub ahead_end: u64,
    pub ahead_digest: u64,
    /// A response byte could not be read for the digest.
    pub broken: bool,
    /// Bytes were forwarded past a second hole: not all of them are digested.
    pub scattered: bool,
}

/// Why a failed backend's connection cannot be carried on elsewhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotResumable {
    /// The splice was not made resumable.
    Untracked,
    /// A response byte could not be read for the digest.
    Broken,
    /// The client sent more after the request (another request, a body, a FIN): the
    /// proxy cannot replay what it never saw.
    ClientSent,
    /// Bytes were forwarded past more than one hole: the client may hold bytes no
    /// digest covers.
    Gap,
    /// The backend finished (FIN) or a peer reset: nothing is left to resume.
    Ended,
}

impl NotResumable {
    /// A short explanation for a log line.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotResumable::Untracked => "the splice was not made resumable",
            NotResumable::Broken => "a response byte could not be read for the digest",
            NotResumable::ClientSent => "the client sent more after the request",
            NotResumable::Gap => "bytes past more than one hole were forwarded",
            NotResumable::Ended => "the backend finished or a peer reset",
        }
    }
}

impl ResumePoint {
    /// Whether a replay of the request elsewhere can carry the connection on:
    /// `flags` are the splice's [`Splice::flags`].
    pub fn check(&self, flags: u8) -> Result<(), NotResumable> {
        if !self.resumable {
            return Err(NotResumable::Untracked);
        }
        if self.broken {
            return Err(NotResumable::Broken);
        }
        if flags & (FLAG_BACKEND_FIN | FLAG_RESET) != 0 {
            return Err(NotResumable::Ended);
        }
        if self.client_sent > 0 || flags & FLAG_CLIENT_FIN != 0 {
            return Err(NotResumable::ClientSent);
        }
        if self.scattered {
            return Err(NotResumable::Gap);
        }
        Ok(())
    }
}

/// [`Splice::flags`] bit: the client sent a FIN.
pub const FLAG_CLIENT_FIN: u8 = 1;
/// [`Splice::flags`] bit: the backend sent a FIN.
pub const FLAG_BACKEND_FIN: u8 = 2;
/// [`Splice::flags`] bit: both FINs are acknowledged.
pub const FLAG_CLOSED: u8 = 4;
/// [`Splice::flags`] bit: a peer reset.
pub const FLAG_RESET: u8 = 8;

/// The largest payload [`Splice::track_response`] reads at a time.
const TRACK_CHUNK: usize = 256;

impl Splice {
    /// Splice `client` to `backend`. `ts_shifts` fixes the timestamp shift of each
    /// direction (indexed by [`Dir`]) where it is known; see [`ts_shift`].
    pub fn new(client: Side, backend: Side, ts_shifts: [Option<u32>; 2]) -> Result<Self, SideError> {
        validate_pair(&client, &backend)?;
        Ok(Splice {
            client,
            backend,
            ts_shift: ts_shifts,
            fin_end: [None; 2],
            fin_acked: [false; 2],
            reset: false,
            counters: [Counters::default(); 2],
            track: Track {
                digest: None,
                hashed: 0,
                ahead: None,
                scattered: false,
                sent: 0,
                acked: 0,
                client_sent: 0,
                client_window: 0,
                to_client_tsval: None,
                broken: false,
            },
            response_end: None,
        })
    }

    /// The response ends `bytes` after the splice point, and the proxy routes the
    /// connection's next request itself: from now on client data is held for it
    /// rather than forwarded to this backend.
    pub fn set_response_end(&mut self, bytes: u64) {
        self.response_end = Some(bytes);
    }

    /// Whether a segment from direction `d` carries the client's next request (or
    /// part of it), to be held for the proxy rather than forwarded.
    pub fn holds_next_request(&self, d: Dir, p: &Ipv4Tcp) -> bool {
        self.response_end.is_some()
            && d == Dir::FromClient
            && p.payload_len() > 0
            && p.tcp.seq.add(p.payload_len() as u32).gt(self.client.rcv_nxt)
    }

    /// Account for a held client segment: its acknowledgment and window still tell
    /// how far the response got.
    pub fn note_held(&mut self, p: &Ipv4Tcp) {
        self.track_ack(p);
    }

    /// The client acknowledged the whole response (only known with a response end).
    pub fn response_done(&self) -> bool {
        self.response_end.is_some_and(|end| self.track.acked >= end)
    }

    /// Record what a resume needs from now on (see [`ResumePoint`]). Costs a
    /// SHA-256 of every response byte, so only splices on routes whose requests may
    /// be replayed are made resumable.
    pub fn make_resumable(&mut self) {
        if self.track.digest.is_none() && self.track.sent == 0 {
            self.track.digest = Some(Sha256::new());
        }
    }

    /// Whether the splice digests its response.
    pub fn is_resumable(&self) -> bool {
        self.track.digest.is_some()
    }

    /// Where the splice stands.
    pub fn resume_point(&self) -> ResumePoint {
        let t = &self.track;
        ResumePoint {
            resumable: t.digest.is_some(),
            hashed: t.hashed,
            sent: t.sent,
            acked: t.acked,
            client_sent: t.client_sent,
            client_window: t.client_window,
            to_client_tsval: t.to_client_tsval,
            digest: t.digest.map(digest64).unwrap_or(0),
            ahead_start: t.ahead.map_or(0, |a| a.start),
            ahead_end: t.ahead.map_or(0, |a| a.end),
            ahead_digest: t.ahead.map_or(0, |a| digest64(a.digest)),
            broken: t.broken,
            scattered: t.scattered,
        }
    }

    /// Digest the new response bytes a backend segment carries, if the splice is
    /// resumable. `read(offset, buf)` copies payload bytes from `offset` into `buf`
    /// and says whether it could. Bytes that continue the digested prefix go into
    /// its digest; bytes past a hole start (or continue) the one run digested on its
    /// own; bytes already in are retransmissions. Bytes past a second hole leave the
    /// splice scattered (not resumable).
    pub fn track_response(&mut self, p: &Ipv4Tcp, mut read: impl FnMut(usize, &mut [u8]) -> bool) {
        let base = self.backend.rcv_nxt;
        let t = &mut self.track;
        let len = p.payload_len() as i64;
        if t.digest.is_none() || len == 0 || t.broken {
            return;
        }
        // The segment's bytes as offsets from the splice point. Its start is taken
        // relative to the digested end (within 2 GiB either way, as TCP's windows
        // are), so that responses past 4 GiB are placed right too.
        let at = t.hashed as i64 + p.tcp.seq.diff(base.add(t.hashed as u32)) as i64;
        let end = at + len;
        if end <= t.hashed as i64 {
            return;
        }
        t.sent = t.sent.max(end as u64);
        let mut digest_range = |d: &mut Sha256, from: u64, to: u64| -> bool {
            // `from` and `to` lie within the segment: `at <= from < to <= end`.
            let mut off = (from as i64 - at) as usize;
            let stop = (to as i64 - at) as usize;
            let mut buf = [0u8; TRACK_CHUNK];
            while off < stop {
                let n = (stop - off).min(TRACK_CHUNK);
                if !read(off, &mut buf[..n]) {
                    return false;
                }
                d.update(&buf[..n]);
                off += n;
            }
            true
        };
        let (at, end) = (at.max(0) as u64, end as u64);
        // 1. The part that continues the prefix, up to the run ahead if any.
        if at <= t.hashed {
            let to = t.ahead.map_or(end, |a| end.min(a.start));
            if to > t.hashed {
                let Some(d) = t.digest.as_mut() else { return };
                if !digest_range(d, t.hashed, to) {
                    t.broken = true;
                    return;
                }
                t.hashed = to;
            }
        }
        // 2. The part that continues the run ahead, or starts it.
        match t.ahead.as_mut() {
            Some(a) if at <= a.end && end > a.end => {
                if !digest_range(&mut a.digest, a.end, end) {
                    t.broken = true;
                    return;
                }
                a.end = end;
            }
            None if at > t.hashed => {
                let mut d = Sha256::new();
                if !digest_range(&mut d, at, end) {
                    t.broken = true;
                    return;
                }
                t.ahead = Some(Ahead { start: at, end, digest: d });
            }
            _ => {}
        }
        // 3. Anything of the segment outside both digested ranges was forwarded
        // past a second hole.
        let first_open = at.max(t.hashed);
        let covered = end <= t.hashed || t.ahead.is_some_and(|a| first_open >= a.start && end <= a.end);
        if !covered {
            t.scattered = true;
        }
    }

    /// The client's acknowledgment (of response bytes) and window in a segment.
    fn track_ack(&mut self, p: &Ipv4Tcp) {
        let (snd_nxt, peer_wscale) = (self.client.snd_nxt, self.client.peer_wscale);
        let t = &mut self.track;
        if p.tcp.flags.has(TcpFlags::ACK) {
            let ahead = p.tcp.ack.diff(snd_nxt.add(t.acked as u32));
            if ahead > 0 {
                t.acked += ahead as u64;
            }
        }
        t.client_window = ((p.tcp.window as u64) << peer_wscale).min(u32::MAX as u64) as u32;
    }

    /// The resume point's view of a segment: the client's acknowledgment, window
    /// and bytes, and the timestamp the client is sent.
    fn track_segment(&mut self, d: Dir, p: &Ipv4Tcp, tsval_out: Option<u32>) {
        let (client, backend) = (self.client, self.backend);
        match d {
            Dir::FromClient => {
                self.track_ack(p);
                let t = &mut self.track;
                if p.seq_len() > 0 {
                    let end = p.tcp.seq.diff(client.rcv_nxt) as i64 + p.seq_len() as i64;
                    if end > 0 {
                        t.client_sent = t.client_sent.max(end as u64);
                    }
                }
            }
            Dir::FromBackend => {
                let t = &mut self.track;
                if tsval_out.is_some() {
                    t.to_client_tsval = tsval_out;
                }
                // Without a digest the bytes are only counted; with one,
                // track_response counts them as it digests.
                if t.digest.is_none() && p.payload_len() > 0 {
                    let end = p.tcp.seq.diff(backend.rcv_nxt.add(t.sent as u32)) as i64 + p.payload_len() as i64;
                    if end > 0 {
                        t.sent += end as u64;
                    }
                }
            }
        }
    }

    /// The client connection as handed over.
    pub fn client(&self) -> &Side {
        &self.client
    }

    /// The backend connection as handed over.
    pub fn backend(&self) -> &Side {
        &self.backend
    }

    /// The timestamp shift of each direction, where fixed.
    pub fn ts_shifts(&self) -> [Option<u32>; 2] {
        self.ts_shift
    }

    /// Counters of one direction.
    pub fn counters(&self, d: Dir) -> Counters {
        self.counters[d.index()]
    }

    /// Whether the connection still carries data.
    pub fn phase(&self) -> Phase {
        if self.reset || (self.fin_acked[0] && self.fin_acked[1]) {
            Phase::Closed
        } else {
            Phase::Open
        }
    }

    /// Flags for a listing: [`FLAG_CLIENT_FIN`], [`FLAG_BACKEND_FIN`],
    /// [`FLAG_CLOSED`] (both acknowledged) and [`FLAG_RESET`].
    pub fn flags(&self) -> u8 {
        self.fin_end[0].is_some() as u8
            | (self.fin_end[1].is_some() as u8) << 1
            | ((self.fin_acked[0] && self.fin_acked[1]) as u8) << 2
            | (self.reset as u8) << 3
    }

    /// The side a segment arrives on and the side it leaves on.
    fn sides(&self, d: Dir) -> (&Side, &Side) {
        match d {
            Dir::FromClient => (&self.client, &self.backend),
            Dir::FromBackend => (&self.backend, &self.client),
        }
    }

    /// Which direction a segment from `src` to `dst` belongs to, if either.
    pub fn direction(&self, src: Endpoint, dst: Endpoint) -> Option<Dir> {
        if src == self.client.remote && dst == self.client.local {
            Some(Dir::FromClient)
        } else if src == self.backend.remote && dst == self.backend.local {
            Some(Dir::FromBackend)
        } else {
            None
        }
    }

    /// Decide how to rewrite a segment arriving in direction `d`, and account for it
    /// (FIN and RST tracking, counters, the timestamp shift on first use).
    pub fn plan(&mut self, d: Dir, p: &Ipv4Tcp, opts: &TcpOptions) -> Plan {
        let (from, to) = self.sides(d);
        let (from, to) = (*from, *to);
        let seq = SeqOffset::between(from.rcv_nxt, to.snd_nxt);
        let ack = SeqOffset::between(from.snd_nxt, to.rcv_nxt);
        // The window in bytes as the sender meant it, in the receiver's units.
        // Rounding down never offers more room than the sender has.
        let bytes = (p.tcp.window as u64) << from.peer_wscale;
        let window = (bytes >> to.own_wscale).min(u16::MAX as u64) as u16;

        let mut timestamp = None;
        let mut strip_timestamp = false;
        if let Some((val, ecr)) = opts.timestamp {
            match to.ts_now {
                Some(now) => {
                    let shift = *self.ts_shift[d.index()].get_or_insert(now.wrapping_sub(val));
                    let back = self.ts_shift[d.reverse().index()];
                    let ecr = match back {
                        Some(b) if ecr != 0 => ecr.wrapping_sub(b),
                        _ => 0,
                    };
                    timestamp = Some((val.wrapping_add(shift), ecr));
                }
                None => strip_timestamp = true,
            }
        }

        let f = p.tcp.flags;
        let i = d.index();
        if f.has(TcpFlags::RST) {
            self.reset = true;
        }
        if f.has(TcpFlags::FIN) {
            let end = seq.apply(p.tcp.seq).add(p.seq_len());
            self.fin_end[i] = Some(match self.fin_end[i] {
                Some(old) => old.max(end),
                None => end,
            });
        }
        // This segment acknowledges the other direction's FIN once its ACK (in the
        // space it arrives in, which is the space the FIN was forwarded into) reaches it.
        let r = d.reverse().index();
        if f.has(TcpFlags::ACK) {
            if let Some(end) = self.fin_end[r] {
                if p.tcp.ack.ge(end) {
                    self.fin_acked[r] = true;
                }
            }
        }
        let c = &mut self.counters[i];
        c.segments += 1;
        c.bytes += p.payload_len() as u64;
        self.track_segment(d, p, timestamp.map(|(val, _)| val));

        Plan { src: to.local, dst: to.remote, seq, ack, window, timestamp, strip_timestamp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::csum;
    use super::super::packet::{build_ipv4_tcp, CsumMode, SegmentSpec};

    const CLIENT: Endpoint = Endpoint { addr: [10, 0, 0, 1], port: 40000 };
    const PROXY: Endpoint = Endpoint { addr: [10, 0, 0, 100], port: 80 };
    const PROXY_OUT: Endpoint = Endpoint { addr: [10, 0, 0, 100], port: 50000 };
    const BACKEND: Endpoint = Endpoint { addr: [10, 0, 0, 21], port: 8080 };

    fn sides() -> (Side, Side) {
        let client = Side {
            local: PROXY,
            remote: CLIENT,
            snd_nxt: Seq(1000),
            rcv_nxt: Seq(5000),
            peer_wscale: 7,
            own_wscale: 9,
            ts_now: Some(100_000),
            sack: true,
        };
        let backend = Side {
            local: PROXY_OUT,
            remote: BACKEND,
            snd_nxt: Seq(u32::MAX - 10),
            rcv_nxt: Seq(70_000),
            peer_wscale: 5,
            own_wscale: 7,
            ts_now: Some(200_000),
            sack: true,
        };
        (client, backend)
    }

    struct Seg<'a> {
        src: Endpoint,
        dst: Endpoint,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: &'a [u8],
        payload: &'a [u8],
    }

    fn packet(s: &Seg<'_>) -> ([u8; 2048], usize) {
        let mut out = [0u8; 2048];
        let n = build_ipv4_tcp(
            &mut out,
            &SegmentSpec {
                src: s.src.addr,
                dst: s.dst.addr,
                src_port: s.src.port,
                dst_port: s.dst.port,
                seq: Seq(s.seq),
                ack: Seq(s.ack),
                flags: TcpFlags(s.flags),
                window: s.window,
                id: 7,
                ttl: 64,
                options: s.options,
                payload: s.payload,
            },
        )
        .unwrap();
        (out, n)
    }

    fn ts_opt(val: u32, ecr: u32) -> [u8; 12] {
        let mut o = [1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        o[4..8].copy_from_slice(&val.to_be_bytes());
        o[8..12].copy_from_slice(&ecr.to_be_bytes());
        o
    }

    /// Run one segment through the splice; return the rewritten packet.
    fn forward(sp: &mut Splice, s: &Seg<'_>) -> ([u8; 2048], usize) {
        let (mut buf, n) = packet(s);
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        let opts = TcpOptions::parse(p.options(&buf[..n])).unwrap();
        let d = sp.direction(s.src, s.dst).unwrap();
        let plan = sp.plan(d, &p, &opts);
        let mut rw = Rewriter::new(&mut buf[..n], CsumMode::Full).unwrap();
        plan.apply(&mut rw).unwrap();
        (buf, n)
    }

    fn checksums_valid(pkt: &[u8]) -> bool {
        let p = Ipv4Tcp::parse(pkt).unwrap();
        let ip_ok = csum::checksum(&pkt[..p.ip.header_len]) == 0;
        let tcp_ok = csum::l4_verify(p.ip.src, p.ip.dst, 6, &pkt[p.ip.header_len..p.ip.total_len]);
        ip_ok && tcp_ok
    }

    #[test]
    fn client_data_becomes_backend_data_at_the_splice_point() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let opts = ts_opt(5_000, 100_000);
        let seg = Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x18, window: 100, options: &opts, payload: b"hello" };
        let (out, n) = forward(&mut sp, &seg);
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        assert_eq!((p.ip.src, p.tcp.src_port), (PROXY_OUT.addr, PROXY_OUT.port));
        assert_eq!((p.ip.dst, p.tcp.dst_port), (BACKEND.addr, BACKEND.port));
        assert_eq!(p.tcp.seq, Seq(u32::MAX - 10), "byte rcv_nxt of the client is byte snd_nxt to the backend");
        assert_eq!(p.tcp.ack, Seq(70_000), "the client's ack of snd_nxt is the backend's rcv_nxt");
        // 100 << 7 = 12800 bytes; the backend scales our field by 7.
        assert_eq!(p.tcp.window, 100);
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        assert_eq!(o.timestamp, Some((200_000, 0)), "shifted onto the proxy's clock; its own echo has no counterpart");
        assert_eq!(&out[p.payload_offset()..n], b"hello");
        assert!(checksums_valid(&out[..n]));
        assert_eq!(sp.counters(Dir::FromClient), Counters { segments: 1, bytes: 5 });
    }

    #[test]
    fn backend_data_becomes_client_data_and_timestamps_round_trip() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let copts = ts_opt(5_000, 100_000);
        forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x10, window: 100, options: &copts, payload: b"" });
        // The backend echoes the shifted client value.
        let bopts = ts_opt(9_000, 200_000);
        let seg = Seg { src: BACKEND, dst: PROXY_OUT, seq: 70_000, ack: u32::MAX - 10, flags: 0x18, window: 1000, options: &bopts, payload: b"response" };
        let (out, n) = forward(&mut sp, &seg);
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        assert_eq!((p.ip.src, p.tcp.src_port, p.ip.dst, p.tcp.dst_port), (PROXY.addr, PROXY.port, CLIENT.addr, CLIENT.port));
        assert_eq!(p.tcp.seq, Seq(1000));
        assert_eq!(p.tcp.ack, Seq(5000));
        // 1000 << 5 = 32000 bytes, >> 9 = 62.
        assert_eq!(p.tcp.window, 62);
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        assert_eq!(o.timestamp, Some((100_000, 5_000)), "the echo is the client's own value again");
        assert!(checksums_valid(&out[..n]));
        // And the client's next echo maps back onto the backend's clock.
        let copts = ts_opt(5_010, 100_000 + 3);
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1008, flags: 0x10, window: 100, options: &copts, payload: b"" });
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        assert_eq!(o.timestamp, Some((200_010, 9_003)));
        assert_eq!(p.tcp.ack, Seq(70_008));
    }

    #[test]
    fn shifts_fixed_at_the_splice_hold_from_the_first_segment() {
        let (c, b) = sides();
        // The proxy last saw 4_990 from the client and 8_000 from the backend.
        let shifts = [Some(ts_shift(b.ts_now.unwrap(), 4_990)), Some(ts_shift(c.ts_now.unwrap(), 8_000))];
        let mut sp = Splice::new(c, b, shifts).unwrap();
        let copts = ts_opt(5_000, 100_000);
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x10, window: 100, options: &copts, payload: b"" });
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        // 10 ms after the value the proxy saw: 10 ms after the proxy's own clock.
        assert_eq!(o.timestamp, Some((200_010, 100_000u32.wrapping_sub(100_000 - 8_000))));
        assert_eq!(sp.ts_shifts(), shifts);
    }

    #[test]
    fn sack_blocks_move_with_the_acknowledgments() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let mut opts = [1u8, 1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        opts[4..8].copy_from_slice(&2000u32.to_be_bytes());
        opts[8..12].copy_from_slice(&3000u32.to_be_bytes());
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1500, flags: 0x10, window: 10, options: &opts, payload: b"" });
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        assert_eq!(o.sack_blocks(), &[(Seq(71_000), Seq(72_000))]);
        assert_eq!(p.tcp.ack, Seq(70_500));
        assert!(checksums_valid(&out[..n]));
    }

    #[test]
    fn a_receiver_without_timestamps_gets_the_option_blanked() {
        let (c, mut b) = sides();
        b.ts_now = None;
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let opts = ts_opt(5_000, 100_000);
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x10, window: 10, options: &opts, payload: b"x" });
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        let o = TcpOptions::parse(p.options(&out[..n])).unwrap();
        assert_eq!(o.timestamp, None);
        assert!(checksums_valid(&out[..n]));
    }

    #[test]
    fn blanking_an_oddly_aligned_timestamp_keeps_the_checksum() {
        let (c, mut b) = sides();
        b.ts_now = None;
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let t = ts_opt(0x1234_5678, 0x9abc_def0);
        let mut opts = [1u8; 12];
        opts[1..11].copy_from_slice(&t[2..12]);
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x10, window: 10, options: &opts, payload: b"xyz" });
        let p = Ipv4Tcp::parse(&out[..n]).unwrap();
        assert!(p.options(&out[..n]).iter().all(|&b| b == 1));
        assert!(checksums_valid(&out[..n]));
    }

    #[test]
    fn windows_are_rescaled_and_capped() {
        let (mut c, mut b) = sides();
        c.peer_wscale = 14;
        b.own_wscale = 0;
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let (out, n) = forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x10, window: 8, options: &[], payload: b"" });
        // 8 << 14 bytes does not fit an unscaled field.
        assert_eq!(Ipv4Tcp::parse(&out[..n]).unwrap().tcp.window, u16::MAX);
    }

    #[test]
    fn the_splice_closes_after_both_fins_are_acknowledged() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x11, window: 10, options: &[], payload: b"ab" });
        assert_eq!(sp.flags() & 1, 1);
        // The backend acknowledges the FIN: 2 bytes + FIN after its rcv_nxt... in its space.
        let fin_end = (u32::MAX - 10).wrapping_add(3);
        forward(&mut sp, &Seg { src: BACKEND, dst: PROXY_OUT, seq: 70_000, ack: fin_end - 1, flags: 0x10, window: 10, options: &[], payload: b"" });
        assert_eq!(sp.phase(), Phase::Open);
        forward(&mut sp, &Seg { src: BACKEND, dst: PROXY_OUT, seq: 70_000, ack: fin_end, flags: 0x11, window: 10, options: &[], payload: b"" });
        assert_eq!(sp.phase(), Phase::Open, "the backend's FIN is not acknowledged yet");
        forward(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5003, ack: 1001, flags: 0x10, window: 10, options: &[], payload: b"" });
        assert_eq!(sp.phase(), Phase::Closed);
        assert_eq!(sp.flags(), 0b0111);
    }

    #[test]
    fn a_reset_closes_at_once() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        forward(&mut sp, &Seg { src: BACKEND, dst: PROXY_OUT, seq: 70_000, ack: 0, flags: 0x04, window: 0, options: &[], payload: b"" });
        assert_eq!(sp.phase(), Phase::Closed);
    }

    #[test]
    fn frozen_segments_with_data_syn_or_fin_are_held() {
        let cases: [(u8, &[u8], FrozenVerdict); 5] = [
            (0x10, b"", FrozenVerdict::Pass),
            (0x14, b"", FrozenVerdict::Pass),
            (0x18, b"x", FrozenVerdict::Hold),
            (0x11, b"", FrozenVerdict::Hold),
            (0x02, b"", FrozenVerdict::Hold),
        ];
        for (flags, payload, want) in cases {
            let (buf, n) = packet(&Seg { src: CLIENT, dst: PROXY, seq: 1, ack: 1, flags, window: 1, options: &[], payload });
            assert_eq!(frozen_verdict(&Ipv4Tcp::parse(&buf[..n]).unwrap()), want, "flags {flags:#x}");
        }
    }

    #[test]
    fn bad_sides_are_refused() {
        let (c, b) = sides();
        let mut x = c;
        x.local.port = 0;
        assert_eq!(validate_pair(&x, &b), Err(SideError::ZeroPort));
        let mut x = c;
        x.remote.addr = [224, 0, 0, 1];
        assert_eq!(validate_pair(&x, &b), Err(SideError::BadAddress));
        let mut x = b;
        x.peer_wscale = 15;
        assert_eq!(validate_pair(&c, &x), Err(SideError::BadWscale));
        assert_eq!(validate_pair(&c, &c), Err(SideError::Ambiguous));
        assert!(Splice::new(c, b, [None; 2]).is_ok());
    }

    #[test]
    fn segments_of_other_connections_have_no_direction() {
        let (c, b) = sides();
        let sp = Splice::new(c, b, [None; 2]).unwrap();
        assert_eq!(sp.direction(PROXY, CLIENT), None);
        assert_eq!(sp.direction(Endpoint { addr: CLIENT.addr, port: 1 }, PROXY), None);
    }

    /// Run a segment through a resumable splice as the module does: plan, then
    /// digest the response bytes it carries.
    fn forward_tracked(sp: &mut Splice, s: &Seg<'_>) {
        let (buf, n) = packet(s);
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        let opts = TcpOptions::parse(p.options(&buf[..n])).unwrap();
        let d = sp.direction(s.src, s.dst).unwrap();
        sp.plan(d, &p, &opts);
        if d == Dir::FromBackend {
            let payload = &buf[p.payload_offset()..n];
            sp.track_response(&p, |off, out| {
                out.copy_from_slice(&payload[off..off + out.len()]);
                true
            });
        }
    }

    fn from_backend(seq: u32, payload: &[u8]) -> Seg<'_> {
        Seg { src: BACKEND, dst: PROXY_OUT, seq, ack: u32::MAX - 10, flags: 0x18, window: 1000, options: &[], payload }
    }

    fn client_ack(ack: u32) -> Seg<'static> {
        Seg { src: CLIENT, dst: PROXY, seq: 5000, ack, flags: 0x10, window: 100, options: &[], payload: b"" }
    }

    #[test]
    fn a_resumable_splice_digests_the_response_in_order_and_follows_the_acks() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        assert!(!sp.resume_point().resumable, "not resumable unless asked");
        sp.make_resumable();
        // The response crosses the wrap of the backend's sequence space on purpose:
        // rcv_nxt is 70_000 here, so use offsets from it.
        let body: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        forward_tracked(&mut sp, &from_backend(70_000, &body[..60]));
        forward_tracked(&mut sp, &from_backend(70_060, &body[60..140]));
        // A retransmission overlapping what is in: only the new tail counts.
        forward_tracked(&mut sp, &from_backend(70_120, &body[120..160]));
        forward_tracked(&mut sp, &from_backend(70_000, &body[..20]));
        forward_tracked(&mut sp, &client_ack(1000 + 130));
        forward_tracked(&mut sp, &client_ack(1000 + 80));
        let r = sp.resume_point();
        assert_eq!((r.hashed, r.sent, r.acked, r.client_sent), (160, 160, 130, 0));
        let mut want = Sha256::new();
        want.update(&body[..160]);
        assert_eq!(r.digest, digest64(want));
        assert_eq!(r.client_window, 100 << 7);
        assert_eq!(r.check(sp.flags()), Ok(()));
    }

    #[test]
    fn a_plain_splice_counts_the_response_without_a_digest() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        forward_tracked(&mut sp, &from_backend(70_000, &[1; 100]));
        forward_tracked(&mut sp, &from_backend(70_150, &[1; 50]));
        forward_tracked(&mut sp, &from_backend(70_000, &[1; 100]));
        forward_tracked(&mut sp, &client_ack(1000 + 100));
        let r = sp.resume_point();
        assert_eq!((r.resumable, r.hashed, r.sent, r.acked, r.digest), (false, 0, 200, 100, 0));
        assert_eq!(r.check(sp.flags()), Err(NotResumable::Untracked));
        // Too late to start digesting: the bytes already sent are not in it.
        sp.make_resumable();
        assert!(!sp.is_resumable());
    }

    #[test]
    fn with_a_response_end_the_next_request_is_held_until_the_response_is_acknowledged() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let next = Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000 + 40, flags: 0x18, window: 100, options: &[], payload: b"GET /b" };
        let (buf, n) = packet(&next);
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        assert!(!sp.holds_next_request(Dir::FromClient, &p), "without a response end everything is forwarded");
        sp.set_response_end(100);
        assert!(sp.holds_next_request(Dir::FromClient, &p));
        let (ack, an) = packet(&client_ack(1000 + 60));
        assert!(!sp.holds_next_request(Dir::FromClient, &Ipv4Tcp::parse(&ack[..an]).unwrap()), "a pure ACK goes on");
        forward_tracked(&mut sp, &from_backend(70_000, &[7; 100]));
        sp.note_held(&p);
        assert!(!sp.response_done(), "40 of 100 bytes acknowledged");
        forward_tracked(&mut sp, &client_ack(1000 + 100));
        assert!(sp.response_done());
        let r = sp.resume_point();
        assert_eq!((r.acked, r.client_sent), (100, 0), "held bytes were not forwarded");
    }

    #[test]
    fn the_digest_does_not_depend_on_how_the_response_was_cut() {
        // Past 256 bytes a segment is digested in several reads.
        let body: Vec<u8> = (0..1800u32).map(|i| (i ^ (i >> 3)) as u8).collect();
        let mut digests = Vec::new();
        for cut in [1usize, 7, 256, 257, 1460] {
            let (c, b) = sides();
            let mut sp = Splice::new(c, b, [None; 2]).unwrap();
            sp.make_resumable();
            for (i, chunk) in body.chunks(cut).enumerate() {
                forward_tracked(&mut sp, &from_backend(70_000 + (i * cut) as u32, chunk));
            }
            digests.push(sp.resume_point().digest);
        }
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    }

    #[test]
    fn bytes_past_one_hole_get_a_digest_of_their_own() {
        let (c, b) = sides();
        let body: Vec<u8> = (0..600u32).map(|i| (i * 13 + 5) as u8).collect();
        let digest = |r: core::ops::Range<usize>| {
            let mut d = Sha256::new();
            d.update(&body[r]);
            digest64(d)
        };
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        sp.make_resumable();
        forward_tracked(&mut sp, &from_backend(70_000, &body[..100]));
        // [100, 200) is lost on the way; the next segments go on to the client.
        forward_tracked(&mut sp, &from_backend(70_200, &body[200..300]));
        forward_tracked(&mut sp, &from_backend(70_300, &body[300..350]));
        let r = sp.resume_point();
        assert_eq!((r.hashed, r.ahead_start, r.ahead_end, r.sent), (100, 200, 350, 350));
        assert_eq!((r.digest, r.ahead_digest), (digest(0..100), digest(200..350)));
        assert_eq!(r.check(sp.flags()), Ok(()), "the backend may die before it fills the hole");
        // The hole filled by a retransmission that overlaps both sides: the prefix
        // stops where the run begins, which goes on alone.
        forward_tracked(&mut sp, &from_backend(70_090, &body[90..220]));
        forward_tracked(&mut sp, &from_backend(70_340, &body[340..400]));
        // A retransmission of bytes in the run changes nothing.
        forward_tracked(&mut sp, &from_backend(70_250, &body[250..300]));
        let r = sp.resume_point();
        assert_eq!((r.hashed, r.ahead_start, r.ahead_end, r.sent), (200, 200, 400, 400));
        assert_eq!((r.digest, r.ahead_digest), (digest(0..200), digest(200..400)));
        assert_eq!(r.check(sp.flags()), Ok(()));
    }

    #[test]
    fn bytes_past_a_second_hole_make_a_splice_unresumable() {
        let (c, b) = sides();
        let fresh = || {
            let mut sp = Splice::new(c, b, [None; 2]).unwrap();
            sp.make_resumable();
            forward_tracked(&mut sp, &from_backend(70_000, &[1; 100]));
            forward_tracked(&mut sp, &from_backend(70_200, &[3; 100]));
            sp
        };
        // Past the run's end.
        let mut sp = fresh();
        forward_tracked(&mut sp, &from_backend(70_400, &[5; 100]));
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::Gap));
        // The hole after it filled later does not undo it: the run has those bytes
        // now, but the client may hold the ones past it from before.
        forward_tracked(&mut sp, &from_backend(70_300, &[4; 100]));
        let r = sp.resume_point();
        assert_eq!((r.ahead_end, r.sent, r.scattered), (400, 500, true));
        assert_eq!(r.check(sp.flags()), Err(NotResumable::Gap));
        // Inside the first hole without touching the prefix.
        let mut sp = fresh();
        forward_tracked(&mut sp, &from_backend(70_150, &[2; 20]));
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::Gap));
        // Inside the first hole and on into the run: its start is not in a digest.
        let mut sp = fresh();
        forward_tracked(&mut sp, &from_backend(70_150, &[2; 200]));
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::Gap));
    }

    #[test]
    fn a_client_byte_or_an_end_makes_a_splice_unresumable() {
        let (c, b) = sides();
        let fresh = || {
            let mut sp = Splice::new(c, b, [None; 2]).unwrap();
            sp.make_resumable();
            sp
        };
        // A second request (or a body) from the client.
        let mut sp = fresh();
        forward_tracked(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x18, window: 100, options: &[], payload: b"GET /" });
        assert_eq!(sp.resume_point().client_sent, 5);
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::ClientSent));
        // The client's FIN alone.
        let mut sp = fresh();
        forward_tracked(&mut sp, &Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x11, window: 100, options: &[], payload: b"" });
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::ClientSent));
        // The backend finished.
        let mut sp = fresh();
        forward_tracked(&mut sp, &Seg { flags: 0x19, ..from_backend(70_000, &[1; 10]) });
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::Ended));
        // A payload that cannot be read.
        let mut sp = fresh();
        let (buf, n) = packet(&from_backend(70_000, &[1; 10]));
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        sp.track_response(&p, |_, _| false);
        assert_eq!(sp.resume_point().check(sp.flags()), Err(NotResumable::Broken));
    }

    #[test]
    fn the_latest_timestamp_sent_to_the_client_is_recorded() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None, Some(1000)]).unwrap();
        sp.make_resumable();
        let o = ts_opt(9_000, 0);
        forward_tracked(&mut sp, &Seg { options: &o, ..from_backend(70_000, b"x") });
        assert_eq!(sp.resume_point().to_client_tsval, Some(10_000));
    }

    #[test]
    fn partial_checksums_keep_only_the_pseudo_header_in_step() {
        let (c, b) = sides();
        let mut sp = Splice::new(c, b, [None; 2]).unwrap();
        let s = Seg { src: CLIENT, dst: PROXY, seq: 5000, ack: 1000, flags: 0x18, window: 100, options: &[], payload: b"data" };
        let (mut buf, n) = packet(&s);
        // Make the field what a CHECKSUM_PARTIAL packet holds: the folded pseudo-header sum.
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        let pseudo = csum::fold(csum::pseudo_header(p.ip.src, p.ip.dst, 6, (n - p.ip.header_len) as u16));
        let at = p.ip.header_len + 16;
        buf[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        let opts = TcpOptions::parse(p.options(&buf[..n])).unwrap();
        let plan = sp.plan(Dir::FromClient, &p, &opts);
        let mut rw = Rewriter::new(&mut buf[..n], CsumMode::Partial).unwrap();
        plan.apply(&mut rw).unwrap();
        let q = Ipv4Tcp::parse(&buf[..n]).unwrap();
        let want = csum::fold(csum::pseudo_header(q.ip.src, q.ip.dst, 6, (n - q.ip.header_len) as u16));
        assert_eq!(u16::from_be_bytes([buf[at], buf[at + 1]]), want);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn side(local: Endpoint, remote: Endpoint) -> impl Strategy<Value = Side> {
            (any::<u32>(), any::<u32>(), 0u8..=14, 0u8..=14, proptest::option::of(any::<u32>()), any::<bool>()).prop_map(
                move |(snd, rcv, pw, ow, ts, sack)| Side {
                    local,
                    remote,
                    snd_nxt: Seq(snd),
                    rcv_nxt: Seq(rcv),
                    peer_wscale: pw,
                    own_wscale: ow,
                    ts_now: ts,
                    sack,
                },
            )
        }

        proptest! {
            /// Whatever the two sides and the segment, the rewritten segment has valid
            /// checksums, lands on the other connection, and keeps its payload; a
            /// byte's position maps forward and its acknowledgment maps back.
            #[test]
            fn rewrites_keep_checksums_and_invert(
                c in side(PROXY, CLIENT),
                b in side(PROXY_OUT, BACKEND),
                from_client in any::<bool>(),
                seq in any::<u32>(),
                ack in any::<u32>(),
                flags in prop_oneof![Just(0x10u8), Just(0x18), Just(0x11), Just(0x14)],
                window in any::<u16>(),
                ts in proptest::option::of((any::<u32>(), any::<u32>())),
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut sp = Splice::new(c, b, [None; 2]).unwrap();
                let (src, dst) = if from_client { (CLIENT, PROXY) } else { (BACKEND, PROXY_OUT) };
                let opts = ts.map(|(v, e)| ts_opt(v, e));
                let seg = Seg { src, dst, seq, ack, flags, window, options: opts.as_ref().map_or(&[][..], |o| &o[..]), payload: &payload };
                let (out, n) = forward(&mut sp, &seg);
                prop_assert!(checksums_valid(&out[..n]));
                let p = Ipv4Tcp::parse(&out[..n]).unwrap();
                let (to, from) = if from_client { (b, c) } else { (c, b) };
                prop_assert_eq!((p.ip.src, p.tcp.src_port), (to.local.addr, to.local.port));
                prop_assert_eq!((p.ip.dst, p.tcp.dst_port), (to.remote.addr, to.remote.port));
                prop_assert_eq!(&out[p.payload_offset()..n], &payload[..]);
                // Byte rcv_nxt of the arriving side is byte snd_nxt of the leaving one.
                prop_assert_eq!(p.tcp.seq.diff(to.snd_nxt), Seq(seq).diff(from.rcv_nxt));
                prop_assert_eq!(p.tcp.ack.diff(to.rcv_nxt), Seq(ack).diff(from.snd_nxt));
            }

            /// Whatever reaches the proxy of a response, in whatever order and
            /// however cut (losses, reordering, retransmissions): a resume point that
            /// says the splice can be resumed has digests of exactly the bytes at
            /// their places, and every byte forwarded lies in a digested range.
            #[test]
            fn a_resumable_point_covers_every_forwarded_byte(
                cuts in proptest::collection::vec((0usize..900, 1usize..200), 1..12),
            ) {
                let body: Vec<u8> = (0..1100u32).map(|i| (i * 31 + (i >> 4)) as u8).collect();
                let (c, b) = sides();
                let mut sp = Splice::new(c, b, [None; 2]).unwrap();
                sp.make_resumable();
                let mut forwarded = vec![false; body.len()];
                for &(at, len) in &cuts {
                    let end = (at + len).min(body.len());
                    forward_tracked(&mut sp, &from_backend(70_000 + at as u32, &body[at..end]));
                    forwarded[at..end].iter_mut().for_each(|f| *f = true);
                }
                let r = sp.resume_point();
                let last = forwarded.iter().rposition(|&f| f).map_or(0, |i| i + 1);
                prop_assert_eq!(r.sent, last as u64);
                if r.check(sp.flags()).is_ok() {
                    let (h, s, e) = (r.hashed as usize, r.ahead_start as usize, r.ahead_end as usize);
                    let mut d = Sha256::new();
                    d.update(&body[..h]);
                    prop_assert_eq!(r.digest, digest64(d));
                    prop_assert!(forwarded[..h].iter().all(|&f| f), "the prefix is what was forwarded");
                    if e > s {
                        let mut d = Sha256::new();
                        d.update(&body[s..e]);
                        prop_assert_eq!(r.ahead_digest, digest64(d));
                        prop_assert!(h <= s && forwarded[s..e].iter().all(|&f| f));
                    }
                    for (i, &f) in forwarded.iter().enumerate() {
                        prop_assert!(!f || i < h || (s..e).contains(&i), "byte {} forwarded but in no digest", i);
                    }
                }
            }
        }
    }
}
