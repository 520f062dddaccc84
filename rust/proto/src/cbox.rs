// SPDX-License-Identifier: GPL-2.0
//! Backdoors' Continuation Box: per client session, what a healthy node needs to
//! carry the session on after the target's service failed, laid out in memory that
//! a recovery node reads with one-sided RDMA READ.
//!
//! A box holds
//! - the **TCP state** of the session's connection, kept current by the target's
//!   kernel (sequence numbers, what the program read and wrote, windows, window
//!   scales, MSS, timestamps);
//! - two **application snapshot** slots: the program exports its state (opaque
//!   bytes) into the slot not published, then publishes it with one aligned 64-bit
//!   store of the published word. Each snapshot records where the program stood in
//!   both byte streams when it exported: `read` (the next client byte it would
//!   read) and `written` (the next byte it would write);
//! - two **logs**, rings of the latest bytes of each stream: the client's bytes the
//!   program read since its snapshot, and the bytes it wrote that the client may not
//!   have acknowledged. The restarted program re-reads the first and the repaired
//!   connection resends the second.
//!
//! Remote reads are not atomic with the target's writes, so every part carries its
//! own check: the TCP state a sequence count at both ends and a checksum, a slot its
//! tag and a checksum. A reader refuses what does not check and says why; a recovery
//! node reads again, or uses the older snapshot.
//!
//! Layout (little-endian, offsets in bytes):
//!
//! ```text
//! 0    header   magic u32 "LZCB", version u16, reserved u16, slot_capacity u32,
//!               log_capacity u32, session u64, published u64           (32 bytes)
//! 32   tcp      seq u32, reserved u32, fields (see TcpState, 64 bytes), check u64,
//!               seq again u32, reserved u32                             (88 bytes)
//! ...  slot 0   tag u64, len u32, read u32, written u32, reserved u32,
//!               check u64, data [slot_capacity]
//! ...  slot 1   the same
//! ...  log 0    (client → program) end u32, reserved u32, total u64, data [log_capacity]
//! ...  log 1    (program → client) the same
//! ```
//!
//! `published` is `tag << 1 | slot`; tag 0 means nothing was exported yet. A log's
//! `end` is the sequence number after its last byte, `total` how many bytes were
//! ever logged; byte `s` lives at `data[s mod log_capacity]`.

use super::le::{fnv64 as check64, le16, le32, le64, put32, put64};
use super::seq::Seq;

/// The header's magic, "LZCB" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LZCB");
/// The layout version.
pub const VERSION: u16 = 1;
/// Header size.
pub const HEADER_LEN: usize = 32;
/// Size of the TCP state part.
pub const TCP_LEN: usize = 88;
/// Size of a slot's header (before its data).
pub const SLOT_HEADER_LEN: usize = 32;
/// Size of a log's header (before its data).
pub const LOG_HEADER_LEN: usize = 16;
/// The largest snapshot slot and log this version accepts (a hostile box must not
/// make a reader size buffers at will).
pub const CAPACITY_MAX: u32 = 1 << 20;

const TCP_AT: usize = HEADER_LEN;
const SLOTS_AT: usize = TCP_AT + TCP_LEN;

/// Why a box (or a part of it) was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CbError {
    /// Shorter than its layout says.
    Truncated,
    /// Not a Continuation Box (or another byte order).
    BadMagic,
    /// A layout version this reader does not know.
    BadVersion,
    /// Reserved bits set, or a capacity out of range.
    BadHeader,
    /// No TCP state was written yet.
    NoTcp,
    /// The TCP state was being written while it was read (or is corrupt).
    TornTcp,
    /// The TCP state's numbers contradict each other.
    BadTcp,
    /// No snapshot was published yet.
    NoSnapshot,
    /// Neither the published snapshot nor the one before it checks.
    TornSnapshot,
}

impl CbError {
    /// A short explanation for a log line or an error message.
    pub const fn as_str(self) -> &'static str {
        match self {
            CbError::Truncated => "shorter than its layout",
            CbError::BadMagic => "not a continuation box",
            CbError::BadVersion => "a layout version this reader does not know",
            CbError::BadHeader => "reserved bits set or a capacity out of range",
            CbError::NoTcp => "no TCP state was written",
            CbError::TornTcp => "the TCP state was read while it changed",
            CbError::BadTcp => "the TCP state's numbers contradict each other",
            CbError::NoSnapshot => "no snapshot was published",
            CbError::TornSnapshot => "no published snapshot checks",
        }
    }
}

/// The sizes of a box's parts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Geometry {
    /// Bytes of application state a slot holds.
    pub slot_capacity: u32,
    /// Bytes each log holds.
    pub log_capacity: u32,
}

