// SPDX-License-Identifier: GPL-2.0
//! Progress reports between the primary and the backup (see
//! [`super::lzk::proto::progress`] for the format and the rules).
//!
//! Runs in the heartbeat thread. Every interval, and sooner when a hook marks the
//! service urgent, each node walks its table in batches and reports the connections
//! whose progress changed (every connection at least once per [`REFRESH_MS`]). Reading
//! a connection's progress is a lookup of its socket, done under the table lock (the
//! lookup takes no lock of its own); datagrams go out after the lock is released.
//!
//! On receipt the primary frees kept segments the backup has and sends kept segments
//! again when the backup asks; the backup decides whether to ask. Both watch for a
//! program lagging its twin.

use super::lzk::dev::NetDevice;
use super::lzk::net::Net;
use super::lzk::proto::beat::Role;
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::progress::{flag, Header, Record, Report, Writer, MAX_RECORDS};
use super::lzk::proto::seq::Seq;
use super::lzk::skbq::SkbQueue;
use super::link::Link;
use super::lzk::tcp::EstablishedSock;
use super::{bump, Conn, Shared};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

/// Unchanged progress is reported again after this long, so a lost datagram costs at
/// most this much.
const REFRESH_MS: u64 = 1000;
/// A connection the backup has not reported this long after the primary began
/// keeping its bytes is one the backup does not follow.
const UNREPORTED_LIMIT_MS: u64 = 3000;
/// Most bytes sent again for one request (the backup asks again if it needs more).
const RESEND_BUDGET: u64 = 512 * 1024;
/// After takeover, a connection whose TCP has waited this long, without moving, for
/// client bytes that the old primary had or that this node saw beyond a gap has lost
/// them: the old primary acknowledged them, so the client will not send them again (a
/// client whose bytes were never acknowledged resends well within this, and bytes
/// still in the socket's backlog at takeover arrive within it).
const LOST_AFTER_MS: u64 = 3000;
/// Connections visited per lock hold.
const WALK_BATCH: usize = MAX_RECORDS;

/// A program's lag beyond the limits, found during a walk.
pub(crate) struct Lag {
    pub(crate) bytes: u32,
}

/// The progress side of the heartbeat thread.
pub(crate) struct Sync {
    /// The client-segment device: kept segments go out of it to the backup, and its
    /// MAC is in this node's reports.
    pub(crate) dev: NetDevice,
    pub(crate) role: Role,
    pub(crate) vip: [u8; 4],
    pub(crate) port: u16,
    pub(crate) app_max_lag_bytes: u32,
    pub(crate) app_max_lag_ms: u64,
}

impl Sync {
    fn header(&self) -> Header {
        Header { role: self.role, service: self.vip, service_port: self.port, mac: self.dev.mac() }
    }

    fn lookup(&self, k: &FlowKey) -> Option<EstablishedSock> {
        EstablishedSock::lookup(Net::init(), (k.client, k.client_port), (self.vip, self.port))
    }

    /// This node's record for `c`, in the primary's spaces, or `None` when there is
    /// nothing to say yet (a backup that has not mapped the connection).
    fn record(&self, k: &FlowKey, c: &Conn) -> Option<Record> {
        let base = Record { client: k.client, client_port: k.client_port, ..Record::default() };
        let Some(p) = self.lookup(k).and_then(|s| s.progress()) else {
            // No full socket (closed, TIME_WAIT, or not accepted yet): say so once
            // it had one; the numbers stay those of the last report. A connection
            // this node's TCP reset before its first report is said to be closed too
            // (the numbers are then meaningless, and a CLOSED record is read for its
            // flags only): the primary may be holding its own RST for it.
            let own_rst = if c.own_rst { flag::RST } else { 0 };
            let Some((last, _)) = c.sent else {
                return c.own_rst.then_some(Record { flags: flag::RST | flag::CLOSED, ..base });
            };
            return Some(Record { flags: (last.flags | flag::CLOSED | own_rst) & !flag::RESEND, ..last });
        };
        let out = |v: u32| -> Option<u32> {
            if self.role == Role::Backup {
                c.shadow.mapping().map(|m| m.seq.apply(Seq(v)).0)
            } else {
                Some(v)
            }
        };
        let mut flags = 0;
        if p.fin_in {
            flags |= flag::FIN_IN;
        }
        if p.fin_out {
            flags |= flag::FIN_OUT;
        }
        if c.shadow.progress().rst {
            flags |= flag::RST;
        }
        Some(Record {
            flags,
            rcv_next: p.rcv_nxt,
            snd_una: out(p.snd_una)?,
            app_read: p.copied_seq,
            app_written: out(p.write_seq)?,
            ..base
        })
    }

