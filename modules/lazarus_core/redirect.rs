// SPDX-License-Identifier: GPL-2.0
//! Stateless TCP port redirection (`net.lazarus.core.redirect`).
//!
//! Segments arriving for port FROM are rewritten to port TO at PRE_ROUTING, and
//! segments leaving from TO are rewritten back to FROM at LOCAL_OUT, both before
//! connection tracking, with the checksum kept valid incrementally (RFC 1624) in
//! both the complete and the `CHECKSUM_PARTIAL` states. A TO port must serve only
//! redirected clients: replies from it are always mapped back.

use super::lzk::netfilter::{Hook, HookHandler, Verdict};
use super::lzk::proto::ports::{RedirectMap, MAX_REDIRECTS};
use super::lzk::skb::SkBuff;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::{new_mutex, pin_init};

/// Hook priority: after defragmentation (-400), before conntrack (-200).
pub(crate) const PRIORITY: i32 = bindings::nf_ip_hook_priorities_NF_IP_PRI_RAW;

/// One redirection. `from` is 0 for a free slot.
///
/// # Invariants
///
/// `to` is written before `from` is published (Release) and `from` is cleared before
/// `to` changes, with a grace period in between, so a hook that sees a non-zero
/// `from` (Acquire) sees the `to` that belongs to it.
struct Slot {
    from: AtomicU32,
    to: AtomicU32,
}

/// The redirection table, read lock-free by the hooks.
#[pin_data]
pub(crate) struct Redirects {
    slots: [Slot; MAX_REDIRECTS],
    #[pin]
    config: Mutex<RedirectMap>,
}

impl Redirects {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Redirects {
            slots: [const { Slot { from: AtomicU32::new(0), to: AtomicU32::new(0) } }; MAX_REDIRECTS],
            config <- new_mutex!(RedirectMap::default()),
        })
    }

    /// True when no redirection is configured: the hooks then skip parsing.
    fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.from.load(Ordering::Relaxed) == 0)
    }

    fn inbound(&self, dst: u16) -> Option<u16> {
        self.slots.iter().find_map(|s| {
            let from = s.from.load(Ordering::Acquire);
            (from != 0 && from == dst as u32).then(|| s.to.load(Ordering::Relaxed) as u16)
        })
    }

    fn outbound(&self, src: u16) -> Option<u16> {
        self.slots.iter().find_map(|s| {
            let from = s.from.load(Ordering::Acquire);
            (from != 0 && s.to.load(Ordering::Relaxed) == src as u32).then_some(from as u16)
        })
    }

    /// The current map.
    pub(crate) fn get(&self) -> RedirectMap {
        *self.config.lock()
    }

    /// Replace the map. Process context: waits for running hooks.
    pub(crate) fn set(&self, map: &RedirectMap) {
        let mut cfg = self.config.lock();
        for s in &self.slots {
            s.from.store(0, Ordering::Release);
        }
        // SAFETY: Process context; waits until no hook still uses an old pair.
        unsafe { bindings::synchronize_net() };
        for (s, &(from, to)) in self.slots.iter().zip(map.pairs()) {
            s.to.store(to as u32, Ordering::Relaxed);
            s.from.store(from as u32, Ordering::Release);
        }
        *cfg = *map;
    }
}

/// The packet path of the redirection.
pub(crate) struct Redirector {
    pub(crate) table: Arc<Redirects>,
}

impl HookHandler for Redirector {
    fn hook(&self, hook: Hook, skb: &mut SkBuff<'_>) -> Verdict {
        if self.table.is_empty() {
            return Verdict::Accept;
        }
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        let new_port = match hook {
            Hook::PreRouting => self.table.inbound(p.tcp.dst_port),
            Hook::LocalOut => self.table.outbound(p.tcp.src_port),
            _ => None,
        };
        let Some(port) = new_port else {
            return Verdict::Accept;
        };
        match skb.rewriter() {
            Ok(mut rw) => {
                if hook == Hook::PreRouting {
                    rw.set_dst_port(port);
                } else {
                    rw.set_src_port(port);
                }
            }
            // Could not make the headers writable (memory): delivering the segment
            // unrewritten would reach the wrong socket, so drop it; TCP retransmits.
            Err(_) => return Verdict::Drop,
        }
        skb.set_untracked();
        Verdict::Accept
    }
}