impl Geometry {
    /// Whether both capacities are within [`CAPACITY_MAX`] and not zero.
    pub fn valid(&self) -> bool {
        (1..=CAPACITY_MAX).contains(&self.slot_capacity) && (1..=CAPACITY_MAX).contains(&self.log_capacity)
    }

    fn slot_len(&self) -> usize {
        SLOT_HEADER_LEN + self.slot_capacity as usize
    }

    fn slot_at(&self, i: usize) -> usize {
        SLOTS_AT + i * self.slot_len()
    }

    fn log_at(&self, which: Stream) -> usize {
        self.slot_at(2) + which as usize * (LOG_HEADER_LEN + self.log_capacity as usize)
    }

    /// The whole box's size.
    pub fn box_len(&self) -> usize {
        self.log_at(Stream::ToClient) + LOG_HEADER_LEN + self.log_capacity as usize
    }
}

/// A connection's TCP state as the target's kernel keeps it in the box. Sequence
/// numbers are absolute (on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TcpState {
    pub local_addr: [u8; 4],
    pub local_port: u16,
    pub remote_addr: [u8; 4],
    pub remote_port: u16,
    /// The oldest byte sent and not acknowledged by the client.
    pub snd_una: u32,
    /// The next byte to send.
    pub snd_nxt: u32,
    /// One past the last byte the program wrote.
    pub write_seq: u32,
    /// The next client byte expected.
    pub rcv_nxt: u32,
    /// The next client byte the program would read.
    pub copied_seq: u32,
    /// The client's latest window, in bytes.
    pub snd_wnd: u32,
    /// The window this end last offered, in bytes.
    pub rcv_wnd: u32,
    /// The MSS the client announced.
    pub mss: u16,
    /// Window scales: the client's (applies to its windows) and this end's.
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Option flags: [`tcp_flag`].
    pub flags: u8,
    /// The latest timestamp value sent, and the latest the client sent (valid with
    /// [`tcp_flag::TIMESTAMPS`]).
    pub ts_val: u32,
    pub ts_recent: u32,
    /// The target's millisecond clock when this state was written.
    pub at_ms: u64,
}

/// [`TcpState::flags`] bits.
pub mod tcp_flag {
    /// The connection uses timestamps.
    pub const TIMESTAMPS: u8 = 1;
    /// The connection uses SACK.
    pub const SACK: u8 = 2;
    /// The client sent a FIN (counted in `rcv_nxt`).
    pub const FIN_IN: u8 = 4;
    /// Every flag this version knows.
    pub const ALL: u8 = TIMESTAMPS | SACK | FIN_IN;
}

impl TcpState {
    fn encode_fields(&self, f: &mut [u8]) {
        f[0..4].copy_from_slice(&self.local_addr);
        f[4..6].copy_from_slice(&self.local_port.to_le_bytes());
        f[6..10].copy_from_slice(&self.remote_addr);
        f[10..12].copy_from_slice(&self.remote_port.to_le_bytes());
        put32(f, 12, self.snd_una);
        put32(f, 16, self.snd_nxt);
        put32(f, 20, self.write_seq);
        put32(f, 24, self.rcv_nxt);
        put32(f, 28, self.copied_seq);
        put32(f, 32, self.snd_wnd);
        put32(f, 36, self.rcv_wnd);
        f[40..42].copy_from_slice(&self.mss.to_le_bytes());
        f[42] = self.snd_wscale;
        f[43] = self.rcv_wscale;
        f[44] = self.flags;
        f[45..48].fill(0);
        put32(f, 48, self.ts_val);
        put32(f, 52, self.ts_recent);
        put64(f, 56, self.at_ms);
    }

    fn decode_fields(f: &[u8]) -> Self {
        TcpState {
            local_addr: [f[0], f[1], f[2], f[3]],
            local_port: le16(f, 4),
            remote_addr: [f[6], f[7], f[8], f[9]],
            remote_port: le16(f, 10),
            snd_una: le32(f, 12),
            snd_nxt: le32(f, 16),
            write_seq: le32(f, 20),
            rcv_nxt: le32(f, 24),
            copied_seq: le32(f, 28),
            snd_wnd: le32(f, 32),
            rcv_wnd: le32(f, 36),
            mss: le16(f, 40),
            snd_wscale: f[42],
            rcv_wscale: f[43],
            flags: f[44],
            ts_val: le32(f, 48),
            ts_recent: le32(f, 52),
            at_ms: le64(f, 56),
        }
    }

    /// The timestamp clock of a connection re-created `elapsed_ms` after this state
    /// was read: on from the last value the client saw, so that its PAWS check
    /// passes (`None` without timestamps).
    pub fn ts_after(&self, elapsed_ms: u32) -> Option<u32> {
        (self.flags & tcp_flag::TIMESTAMPS != 0).then(|| self.ts_val.wrapping_add(elapsed_ms).wrapping_add(1))
    }