    /// Report changed progress to the peer. Returns the lags found.
    pub(crate) fn report(&self, s: &Shared, link: &mut Link<'_>, now: u64, interval_ms: u64, lags: &mut KVec<Lag>) {
        let mut w = Writer::new(&self.header());
        let mut cursor = Some(0usize);
        while let Some(from) = cursor {
            cursor = s
                .with_table(|t| {
                    t.walk_mut(from, WALK_BATCH, |k, c| {
                        self.visit(s, k, c, now, interval_ms, &mut w, lags);
                    })
                })
                .flatten();
            // A batch visits at most MAX_RECORDS connections, so the writer never
            // overflows within one; send what it holds before the next.
            if !w.is_empty() {
                if link.send(w.bytes()).is_ok() {
                    bump(&s.stats.progress_sent);
                }
                w.reset();
            }
        }
    }

    /// After takeover: the connections that lost client bytes for good (see
    /// [`LOST_AFTER_MS`]), to be reset by the caller.
    pub(crate) fn lost_after_takeover(&self, s: &Shared, now: u64, lost: &mut KVec<FlowKey>) {
        let mut cursor = Some(0usize);
        while let Some(from) = cursor {
            cursor = s
                .with_table(|t| {
                    t.walk_mut(from, WALK_BATCH, |k, c| {
                        if c.shadow.mapping().is_none() || c.finished() {
                            return;
                        }
                        let Some(own) = self.lookup(k).and_then(|sk| sk.progress()) else {
                            return;
                        };
                        let seen = c.shadow.progress().client_next;
                        let need = match super::takeover::primary_had(c) {
                            Some(had) if had.gt(seen) => had,
                            _ => seen,
                        };
                        if c.follower.on_primary(Seq(own.rcv_nxt), need, now, LOST_AFTER_MS) {
                            let _ = lost.push(*k, GFP_ATOMIC);
                        }
                    })
                })
                .flatten();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn visit(&self, s: &Shared, k: &FlowKey, c: &mut Conn, now: u64, interval_ms: u64, w: &mut Writer, lags: &mut KVec<Lag>) {
        if self.role == Role::Primary && !c.retention.unprotected && c.retention.abandoned(now, UNREPORTED_LIMIT_MS) {
            // The backup does not follow this connection: keeping its bytes would
            // only fill the budget.
            release_all(s, c);
            c.retention.unprotected = true;
            bump(&s.stats.unprotected_conns);
        }
        let Some(mut r) = self.record(k, c) else {
            return;
        };
        if let Some(peer) = c.peer.filter(|p| !p.has(flag::CLOSED)) {
            if let Some(bytes) =
                c.lag.observe(Seq(r.app_written), Seq(peer.app_written), now, self.app_max_lag_bytes, self.app_max_lag_ms)
            {
                bump(&s.stats.app_lag_reports);
                let _ = lags.push(Lag { bytes }, GFP_ATOMIC);
            }
        }
        // The backup also checks here, not only when a report arrives: the primary
        // repeats an unchanged report only every REFRESH_MS, and a gap at the end of
        // a transfer leaves its report unchanged.
        // A closed primary connection still counts: its last report says what the
        // primary had, and the bytes it kept stay until this node has them too.
        if self.role == Role::Backup && !r.has(flag::CLOSED) {
            if let Some(peer) = c.peer {
                if c.follower.on_primary(Seq(r.rcv_next), Seq(peer.rcv_next), now, interval_ms) {
                    c.want_resend = true;
                }
            }
        }
        if c.want_resend {
            r.flags |= flag::RESEND;
            c.want_resend = false;
            bump(&s.stats.resend_requests);
        }
        let fresh = match c.sent {
            Some((last, at)) => !last.same_progress(&r) || r.has(flag::RESEND) || now.saturating_sub(at) >= REFRESH_MS,
            None => true,
        };
        if fresh && w.push(&r) {
            c.sent = Some((r, now));
        }
    }

    /// A datagram from the peer. Returns the connections whose held FIN may go now
    /// (primary), so the caller prompts their sockets outside the table lock.
    pub(crate) fn receive(&self, s: &Shared, buf: &[u8], now: u64, interval_ms: u64, release: &mut KVec<FlowKey>) {
        let Ok(rep) = Report::parse(buf) else {
            bump(&s.stats.progress_rejected);
            return;
        };
        let h = rep.header;
        if h.role == self.role || h.service != self.vip || h.service_port != self.port {
            bump(&s.stats.progress_rejected);
            return;
        }
        bump(&s.stats.progress_received);
        let mut resend = SkbQueue::default();
        for r in rep.records() {
            let key = FlowKey { client: r.client, client_port: r.client_port, service: self.vip, service_port: self.port };
            s.with_table(|t| {
                let Some(c) = t.get_mut(&key) else {
                    return;
                };
                c.peer = Some(r);
                match self.role {
                    Role::Primary => self.from_backup(s, c, &r, &mut resend, release, &key),
                    Role::Backup => self.from_primary(s, &key, c, &r, now, interval_ms),
                }
            });
        }
        // Sent after the lock is released: the device queue is not ours to hold it over.
        while let Some(skb) = resend.pop_front() {
            if skb.send_copy(&self.dev, h.mac).is_ok() {
                bump(&s.stats.resent_segments);
            }
        }
    }

    fn from_backup(&self, s: &Shared, c: &mut Conn, r: &Record, resend: &mut SkbQueue, release: &mut KVec<FlowKey>, key: &FlowKey) {
        if c.fin.holding() && (r.has(flag::FIN_OUT) || r.has(flag::CLOSED) || r.has(flag::RST)) {
            let _ = release.push(*key, GFP_ATOMIC);
        }
        if r.has(flag::CLOSED) {
            // The backup's connection is over: nothing kept can help it any more.
            release_all(s, c);
            return;
        }
        if c.retention.on_backup_report(Seq(r.rcv_next)) {
            release_acked(s, c);
        }
        if r.has(flag::RESEND) {
            bump(&s.stats.resend_requests);
            let from = Seq(r.rcv_next);
            let mut budget = RESEND_BUDGET;
            c.kept.for_each(|skb| {
                let (_, end) = skb.tag();
                if from.lt(Seq(end)) {
                    if let Some(clone) = skb.clone_again() {
                        budget = budget.saturating_sub(clone.len() as u64);
                        resend.push_back(clone);
                    }
                }
                budget > 0
            });
        }
    }

    fn from_primary(&self, s: &Shared, key: &FlowKey, c: &mut Conn, r: &Record, now: u64, interval_ms: u64) {
        if c.shadow.mapping().is_none() {
            return;
        }
        let Some(own) = self.lookup(key).and_then(|sk| sk.progress()) else {
            return;
        };
        if c.follower.on_primary(Seq(own.rcv_nxt), Seq(r.rcv_next), now, interval_ms) {
            c.want_resend = true;
            s.urgent.store(true, Ordering::Relaxed);
        }
    }
}

/// Free `c`'s kept segments that the backup has.
fn release_acked(s: &Shared, c: &mut Conn) {
    let before = c.kept.bytes();
    while let Some((_, end)) = c.kept.front_tag() {
        if !c.retention.releasable(Seq(end)) {
            break;
        }
        drop(c.kept.pop_front());
    }
    s.unaccount_retained(before - c.kept.bytes());
}

/// Free all of `c`'s kept segments.
fn release_all(s: &Shared, c: &mut Conn) {
    s.unaccount_retained(c.kept.bytes());
    c.kept.clear();
}
