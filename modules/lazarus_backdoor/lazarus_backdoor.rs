// SPDX-License-Identifier: GPL-2.0
//! lazarus_backdoor: Backdoors' Sensor Box over RDMA. A target keeps a page of
//! sensors fed by its kernel (timer ticks, context switches, tasks, forks, OOM
//! kills) and lets its configured monitors read it with one-sided RDMA READ; a
//! monitor reads each target's box on a schedule and judges every sensor (progress,
//! level, pressure; [`lzk::proto::sensor`]).
//!
//! One kernel thread does all the RDMA work ([`runner`]): the connection manager's
//! event handlers only queue events for it, so no verb runs in the manager's
//! ordered workqueues. The thread also refreshes the target's sensors and polls the
//! monitor's completions.
//!
//! Soft-RoCE (`rdma_rxe`) stands in for an RDMA NIC: it executes the remote reads
//! in the target's own kernel (softirq), so a target whose softirqs stop cannot be
//! read at all; a real RNIC reads without the target's CPU.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

#[allow(dead_code, unreachable_pub)]
#[path = "../../rust/lzk/mod.rs"]
mod lzk;

mod control;
mod heal;
mod monitor;
mod runner;
mod target;

use lzk::proto::genl_bdoor::role;
use lzk::rdma::{CmEvents, EventInfo};

module! {
    type: LazarusBackdoor,
    name: "lazarus_backdoor",
    author: "Lazarus developers",
    description: "Lazarus backdoor: Sensor Boxes read over RDMA",
    license: "GPL",
}

/// Module version reported over netlink.
pub(crate) const VERSION: &core::ffi::CStr = c"0.1.0";
/// Default refresh (target) and read (monitor) interval.
pub(crate) const INTERVAL_DEFAULT_MS: u32 = 100;
/// Targets one monitor reads, or monitors one target accepts.
pub(crate) const PEERS_MAX: usize = 16;
/// Connection manager events queued for the thread; more are dropped and counted
/// (the affected connection then times out and is retried).
const EVENTS_MAX: usize = 256;

/// What `configure` set.
#[derive(Clone, Copy)]
pub(crate) struct Config {
    pub(crate) role: u8,
    pub(crate) port: u16,
    peer_list: [[u8; 4]; PEERS_MAX],
    peer_count: usize,
    pub(crate) interval_ms: u32,
    /// A monitor's healing policies (`heal` bits in the spec).
    pub(crate) heal: u8,
    /// Changes with every configure, so that the thread applies it once.
    pub(crate) generation: u64,
}

impl Config {
    pub(crate) fn new(role: u8, port: u16, peers: &[[u8; 4]], interval_ms: u32, heal: u8, generation: u64) -> Self {
        let mut peer_list = [[0; 4]; PEERS_MAX];
        let peer_count = peers.len().min(PEERS_MAX);
        peer_list[..peer_count].copy_from_slice(&peers[..peer_count]);
        Config { role, port, peer_list, peer_count, interval_ms, heal, generation }
    }

    /// The monitors a target accepts, or the targets a monitor reads.
    pub(crate) fn peers(&self) -> &[[u8; 4]] {
        &self.peer_list[..self.peer_count]
    }
}

/// Counters (see the spec's `stats`).
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) bad_boxes: AtomicU64,
    pub(crate) alarms: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) repairs_sent: AtomicU64,
    pub(crate) repairs_done: AtomicU64,
    pub(crate) repairs_refused: AtomicU64,
    pub(crate) killed: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Sensors programs create through netlink (`sensor-set`), shown after the
/// kernel's own in the box.
pub(crate) const USER_SENSORS_MAX: usize = 32;
/// The kernel's own sensors have ids 1 to this.
pub(crate) const KERNEL_SENSORS: usize = 6;

pub(crate) struct UserSensors {
    pub(crate) list: [lzk::proto::sensor::Sensor; USER_SENSORS_MAX],
    pub(crate) count: usize,
    /// Limits an operator set for the kernel's own sensors, by id (index 0 unused).
    pub(crate) kernel_limits: [Option<u64>; KERNEL_SENSORS + 1],
    /// Changes when a sensor is added or its class, flags or limit change: the box
    /// is laid out again (with a new generation).
    pub(crate) layout: u64,
}

/// One sensor as a monitor last judged it.
#[derive(Clone, Copy, Default)]
pub(crate) struct SensorView {
    pub(crate) id: u32,
    pub(crate) class: u8,
    pub(crate) limit: u64,
    pub(crate) value: u64,
    pub(crate) verdict: u8,
}

/// One target as a monitor sees it (for the dump).
pub(crate) struct PeerView {
    pub(crate) addr: [u8; 4],
    pub(crate) state: u8,
    pub(crate) generation: u64,
    pub(crate) reads: u64,
    pub(crate) last_read_ms: Option<u64>,
    pub(crate) sensors: KVec<SensorView>,
}

/// What the netlink side and the thread share.
#[pin_data]
pub(crate) struct Shared {
    #[pin]
    pub(crate) config: Mutex<Config>,
    /// Events from the connection manager, for the thread.
    #[pin]
    pub(crate) events: Mutex<KVec<EventInfo>>,
    /// The monitor's view of its targets, refreshed by the thread.
    #[pin]
    pub(crate) view: Mutex<KVec<PeerView>>,
    #[pin]
    pub(crate) sensors: Mutex<UserSensors>,
    pub(crate) stats: Stats,
}

impl Shared {
    fn new() -> impl PinInit<Self> {
        pin_init!(Shared {
            config <- new_mutex!(Config::new(role::NONE, 0, &[], INTERVAL_DEFAULT_MS, 0, 0)),
            events <- new_mutex!(KVec::new()),
            view <- new_mutex!(KVec::new()),
            sensors <- new_mutex!(UserSensors {
                list: [lzk::proto::sensor::Sensor { id: 0, class: lzk::proto::sensor::Class::Level, flags: 0, limit: 0, value: 0 }; USER_SENSORS_MAX],
                count: 0,
                kernel_limits: [None; KERNEL_SENSORS + 1],
                layout: 0,
            }),
            stats: Stats::default(),
        })
    }
}

impl CmEvents for Shared {
    fn event(&self, e: EventInfo) {
        // Process context (the manager's workqueues): a sleeping lock is fine; the
        // thread holds it only to swap the queue out.
        let mut q = self.events.lock();
        if q.len() >= EVENTS_MAX || q.push(e, GFP_KERNEL).is_err() {
            bump(&self.stats.events_dropped);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    // SAFETY: `ktime_get` may be called from any context.
    (unsafe { kernel::bindings::ktime_get() } / 1_000_000) as u64
}

struct LazarusBackdoor {
    // Drop order: the netlink family first (no new configuration), then the
    // thread, which tears every RDMA object down before `shared` may go.
    _family: lzk::genl::Registration<control::Control>,
    _thread: lzk::kthread::Thread<runner::Body>,
    _shared: Arc<Shared>,
}

impl kernel::Module for LazarusBackdoor {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let shared = Arc::pin_init(Shared::new(), GFP_KERNEL)?;
        let thread = lzk::kthread::Thread::spawn(c"lzbackdoor", runner::Body::new(shared.clone())?)?;
        let family = control::register(module, shared.clone())?;
        pr_info!("loaded (version {})\n", VERSION.to_str().unwrap_or("?"));
        Ok(LazarusBackdoor { _family: family, _thread: thread, _shared: shared })
    }
}

impl Drop for LazarusBackdoor {
    fn drop(&mut self) {
        pr_info!("unloaded\n");
    }
}
