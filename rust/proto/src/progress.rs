// SPDX-License-Identifier: GPL-2.0
//! Per-connection progress exchanged by the primary and the backup of a shadowed
//! service, and the decisions both sides take from it.
//!
//! Every heartbeat interval each node reports, for the connections whose progress
//! changed (and every connection now and then), what its TCP has received, what the
//! client has acknowledged, what its program has read and written, and whether FIN or
//! RST have been produced. The report travels on the heartbeat port in datagrams of
//! at most [`MAX_RECORDS`] records, so a 1500-byte MTU carries one unfragmented and
//! 10,000 connections fit in 170 datagrams. (With a cluster key each datagram also
//! carries a 24-byte authentication trailer, [`super::auth`]; the record limit leaves
//! room for it.)
//!
//! What the reports drive:
//! - the primary keeps a copy of each client segment until the backup's report says
//!   its TCP has it ([`Retention`]): the backup's report is the sync ack;
//! - the backup asks for bytes the primary has and it lacks ([`Follower`]), and the
//!   primary resends them from its copy;
//! - a FIN one side produced and the other did not is held on the primary up to
//!   `MaxDelayFIN` ([`FinHold`]);
//! - a program that falls behind its twin by more than `AppMaxLagBytes` for longer
//!   than `AppMaxLagTime` is reported ([`LagWatch`]).
//!
//! Server-side numbers (`snd_una`, `app_written`) are in the primary's sequence space
//! on both sides: the backup maps its own before reporting. Client-side numbers are
//! the same on both nodes.
//!
//! Layout (big-endian):
//!
//! ```text
//! header, 20 bytes
//!  0  magic "LZPG"
//!  4  version (1)
//!  5  sender's role: 1 primary, 2 backup
//!  6  reserved (0)
//!  7  record count (0..=59)
//!  8  service address
//! 12  service port
//! 14  sender's MAC on the client segment (where resent segments go)
//! record, 24 bytes each
//!  0  client address
//!  4  client port
//!  6  flags: bit 0 FIN received from the client, bit 1 FIN produced by the program,
//!     bit 2 RST, bit 3 resend request (backup: send me the client bytes from
//!     rcv-next on), bit 4 closed (no full socket any more; numbers are stale)
//!  7  reserved (0)
//!  8  rcv-next: next client byte expected
//! 12  snd-una: oldest server byte the client has not acknowledged
//! 16  app-read: next client byte the program will read
//! 20  app-written: one past the last server byte the program wrote
//! ```

use super::beat::Role;
use super::seq::Seq;

/// Datagram magic.
pub const MAGIC: [u8; 4] = *b"LZPG";
/// Format version.
pub const VERSION: u8 = 1;
/// Header size.
pub const HEADER_LEN: usize = 20;
/// Record size.
pub const RECORD_LEN: usize = 24;
/// Records per datagram: 20 + 59 × 24 = 1436 bytes of UDP payload, 1460 with an
/// authentication trailer: under the 1472 bytes a 1500-byte MTU carries unfragmented.
pub const MAX_RECORDS: usize = 59;
/// Largest datagram.
pub const MAX_LEN: usize = HEADER_LEN + MAX_RECORDS * RECORD_LEN;

/// Record flags.
pub mod flag {
    /// The client's FIN has been received.
    pub const FIN_IN: u8 = 1;
    /// The program closed its side; the FIN is queued or sent.
    pub const FIN_OUT: u8 = 2;
    /// The connection was reset.
    pub const RST: u8 = 4;
    /// Backup only: resend the client bytes from `rcv_next` on.
    pub const RESEND: u8 = 8;
    /// The sender has no full socket for the connection any more.
    pub const CLOSED: u8 = 16;
    /// Every defined bit.
    pub const ALL: u8 = 31;
}

/// Datagram header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Sender's role.
    pub role: Role,
    /// Service address.
    pub service: [u8; 4],
    /// Service port.
    pub service_port: u16,
    /// Sender's MAC on the client segment.
    pub mac: [u8; 6],
}

