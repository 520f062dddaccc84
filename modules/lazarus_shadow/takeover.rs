// SPDX-License-Identifier: GPL-2.0
//! Takeover: the backup starts serving every shadowed connection.
//!
//! The caller has fenced the primary. The backup's TCP state is already that of each
//! connection (it received every client segment and ran the same program), so nothing
//! is reset: the gate opens, the service address is announced at this node's MAC, and
//! each connection is prompted — an ACK with the backup's current state goes out at
//! once, and a pending retransmission or tail-loss probe is brought forward — so that
//! clients resume now rather than at their next retransmission timeout.

use super::lzk::kthread;
use super::lzk::net::Net;
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::genl_shadow::role;
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
    // Walk the table in batches without holding its lock while TCP runs: prompting
    // sends segments, whose LOCAL_OUT hook takes the same lock.
    let mut prompted = 0u32;
    let mut cursor = Some(0usize);
    while let Some(from) = cursor {
        let mut keys = [FlowKey::default(); BATCH];
        let mut n = 0;
        cursor = shared
            .with_table(|t| {
                t.walk(from, BATCH, |_, k, c| {
                    if c.shadow.mapping().is_some() && !c.shadow.finished() {
                        keys[n] = *k;
                        n += 1;
                    }
                })
            })
            .flatten();
        for k in &keys[..n] {
            let Some(sock) = EstablishedSock::lookup(net, (k.client, k.client_port), (vip, port)) else {
                continue;
            };
            for attempt in 0..PROMPT_TRIES {
                if sock.prompt() {
                    prompted += 1;
                    break;
                }
                if attempt + 1 < PROMPT_TRIES {
                    kthread::sleep_ms(1);
                }
            }
        }
    }
    shared.stats.prompts.fetch_add(prompted as u64, Ordering::Relaxed);
    let took_ms = now_ms().saturating_sub(start).min(u32::MAX as u64) as u32;
    let conns = shared.conns();
    pr_info!("takeover: serving {} connections ({} prompted) after {} ms\n", conns, prompted, took_ms);
    Ok(Outcome { conns, took_ms })
}
