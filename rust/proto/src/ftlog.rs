// SPDX-License-Identifier: GPL-2.0
//! FT-TCP's log: the records a wrapped primary sends its logger, and the logger's
//! per-connection store, which acknowledges with the lowest client sequence number
//! it does not have and later serves recovery.
//!
//! The primary copies every client segment to the logger before its TCP sees it,
//! and the length of every read its server program makes. Its outgoing ACKs are
//! clamped to the logger's acknowledgment (`stable`), so a client byte the logger
//! lacks is one the client has not been told arrived: the client retransmits it,
//! the copy reaches the logger again. The store therefore keeps only contiguous
//! bytes and drops what lies past a hole; it never needs to reorder.
//!
//! Recovery restarts the server program and replays the connection from its
//! beginning (reads with the logged lengths), so a live connection's bytes cannot
//! be collected; they go when the connection ends. A connection that outgrows its
//! byte budget is reported and stops being logged (the primary then stops
//! clamping: the connection is served, unprotected) — never silently truncated.
//!
//! Record layout (big-endian, as the channel's other frames):
//!
//! ```text
//! header   kind u8, flags u8, len u16 (payload bytes), conn u32, seq u32, value u32   (16 bytes)
//! OPEN     seq = client ISN, value = server ISN; payload: client addr [4], client port u16,
//!          service port u16, mss u16, client wscale u8, server wscale u8, options u8, pad u8
//! DATA     seq = the first byte's client sequence number; payload = the bytes
//! READ     value = bytes the server program read
//! FIN      seq = the client's FIN's sequence number
//! CLOSE    the connection ended (both sides closed, or reset): the logger drops it
//! ```

use super::seq::Seq;

pub const HEADER_LEN: usize = 16;
/// Largest DATA payload in one record (a GSO segment's worth).
pub const DATA_MAX: usize = 65_535;
pub const OPEN_LEN: usize = 16;

/// Record kinds.
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const DATA: u8 = 2;
    pub const READ: u8 = 3;
    pub const FIN: u8 = 4;
    pub const CLOSE: u8 = 5;
}

/// OPEN option bits.
pub mod opt {
    pub const SACK: u8 = 1;
    pub const TIMESTAMPS: u8 = 2;
    pub const ALL: u8 = SACK | TIMESTAMPS;
}

/// A connection's beginning, as both ends agreed on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Open {
    pub client_addr: [u8; 4],
    pub client_port: u16,
    pub service_port: u16,
    pub client_isn: u32,
    pub server_isn: u32,
    pub mss: u16,
    pub client_wscale: u8,
    pub server_wscale: u8,
    pub options: u8,
}

/// One record, borrowed from the bytes it was read from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Record<'a> {
    Open { conn: u32, open: Open },
    Data { conn: u32, seq: u32, bytes: &'a [u8] },
    Read { conn: u32, len: u32 },
    Fin { conn: u32, seq: u32 },
    Close { conn: u32 },
}