/// One connection's progress.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Record {
    /// Client address.
    pub client: [u8; 4],
    /// Client port.
    pub client_port: u16,
    /// [`flag`] bits.
    pub flags: u8,
    /// Next client byte expected (`LastByteReceived + 1`).
    pub rcv_next: u32,
    /// Oldest unacknowledged server byte (`LastAckReceived`), primary space.
    pub snd_una: u32,
    /// Next client byte the program reads (`LastAppByteRead + 1`).
    pub app_read: u32,
    /// End of what the program wrote (`LastAppByteWritten + 1`), primary space.
    pub app_written: u32,
}

impl Record {
    /// True when the flag bit(s) `f` are set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }

    /// Same progress (ignoring the resend request, which is a one-off).
    pub fn same_progress(&self, other: &Record) -> bool {
        let strip = |r: &Record| Record { flags: r.flags & !flag::RESEND, ..*r };
        strip(self) == strip(other)
    }

    fn encode(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.client);
        b[4..6].copy_from_slice(&self.client_port.to_be_bytes());
        b[6] = self.flags;
        b[7] = 0;
        b[8..12].copy_from_slice(&self.rcv_next.to_be_bytes());
        b[12..16].copy_from_slice(&self.snd_una.to_be_bytes());
        b[16..20].copy_from_slice(&self.app_read.to_be_bytes());
        b[20..24].copy_from_slice(&self.app_written.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Result<Record, ProgressError> {
        if b.len() != RECORD_LEN {
            return Err(ProgressError::Length);
        }
        if b[6] & !flag::ALL != 0 || b[7] != 0 {
            return Err(ProgressError::Field);
        }
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Ok(Record {
            client: [b[0], b[1], b[2], b[3]],
            client_port: u16::from_be_bytes([b[4], b[5]]),
            flags: b[6],
            rcv_next: word(8),
            snd_una: word(12),
            app_read: word(16),
            app_written: word(20),
        })
    }
}

/// Why a datagram is not a progress report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProgressError {
    /// Shorter than a header, or not header + count records.
    Length,
    /// Wrong magic.
    Magic,
    /// Unknown version.
    Version,
    /// Unknown role, flag or nonzero reserved byte, or too many records.
    Field,
}

impl core::fmt::Display for ProgressError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ProgressError::Length => "wrong progress report length",
            ProgressError::Magic => "not a progress report",
            ProgressError::Version => "unknown progress report version",
            ProgressError::Field => "invalid progress report field",
        })
    }
}

/// True when `b` starts like a progress report (to tell it from a heartbeat).
pub fn is_progress(b: &[u8]) -> bool {
    b.len() >= 4 && b[0..4] == MAGIC
}

/// Builds one datagram in a caller-provided buffer.
pub struct Writer {
    buf: [u8; MAX_LEN],
    count: usize,
}

impl Writer {
    /// An empty report from a node with `header`.
    pub fn new(header: &Header) -> Self {
        let mut buf = [0u8; MAX_LEN];
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4] = VERSION;
        buf[5] = match header.role {
            Role::Primary => 1,
            Role::Backup => 2,
        };
        buf[8..12].copy_from_slice(&header.service);
        buf[12..14].copy_from_slice(&header.service_port.to_be_bytes());
        buf[14..20].copy_from_slice(&header.mac);
        Writer { buf, count: 0 }
    }

    /// Append `r`; false when the datagram is full.
    pub fn push(&mut self, r: &Record) -> bool {
        if self.count == MAX_RECORDS {
            return false;
        }
        let at = HEADER_LEN + self.count * RECORD_LEN;
        r.encode(&mut self.buf[at..at + RECORD_LEN]);
        self.count += 1;
        true
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no record has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when no more records fit.
    pub fn is_full(&self) -> bool {
        self.count == MAX_RECORDS
    }

    /// The datagram; the writer may then be [`Writer::reset`] for the next one.
    pub fn bytes(&mut self) -> &[u8] {
        self.buf[7] = self.count as u8;
        &self.buf[..HEADER_LEN + self.count * RECORD_LEN]
    }

    /// Drop the records, keep the header.
    pub fn reset(&mut self) {
        self.count = 0;
    }
}

