// SPDX-License-Identifier: GPL-2.0
//! Heartbeats with the peer node, failure detection, and the table's housekeeping.
//!
//! One kernel thread per configured service sends a beat to the peer every interval
//! and listens for the peer's beats in between (the socket's receive timeout is a
//! quarter interval, so detection is late by at most that much). Three intervals
//! without a fresh beat declare the peer failed: reported once on the events group,
//! where `lazarusd` fences the primary and calls takeover. A beat from the peer after
//! that reports it alive again.
//!
//! The same thread and socket carry the progress reports ([`super::sync`]): sent every
//! interval and whenever a hook marks the service urgent, received between beats.

use super::lzk::genl::Notifier;
use super::lzk::kthread::{self, ThreadBody};
use super::lzk::net::Ipv4Addr;
use super::lzk::proto::beat::{Beat, Detector, PeerState, Role, BEAT_LEN};
use super::lzk::proto::flowtab::FlowKey;
use super::link::{Link, Received, MAX_DATAGRAM};
use super::lzk::proto::auth::Key;
use super::lzk::proto::progress::{self, flag};
use super::lzk::proto::ratelimit::{Gate, LogLimit};
use super::lzk::tcp::EstablishedSock;
use super::sync::{Lag, Sync};
use super::lzk::proto::genl_shadow::{self as spec, cmd, event, peer_state, role, shadow_attr as a};
use super::lzk::sock::{SockAddr, Socket};
use super::{bump, now_ms, Shared};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Connections visited per table lock hold when releasing held RSTs.
const RST_WALK_BATCH: usize = 64;
/// How often finished connections are swept from the table.
const GC_INTERVAL_MS: u64 = 1000;
/// How often a backup that took over looks for connections that lost client bytes
/// for good. Each look reads every connection's socket; the reset itself waits 3 s,
/// so a look a second is enough, and doing it every heartbeat cost a busy node a
/// large share of its CPU with a thousand connections.
const LOST_CHECK_INTERVAL_MS: u64 = 1000;

/// Budgets of the log lines the network or the peer can repeat at will: a flapping
/// link, many connections lagging or reset at once. The events themselves still go
/// to the events group and the counters, every one of them.
struct Logs {
    peer: LogLimit,
    lag: LogLimit,
    reset: LogLimit,
    rst: LogLimit,
}

impl Logs {
    fn new() -> Self {
        const WINDOW_MS: u64 = 10_000;
        Logs {
            peer: LogLimit::new(WINDOW_MS, 6),
            lag: LogLimit::new(WINDOW_MS, 3),
            reset: LogLimit::new(WINDOW_MS, 5),
            rst: LogLimit::new(WINDOW_MS, 3),
        }
    }
}

pub(crate) struct Beater {
    pub(crate) sock: Socket,
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SockAddr,
    pub(crate) vip: [u8; 4],
    pub(crate) port: u16,
    pub(crate) notifier: Notifier,
    pub(crate) sync: Sync,
    /// The cluster key, if configured: every datagram is then sealed and checked.
    pub(crate) key: Option<Key>,
}

impl Beater {
    fn beat(&self, counter: u32) -> Beat {
        let s = &*self.shared;
        Beat {
            role: if s.role.load(Ordering::Relaxed) == role::BACKUP { Role::Backup } else { Role::Primary },
            gate_open: s.gate_open.load(Ordering::Relaxed),
            protected: s.fault_tolerant(),
            stepping_down: s.silent.load(Ordering::Relaxed) && !s.handed_over.load(Ordering::Relaxed),
            service: self.vip,
            service_port: self.port,
            counter,
            conns: s.conns(),
        }
    }

    fn notify(&self, ev: u8, silence_ms: Option<u64>) {
        self.notify_lag(ev, silence_ms, None)
    }

