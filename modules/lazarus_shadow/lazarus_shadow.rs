// SPDX-License-Identifier: GPL-2.0
//! lazarus_shadow: ST-TCP. A backup node shadows every connection of a protected
//! service and takes over when the primary fails, without the client noticing.
//!
//! Both nodes carry the service address and run the same server program. On the
//! backup this module
//! - accepts, at the device's ingress, the client frames addressed to the primary's
//!   MAC (the segment is a hub, a mirrored switch port or a multicast MAC), and watches
//!   the primary's SYN-ACKs and timestamps on the wire ([`hooks`]);
//! - maps each client segment into the backup's sequence and timestamp spaces before
//!   its TCP sees it ([`lzk::proto::shadow`]);
//! - withholds everything the backup sends from the service address, and its ARP
//!   answers for it, until takeover;
//! - exchanges heartbeats with the primary and reports a failed peer over netlink
//!   ([`beat`]), where `lazarusd` fences the primary and calls takeover;
//! - at takeover opens the gate, announces the address, maps its output back into the
//!   primary's spaces for the rest of each connection's life, and prompts every
//!   connection so clients resume at once ([`takeover`]).
//!
//! On the primary it keeps a copy of each client segment until the backup's TCP has
//! it, sends kept segments again when the backup asks, and holds a FIN that the
//! backup's program has not produced yet ([`hooks`], [`sync`]). Both nodes report
//! each connection's progress to the other every heartbeat interval ([`sync`]).

// `pin_init!` expands recursively per field; `Shared` has more fields than the
// default limit allows.
#![recursion_limit = "256"]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock, pin_init};

#[allow(dead_code, unreachable_pub)]
#[path = "../../rust/lzk/mod.rs"]
mod lzk;

mod beat;
mod control;
mod hooks;
mod link;
mod sync;
mod takeover;

use lzk::bh::BhGuard;
use lzk::proto::flowtab::{FlowTable, Slot};
use lzk::proto::genl_shadow::{peer_state, role};
use lzk::proto::progress::{FinHold, Follower, LagWatch, Record, Retention, RstHold};
use lzk::proto::shadow::Shadow;
use lzk::skbq::{OwnedSkb, SkbQueue};

module! {
    type: LazarusShadow,
    name: "lazarus_shadow",
    author: "Lazarus developers",
    description: "Lazarus shadow: ST-TCP active backup and takeover",
    license: "GPL",
}

/// Module version reported over netlink.
pub(crate) const VERSION: &core::ffi::CStr = c"0.1.0";

/// A finished connection's shadow is kept this long for late retransmissions.
const FINISHED_LINGER_MS: u64 = 60_000;
/// Client segments held for a connection whose offsets are still unknown after this
/// long without traffic are freed.
const PENDING_FORGET_MS: u64 = 5_000;
/// A connection with no segment for this long is forgotten.
const IDLE_FORGET_MS: u64 = 2 * 3600 * 1000;

/// One connection in the table.
#[derive(Default)]
pub(crate) struct Conn {
    /// Backup: the mapping between the two nodes' spaces.
    pub(crate) shadow: Shadow,
    /// Last time a segment of the connection passed (monotonic ms).
    pub(crate) last_ms: u64,
    /// Primary: client segments kept until the backup has them, oldest first, each
    /// tagged with its sequence range.
    pub(crate) kept: SkbQueue,
    /// Primary: what the backup has, and whether to keep anything.
    pub(crate) retention: Retention,
    /// Primary: a FIN held for the backup (MaxDelayFIN).
    pub(crate) fin: FinHold,
    /// Primary: an RST held for the backup (MaxDelayFIN), and the segment itself.
    pub(crate) rst: RstHold,
    pub(crate) held_rst: Option<OwnedSkb>,
    /// Primary: the Ethernet source of the client's latest segment (the client or
    /// its router), where a held RST is sent.
    pub(crate) client_mac: Option<[u8; 6]>,
    /// Backup: client segments that arrived before the offsets were known (in a
    /// receive batch with the SYN, before this node's TCP answered it); they go
    /// through the stack again once a SYN-ACK is seen.
    pub(crate) pending: SkbQueue,
    /// Backup: when to ask for missed bytes.
    pub(crate) follower: Follower,
    /// Backup: ask in the next report.
    pub(crate) want_resend: bool,
    /// The peer's latest report on this connection.
    pub(crate) peer: Option<Record>,
    /// This node's latest report and when it went out (unchanged progress is not
    /// repeated every interval).
    pub(crate) sent: Option<(Record, u64)>,
    /// Whether this node's program lags its twin's.
    pub(crate) lag: LagWatch,
    /// This node's TCP sent an RST on the connection (seen at LOCAL_OUT, whether or
    /// not it reached the client).
    pub(crate) own_rst: bool,
}

