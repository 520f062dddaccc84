// SPDX-License-Identifier: GPL-2.0
//! ST-TCP shadowing of one connection on the backup node.
//!
//! The backup's TCP receives every client segment and runs the same server program,
//! but it picked its own initial sequence number and timestamp clock. The client only
//! ever talks to the primary's numbers, so the backup keeps, per connection, the
//! offset between the two:
//!
//! - `seq`: primary's sequence number minus the backup's, for the server→client byte
//!   stream. It is learnt from the primary's SYN-ACK when the backup sees it on the
//!   wire, or else from the client's handshake ACK, which acknowledges the primary's
//!   ISN + 1.
//! - `ts`: primary's timestamp clock minus the backup's (RFC 7323), learnt the same way
//!   from the SYN-ACK's TSval or the handshake ACK's TSecr.
//!
//! Client → backup: the acknowledgment number, SACK blocks and TSecr are moved from
//! the primary's spaces into the backup's. Backup → client (only after takeover): the
//! sequence number and TSval are moved back. The client's own numbers (its sequence
//! space and TSval) are the same for both servers and are never touched.
//!
//! The backup's program may lag behind the primary's. A client acknowledgment of
//! server bytes the backup has not produced yet would make the backup's TCP discard
//! the whole segment, data included (RFC 9293 §3.10.7.4), and the client never
//! resends data the primary acknowledged. So acknowledgments are clamped to the
//! backup's own send edge; the client's later cumulative ACKs carry the rest.
//!
//! After takeover the backup's TSval must never fall behind the last TSval the client
//! saw from the primary, or the client's PAWS check would drop the backup's segments;
//! the backup tracks that value from the primary's segments on the wire and from the
//! client's echoes, and never sends less.

use super::packet::TcpOptions;
use super::seq::{Seq, SeqOffset};

/// The offsets between the primary's and the backup's spaces for one connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Mapping {
    /// Primary sequence number = backup sequence number + `seq`.
    pub seq: SeqOffset,
    /// Primary timestamp = backup timestamp + `ts`, when both use timestamps.
    pub ts: Option<u32>,
}

impl Mapping {
    /// The identity: a connection the backup itself accepted after takeover.
    pub const IDENTITY: Mapping = Mapping { seq: SeqOffset(0), ts: Some(0) };
}

/// What the SYN-ACK of one server said.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SynAck {
    /// Initial sequence number.
    pub isn: Seq,
    /// Timestamp value, if timestamps are on.
    pub tsval: Option<u32>,
    /// Window scale shift, if offered.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack: bool,
    /// MSS offered.
    pub mss: Option<u16>,
}

impl SynAck {
    /// From the parsed options of a SYN-ACK with sequence number `isn`.
    pub fn new(isn: Seq, o: &TcpOptions) -> Self {
        SynAck { isn, tsval: o.timestamp.map(|t| t.0), wscale: o.wscale, sack: o.sack_permitted, mss: o.mss }
    }
}

/// The header fields of a client segment that shadowing reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ClientSegment {
    /// Sequence number.
    pub seq: Seq,
    /// Sequence space occupied (payload, +1 for SYN, +1 for FIN).
    pub seq_len: u32,
    /// Acknowledgment number, if the ACK flag is set.
    pub ack: Option<Seq>,
    /// TSecr, if the segment carries timestamps.
    pub tsecr: Option<u32>,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
}

/// How far one connection has got, in the client-visible spaces. These are the
/// heartbeat's per-connection fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Progress {
    /// One past the last client byte seen (`LastByteReceived` + 1).
    pub client_next: Seq,
    /// Highest acknowledgment from the client (`LastAckReceived`), primary space.
    pub client_acked: Seq,
    /// The client sent FIN.
    pub client_fin: bool,
    /// Either side sent RST.
    pub rst: bool,
    /// The server side sent FIN.
    pub server_fin: bool,
}