    /// Whether the numbers can describe a live connection: acknowledged ≤ sent ≤
    /// written, read ≤ received, each within a window's reach (2^30) of the other,
    /// known flags, window scales up to 14, a usable MSS, ports set.
    pub fn consistent(&self) -> bool {
        let within = |lo: u32, hi: u32| {
            let d = Seq(hi).diff(Seq(lo));
            (0..1 << 30).contains(&d)
        };
        within(self.snd_una, self.snd_nxt)
            && within(self.snd_nxt, self.write_seq)
            && within(self.copied_seq, self.rcv_nxt)
            && self.flags & !tcp_flag::ALL == 0
            && self.snd_wscale <= 14
            && self.rcv_wscale <= 14
            && self.mss >= 64
            && self.local_port != 0
            && self.remote_port != 0
    }
}

/// Offsets of the TCP part: seq, fields, check, seq again.
const TCP_FIELDS: core::ops::Range<usize> = 8..72;
const TCP_CHECK_AT: usize = 72;
const TCP_SEQ2_AT: usize = 80;

/// Which byte stream a log holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stream {
    /// The client's bytes, as the program reads them.
    FromClient = 0,
    /// The program's bytes, as the client receives them.
    ToClient = 1,
}

/// A published application snapshot, borrowed from the box.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Snapshot<'a> {
    pub tag: u64,
    /// The next client byte the program would have read when it exported.
    pub read: u32,
    /// The next byte the program would have written when it exported.
    pub written: u32,
    pub data: &'a [u8],
}

/// A box laid out in `b`, for the target that writes it. All writes keep the
/// layout valid for a concurrent remote reader, given that the caller orders its
/// stores as each method says.
pub struct Writer<'a> {
    b: &'a mut [u8],
    g: Geometry,
}

impl<'a> Writer<'a> {
    /// Lay a fresh box for `session` out in `b`. `None` when the geometry is out of
    /// range or `b` is too small.
    pub fn init(b: &'a mut [u8], g: Geometry, session: u64) -> Option<Self> {
        if !g.valid() || b.len() < g.box_len() {
            return None;
        }
        let b = &mut b[..g.box_len()];
        b.fill(0);
        put32(b, 0, MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        put32(b, 8, g.slot_capacity);
        put32(b, 12, g.log_capacity);
        put64(b, 16, session);
        Some(Writer { b, g })
    }

    /// Write the TCP state. `seq` is the previous count (0 at first): the part is
    /// stamped with the next count, never 0, at both ends; the returned count is the
    /// next call's `seq`.
    pub fn set_tcp(&mut self, seq: u32, t: &TcpState) -> u32 {
        let next = match seq.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        let p = &mut self.b[TCP_AT..TCP_AT + TCP_LEN];
        put32(p, 0, next);
        t.encode_fields(&mut p[TCP_FIELDS]);
        let check = check64(&[&next.to_le_bytes(), &p[TCP_FIELDS]]);
        put64(p, TCP_CHECK_AT, check);
        put32(p, TCP_SEQ2_AT, next);
        next
    }

    /// Export an application snapshot into the slot not published, and return the
    /// published word to store at [`PUBLISHED_AT`] once the slot's bytes are
    /// visible (the kernel orders the two with a write barrier). `None` when `data`
    /// is larger than a slot.
    pub fn export(&mut self, data: &[u8], read: u32, written: u32) -> Option<u64> {
        if data.len() > self.g.slot_capacity as usize {
            return None;
        }
        let published = le64(self.b, 24);
        let slot = if published == 0 { 0 } else { 1 - (published & 1) as usize };
        let tag = (published >> 1) + 1;
        let at = self.g.slot_at(slot);
        let s = &mut self.b[at..at + self.g.slot_len()];
        put32(s, 8, data.len() as u32);
        put32(s, 12, read);
        put32(s, 16, written);
        put32(s, 20, 0);
        s[SLOT_HEADER_LEN..SLOT_HEADER_LEN + data.len()].copy_from_slice(data);
        put64(s, 0, tag);
        let check = check64(&[&s[0..24], data]);
        put64(s, 24, check);
        Some(tag << 1 | slot as u64)
    }

    /// Store the published word (the kernel does this with one atomic 64-bit store).
    pub fn publish(&mut self, word: u64) {
        put64(self.b, 24, word);
    }

    /// Append `bytes` to a log: they are the stream's bytes up to sequence number
    /// `end` (exclusive).
    pub fn log(&mut self, which: Stream, end: u32, bytes: &[u8]) {
        let cap = self.g.log_capacity as usize;
        let at = self.g.log_at(which);
        let (head, data) = self.b[at..at + LOG_HEADER_LEN + cap].split_at_mut(LOG_HEADER_LEN);
        // Only the last `cap` bytes can be kept.
        let keep = &bytes[bytes.len().saturating_sub(cap)..];
        let first = end.wrapping_sub(keep.len() as u32);
        for (i, &byte) in keep.iter().enumerate() {
            data[(first.wrapping_add(i as u32) as usize) % cap] = byte;
        }
        let total = le64(head, 8).wrapping_add(bytes.len() as u64);
        put64(head, 8, total);
        put32(head, 0, end);
    }
}

/// Where the published word lives in a box (8-byte aligned).
pub const PUBLISHED_AT: usize = 24;

/// A box read from a target, checked as far as its header. The parts are checked
/// when asked for, each on its own: a torn snapshot does not hide the TCP state.
#[derive(Clone, Copy, Debug)]
pub struct CBox<'a> {
    b: &'a [u8],
    g: Geometry,
}