impl Conn {
    /// Both ends closed (backup: as seen on the wire; primary: its socket is gone).
    pub(crate) fn finished(&self) -> bool {
        self.shadow.finished() || self.sent.is_some_and(|(r, _)| r.has(lzk::proto::progress::flag::CLOSED))
    }
}

pub(crate) type Table = FlowTable<Conn, KVVec<Slot<Conn>>>;

/// Counters, all monotonic.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) client_segments: AtomicU64,
    pub(crate) swallowed: AtomicU64,
    pub(crate) translated_in: AtomicU64,
    pub(crate) translated_out: AtomicU64,
    pub(crate) unmapped: AtomicU64,
    pub(crate) table_full: AtomicU64,
    pub(crate) options_mismatch: AtomicU64,
    pub(crate) arp_withheld: AtomicU64,
    pub(crate) beats_sent: AtomicU64,
    pub(crate) beats_received: AtomicU64,
    pub(crate) beats_rejected: AtomicU64,
    pub(crate) prompts: AtomicU64,
    pub(crate) parse_errors: AtomicU64,
    pub(crate) acks_clamped: AtomicU64,
    pub(crate) progress_sent: AtomicU64,
    pub(crate) progress_received: AtomicU64,
    pub(crate) progress_rejected: AtomicU64,
    pub(crate) retained_segments: AtomicU64,
    pub(crate) resend_requests: AtomicU64,
    pub(crate) resent_segments: AtomicU64,
    pub(crate) retention_overflows: AtomicU64,
    pub(crate) unprotected_conns: AtomicU64,
    pub(crate) fins_held: AtomicU64,
    pub(crate) app_lag_reports: AtomicU64,
    pub(crate) conns_reset: AtomicU64,
    pub(crate) auth_truncated: AtomicU64,
    pub(crate) auth_forged: AtomicU64,
    pub(crate) auth_replayed: AtomicU64,
    pub(crate) auth_stale: AtomicU64,
    pub(crate) rsts_held: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The service as configured; fixed while it is live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) role: u8,
    pub(crate) vip: [u8; 4],
    pub(crate) port: u16,
    pub(crate) peer: [u8; 4],
    pub(crate) beat_port: u16,
    pub(crate) ifname: [u8; lzk::dev::IFNAME_MAX + 1],
    pub(crate) max_conns: u32,
    /// Retention budget in bytes (primary).
    pub(crate) retain_bytes: u64,
    pub(crate) max_delay_fin_ms: u32,
    pub(crate) app_max_lag_bytes: u32,
    pub(crate) app_max_lag_ms: u32,
    /// Fingerprint of the cluster key (0: none, the link is not authenticated). The
    /// key itself lives only in the heartbeat thread.
    pub(crate) key_fingerprint: u64,
}

impl Config {
    pub(crate) fn ifname(&self) -> &[u8] {
        trim_nul(&self.ifname)
    }
}

/// The bytes before the first NUL (all of them when there is none).
pub(crate) fn trim_nul(b: &[u8]) -> &[u8] {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..n]
}

/// What runs while a service is configured. Dropping it stops the heartbeat thread,
/// unregisters the hooks (waiting for running ones) and leaves promiscuous mode.
pub(crate) struct Live {
    pub(crate) config: Config,
    // Field order is drop order: the thread and hooks stop before the device
    // references go (each holds its own reference anyway).
    pub(crate) _beat: lzk::kthread::Thread<beat::Beater>,
    pub(crate) _hooks: Option<lzk::netfilter::Registration<hooks::Handler>>,
    pub(crate) dev: Option<lzk::dev::NetDevice>,
    pub(crate) promisc: Option<lzk::dev::NetDevice>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(d) = &self.promisc {
            let _ = d.promiscuity(-1);
        }
    }
}