/// Shadow state of one connection.
///
/// # Invariants
///
/// `map` is set only once both ISNs are known, and never changes afterwards: the
/// offsets of a connection are fixed for its life, before and after takeover.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Shadow {
    backup: Option<SynAck>,
    primary: Option<SynAck>,
    map: Option<Mapping>,
    progress: Progress,
    /// Newest primary TSval the client may have seen (wrapping order).
    peer_tsval: Option<u32>,
    /// The two SYN-ACKs disagreed on an option the client relies on.
    mismatch: bool,
    /// One past the highest sequence number the backup's TCP has sent (its space).
    backup_next: Option<Seq>,
    /// The client's initial sequence number.
    client_isn: Seq,
    /// Highest client sequence number the primary acknowledged on the wire. The
    /// client never resends what it was told arrived, so a backup whose TCP is short
    /// of this at takeover cannot continue the connection.
    primary_acked: Option<Seq>,
}

/// How far past the client's ISN an acknowledgment seen from the primary may be and
/// still be taken as one of this connection's (a quarter of the sequence space, so
/// that comparisons in it stay unambiguous).
const MAX_ACK_AHEAD: u32 = 1 << 30;

/// Timestamp order modulo 2^32 (RFC 7323 §5.2): `a` after `b`.
const fn ts_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Shadow {
    /// A connection whose SYN the backup has just seen from the client.
    pub fn new(client_isn: Seq) -> Self {
        Shadow {
            progress: Progress { client_next: client_isn.add(1), client_acked: Seq(0), ..Default::default() },
            client_isn,
            ..Default::default()
        }
    }

    /// A connection the backup accepts on its own (after takeover): no offsets.
    pub fn native(client_isn: Seq) -> Self {
        Shadow { map: Some(Mapping::IDENTITY), ..Shadow::new(client_isn) }
    }

    /// Which SYN-ACKs have been seen: (the backup's own, the primary's).
    pub fn synacks_seen(&self) -> (bool, bool) {
        (self.backup.is_some(), self.primary.is_some())
    }

    /// The offsets, once known.
    pub fn mapping(&self) -> Option<Mapping> {
        self.map
    }

    /// Progress of the connection as the backup has seen it.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// True when the two servers' SYN-ACKs disagreed on window scale, SACK or
    /// timestamps (the backup still maps what it can; the window is rescaled).
    pub fn options_mismatch(&self) -> bool {
        self.mismatch
    }

    /// The backup's own SYN-ACK, seen leaving its TCP.
    pub fn on_backup_synack(&mut self, s: SynAck) {
        self.backup = Some(s);
        self.on_backup_segment(s.isn, 1);
        self.learn_from_synacks();
    }

    /// Any segment leaving the backup's TCP: `seq` and the sequence space it takes.
    pub fn on_backup_segment(&mut self, seq: Seq, seq_len: u32) {
        let end = seq.add(seq_len);
        match self.backup_next {
            Some(n) if !end.gt(n) => {}
            _ => self.backup_next = Some(end),
        }
    }

    /// The acknowledgment number the backup's TCP should see for the client's `ack`:
    /// mapped into the backup's space, and no further than what the backup has sent.
    /// Returns the number and whether it was clamped.
    pub fn inbound_ack(&self, ack: Seq) -> (Seq, bool) {
        let mapped = match self.map {
            Some(m) => m.seq.unapply(ack),
            None => ack,
        };
        match self.backup_next {
            Some(n) if mapped.gt(n) => (n, true),
            _ => (mapped, false),
        }
    }

    /// The primary's SYN-ACK, seen on the wire.
    pub fn on_primary_synack(&mut self, s: SynAck) {
        self.primary = Some(s);
        self.note_primary_tsval(s.tsval);
        self.learn_from_synacks();
    }

    /// Any other primary segment seen on the wire: its TSval, its acknowledgment of
    /// client bytes, and FIN or RST.
    pub fn on_primary_segment(&mut self, tsval: Option<u32>, ack: Option<Seq>, fin: bool, rst: bool) {
        self.note_primary_tsval(tsval);
        if let Some(a) = ack {
            self.note_primary_ack(a);
        }
        self.progress.server_fin |= fin;
        self.progress.rst |= rst;
    }

    /// Highest client sequence number the primary has been seen acknowledging.
    pub fn primary_acked(&self) -> Option<Seq> {
        self.primary_acked
    }

    fn note_primary_ack(&mut self, ack: Seq) {
        // Only acknowledgments of the client's stream after its SYN: anything else
        // on the wire for this tuple (a stale segment of an older connection) says
        // nothing about this one.
        if !ack.gt(self.client_isn) || ack.0.wrapping_sub(self.client_isn.0) > MAX_ACK_AHEAD {
            return;
        }
        match self.primary_acked {
            Some(a) if !ack.gt(a) => {}
            _ => self.primary_acked = Some(ack),
        }
    }

    fn note_primary_tsval(&mut self, tsval: Option<u32>) {
        if let Some(v) = tsval {
            match self.peer_tsval {
                Some(p) if !ts_after(v, p) => {}
                _ => self.peer_tsval = Some(v),
            }
        }
    }

    fn learn_from_synacks(&mut self) {
        if self.map.is_some() {
            return;
        }
        if let (Some(b), Some(p)) = (self.backup, self.primary) {
            let ts = match (p.tsval, b.tsval) {
                (Some(pt), Some(bt)) => Some(pt.wrapping_sub(bt)),
                _ => None,
            };
            self.mismatch = p.wscale != b.wscale || p.sack != b.sack || p.tsval.is_some() != b.tsval.is_some();
            self.map = Some(Mapping { seq: SeqOffset::between(b.isn, p.isn), ts });
        }
    }

    /// A client segment arriving at the backup. Records progress and, during the
    /// handshake, learns the offsets from the ACK. Returns the mapping to apply to
    /// the segment, or `None` while the offsets are unknown (the segment must then
    /// not reach the backup's TCP with the primary's numbers in it).
    pub fn on_client_segment(&mut self, seg: &ClientSegment) -> Option<Mapping> {
        let p = &mut self.progress;
        let end = seg.seq.add(seg.seq_len);
        if end.gt(p.client_next) {
            p.client_next = end;
        }
        if let Some(ack) = seg.ack {
            if p.client_acked == Seq(0) || ack.gt(p.client_acked) {
                p.client_acked = ack;
            }
        }
        p.client_fin |= seg.fin;
        p.rst |= seg.rst;
        self.note_primary_tsval(seg.tsecr);
        // Only the client's first segment after its SYN (sequence ISN + 1) acknowledges
        // exactly the SYN-ACK; a later one also acknowledges the primary's data and
        // would give a wrong offset. (A server that speaks first breaks this too; the
        // primary's SYN-ACK, seen on the wire, is the source that always works.)
        if self.map.is_none() && seg.seq == self.client_isn.add(1) {
            if let (Some(b), Some(ack)) = (self.backup, seg.ack) {
                // The handshake ACK acknowledges the primary's ISN + 1, and echoes
                // the primary's SYN-ACK TSval.
                let ts = match (seg.tsecr, b.tsval) {
                    (Some(e), Some(bt)) => Some(e.wrapping_sub(bt)),
                    _ => None,
                };
                self.map = Some(Mapping { seq: SeqOffset::between(b.isn, ack.sub(1)), ts });
            }
        }
        self.map
    }

    /// The TSval to send in place of the backup's `tsval` after takeover: mapped into
    /// the primary's clock, and never older than what the client last saw.
    pub fn outbound_tsval(&self, tsval: u32) -> u32 {
        let mapped = match self.map.and_then(|m| m.ts) {
            Some(ts) => tsval.wrapping_add(ts),
            None => tsval,
        };
        match self.peer_tsval {
            Some(p) if ts_after(p, mapped) => p,
            _ => mapped,
        }
    }

    /// The TSecr the backup's TCP should see in place of the client's `tsecr`.
    pub fn inbound_tsecr(&self, tsecr: u32) -> u32 {
        match self.map.and_then(|m| m.ts) {
            Some(ts) => tsecr.wrapping_sub(ts),
            None => tsecr,
        }
    }

    /// The raw window field to send in place of the backup's `window` after takeover:
    /// the client scales it by the primary's shift, so rescale when the shifts differ.
    pub fn outbound_window(&self, window: u16) -> u16 {
        match (self.backup.and_then(|b| b.wscale), self.primary.and_then(|p| p.wscale)) {
            (Some(b), Some(p)) if b != p => {
                let bytes = (window as u64) << b.min(14);
                (bytes >> p.min(14)).min(u16::MAX as u64) as u16
            }
            _ => window,
        }
    }

    /// Record that the backup's own TCP sent FIN or RST (seen after takeover).
    pub fn on_backup_close(&mut self, fin: bool, rst: bool) {
        self.progress.server_fin |= fin;
        self.progress.rst |= rst;
    }

    /// The connection is over for both sides: RST, or FIN both ways with the
    /// client's FIN acknowledged.
    pub fn finished(&self) -> bool {
        let p = &self.progress;
        p.rst || (p.client_fin && p.server_fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn synack(isn: u32, ts: u32, ws: u8) -> SynAck {
        SynAck { isn: Seq(isn), tsval: Some(ts), wscale: Some(ws), sack: true, mss: Some(1460) }
    }

    fn ack(seq: u32, ack: u32, tsecr: u32) -> ClientSegment {
        ClientSegment { seq: Seq(seq), seq_len: 0, ack: Some(Seq(ack)), tsecr: Some(tsecr), fin: false, rst: false }
    }

    #[test]
    fn learns_offsets_from_handshake_ack() {
        let mut s = Shadow::new(Seq(1000));
        assert_eq!(s.on_client_segment(&ack(1001, 1, 1)), None, "nothing known before the backup's SYN-ACK");
        let mut s = Shadow::new(Seq(1000));
        s.on_backup_synack(synack(5000, 70, 7));
        let m = s.on_client_segment(&ack(1001, 0xffff_fff0 + 1, 30)).unwrap();
        // Primary ISN 0xfffffff0 (wraps past zero), backup ISN 5000.
        assert_eq!(m.seq.apply(Seq(5001)), Seq(0xffff_fff1));
        assert_eq!(m.seq.unapply(Seq(0xffff_fff1)), Seq(5001));
        assert_eq!(s.inbound_tsecr(30), 70);
        assert_eq!(s.outbound_tsval(70), 30);
        // A later segment (its handshake ACK was missed) also acknowledges the
        // primary's data: it teaches nothing.
        let mut s = Shadow::new(Seq(1000));
        s.on_backup_synack(synack(5000, 70, 7));
        assert_eq!(s.on_client_segment(&ack(1006, 9065, 31)), None);
        assert!(s.on_client_segment(&ack(1001, 9001, 30)).is_some(), "the first segment still does");
    }

    #[test]
    fn acks_beyond_what_the_backup_sent_are_clamped() {
        let mut s = Shadow::new(Seq(1));
        s.on_backup_synack(synack(100, 10, 7));
        s.on_primary_synack(synack(1000, 500, 7));
        assert_eq!(s.inbound_ack(Seq(1001)), (Seq(101), false));
        // The client acknowledges 50 bytes of the primary's reply; the backup has
        // produced 20 so far.
        s.on_backup_segment(Seq(101), 20);
        assert_eq!(s.inbound_ack(Seq(1051)), (Seq(121), true));
        // A retransmission of older data does not move the edge back.
        s.on_backup_segment(Seq(101), 10);
        s.on_backup_segment(Seq(121), 30);
        assert_eq!(s.inbound_ack(Seq(1051)), (Seq(151), false));
    }

    #[test]
    fn primary_synack_wins_and_offsets_never_change() {
        let mut s = Shadow::new(Seq(1));
        s.on_backup_synack(synack(100, 10, 7));
        s.on_primary_synack(synack(900, 500, 7));
        let m = s.mapping().unwrap();
        assert_eq!(m.seq, SeqOffset(800));
        assert_eq!(m.ts, Some(490));
        // A later (even bogus) ACK does not move the offsets.
        assert_eq!(s.on_client_segment(&ack(2, 12345, 1)), Some(m));
        assert!(!s.options_mismatch());
    }

    #[test]
    fn tsval_never_goes_back_behind_what_the_client_saw() {
        let mut s = Shadow::new(Seq(1));
        s.on_backup_synack(synack(100, 1000, 7));
        s.on_primary_synack(synack(900, 5000, 7));
        // The primary's clock ran 20 ms ahead of the mapped backup clock.
        s.on_primary_segment(Some(5100), None, false, false);
        assert_eq!(s.outbound_tsval(1080), 5100);
        assert_eq!(s.outbound_tsval(1150), 5150);
        // Echoes from the client count too, with wrapping order.
        s.on_client_segment(&ack(2, 901, 5300));
        assert_eq!(s.outbound_tsval(1150), 5300);
    }

    #[test]
    fn primary_acknowledgments_are_tracked_in_order() {
        let mut s = Shadow::new(Seq(u32::MAX - 10));
        assert_eq!(s.primary_acked(), None);
        s.on_primary_segment(None, Some(Seq(u32::MAX - 9)), false, false);
        assert_eq!(s.primary_acked(), Some(Seq(u32::MAX - 9)));
        // Across the wrap, and never backwards.
        s.on_primary_segment(None, Some(Seq(20)), false, false);
        s.on_primary_segment(None, Some(Seq(5)), false, false);
        assert_eq!(s.primary_acked(), Some(Seq(20)));
        // Not this connection's: at or before the client's ISN, or absurdly far on.
        s.on_primary_segment(None, Some(Seq(u32::MAX - 10)), false, false);
        s.on_primary_segment(None, Some(Seq(u32::MAX - 10).add(MAX_ACK_AHEAD + 1)), false, false);
        assert_eq!(s.primary_acked(), Some(Seq(20)));
    }

    #[test]
    fn window_is_rescaled_when_shifts_differ() {
        let mut s = Shadow::new(Seq(1));
        s.on_backup_synack(synack(100, 1, 9));
        s.on_primary_synack(synack(900, 1, 7));
        assert!(s.options_mismatch());
        assert_eq!(s.outbound_window(100), 400);
        assert_eq!(s.outbound_window(60000), u16::MAX);
        let mut same = Shadow::new(Seq(1));
        same.on_backup_synack(synack(100, 1, 7));
        same.on_primary_synack(synack(900, 1, 7));
        assert_eq!(same.outbound_window(1234), 1234);
    }

    #[test]
    fn progress_and_close() {
        let mut s = Shadow::native(Seq(10));
        assert_eq!(s.mapping(), Some(Mapping::IDENTITY));
        let mut seg = ack(11, 500, 1);
        seg.seq_len = 100;
        s.on_client_segment(&seg);
        // A retransmission of older data does not move progress back.
        seg.seq = Seq(11);
        seg.seq_len = 10;
        seg.ack = Some(Seq(400));
        s.on_client_segment(&seg);
        assert_eq!(s.progress().client_next, Seq(111));
        assert_eq!(s.progress().client_acked, Seq(500));
        assert!(!s.finished());
        seg.fin = true;
        s.on_client_segment(&seg);
        s.on_backup_close(true, false);
        assert!(s.finished());
    }

    proptest! {
        // Whatever the ISNs and clocks, mapping out and back is the identity and the
        // learnt offset maps the backup's ISN onto the primary's.
        #[test]
        fn mapping_round_trips(cisn in any::<u32>(), bisn in any::<u32>(), pisn in any::<u32>(),
                               bts in any::<u32>(), pts in any::<u32>(), x in any::<u32>()) {
            let mut s = Shadow::new(Seq(cisn));
            s.on_backup_synack(synack(bisn, bts, 7));
            let m = s.on_client_segment(&ack(cisn.wrapping_add(1), pisn.wrapping_add(1), pts)).unwrap();
            prop_assert_eq!(m.seq.apply(Seq(bisn)), Seq(pisn));
            prop_assert_eq!(m.seq.unapply(m.seq.apply(Seq(x))), Seq(x));
            prop_assert_eq!(s.inbound_tsecr(s.outbound_tsval(bts)), bts);
        }
    }
}