impl<'a> CBox<'a> {
    /// Check a box's header and length.
    pub fn parse(b: &'a [u8]) -> Result<Self, CbError> {
        if b.len() < HEADER_LEN {
            return Err(CbError::Truncated);
        }
        if le32(b, 0) != MAGIC {
            return Err(CbError::BadMagic);
        }
        if le16(b, 4) != VERSION {
            return Err(CbError::BadVersion);
        }
        let g = Geometry { slot_capacity: le32(b, 8), log_capacity: le32(b, 12) };
        if le16(b, 6) != 0 || !g.valid() {
            return Err(CbError::BadHeader);
        }
        if b.len() < g.box_len() {
            return Err(CbError::Truncated);
        }
        Ok(CBox { b: &b[..g.box_len()], g })
    }

    pub fn geometry(&self) -> Geometry {
        self.g
    }

    pub fn session(&self) -> u64 {
        le64(self.b, 16)
    }

    /// The TCP state, if it was not being rewritten while read and is consistent.
    pub fn tcp(&self) -> Result<TcpState, CbError> {
        let p = &self.b[TCP_AT..TCP_AT + TCP_LEN];
        let seq = le32(p, 0);
        if seq == 0 && le32(p, TCP_SEQ2_AT) == 0 {
            return Err(CbError::NoTcp);
        }
        if seq != le32(p, TCP_SEQ2_AT) || le64(p, TCP_CHECK_AT) != check64(&[&seq.to_le_bytes(), &p[TCP_FIELDS]]) {
            return Err(CbError::TornTcp);
        }
        let t = TcpState::decode_fields(&p[TCP_FIELDS]);
        let reserved_clear = p[4..8] == [0; 4] && p[84..88] == [0; 4] && p[TCP_FIELDS][45..48] == [0; 3];
        if !reserved_clear || !t.consistent() {
            return Err(CbError::BadTcp);
        }
        Ok(t)
    }

    fn slot(&self, i: usize) -> Option<Snapshot<'a>> {
        let at = self.g.slot_at(i);
        let s = &self.b[at..at + self.g.slot_len()];
        let len = le32(s, 8);
        if len > self.g.slot_capacity || le32(s, 20) != 0 {
            return None;
        }
        let data = &s[SLOT_HEADER_LEN..SLOT_HEADER_LEN + len as usize];
        if le64(s, 24) != check64(&[&s[0..24], data]) {
            return None;
        }
        Some(Snapshot { tag: le64(s, 0), read: le32(s, 12), written: le32(s, 16), data })
    }

    /// The published snapshot, or the one before it when the published one was
    /// being rewritten while read (a new export overwrites the older slot only).
    pub fn snapshot(&self) -> Result<Snapshot<'a>, CbError> {
        let word = le64(self.b, 24);
        let (tag, slot) = (word >> 1, (word & 1) as usize);
        if tag == 0 {
            return Err(CbError::NoSnapshot);
        }
        if let Some(s) = self.slot(slot).filter(|s| s.tag == tag) {
            return Ok(s);
        }
        self.slot(1 - slot).filter(|s| s.tag + 1 == tag).ok_or(CbError::TornSnapshot)
    }

    /// The bytes of stream `which` from sequence number `from` to `to` (exclusive),
    /// if the log still holds all of them.
    pub fn log_range(&self, which: Stream, from: u32, to: u32) -> Option<LogBytes<'a>> {
        let cap = self.g.log_capacity;
        let at = self.g.log_at(which);
        let head = &self.b[at..at + LOG_HEADER_LEN];
        let data = &self.b[at + LOG_HEADER_LEN..at + LOG_HEADER_LEN + cap as usize];
        let end = le32(head, 0);
        let held = le64(head, 8).min(cap as u64) as u32;
        let first = end.wrapping_sub(held);
        let len = Seq(to).diff(Seq(from));
        if len < 0 || Seq(from).lt(Seq(first)) || Seq(to).gt(Seq(end)) {
            return None;
        }
        Some(LogBytes { data, from, len: len as u32 })
    }
}