/// Why a record was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordError {
    /// Fewer bytes than the header or its payload length.
    Truncated,
    /// An unknown kind, flags set, a payload length wrong for the kind, a field
    /// the kind does not use not zero, a window scale above 14, unknown options,
    /// port 0.
    Malformed,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Record<'a> {
    /// Read one record from the front of `b`; returns it and the bytes it took.
    pub fn parse(b: &'a [u8]) -> Result<(Record<'a>, usize), RecordError> {
        if b.len() < HEADER_LEN {
            return Err(RecordError::Truncated);
        }
        let (k, flags, len) = (b[0], b[1], be16(b, 2) as usize);
        let (conn, seq, value) = (be32(b, 4), be32(b, 8), be32(b, 12));
        let payload = b.get(HEADER_LEN..HEADER_LEN + len).ok_or(RecordError::Truncated)?;
        if flags != 0 {
            return Err(RecordError::Malformed);
        }
        let r = match (k, len) {
            (kind::OPEN, OPEN_LEN) => {
                let p = payload;
                let open = Open {
                    client_addr: [p[0], p[1], p[2], p[3]],
                    client_port: be16(p, 4),
                    service_port: be16(p, 6),
                    client_isn: seq,
                    server_isn: value,
                    mss: be16(p, 8),
                    client_wscale: p[10],
                    server_wscale: p[11],
                    options: p[12],
                };
                let sane = open.client_port != 0
                    && open.service_port != 0
                    && open.client_wscale <= 14
                    && open.server_wscale <= 14
                    && open.options & !opt::ALL == 0
                    && p[13..16] == [0; 3];
                if !sane {
                    return Err(RecordError::Malformed);
                }
                Record::Open { conn, open }
            }
            // Fields a kind does not use must be zero: one record, one encoding.
            (kind::DATA, 1..) if value == 0 => Record::Data { conn, seq, bytes: payload },
            (kind::READ, 0) if value > 0 && seq == 0 => Record::Read { conn, len: value },
            (kind::FIN, 0) if value == 0 => Record::Fin { conn, seq },
            (kind::CLOSE, 0) if seq == 0 && value == 0 => Record::Close { conn },
            _ => return Err(RecordError::Malformed),
        };
        Ok((r, HEADER_LEN + len))
    }

    /// Write the record into `out`; its length, or `None` when `out` is too small
    /// or a DATA payload is empty or too long.
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let (k, conn, seq, value, payload_len) = match *self {
            Record::Open { conn, open } => (kind::OPEN, conn, open.client_isn, open.server_isn, OPEN_LEN),
            Record::Data { conn, seq, bytes } => {
                if bytes.is_empty() || bytes.len() > DATA_MAX {
                    return None;
                }
                (kind::DATA, conn, seq, 0, bytes.len())
            }
            Record::Read { conn, len } => (kind::READ, conn, 0, len, 0),
            Record::Fin { conn, seq } => (kind::FIN, conn, seq, 0, 0),
            Record::Close { conn } => (kind::CLOSE, conn, 0, 0, 0),
        };
        let total = HEADER_LEN + payload_len;
        let o = out.get_mut(..total)?;
        o[0] = k;
        o[1] = 0;
        o[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        o[4..8].copy_from_slice(&conn.to_be_bytes());
        o[8..12].copy_from_slice(&seq.to_be_bytes());
        o[12..16].copy_from_slice(&value.to_be_bytes());
        let p = &mut o[HEADER_LEN..];
        match *self {
            Record::Open { open, .. } => {
                p[0..4].copy_from_slice(&open.client_addr);
                p[4..6].copy_from_slice(&open.client_port.to_be_bytes());
                p[6..8].copy_from_slice(&open.service_port.to_be_bytes());
                p[8..10].copy_from_slice(&open.mss.to_be_bytes());
                p[10] = open.client_wscale;
                p[11] = open.server_wscale;
                p[12] = open.options;
                p[13..16].fill(0);
            }
            Record::Data { bytes, .. } => p.copy_from_slice(bytes),
            _ => {}
        }
        Some(total)
    }
}

/// Where a logged connection stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Logging {
    /// Every client byte up to `stable` is logged.
    Protected,
    /// The budget ran out: nothing more is logged, and the acknowledgment releases
    /// the primary's clamp.
    Overflowed,
}

/// What applying a record did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// New bytes (or a read, a FIN) were logged; the acknowledgment moved.
    Logged,
    /// Nothing new: bytes already logged, or past a hole (the client resends them).
    Nothing,
    /// This record crossed the connection's budget: reported once.
    Overflow,
    /// A read of more bytes than are logged, a second FIN elsewhere, or data past
    /// the FIN: the primary and the log disagree; the record is refused.
    Inconsistent,
}

/// The logger's store of one connection, over a caller-provided byte buffer (the
/// budget is its length) and read-length buffer.
///
/// # Invariants
///
/// `bytes[..logged]` are the client's bytes from `client_isn + 1` on, in order;
/// `stable == client_isn + 1 + logged (+ 1 once the FIN is logged)`; the logged reads
/// sum to at most `logged`.
pub struct LogConn<'b> {
    pub open: Open,
    bytes: &'b mut [u8],
    logged: usize,
    reads: &'b mut [u32],
    nreads: usize,
    read_total: u64,
    fin: bool,
    pub state: Logging,
}

impl<'b> LogConn<'b> {
    pub fn new(open: Open, bytes: &'b mut [u8], reads: &'b mut [u32]) -> Self {
        LogConn { open, bytes, logged: 0, reads, nreads: 0, read_total: 0, fin: false, state: Logging::Protected }
    }

    fn first(&self) -> Seq {
        Seq(self.open.client_isn).add(1)
    }

    /// The acknowledgment: the lowest client sequence number not logged. Once the
    /// connection overflowed, `None`: the primary stops clamping.
    pub fn stable(&self) -> Option<Seq> {
        match self.state {
            Logging::Protected => Some(self.first().add(self.logged as u32 + self.fin as u32)),
            Logging::Overflowed => None,
        }
    }

    /// Log client bytes starting at sequence number `seq`.
    pub fn data(&mut self, seq: u32, data: &[u8]) -> Applied {
        if self.state == Logging::Overflowed {
            return Applied::Nothing;
        }
        let end = self.first().add(self.logged as u32);
        let at = Seq(seq).diff(end) as i64;
        if at > 0 {
            return Applied::Nothing; // past a hole: the client will resend the hole
        }
        let skip = (-at) as usize;
        if skip >= data.len() {
            return Applied::Nothing;
        }
        if self.fin {
            return Applied::Inconsistent;
        }
        let new = &data[skip..];
        let room = self.bytes.len() - self.logged;
        if new.len() > room {
            self.state = Logging::Overflowed;
            return Applied::Overflow;
        }
        self.bytes[self.logged..self.logged + new.len()].copy_from_slice(new);
        self.logged += new.len();
        Applied::Logged
    }