    fn notify_lag(&self, ev: u8, silence_ms: Option<u64>, lag: Option<u32>) {
        let s = &*self.shared;
        let _ = self.notifier.notify(spec::MCGRP_EVENTS, cmd::SHADOW_NTF, |m| {
            if let Some(l) = lag {
                m.put_u32(a::LAG_BYTES, l)?;
            }
            m.put_u8(a::EVENT, ev)?;
            m.put_u8(a::ROLE, s.role.load(Ordering::Relaxed))?;
            m.put_u8(a::PEER_STATE, s.peer_state.load(Ordering::Relaxed))?;
            m.put_u32(a::PEER_ADDR, u32::from_ne_bytes(self.peer.addr.0))?;
            if let Some(ms) = silence_ms {
                m.put_u32(a::PEER_SILENCE_MS, ms.min(u32::MAX as u64) as u32)?;
            }
            m.put_u32(a::CONNS, s.conns())
        });
    }

    /// Accept `buf`, a datagram from the peer, as a beat about our service.
    fn valid(&self, buf: &[u8]) -> Option<Beat> {
        let b = Beat::decode(buf).ok()?;
        (b.service == self.vip && b.service_port == self.port).then_some(b)
    }

    /// The link to the peer, in the roles this service was configured with (they do
    /// not change at takeover).
    fn link(&self) -> Link<'_> {
        let (own, peer) = match self.sync.role {
            Role::Backup => (role::BACKUP, role::PRIMARY),
            Role::Primary => (role::PRIMARY, role::BACKUP),
        };
        Link::new(&self.sock, self.peer, self.key, own, peer)
    }
}

impl Beater {
    fn report(&self, link: &mut Link<'_>, now: u64, interval_ms: u64, logs: &mut Logs) {
        // A primary whose backup took over from it has nothing left to report.
        if self.shared.peer_state.load(Ordering::Relaxed) == peer_state::FAILED || self.shared.handed_over.load(Ordering::Relaxed) {
            return;
        }
        let mut lags = KVec::new();
        self.sync.report(&self.shared, link, now, interval_ms, &mut lags);
        for l in lags.iter() {
            self.lagging(l, now, logs);
        }
    }

    /// A backup that took over resets the connections that lost client bytes with
    /// the old primary, rather than leave them hanging.
    fn reset_lost(&self, now: u64, logs: &mut Logs) {
        let s = &*self.shared;
        if self.sync.role != Role::Backup || !s.gate_open.load(Ordering::Relaxed) {
            return;
        }
        let mut lost = KVec::new();
        self.sync.lost_after_takeover(s, now, &mut lost);
        for k in lost.iter() {
            if let Some(sk) = EstablishedSock::lookup(super::lzk::net::Net::init(), (k.client, k.client_port), (self.vip, self.port)) {
                if let Gate::Print(more) = logs.reset.check(now) {
                    pr_warn!(
                        "resetting {}:{}: client bytes acknowledged by the old primary never reached this node{}\n",
                        Ipv4Addr(k.client),
                        k.client_port,
                        more
                    );
                }
                sk.abort();
                bump(&s.stats.conns_reset);
            }
        }
    }

    /// A fresh heartbeat from the peer: the steps of a planned switchover.
    fn on_peer_beat(&self, b: &Beat) {
        let s = &*self.shared;
        if s.role.load(Ordering::Relaxed) == role::BACKUP && !s.gate_open.load(Ordering::Relaxed) {
            // Asked for as long as the primary's beats say so: a primary whose
            // step-down ran out serves again and stops asking.
            let was = s.handover_requested.swap(b.stepping_down, Ordering::Relaxed);
            if b.stepping_down && !was {
                pr_info!("the primary stepped down and asks this node to take over\n");
                self.notify(event::HANDOVER_REQUESTED, None);
            }
        } else if s.silent.load(Ordering::Relaxed) && b.gate_open && !s.handed_over.swap(true, Ordering::Relaxed) {
            s.step_down_until.store(0, Ordering::Relaxed);
            let retired = super::takeover::retire(s, super::lzk::net::Net::init(), self.vip, self.port);
            pr_info!("the backup serves the service now; {} connections retired here, this node stays silent\n", retired);
            self.notify(event::HANDED_OVER, None);
        }
    }