/// A range of a log's bytes, which may wrap around the ring.
#[derive(Clone, Copy, Debug)]
pub struct LogBytes<'a> {
    data: &'a [u8],
    from: u32,
    len: u32,
}

impl<'a> LogBytes<'a> {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes in order, in at most two pieces.
    pub fn pieces(&self) -> (&'a [u8], &'a [u8]) {
        let cap = self.data.len();
        let start = self.from as usize % cap;
        let len = self.len as usize;
        if start + len <= cap {
            (&self.data[start..start + len], &[])
        } else {
            (&self.data[start..], &self.data[..len - (cap - start)])
        }
    }
}

/// How a recovery node re-creates a session's connection and restarts its program
/// from a snapshot.
///
/// The restarted program resumes from the snapshot: it reads the client's stream
/// from `read` on and writes its own from `written` on. So the repaired connection
///
/// - takes into its receive queue the client bytes `[read, rcv_nxt)`, from the
///   log (the client will not resend what the target acknowledged);
/// - takes into its send queue, as sent and unacknowledged, the bytes
///   `[snd_una, written)`, from the log, when the client has not acknowledged all
///   of what the program wrote before the snapshot;
/// - discards the first `snd_una - written` bytes the program writes again when the
///   client acknowledged past the snapshot: it has them (the program is
///   deterministic given its input; bytes it wrote again that the client had but
///   not acknowledged are resent and match);
/// - keeps the numbers the client knows: window scales, MSS, SACK, and a timestamp
///   clock on from the last value the client saw.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SalvagePlan {
    /// The receive queue begins at this sequence number and holds `replay` bytes.
    pub recv_from: u32,
    pub replay: u32,
    /// The send queue begins at this sequence number and holds `resend` bytes.
    pub send_from: u32,
    pub resend: u32,
    /// Bytes the restarted program writes first that are not sent.
    pub discard: u32,
}

/// Why a session cannot be salvaged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SalvageError {
    /// The snapshot is from the future of the TCP state (it was read from another
    /// connection, or the numbers are corrupt).
    SnapshotAhead,
    /// The client's log no longer holds every byte the program must read again.
    ClientLogShort,
    /// The program's log no longer holds every byte the client lacks.
    OutputLogShort,
    /// The client's stream ended with a FIN the program did not read before the
    /// snapshot: replaying the FIN is not supported.
    FinUnread,
}

impl SalvageError {
    pub const fn as_str(self) -> &'static str {
        match self {
            SalvageError::SnapshotAhead => "the snapshot is ahead of the connection",
            SalvageError::ClientLogShort => "the log of client bytes does not reach back to the snapshot",
            SalvageError::OutputLogShort => "the log of output does not hold every byte the client lacks",
            SalvageError::FinUnread => "the client's FIN came after the snapshot",
        }
    }
}