    /// Log the client's FIN at `seq`.
    pub fn fin(&mut self, seq: u32) -> Applied {
        let end = self.first().add(self.logged as u32);
        match Seq(seq).diff(end) {
            0 if !self.fin => {
                self.fin = true;
                Applied::Logged
            }
            0 => Applied::Nothing,
            d if d > 0 => Applied::Nothing, // bytes before it are missing yet
            _ => Applied::Inconsistent,
        }
    }

    /// Log a read of `len` bytes by the server program.
    pub fn read(&mut self, len: u32) -> Applied {
        if self.state == Logging::Overflowed {
            return Applied::Nothing;
        }
        if self.read_total + len as u64 > self.logged as u64 {
            return Applied::Inconsistent;
        }
        if self.nreads == self.reads.len() {
            self.state = Logging::Overflowed;
            return Applied::Overflow;
        }
        self.reads[self.nreads] = len;
        self.nreads += 1;
        self.read_total += len as u64;
        Applied::Logged
    }

    /// The recovery replay: each read the restarted program makes gets these bytes,
    /// in order; then the logged bytes no read took (logged but unread at the
    /// failure), then the FIN if it was logged.
    pub fn replay(&self) -> Replay<'_> {
        Replay { c: self, next_read: 0, at: 0 }
    }

    /// Bytes logged, reads logged.
    pub fn counts(&self) -> (usize, usize) {
        (self.logged, self.nreads)
    }
}

/// One step of a replay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step<'a> {
    /// A read the program made before the failure: exactly these bytes.
    Read(&'a [u8]),
    /// Bytes the program had not read yet: deliver them as the live connection would.
    Unread(&'a [u8]),
    /// The client's FIN.
    Fin,
}

pub struct Replay<'c> {
    c: &'c LogConn<'c>,
    next_read: usize,
    at: usize,
}