    /// Primary: a step-down the backup did not answer in time ends; serve again.
    fn expire_step_down(&self, why: &str) {
        let s = &*self.shared;
        if s.handed_over.load(Ordering::Relaxed) || !s.silent.load(Ordering::Relaxed) {
            return;
        }
        s.step_down_until.store(0, Ordering::Relaxed);
        s.silent.store(false, Ordering::Release);
        pr_warn!("step-down ended: {}; serving again\n", why);
        self.notify(event::STEP_DOWN_EXPIRED, None);
    }

    fn lagging(&self, l: &Lag, now: u64, logs: &mut Logs) {
        if let Gate::Print(more) = logs.lag.check(now) {
            pr_warn!("this node's program lags its twin's by {} bytes on a connection{}\n", l.bytes, more);
        }
        self.notify_lag(event::APP_LAG, None, Some(l.bytes));
    }

    /// Primary: send the held RSTs that are due: the backup's report shows its
    /// connection reset or gone too, MaxDelayFIN is up, or the backup has failed. They
    /// go straight to the device, to the client's link address (the TCP that made
    /// them has forgotten the connection), under the table lock: sending from here
    /// never re-enters this module's hooks.
    fn release_rsts(&self, now: u64, logs: &mut Logs) {
        let s = &*self.shared;
        let max_delay = s.max_delay_fin_ms.load(Ordering::Relaxed) as u64;
        let peer_gone = s.peer_state.load(Ordering::Relaxed) == peer_state::FAILED;
        let mut holding = 0u32;
        let mut cursor = Some(0usize);
        while let Some(from) = cursor {
            cursor = s
                .with_table(|t| {
                    t.walk_mut(from, RST_WALK_BATCH, |_, c| {
                        if !c.rst.holding() {
                            return;
                        }
                        let backup_rst = peer_gone || c.peer.is_some_and(|p| p.has(flag::RST) || p.has(flag::CLOSED));
                        if !c.rst.due(now, backup_rst, max_delay) {
                            holding += 1;
                            return;
                        }
                        c.rst.release();
                        if let (Some(skb), Some(mac)) = (c.held_rst.take(), c.client_mac) {
                            if skb.send_copy(&self.sync.dev, mac).is_err() {
                                if let Gate::Print(more) = logs.rst.check(now) {
                                    pr_warn!("a held RST could not be sent{}\n", more);
                                }
                            }
                        }
                    })
                })
                .flatten();
        }
        s.rsts_holding.store(holding, Ordering::Relaxed);
    }

    /// The backup has produced the FINs the primary held: send them now rather than
    /// on the retransmission timer.
    fn release_fins(&self, keys: &[FlowKey]) {
        for k in keys {
            if let Some(sk) = EstablishedSock::lookup(super::lzk::net::Net::init(), (k.client, k.client_port), (self.vip, self.port)) {
                if sk.prompt() {
                    bump(&self.shared.stats.prompts);
                }
            }
        }
    }
}