/// A validated datagram: the header and its records.
pub struct Report<'a> {
    /// Sender's header.
    pub header: Header,
    body: &'a [u8],
}

impl<'a> Report<'a> {
    /// Validate `b` completely (every record) before anything is acted on.
    pub fn parse(b: &'a [u8]) -> Result<Self, ProgressError> {
        if b.len() < HEADER_LEN {
            return Err(ProgressError::Length);
        }
        if b[0..4] != MAGIC {
            return Err(ProgressError::Magic);
        }
        if b[4] != VERSION {
            return Err(ProgressError::Version);
        }
        let role = match b[5] {
            1 => Role::Primary,
            2 => Role::Backup,
            _ => return Err(ProgressError::Field),
        };
        let count = b[7] as usize;
        if b[6] != 0 || count > MAX_RECORDS {
            return Err(ProgressError::Field);
        }
        if b.len() != HEADER_LEN + count * RECORD_LEN {
            return Err(ProgressError::Length);
        }
        let body = &b[HEADER_LEN..];
        for r in body.chunks(RECORD_LEN) {
            Record::decode(r)?;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[14..20]);
        Ok(Report {
            header: Header { role, service: [b[8], b[9], b[10], b[11]], service_port: u16::from_be_bytes([b[12], b[13]]), mac },
            body,
        })
    }

    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = Record> + 'a {
        // Every chunk was validated by `parse`.
        self.body.chunks(RECORD_LEN).filter_map(|r| Record::decode(r).ok())
    }
}

/// The primary's bookkeeping of the client bytes it keeps for the backup.
///
/// # Invariants
///
/// `backup_next` only moves forward; a segment whose end is at or before it is never
/// kept, and a kept segment is released once it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Retention {
    /// The backup's next expected client byte, from its latest report.
    pub backup_next: Option<Seq>,
    /// Monotonic ms when the first kept segment of a connection the backup has not
    /// reported yet was kept (to give up on connections the backup never learns of).
    pub unreported_since: Option<u64>,
    /// The backup cannot follow this connection; nothing is kept for it.
    pub unprotected: bool,
}

impl Retention {
    /// Whether client bytes `[seq, end)` must be kept.
    pub fn keep(&self, seq: Seq, end: Seq) -> bool {
        !self.unprotected && seq.lt(end) && self.backup_next.is_none_or(|n| n.lt(end))
    }

    /// A segment ending at `end` may be freed.
    pub fn releasable(&self, end: Seq) -> bool {
        self.backup_next.is_some_and(|n| end.le(n))
    }

    /// The backup reports it expects `next`. Returns whether it moved forward.
    pub fn on_backup_report(&mut self, next: Seq) -> bool {
        self.unreported_since = None;
        match self.backup_next {
            Some(n) if next.le(n) => false,
            _ => {
                self.backup_next = Some(next);
                true
            }
        }
    }

    /// A segment was kept at `now_ms`.
    pub fn on_kept(&mut self, now_ms: u64) {
        if self.backup_next.is_none() && self.unreported_since.is_none() {
            self.unreported_since = Some(now_ms);
        }
    }

    /// Segments are kept but the backup has said nothing of the connection for
    /// `limit_ms`: it does not shadow it (it missed the SYN, or its table is full).
    pub fn abandoned(&self, now_ms: u64, limit_ms: u64) -> bool {
        self.unreported_since.is_some_and(|t| now_ms.saturating_sub(t) >= limit_ms)
    }
}

/// The backup's decision to ask for client bytes it missed.
///
/// # Invariants
///
/// `behind` is set exactly while the last primary report showed the primary ahead of
/// this node; it records this node's position then and since when it has not moved.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Follower {
    behind: Option<(Seq, u64)>,
}

impl Follower {
    /// The primary has received up to `primary_next`, this node up to `own_next`.
    /// Returns true when a resend should be requested now: this node has been behind
    /// without moving for `patience_ms` (bytes in flight on the wire arrive within
    /// that). After a request the clock restarts, so requests repeat at that pace
    /// while the gap stays.
    pub fn on_primary(&mut self, own_next: Seq, primary_next: Seq, now_ms: u64, patience_ms: u64) -> bool {
        if own_next.ge(primary_next) {
            self.behind = None;
            return false;
        }
        match self.behind {
            Some((at, since)) if at == own_next => {
                if now_ms.saturating_sub(since) >= patience_ms {
                    self.behind = Some((own_next, now_ms));
                    true
                } else {
                    false
                }
            }
            _ => {
                self.behind = Some((own_next, now_ms));
                false
            }
        }
    }
}