impl<'c> Iterator for Replay<'c> {
    type Item = Step<'c>;
    fn next(&mut self) -> Option<Step<'c>> {
        let c = self.c;
        if self.next_read < c.nreads {
            let len = c.reads[self.next_read] as usize;
            self.next_read += 1;
            let from = self.at;
            self.at += len;
            return Some(Step::Read(&c.bytes[from..self.at]));
        }
        if self.at < c.logged {
            let from = self.at;
            self.at = c.logged;
            return Some(Step::Unread(&c.bytes[from..c.logged]));
        }
        if c.fin && self.at == c.logged {
            self.at += 1;
            return Some(Step::Fin);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open() -> Open {
        Open {
            client_addr: [10, 77, 0, 1],
            client_port: 40000,
            service_port: 8080,
            client_isn: u32::MAX - 5,
            server_isn: 777,
            mss: 1460,
            client_wscale: 7,
            server_wscale: 7,
            options: opt::SACK | opt::TIMESTAMPS,
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let recs = [
            Record::Open { conn: 1, open: open() },
            Record::Data { conn: 1, seq: 5, bytes: b"hello" },
            Record::Read { conn: 1, len: 3 },
            Record::Fin { conn: 1, seq: 10 },
            Record::Close { conn: 1 },
        ];
        let mut buf = [0u8; 256];
        for r in recs {
            let n = r.write(&mut buf).unwrap();
            assert_eq!(Record::parse(&buf[..n]), Ok((r, n)));
            assert_eq!(Record::parse(&buf[..n - 1]), Err(RecordError::Truncated));
        }
        let n = Record::Open { conn: 1, open: open() }.write(&mut buf).unwrap();
        for (at, v) in [(0, 9u8), (1, 1), (HEADER_LEN + 10, 15), (HEADER_LEN + 12, 4), (HEADER_LEN + 13, 1)] {
            let mut b = buf;
            b[at] = v;
            assert_eq!(Record::parse(&b[..n]), Err(RecordError::Malformed), "byte {at} = {v}");
        }
        let mut b = buf;
        b[HEADER_LEN + 4..HEADER_LEN + 6].fill(0);
        assert_eq!(Record::parse(&b[..n]), Err(RecordError::Malformed), "client port 0");
        assert!(Record::Data { conn: 1, seq: 0, bytes: b"" }.write(&mut buf).is_none());
        let n = Record::Read { conn: 1, len: 1 }.write(&mut buf).unwrap();
        buf[12..16].fill(0);
        assert_eq!(Record::parse(&buf[..n]), Err(RecordError::Malformed), "a read of nothing");
    }

    #[test]
    fn the_store_keeps_contiguous_bytes_and_acknowledges_the_first_missing() {
        let (mut bytes, mut reads) = ([0u8; 64], [0u32; 8]);
        let mut c = LogConn::new(open(), &mut bytes, &mut reads);
        let first = Seq(open().client_isn).add(1);
        assert_eq!(c.stable(), Some(first));
        // Across the sequence wrap on purpose.
        assert_eq!(c.data(first.0, b"abcd"), Applied::Logged);
        assert_eq!(c.data(first.add(8).0, b"ijkl"), Applied::Nothing, "past a hole");
        assert_eq!(c.data(first.add(2).0, b"cdefgh"), Applied::Logged, "overlap: only the new part");
        assert_eq!(c.data(first.0, b"ab"), Applied::Nothing, "a retransmission");
        assert_eq!(c.stable(), Some(first.add(8)));
        assert_eq!(c.read(5), Applied::Logged);
        assert_eq!(c.read(4), Applied::Inconsistent, "more than is logged");
        assert_eq!(c.fin(first.add(9).0), Applied::Nothing, "bytes before the FIN are missing");
        assert_eq!(c.fin(first.add(8).0), Applied::Logged);
        assert_eq!(c.stable(), Some(first.add(9)), "the FIN counts one");
        assert_eq!(c.data(first.add(8).0, b"z"), Applied::Inconsistent, "data past the FIN");
        let steps: Vec<Step<'_>> = c.replay().collect();
        assert_eq!(steps, vec![Step::Read(b"abcde"), Step::Unread(b"fgh"), Step::Fin]);
    }

    #[test]
    fn a_connection_over_its_budget_is_reported_and_released() {
        let (mut bytes, mut reads) = ([0u8; 8], [0u32; 1]);
        let mut c = LogConn::new(open(), &mut bytes, &mut reads);
        let first = Seq(open().client_isn).add(1).0;
        assert_eq!(c.data(first, b"12345678"), Applied::Logged);
        assert_eq!(c.data(first.wrapping_add(8), b"9"), Applied::Overflow);
        assert_eq!((c.state, c.stable()), (Logging::Overflowed, None), "the primary stops clamping");
        assert_eq!(c.data(first.wrapping_add(8), b"9"), Applied::Nothing, "reported once");
        let (mut bytes, mut reads) = ([0u8; 8], [0u32; 1]);
        let mut c = LogConn::new(open(), &mut bytes, &mut reads);
        assert_eq!(c.data(first, b"1234"), Applied::Logged);
        assert_eq!(c.read(1), Applied::Logged);
        assert_eq!(c.read(1), Applied::Overflow, "the read lengths have a budget too");
    }

    proptest! {
        /// Whatever arrives, in whatever order and overlap, the store holds exactly
        /// the client's stream up to its acknowledgment, and the replay gives back
        /// every logged byte once, in order.
        #[test]
        fn the_log_is_always_a_prefix_of_the_stream(
            cuts in proptest::collection::vec((0usize..200, 1usize..40), 1..40),
            reads in proptest::collection::vec(1u32..30, 0..10),
        ) {
            let stream: Vec<u8> = (0..240u32).map(|i| (i * 7 + 1) as u8).collect();
            let (mut bytes, mut rbuf) = ([0u8; 256], [0u32; 16]);
            let mut c = LogConn::new(open(), &mut bytes, &mut rbuf);
            let first = Seq(open().client_isn).add(1);
            for (at, len) in cuts {
                let end = (at + len).min(stream.len());
                let _ = c.data(first.add(at as u32).0, &stream[at..end]);
            }
            for r in reads {
                let _ = c.read(r);
            }
            let logged = c.stable().unwrap().diff(first) as usize;
            let mut out = Vec::new();
            for s in c.replay() {
                match s {
                    Step::Read(b) | Step::Unread(b) => out.extend_from_slice(b),
                    Step::Fin => prop_assert!(false, "no FIN was logged"),
                }
            }
            prop_assert_eq!(&out[..], &stream[..logged]);
        }

        /// Any bytes parse or are refused, never panic, and a record that parses
        /// writes back to the same bytes (headers of each kind are made often).
        #[test]
        fn fuzz_parse(mut b in proptest::collection::vec(any::<u8>(), 0..80), k in 0u8..7, short in any::<bool>()) {
            if b.len() >= HEADER_LEN {
                b[0] = k;
                b[1] = 0;
                if short {
                    b[2..4].fill(0);
                }
            }
            if let Ok((r, n)) = Record::parse(&b) {
                let mut out = [0u8; 128];
                let m = r.write(&mut out).unwrap();
                prop_assert_eq!(&out[..m], &b[..n]);
            }
        }
    }
}