impl ThreadBody for Beater {
    fn run(&self) {
        let s = &*self.shared;
        let mut det = Detector::new();
        let mut counter: u32 = 0;
        let mut next_send = 0u64;
        let mut next_gc = now_ms() + GC_INTERVAL_MS;
        let mut next_lost_check = 0u64;
        let mut timeout_ms = 0u32;
        let mut link = self.link();
        // One byte more than the largest datagram, so that an oversized one shows.
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let mut overflow_handled = false;
        let mut logs = Logs::new();
        while !kthread::should_stop() {
            let interval = s.heartbeat_ms.load(Ordering::Relaxed).max(1);
            let want = (interval / 4).max(2);
            if want != timeout_ms {
                timeout_ms = want;
                self.sock.set_timeouts(timeout_ms, timeout_ms);
            }
            let now = now_ms();
            if now >= next_send {
                counter = counter.wrapping_add(1);
                if link.send(&self.beat(counter).encode()).is_ok() {
                    bump(&s.stats.beats_sent);
                }
                next_send = now + interval as u64;
                s.urgent.store(false, Ordering::Relaxed);
                self.report(&mut link, now, interval as u64, &mut logs);
                if now >= next_lost_check {
                    self.reset_lost(now, &mut logs);
                    next_lost_check = now + LOST_CHECK_INTERVAL_MS;
                }
            } else if s.urgent.swap(false, Ordering::Relaxed) {
                self.report(&mut link, now, interval as u64, &mut logs);
            }
            match link.recv(&mut buf, &s.stats) {
                Ok(Received::Peer(n)) if progress::is_progress(&buf[..n]) => {
                    let mut release = KVec::new();
                    self.sync.receive(s, &buf[..n.min(MAX_DATAGRAM + 1)], now_ms(), interval as u64, &mut release);
                    self.release_fins(&release);
                }
                Ok(Received::Peer(n)) => match self.valid(&buf[..n.min(BEAT_LEN + 1)]) {
                    Some(b) if det.on_beat(b.counter, now_ms()) => {
                        bump(&s.stats.beats_received);
                        s.last_beat_ms.store(now_ms(), Ordering::Relaxed);
                        self.on_peer_beat(&b);
                    }
                    _ => bump(&s.stats.beats_rejected),
                },
                Ok(Received::Stranger) => bump(&s.stats.beats_rejected),
                // Counted by the link, by reason.
                Ok(Received::Refused) => {}
                Err(e) if e == EAGAIN || e == EINTR => {}
                // Shut down (unloading), or an error that would repeat: pace the loop.
                Err(_) => kthread::sleep_ms(timeout_ms),
            }
            let now = now_ms();
            let before = s.peer_state.load(Ordering::Relaxed);
            match det.tick(now, interval) {
                PeerState::Alive if before != peer_state::ALIVE => {
                    s.peer_state.store(peer_state::ALIVE, Ordering::Relaxed);
                    if let Gate::Print(more) = logs.peer.check(now) {
                        pr_info!("peer {} alive{}\n", Ipv4Addr(self.peer.addr.0), more);
                    }
                    self.notify(event::PEER_ALIVE, det.silence_ms(now));
                }
                PeerState::JustFailed => {
                    s.peer_state.store(peer_state::FAILED, Ordering::Relaxed);
                    let silence = det.silence_ms(now);
                    if let Gate::Print(more) = logs.peer.check(now) {
                        pr_warn!(
                            "peer {} failed: no heartbeat for {} ms (interval {} ms){}\n",
                            Ipv4Addr(self.peer.addr.0),
                            silence.unwrap_or(0),
                            interval,
                            more
                        );
                    }
                    self.notify(event::PEER_FAILED, silence);
                    // Nothing kept can reach a dead backup; the connections open now
                    // stay unprotected even if it comes back (it missed their bytes).
                    if s.role.load(Ordering::Relaxed) == role::PRIMARY {
                        s.drop_retention();
                        // Nobody would take over from a silenced primary now.
                        self.expire_step_down("the backup failed");
                    }
                    s.handover_requested.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
            if !overflow_handled && s.overflowed.load(Ordering::Relaxed) {
                overflow_handled = true;
                s.drop_retention();
                pr_warn!(
                    "retention budget of {} KiB overflowed: the backup lags; this node is no longer fault-tolerant\n",
                    s.retain_limit.load(Ordering::Relaxed) / 1024
                );
                self.notify(event::RETENTION_OVERFLOW, None);
            }
            let until = s.step_down_until.load(Ordering::Relaxed);
            if until != 0 && now >= until {
                self.expire_step_down("the backup did not take over in time");
            }
            if s.rsts_holding.load(Ordering::Relaxed) > 0 {
                self.release_rsts(now, &mut logs);
            }
            if now >= next_gc {
                s.collect_garbage(now);
                next_gc = now + GC_INTERVAL_MS;
            }
        }
    }

    fn wake(&self) {
        self.sock.shutdown();
    }
}