/// The primary's hold on a FIN its backup has not produced yet (`MaxDelayFIN`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FinHold {
    since: Option<u64>,
}

impl FinHold {
    /// The primary's program sent a FIN at `now_ms`; `backup_fin` tells whether the
    /// backup's latest report shows its program did too. Returns true to hold it
    /// (its TCP retransmits it later), false to let it go: the backup agrees, or it
    /// has been held `max_delay_ms` already (0 never holds).
    pub fn hold(&mut self, now_ms: u64, backup_fin: bool, max_delay_ms: u64) -> bool {
        if backup_fin || max_delay_ms == 0 {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now_ms);
        now_ms.saturating_sub(since) < max_delay_ms
    }

    /// A FIN is being held.
    pub fn holding(&self) -> bool {
        self.since.is_some()
    }
}

/// What to do with an RST the primary's program produced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RstVerdict {
    /// Let it go now.
    Pass,
    /// Keep it; send it when [`RstHold::due`] says so.
    Hold,
    /// One is held already: this later copy goes nowhere.
    Duplicate,
}

/// The primary's hold on an RST its backup has not produced (`MaxDelayFIN` covers
/// RST as well as FIN). Unlike a FIN, TCP does not send an RST again, so the held
/// segment itself is kept and sent later.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RstHold {
    since: Option<u64>,
    released: bool,
}

impl RstHold {
    /// An RST at `now_ms`; `backup_rst` tells whether the backup's latest report shows
    /// its connection reset or gone too.
    pub fn on_rst(&mut self, now_ms: u64, backup_rst: bool, max_delay_ms: u64) -> RstVerdict {
        if self.since.is_some() {
            return RstVerdict::Duplicate;
        }
        // After the held one went out, later RSTs (TCP's answers to segments for the
        // closed connection) pass at once.
        if backup_rst || max_delay_ms == 0 || self.released {
            return RstVerdict::Pass;
        }
        self.since = Some(now_ms);
        RstVerdict::Hold
    }

    /// Whether the held RST must go now: the backup agrees, or it has waited
    /// `max_delay_ms`.
    pub fn due(&self, now_ms: u64, backup_rst: bool, max_delay_ms: u64) -> bool {
        self.since.is_some_and(|s| backup_rst || now_ms.saturating_sub(s) >= max_delay_ms)
    }

    /// An RST is held.
    pub fn holding(&self) -> bool {
        self.since.is_some()
    }

    /// The held RST was sent.
    pub fn release(&mut self) {
        self.since = None;
        self.released = true;
    }
}

/// Application-lag detection (`AppMaxLagBytes`, `AppMaxLagTime`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LagWatch {
    since: Option<u64>,
    reported: bool,
}