/// State shared by the hooks, the heartbeat thread and the netlink family.
///
/// # Invariants
///
/// The packet path reads only atomics and `table` (under [`BhGuard`] + the spinlock,
/// never sleeping). `port` is nonzero exactly while a service is configured and `table`
/// holds its connection table; configuration changes are serialized by `live` and run
/// in process context.
#[pin_data]
pub(crate) struct Shared {
    /// Service port, 0 while unconfigured (the hooks then do nothing).
    pub(crate) port: AtomicU32,
    /// Service address, network-order bytes as a native u32.
    pub(crate) vip: AtomicU32,
    pub(crate) role: AtomicU8,
    pub(crate) gate_open: AtomicBool,
    pub(crate) heartbeat_ms: AtomicU32,
    pub(crate) peer_state: AtomicU8,
    /// Monotonic ms of the last fresh heartbeat, 0 before the first.
    pub(crate) last_beat_ms: AtomicU64,
    /// Primary: client bytes kept over all connections, and the budget.
    pub(crate) retained_bytes: AtomicU64,
    /// Primary: RSTs held now (a hint for the heartbeat thread, recounted on each
    /// release walk).
    pub(crate) rsts_holding: AtomicU32,
    pub(crate) retain_limit: AtomicU64,
    /// Primary: the budget overflowed; nothing is kept until reconfigured.
    pub(crate) overflowed: AtomicBool,
    /// Primary: MaxDelayFIN.
    pub(crate) max_delay_fin_ms: AtomicU32,
    /// A connection's progress changed in a way the peer should hear of before the
    /// next interval (a FIN, a resend request).
    pub(crate) urgent: AtomicBool,
    /// Primary, planned switchover: its output and ARP for the service are withheld
    /// (see `control::step_down`). Stays set after the backup has taken over.
    pub(crate) silent: AtomicBool,
    /// Primary: monotonic ms at which a step-down the backup has not answered ends
    /// and this node serves again; 0 when none is pending.
    pub(crate) step_down_until: AtomicU64,
    /// Primary: the backup took over after this node stepped down.
    pub(crate) handed_over: AtomicBool,
    /// Backup: the primary's latest heartbeat asks this node to take over.
    pub(crate) handover_requested: AtomicBool,
    pub(crate) stats: Stats,
    #[pin]
    pub(crate) table: SpinLock<Option<Table>>,
    #[pin]
    pub(crate) live: Mutex<Option<Live>>,
}

/// Monotonic milliseconds.
pub(crate) fn now_ms() -> u64 {
    // SAFETY: `ktime_get` may be called from any context.
    (unsafe { kernel::bindings::ktime_get() } / 1_000_000) as u64
}

impl Shared {
    fn new() -> impl PinInit<Self> {
        pin_init!(Shared {
            port: AtomicU32::new(0),
            vip: AtomicU32::new(0),
            role: AtomicU8::new(role::NONE),
            gate_open: AtomicBool::new(false),
            heartbeat_ms: AtomicU32::new(100),
            peer_state: AtomicU8::new(peer_state::UNKNOWN),
            last_beat_ms: AtomicU64::new(0),
            retained_bytes: AtomicU64::new(0),
            rsts_holding: AtomicU32::new(0),
            retain_limit: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
            max_delay_fin_ms: AtomicU32::new(0),
            urgent: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            step_down_until: AtomicU64::new(0),
            handed_over: AtomicBool::new(false),
            handover_requested: AtomicBool::new(false),
            stats: Stats::default(),
            table <- new_spinlock!(None),
            live <- new_mutex!(None),
        })
    }

    /// Run `f` on the connection table, if a service is configured. Any context.
    pub(crate) fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> Option<R> {
        let _bh = BhGuard::new();
        let mut t = self.table.lock();
        t.as_mut().map(f)
    }

    /// The peer answers heartbeats and (on the primary) every client byte the backup
    /// may lack is kept: a failure of either node now loses nothing.
    pub(crate) fn fault_tolerant(&self) -> bool {
        self.peer_state.load(Ordering::Relaxed) == peer_state::ALIVE && !self.overflowed.load(Ordering::Relaxed)
    }

