// SPDX-License-Identifier: GPL-2.0
//! Takeover: the backup starts serving every shadowed connection.
//!
//! The caller has fenced the primary. The backup's TCP state is already that of each
//! connection (it received every client segment and ran the same program), so nothing
//! is reset: the gate opens, the service address is announced at this node's MAC, and
//! each connection is prompted — an ACK with the backup's current state goes out at
//! once, and a pending retransmission or tail-loss probe is brought forward — so that
//! clients resume now rather than at their next retransmission timeout.
//!
//! A connection whose TCP lacks client bytes that the old primary had (its last
//! progress report or its last acknowledgment on the wire says so) cannot continue:
//! the client was told they arrived and will not send them again, so this TCP would
//! wait for them forever. Such a connection is not judged here, though: at this
//! instant the bytes may still sit in the socket's backlog or on the way up from the
//! device. The heartbeat thread resets it if it stays short of that point for
//! `LOST_AFTER_MS` (see `Sync::lost_after_takeover`); the client's program then sees
//! the reset rather than a hang.

use super::lzk::kthread;
use super::lzk::net::Net;
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::genl_shadow::role;
use super::lzk::proto::seq::Seq;
use super::lzk::proto::shadow::Mapping;
use super::lzk::tcp::EstablishedSock;
use super::{now_ms, Live, Shared};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

/// Connections prompted per table lock hold.
const BATCH: usize = 64;
/// Attempts to prompt a socket its owner is holding, 1 ms apart.
const PROMPT_TRIES: u32 = 3;

/// What a takeover did.
pub(crate) struct Outcome {
    pub(crate) conns: u32,
    pub(crate) took_ms: u32,
}

/// Why a takeover was refused.
pub(crate) enum Refused {
    NotBackup,
    Already,
}

/// How far the old primary had the client's stream: the later of its last progress
/// report and its last acknowledgment seen on the wire (a report can be up to an
/// interval old; the wire is current up to the frames this node itself missed).
pub(crate) fn primary_had(c: &super::Conn) -> Option<Seq> {
    let reported = c.peer.map(|r| Seq(r.rcv_next));
    match (reported, c.shadow.primary_acked()) {
        (Some(r), Some(w)) => Some(if w.gt(r) { w } else { r }),
        (r, w) => r.or(w),
    }
}

/// Take over. Process context; `live` is the locked configuration of a backup.
pub(crate) fn run(shared: &Shared, live: &Live, net: &Net) -> core::result::Result<Outcome, Refused> {
    if live.config.role != role::BACKUP {
        return Err(Refused::NotBackup);
    }
    if shared.gate_open.swap(true, Ordering::AcqRel) {
        return Err(Refused::Already);
    }
    let start = now_ms();
    shared.role.store(role::PRIMARY, Ordering::Relaxed);
    let vip = live.config.vip;
    let port = live.config.port;
    if let Some(dev) = &live.dev {
        dev.announce(super::lzk::net::Ipv4Addr(vip));
    }
    let mut prompted = 0u32;
    let chosen = |c: &super::Conn| c.shadow.mapping().is_some() && !c.shadow.finished();
    each_socket(shared, net, (vip, port), chosen, |sock| {
        for attempt in 0..PROMPT_TRIES {
            if sock.prompt() {
                prompted += 1;
                return;
            }
            if attempt + 1 < PROMPT_TRIES {
                kthread::sleep_ms(1);
            }
        }
    });
    shared.stats.prompts.fetch_add(prompted as u64, Ordering::Relaxed);
    let took_ms = now_ms().saturating_sub(start).min(u32::MAX as u64) as u32;
    let conns = shared.conns();
    // For the log only, after every client has been prompted.
    let behind = behind(shared, net, vip, port);
    pr_info!(
        "takeover: serving {} connections ({} prompted, {} still short of client bytes the primary had) after {} ms\n",
        conns,
        prompted,
        behind,
        took_ms
    );
    Ok(Outcome { conns, took_ms })
}

/// Backup: the connections whose TCP is still short of client bytes the primary had.
/// A planned takeover waits for none. Process context.
pub(crate) fn behind(shared: &Shared, net: &Net, vip: [u8; 4], port: u16) -> u32 {
    let mut short = 0u32;
    let mut cursor = Some(0usize);
    while let Some(from) = cursor {
        // The socket lookup takes no lock of its own, so it may run under the table's.
        cursor = shared
            .with_table(|t| {
                t.walk(from, BATCH, |_, k, c| {
                    if c.shadow.mapping().is_none() || c.shadow.finished() {
                        return;
                    }
                    let Some(theirs) = primary_had(c) else {
                        return;
                    };
                    let own = EstablishedSock::lookup(net, (k.client, k.client_port), (vip, port)).and_then(|s| s.progress());
                    if own.is_some_and(|p| Seq(p.rcv_nxt).lt(theirs)) {
                        short += 1;
                    }
                })
            })
            .flatten();
    }
    short
}

/// Primary, after the backup took over from a step-down: reset this node's own copies
/// of the connections. The resets never leave (the node is silent); they free the
/// sockets and tell this node's program its connections are gone.
pub(crate) fn retire(shared: &Shared, net: &Net, vip: [u8; 4], port: u16) -> u32 {
    let mut retired = 0u32;
    each_socket(shared, net, (vip, port), |_| true, |sock| {
        sock.abort();
        retired += 1;
    });
    retired
}

/// Run `act` on the socket of each connection that `chosen` picks. The keys are
/// copied out of the table in batches under its lock and the sockets used after it
/// is released: what `act` does to a socket sends segments, whose LOCAL_OUT hook
/// takes that lock. Process context.
fn each_socket(
    shared: &Shared,
    net: &Net,
    service: ([u8; 4], u16),
    chosen: impl Fn(&super::Conn) -> bool,
    mut act: impl FnMut(&EstablishedSock),
) {
    let mut cursor = Some(0usize);
    while let Some(from) = cursor {
        let mut keys = [FlowKey::default(); BATCH];
        let mut n = 0;
        cursor = shared
            .with_table(|t| {
                t.walk(from, BATCH, |_, k, c| {
                    if chosen(c) {
                        keys[n] = *k;
                        n += 1;
                    }
                })
            })
            .flatten();
        for k in &keys[..n] {
            if let Some(sock) = EstablishedSock::lookup(net, (k.client, k.client_port), service) {
                act(&sock);
            }
        }
    }
}

/// A finished connection still counts as translated this long after its last segment:
/// the last ACKs of its close (and their retransmissions) carry translated numbers too.
const CLOSE_GRACE_MS: u64 = 5000;

/// On a node that took over: the connections it took over that still need their
/// numbers translated (see the `translating` status attribute). Any context.
pub(crate) fn translating(shared: &Shared, now: u64) -> u32 {
    let mut n = 0u32;
    let mut cursor = Some(0usize);
    while let Some(from) = cursor {
        cursor = shared
            .with_table(|t| {
                t.walk(from, BATCH, |_, _, c| {
                    let translated = c.shadow.mapping().is_some_and(|m| m != Mapping::IDENTITY);
                    let over = c.finished() && now.saturating_sub(c.last_ms) > CLOSE_GRACE_MS;
                    if translated && !over {
                        n += 1;
                    }
                })
            })
            .flatten();
    }
    n
}