impl LagWatch {
    /// This node's program has written up to `own`, its twin's up to `peer` (both in
    /// the primary's space). Returns `Some(lag_bytes)` once per episode when this node
    /// has lagged by more than `max_bytes` for at least `max_ms`.
    pub fn observe(&mut self, own: Seq, peer: Seq, now_ms: u64, max_bytes: u32, max_ms: u64) -> Option<u32> {
        let lag = peer.diff(own);
        if lag <= 0 || lag as u32 <= max_bytes {
            *self = LagWatch::default();
            return None;
        }
        let since = *self.since.get_or_insert(now_ms);
        if !self.reported && now_ms.saturating_sub(since) >= max_ms {
            self.reported = true;
            return Some(lag as u32);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header { role: Role::Backup, service: [10, 77, 0, 100], service_port: 8080, mac: [2, 0, 0, 0, 0, 7] }
    }

    fn record(i: u32) -> Record {
        Record {
            client: [10, 77, 0, 1],
            client_port: 40000 + i as u16,
            flags: flag::FIN_IN,
            rcv_next: i * 1000,
            snd_una: 7 + i,
            app_read: i * 999,
            app_written: u32::MAX - i,
        }
    }

    #[test]
    fn round_trip_full_datagram() {
        let mut w = Writer::new(&header());
        for i in 0..MAX_RECORDS as u32 {
            assert!(w.push(&record(i)));
        }
        assert!(w.is_full());
        assert!(!w.push(&record(99)));
        let bytes = w.bytes().to_vec();
        assert_eq!(bytes.len(), MAX_LEN);
        const { assert!(MAX_LEN <= 1472, "one datagram on a 1500-byte MTU") };
        let r = Report::parse(&bytes).unwrap();
        assert_eq!(r.header, header());
        let recs: Vec<_> = r.records().collect();
        assert_eq!(recs.len(), MAX_RECORDS);
        assert_eq!(recs[17], record(17));
        w.reset();
        assert!(w.is_empty());
        assert_eq!(Report::parse(w.bytes()).unwrap().records().count(), 0);
    }

    #[test]
    fn rejects_malformed() {
        let mut w = Writer::new(&header());
        w.push(&record(1));
        let good = w.bytes().to_vec();
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            Report::parse(&b).err()
        };
        assert_eq!(bad(&|b| b[0] = b'X'), Some(ProgressError::Magic));
        assert_eq!(bad(&|b| b[4] = 9), Some(ProgressError::Version));
        assert_eq!(bad(&|b| b[5] = 3), Some(ProgressError::Field));
        assert_eq!(bad(&|b| b[6] = 1), Some(ProgressError::Field));
        assert_eq!(bad(&|b| b[7] = 61), Some(ProgressError::Field));
        // Truncated, padded, count disagreeing with the length.
        assert_eq!(bad(&|b| b.truncate(good.len() - 1)), Some(ProgressError::Length));
        assert_eq!(bad(&|b| b.push(0)), Some(ProgressError::Length));
        assert_eq!(bad(&|b| b[7] = 2), Some(ProgressError::Length));
        assert_eq!(bad(&|b| b.truncate(10)), Some(ProgressError::Length));
        // A record with an unknown flag or reserved byte spoils the whole datagram.
        assert_eq!(bad(&|b| b[HEADER_LEN + 6] = 0x40), Some(ProgressError::Field));
        assert_eq!(bad(&|b| b[HEADER_LEN + 7] = 1), Some(ProgressError::Field));
        assert!(is_progress(&good) && !is_progress(b"LZHB"));
    }

    #[test]
    fn retention_keeps_until_the_backup_has_it() {
        let mut r = Retention::default();
        assert!(r.keep(Seq(100), Seq(200)));
        assert!(!r.keep(Seq(100), Seq(100)), "nothing to keep in an empty segment");
        r.on_kept(5);
        assert!(!r.abandoned(1000, 3000));
        assert!(r.abandoned(3005, 3000));
        assert!(r.on_backup_report(Seq(150)));
        assert!(!r.abandoned(9999, 3000));
        assert!(!r.releasable(Seq(200)));
        assert!(r.releasable(Seq(150)));
        assert!(!r.on_backup_report(Seq(120)), "reports never move it back");
        assert!(!r.keep(Seq(50), Seq(150)), "the backup has it already");
        assert!(r.keep(Seq(140), Seq(160)));
        // Across the wrap.
        let mut r = Retention::default();
        r.on_backup_report(Seq(u32::MAX - 10));
        assert!(r.keep(Seq(u32::MAX - 5), Seq(20)));
        assert!(r.on_backup_report(Seq(30)));
        assert!(r.releasable(Seq(20)));
        r.unprotected = true;
        assert!(!r.keep(Seq(40), Seq(50)));
    }