    /// Keep client segments for the backup now.
    pub(crate) fn retaining(&self) -> bool {
        self.role.load(Ordering::Relaxed) == role::PRIMARY && self.gate_open.load(Ordering::Relaxed) && self.fault_tolerant()
    }

    /// Free every kept segment and stop keeping any for the connections open now
    /// (the backup failed, or the budget overflowed). Any context.
    pub(crate) fn drop_retention(&self) {
        self.with_table(|t| {
            t.retain(|_, c| {
                if !c.retention.unprotected {
                    c.retention.unprotected = true;
                    bump(&self.stats.unprotected_conns);
                }
                c.kept.clear();
                true
            })
        });
        self.retained_bytes.store(0, Ordering::Relaxed);
    }

    /// Take `bytes` of freed kept segments off the total. Called under the table lock,
    /// like every change of the total, so the subtraction cannot go below zero
    /// between the load and the store; the clamp covers a total reset to zero by an
    /// overflow while the segments were still queued.
    pub(crate) fn unaccount_retained(&self, bytes: u64) {
        let freed = bytes.min(self.retained_bytes.load(Ordering::Relaxed));
        self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Forget any planned switchover (a service configured afresh, or torn down).
    pub(crate) fn clear_step_down(&self) {
        self.silent.store(false, Ordering::Relaxed);
        self.step_down_until.store(0, Ordering::Relaxed);
        self.handed_over.store(false, Ordering::Relaxed);
        self.handover_requested.store(false, Ordering::Relaxed);
    }

    /// Connections in the table.
    pub(crate) fn conns(&self) -> u32 {
        self.with_table(|t| t.len() as u32).unwrap_or(0)
    }

    /// Forget finished and long-idle connections. Any context.
    pub(crate) fn collect_garbage(&self, now: u64) {
        self.with_table(|t| {
            t.retain(|_, c| {
                let idle = now.saturating_sub(c.last_ms);
                if c.shadow.mapping().is_none() && idle > PENDING_FORGET_MS {
                    // Its SYN-ACKs are not coming: the held segments will never pass.
                    c.pending.clear();
                }
                let keep = !(c.finished() && idle > FINISHED_LINGER_MS) && idle < IDLE_FORGET_MS;
                if !keep {
                    self.unaccount_retained(c.kept.bytes());
                }
                keep
            })
        });
    }

    /// Tear the service down: stop the thread and hooks, then drop the table.
    /// Process context.
    pub(crate) fn deconfigure(&self) -> bool {
        let mut live = self.live.lock();
        let Some(old) = live.take() else {
            return false;
        };
        self.port.store(0, Ordering::Release);
        drop(old);
        self.gate_open.store(false, Ordering::Relaxed);
        self.role.store(role::NONE, Ordering::Relaxed);
        self.peer_state.store(peer_state::UNKNOWN, Ordering::Relaxed);
        self.last_beat_ms.store(0, Ordering::Relaxed);
        self.overflowed.store(false, Ordering::Relaxed);
        self.retained_bytes.store(0, Ordering::Relaxed);
        self.clear_step_down();
        // No hook runs any more; free the table outside the spinlock (it may be
        // vmalloc'd, and freeing that must not happen with bottom halves off).
        let table = {
            let _bh = BhGuard::new();
            // A named guard: it is dropped before `_bh` (a temporary in the block's
            // tail would outlive it and hold the lock with bottom halves back on).
            let mut t = self.table.lock();
            t.take()
        };
        drop(table);
        true
    }
}

struct LazarusShadow {
    shared: Arc<Shared>,
    _family: lzk::genl::Registration<control::Control>,
}

impl kernel::Module for LazarusShadow {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let shared = Arc::pin_init(Shared::new(), GFP_KERNEL)?;
        let family = control::register(module, shared.clone())?;
        pr_info!("loaded (version {})\n", VERSION.to_str().unwrap_or("?"));
        Ok(LazarusShadow { shared, _family: family })
    }
}

impl Drop for LazarusShadow {
    fn drop(&mut self) {
        // Before the family is unregistered (fields drop after this): the heartbeat
        // thread holds a notifier of the family.
        self.shared.deconfigure();
        pr_info!("unloaded\n");
    }
}