/// Plan the salvage of a box's session from its TCP state and snapshot, checking
/// that its logs hold what the plan needs.
pub fn plan_salvage(b: &CBox<'_>, t: &TcpState, s: &Snapshot<'_>) -> Result<SalvagePlan, SalvageError> {
    // What the program read and wrote at the snapshot is at most what it had read
    // and written since.
    let behind = |snap: u32, now: u32| (0..1 << 30).contains(&Seq(now).diff(Seq(snap)));
    if !behind(s.read, t.copied_seq) || !behind(s.written, t.write_seq) {
        return Err(SalvageError::SnapshotAhead);
    }
    let client_end = if t.flags & tcp_flag::FIN_IN != 0 { t.rcv_nxt.wrapping_sub(1) } else { t.rcv_nxt };
    if t.flags & tcp_flag::FIN_IN != 0 && Seq(s.read).lt(Seq(t.rcv_nxt)) {
        return Err(SalvageError::FinUnread);
    }
    let replay = Seq(client_end).diff(Seq(s.read)).max(0) as u32;
    if replay > 0 && b.log_range(Stream::FromClient, s.read, s.read.wrapping_add(replay)).is_none() {
        return Err(SalvageError::ClientLogShort);
    }
    let lacking = Seq(s.written).diff(Seq(t.snd_una));
    let (resend, discard) = if lacking >= 0 { (lacking as u32, 0) } else { (0, lacking.unsigned_abs()) };
    if resend > 0 && b.log_range(Stream::ToClient, t.snd_una, t.snd_una.wrapping_add(resend)).is_none() {
        return Err(SalvageError::OutputLogShort);
    }
    Ok(SalvagePlan { recv_from: s.read, replay, send_from: t.snd_una, resend, discard })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: Geometry = Geometry { slot_capacity: 256, log_capacity: 100 };
    /// Logs long enough for every salvage case below.
    const SALVAGE: Geometry = Geometry { slot_capacity: 16, log_capacity: 400 };

    fn tcp() -> TcpState {
        TcpState {
            local_addr: [10, 77, 0, 100],
            local_port: 8080,
            remote_addr: [10, 77, 0, 1],
            remote_port: 40000,
            snd_una: 5000,
            snd_nxt: 5100,
            write_seq: 5150,
            rcv_nxt: 900,
            copied_seq: 880,
            snd_wnd: 65535,
            rcv_wnd: 29200,
            mss: 1460,
            snd_wscale: 7,
            rcv_wscale: 7,
            flags: tcp_flag::TIMESTAMPS | tcp_flag::SACK,
            ts_val: 123,
            ts_recent: 456,
            at_ms: 99,
        }
    }

    fn boxed(buf: &mut [u8]) -> Writer<'_> {
        Writer::init(buf, G, 42).unwrap()
    }

    #[test]
    fn a_box_round_trips() {
        let mut buf = vec![0u8; G.box_len()];
        let mut w = boxed(&mut buf);
        w.set_tcp(0, &tcp());
        let word = w.export(b"state one", 850, 5050).unwrap();
        w.publish(word);
        w.log(Stream::FromClient, 900, &[7; 60]);
        let b = CBox::parse(&buf).unwrap();
        assert_eq!((b.session(), b.geometry()), (42, G));
        assert_eq!(b.tcp().unwrap(), tcp());
        let s = b.snapshot().unwrap();
        assert_eq!((s.tag, s.read, s.written, s.data), (1, 850, 5050, &b"state one"[..]));
        let r = b.log_range(Stream::FromClient, 850, 900).unwrap();
        assert_eq!((r.len(), r.pieces().0.len()), (50, 50));
        assert!(b.log_range(Stream::FromClient, 839, 900).is_none(), "60 bytes logged, not 61");
        assert!(b.log_range(Stream::FromClient, 850, 901).is_none(), "not past the end");
    }

    #[test]
    fn exports_alternate_slots_and_a_torn_one_falls_back_to_the_one_before() {
        let mut buf = vec![0u8; G.box_len()];
        let mut w = boxed(&mut buf);
        assert_eq!(w.export(b"a", 1, 1), Some(1 << 1));
        w.publish(1 << 1);
        let second = w.export(b"bb", 2, 2).unwrap();
        assert_eq!(second, 2 << 1 | 1, "tag 2 in slot 1");
        // Not published yet: readers still get the first.
        assert_eq!(CBox::parse(&buf).unwrap().snapshot().unwrap().data, b"a");
        let mut w = Writer { g: G, b: &mut buf };
        w.publish(second);
        assert_eq!(CBox::parse(&buf).unwrap().snapshot().unwrap().data, b"bb");
        // The published slot read while it changed (by hand: a new export writes
        // the other slot).
        let at = G.slot_at(1) + SLOT_HEADER_LEN;
        buf[at] ^= 1;
        let s = CBox::parse(&buf).unwrap().snapshot().unwrap();
        assert_eq!((s.tag, s.data), (1, &b"a"[..]), "the one before");
        // Both torn: refused.
        let at0 = G.slot_at(0) + SLOT_HEADER_LEN;
        buf[at0] ^= 1;
        assert_eq!(CBox::parse(&buf).unwrap().snapshot(), Err(CbError::TornSnapshot));
        // A third export overwrote slot 0 (tag 3) but the word still says 2, torn:
        // tag 3 is not the one before 2, so it is not taken either.
        let mut w = Writer { g: G, b: &mut buf };
        assert_eq!(w.export(b"ccc", 3, 3), Some(3 << 1));
        assert_eq!(CBox::parse(&buf).unwrap().snapshot(), Err(CbError::TornSnapshot));
    }

    #[test]
    fn a_tcp_state_read_while_it_changed_is_refused() {
        let mut buf = vec![0u8; G.box_len()];
        boxed(&mut buf);
        assert_eq!(CBox::parse(&buf).unwrap().tcp(), Err(CbError::NoTcp));
        let seq = Writer { g: G, b: &mut buf }.set_tcp(0, &tcp());
        // The writer began the next update: the first count moved, the rest did not.
        let mut torn = buf.clone();
        put32(&mut torn, TCP_AT, seq + 1);
        assert_eq!(CBox::parse(&torn).unwrap().tcp(), Err(CbError::TornTcp));
        // A field changed under the check.
        let mut torn = buf.clone();
        torn[TCP_AT + TCP_FIELDS.start + 13] ^= 4;
        assert_eq!(CBox::parse(&torn).unwrap().tcp(), Err(CbError::TornTcp));
        // Well stamped but impossible numbers: acknowledged past what was sent.
        Writer { g: G, b: &mut buf }.set_tcp(seq, &TcpState { snd_una: 6000, ..tcp() });
        assert_eq!(CBox::parse(&buf).unwrap().tcp(), Err(CbError::BadTcp));
        let t = tcp();
        assert_eq!((t.ts_after(10), TcpState { flags: 0, ..t }.ts_after(10)), (Some(134), None));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut buf = vec![0u8; G.box_len()];
        boxed(&mut buf);
        assert_eq!(CBox::parse(&buf[..G.box_len() - 1]).unwrap_err(), CbError::Truncated);
        assert_eq!(CBox::parse(&buf[..10]).unwrap_err(), CbError::Truncated);
        let cases: [(usize, u8, CbError); 4] =
            [(0, 1, CbError::BadMagic), (4, 2, CbError::BadVersion), (6, 1, CbError::BadHeader), (11, 0x80, CbError::BadHeader)];
        for (at, bit, want) in cases {
            let mut b = buf.clone();
            b[at] ^= bit;
            assert_eq!(CBox::parse(&b).unwrap_err(), want, "byte {at}");
        }
        let mut b = buf.clone();
        put32(&mut b, 12, 0);
        assert_eq!(CBox::parse(&b).unwrap_err(), CbError::BadHeader, "an empty log");
        assert!(Writer::init(&mut buf[..100], G, 1).is_none(), "too small");
    }

    #[test]
    fn a_log_wraps_and_keeps_the_latest_bytes() {
        let mut buf = vec![0u8; G.box_len()];
        let mut w = boxed(&mut buf);
        // Sequence numbers across the 2^32 wrap as well as the ring's.
        let base = u32::MAX - 130;
        let stream: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut end = base;
        for chunk in stream.chunks(37) {
            end = end.wrapping_add(chunk.len() as u32);
            w.log(Stream::ToClient, end, chunk);
        }
        let b = CBox::parse(&buf).unwrap();
        let from = end.wrapping_sub(100);
        let r = b.log_range(Stream::ToClient, from, end).unwrap();
        let (a, c) = r.pieces();
        assert_eq!([a, c].concat(), stream[150..]);
        assert!(b.log_range(Stream::ToClient, from.wrapping_sub(1), end).is_none());
        // One write larger than the ring.
        let mut w = Writer { g: G, b: &mut buf };
        w.log(Stream::ToClient, end.wrapping_add(300), &[9; 300]);
        let b = CBox::parse(&buf).unwrap();
        let r = b.log_range(Stream::ToClient, end.wrapping_add(200), end.wrapping_add(300)).unwrap();
        assert_eq!([r.pieces().0, r.pieces().1].concat(), [9; 100]);
    }

    /// A box for `t` with a snapshot at (`read`, `written`) and logs holding the
    /// client's bytes from `client_from` and the output from `out_from`.
    fn salvage_box(buf: &mut [u8], t: &TcpState, read: u32, written: u32, client_from: u32, out_from: u32) {
        let mut w = Writer::init(buf, SALVAGE, 7).unwrap();
        w.set_tcp(0, t);
        let word = w.export(b"s", read, written).unwrap();
        w.publish(word);
        let client_end = if t.flags & tcp_flag::FIN_IN != 0 { t.rcv_nxt - 1 } else { t.rcv_nxt };
        w.log(Stream::FromClient, client_end, &vec![1; (client_end - client_from) as usize]);
        w.log(Stream::ToClient, t.write_seq, &vec![2; (t.write_seq - out_from) as usize]);
    }

    fn plan(t: &TcpState, read: u32, written: u32, client_from: u32, out_from: u32) -> Result<SalvagePlan, SalvageError> {
        let mut buf = vec![0u8; SALVAGE.box_len()];
        salvage_box(&mut buf, t, read, written, client_from, out_from);
        let b = CBox::parse(&buf).unwrap();
        plan_salvage(&b, &b.tcp().unwrap(), &b.snapshot().unwrap())
    }

    #[test]
    fn salvage_replays_input_since_the_snapshot_and_resends_what_the_client_lacks() {
        let t = tcp();
        // Snapshot at read 850, written 5050; the client acknowledged 5000.
        let p = plan(&t, 850, 5050, 820, 5060).map_err(|e| e.as_str());
        assert_eq!(p, Err(SalvageError::OutputLogShort.as_str()), "the output log starts after 5000");
        let p = plan(&t, 850, 5050, 820, 5000).unwrap();
        assert_eq!(p, SalvagePlan { recv_from: 850, replay: 50, send_from: 5000, resend: 50, discard: 0 });
        // The client acknowledged past the snapshot: what the program writes again
        // up to the acknowledgment is not sent.
        let p = plan(&TcpState { snd_una: 5080, ..t }, 850, 5050, 820, 5080).unwrap();
        assert_eq!((p.send_from, p.resend, p.discard), (5080, 0, 30));
        // The client's log does not reach back to the snapshot.
        assert_eq!(plan(&t, 850, 5050, 860, 5000), Err(SalvageError::ClientLogShort));
        // A snapshot ahead of the connection.
        assert_eq!(plan(&t, 890, 5050, 820, 5000), Err(SalvageError::SnapshotAhead));
        assert_eq!(plan(&t, 850, 5160, 820, 5000), Err(SalvageError::SnapshotAhead));
        // The client's FIN: fine once the program read it, refused before.
        let fin = TcpState { flags: tcp_flag::FIN_IN, rcv_nxt: 900, copied_seq: 900, ..t };
        assert_eq!(plan(&fin, 850, 5050, 820, 5000), Err(SalvageError::FinUnread));
        assert_eq!(plan(&fin, 900, 5050, 820, 5000).map(|p| p.replay), Ok(0));
    }

    proptest! {
        /// Whatever a target's box holds, reading it returns, and never borrows
        /// past its end.
        #[test]
        fn fuzz_read(bytes in proptest::collection::vec(any::<u8>(), 0..1200), valid_header in any::<bool>(),
                     from in any::<u32>(), len in 0u32..300) {
            let mut b = bytes;
            if valid_header && b.len() >= HEADER_LEN {
                put32(&mut b, 0, MAGIC);
                b[4..8].copy_from_slice(&[1, 0, 0, 0]);
                put32(&mut b, 8, 200);
                put32(&mut b, 12, 64);
            }
            if let Ok(cb) = CBox::parse(&b) {
                let t = cb.tcp();
                let s = cb.snapshot();
                for which in [Stream::FromClient, Stream::ToClient] {
                    if let Some(r) = cb.log_range(which, from, from.wrapping_add(len)) {
                        let (x, y) = r.pieces();
                        prop_assert_eq!(x.len() + y.len(), len as usize);
                    }
                }
                if let (Ok(t), Ok(s)) = (t, s) {
                    let _ = plan_salvage(&cb, &t, &s);
                }
            }
        }

        /// A plan's ranges are always within the connection's numbers, and what
        /// it replays and resends is in the logs.
        #[test]
        fn plans_stay_within_the_connection(una_off in 0u32..200, nxt_off in 0u32..200, wr_off in 0u32..200,
                                           copied_off in 0u32..200, rcv_off in 0u32..200,
                                           read_back in 0u32..300, written_back in 0u32..300, base in any::<u32>()) {
            let snd_una = base;
            let snd_nxt = snd_una.wrapping_add(una_off);
            let write_seq = snd_nxt.wrapping_add(nxt_off);
            let copied_seq = base.wrapping_add(wr_off);
            let rcv_nxt = copied_seq.wrapping_add(copied_off + rcv_off);
            let t = TcpState { snd_una, snd_nxt, write_seq, copied_seq, rcv_nxt, flags: 0, ..tcp() };
            let mut buf = vec![0u8; G.box_len()];
            let mut w = boxed(&mut buf);
            w.set_tcp(0, &t);
            let word = w.export(b"x", copied_seq.wrapping_sub(read_back), write_seq.wrapping_sub(written_back)).unwrap();
            w.publish(word);
            w.log(Stream::FromClient, rcv_nxt, &[1; 150]);
            w.log(Stream::ToClient, write_seq, &[2; 150]);
            let cb = CBox::parse(&buf).unwrap();
            if let Ok(p) = plan_salvage(&cb, &cb.tcp().unwrap(), &cb.snapshot().unwrap()) {
                prop_assert_eq!(p.recv_from.wrapping_add(p.replay), rcv_nxt);
                prop_assert_eq!(p.send_from, snd_una);
                prop_assert!(p.resend == 0 || p.discard == 0);
                prop_assert!(p.replay == 0 || cb.log_range(Stream::FromClient, p.recv_from, rcv_nxt).is_some());
                prop_assert!(p.resend == 0 || cb.log_range(Stream::ToClient, p.send_from, p.send_from.wrapping_add(p.resend)).is_some());
            }
        }
    }
}