    #[test]
    fn follower_asks_after_patience_and_repeats() {
        let mut f = Follower::default();
        assert!(!f.on_primary(Seq(100), Seq(100), 0, 50));
        assert!(!f.on_primary(Seq(100), Seq(200), 10, 50), "in flight, give it time");
        assert!(!f.on_primary(Seq(100), Seq(300), 40, 50));
        assert!(f.on_primary(Seq(100), Seq(300), 60, 50));
        assert!(!f.on_primary(Seq(100), Seq(300), 80, 50), "one request per patience");
        assert!(f.on_primary(Seq(100), Seq(300), 110, 50));
        // Moving forward restarts the clock.
        assert!(!f.on_primary(Seq(150), Seq(300), 170, 50));
        assert!(!f.on_primary(Seq(300), Seq(300), 300, 50));
        assert!(!f.on_primary(Seq(300), Seq(400), 310, 50));
    }

    #[test]
    fn fin_hold_is_bounded() {
        let mut h = FinHold::default();
        assert!(h.hold(1000, false, 500));
        assert!(h.holding());
        assert!(h.hold(1400, false, 500));
        assert!(!h.hold(1500, false, 500), "MaxDelayFIN elapsed");
        let mut h = FinHold::default();
        assert!(!h.hold(0, true, 500), "the backup closed too");
        assert!(!h.holding());
        assert!(h.hold(10, false, 500));
        assert!(!h.hold(20, true, 500));
        assert!(!h.holding(), "released once the backup agrees");
        assert!(!h.hold(0, false, 0), "holding disabled");
    }

    #[test]
    fn rst_hold_keeps_one_until_the_backup_agrees_or_time_is_up() {
        let mut h = RstHold::default();
        assert_eq!(h.on_rst(1000, false, 500), RstVerdict::Hold);
        assert!(h.holding());
        assert_eq!(h.on_rst(1100, false, 500), RstVerdict::Duplicate, "one held copy is enough");
        assert!(!h.due(1400, false, 500));
        assert!(h.due(1400, true, 500), "the backup reset too");
        assert!(h.due(1500, false, 500), "MaxDelayFIN elapsed");
        h.release();
        assert!(!h.holding());
        assert_eq!(h.on_rst(1600, false, 500), RstVerdict::Pass, "later RSTs are not held");
        let mut h = RstHold::default();
        assert_eq!(h.on_rst(0, true, 500), RstVerdict::Pass);
        assert_eq!(h.on_rst(0, false, 0), RstVerdict::Pass, "holding disabled");
        assert!(!h.holding() && !h.due(10_000, true, 500));
    }

    #[test]
    fn lag_reported_once_per_episode() {
        let mut l = LagWatch::default();
        assert_eq!(l.observe(Seq(0), Seq(100), 0, 1000, 200), None);
        assert_eq!(l.observe(Seq(0), Seq(5000), 10, 1000, 200), None);
        assert_eq!(l.observe(Seq(0), Seq(5000), 209, 1000, 200), None);
        assert_eq!(l.observe(Seq(0), Seq(5000), 210, 1000, 200), Some(5000));
        assert_eq!(l.observe(Seq(0), Seq(6000), 400, 1000, 200), None);
        // Catching up ends the episode.
        assert_eq!(l.observe(Seq(6000), Seq(6000), 500, 1000, 200), None);
        assert_eq!(l.observe(Seq(6000), Seq(9000), 600, 1000, 200), None);
        assert_eq!(l.observe(Seq(6000), Seq(9000), 800, 1000, 200), Some(3000));
        // Ahead is not lagging.
        let mut l = LagWatch::default();
        assert_eq!(l.observe(Seq(9000), Seq(0), 0, 1000, 0), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_LEN + 40)) {
            let _ = Report::parse(&bytes).map(|r| r.records().count());
        }

        #[test]
        fn parse_accepts_only_what_writer_makes(recs in proptest::collection::vec(any::<[u8; RECORD_LEN]>(), 0..8)) {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC);
            b.extend_from_slice(&[VERSION, 1, 0, recs.len() as u8, 10, 0, 0, 1, 0, 80, 1, 2, 3, 4, 5, 6]);
            for r in &recs {
                b.extend_from_slice(r);
            }
            if let Ok(rep) = Report::parse(&b) {
                let mut w = Writer::new(&rep.header);
                for r in rep.records() {
                    prop_assert!(w.push(&r));
                }
                prop_assert_eq!(w.bytes().to_vec(), b);
            }
        }
    }
}
