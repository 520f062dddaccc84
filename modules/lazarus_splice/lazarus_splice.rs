// SPDX-License-Identifier: GPL-2.0
//! lazarus_splice: CRAFT TCP splicing. A proxy program joins its client connection
//! and its backend connection in the kernel, which from then on forwards every
//! segment between the two peers by rewriting it; the proxy copies nothing.
//!
//! The proxy freezes the pair (`pre-splice`), settles its two sockets (forwards the
//! bytes left in them and waits until its own bytes are acknowledged), reads their
//! sequence numbers in TCP repair mode and hands them over (`splice`). The module
//! checks them against the sockets themselves, then rewrites each segment at
//! PRE_ROUTING ([`hooks`]) with the mapping of [`lzk::proto::splice`], and sends it
//! on as this host's own output. The proxy keeps its two sockets, silent in repair
//! mode, until the splice ends, so their ports stay reserved; it closes them when
//! the splice is gone from the listing.
//!
//! A splice ends [`LINGER_DEFAULT_MS`] after both FINs are acknowledged or a peer
//! resets, or after [`IDLE_DEFAULT_MS`] without a segment; a frozen pair the proxy
//! never splices is thawed after [`FROZEN_MAX_MS`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{Arc, SpinLock};
use kernel::{new_spinlock, pin_init};

#[allow(dead_code, unreachable_pub)]
#[path = "../../rust/lzk/mod.rs"]
mod lzk;

mod control;
mod hooks;

use lzk::bh::BhGuard;
use lzk::proto::flowtab::{FlowKey, FlowTable, Slot};
use lzk::proto::slab::{Slab, SlabSlot};
use lzk::proto::splice::{Phase, ResumePoint, Splice};
use lzk::skbq::SkbQueue;

module! {
    type: LazarusSplice,
    name: "lazarus_splice",
    author: "Lazarus developers",
    description: "Lazarus splice: CRAFT in-kernel TCP splicing for L7 proxies",
    license: "GPL",
}

/// Module version reported over netlink.
pub(crate) const VERSION: &core::ffi::CStr = c"0.1.0";

/// Splices the table holds (each takes two keys).
pub(crate) const MAX_SPLICES: usize = 8192;
/// A closed splice forwards stragglers (retransmitted FINs, last ACKs) this long.
pub(crate) const LINGER_DEFAULT_MS: u32 = 10_000;
/// A splice without a segment for this long is dropped.
pub(crate) const IDLE_DEFAULT_MS: u32 = 900_000;
/// A frozen pair is thawed after this long (its proxy died, or forgot it).
pub(crate) const FROZEN_MAX_MS: u64 = 10_000;
/// Segments held per frozen pair; more are dropped (their senders retransmit).
pub(crate) const HOLD_MAX: u32 = 64;
/// How often ended splices are collected.
const GC_INTERVAL_MS: u32 = 1000;

/// A splice's life.
pub(crate) enum State {
    /// Between pre-splice and splice, or between unsplice and the new backend's
    /// splice: segments with data are held here.
    Frozen(SkbQueue),
    /// Forwarding.
    Spliced(Splice),
}

/// One pair of connections.
pub(crate) struct Entry {
    /// The client connection, keyed as its segments arrive (client → proxy).
    pub(crate) client_key: FlowKey,
    /// The backend connection, keyed as its segments arrive (backend → proxy).
    /// Equal to `client_key` while a client connection waits, frozen alone, for a
    /// new backend after unsplice; only then.
    pub(crate) backend_key: FlowKey,
    pub(crate) state: State,
    /// The client's next request, held while spliced with a response end (see
    /// `Splice::holds_next_request`) until the proxy takes the connection over.
    pub(crate) next_request: SkbQueue,
    /// A next request is held and the response acknowledged: counted once in
    /// `Shared::next_ready`.
    pub(crate) ready: bool,
    pub(crate) created_ms: u64,
    pub(crate) last_ms: u64,
    /// When the splice closed (both FINs acknowledged, or a reset).
    pub(crate) closed_ms: Option<u64>,
}

/// Whether an entry becomes ready now (its `ready` and `next_request` fields, taken
/// apart so that its splice can stay borrowed): a next request is held, the response
/// is done, and it was not ready before.
pub(crate) fn becomes_ready(ready: &mut bool, next_request: &SkbQueue, response_done: bool) -> bool {
    if *ready || next_request.is_empty() || !response_done {
        return false;
    }
    *ready = true;
    true
}

/// The splices and the index of their 4-tuples.
///
/// # Invariants
///
/// For every entry in `entries` under handle `h`, `keys` maps both its keys to `h`,
/// and `keys` holds nothing else.
pub(crate) struct Table {
    pub(crate) entries: Slab<Entry, KVVec<SlabSlot<Entry>>>,
    pub(crate) keys: FlowTable<u32, KVVec<Slot<u32>>>,
}

/// Why a pair cannot be frozen.
pub(crate) enum Refusal {
    /// One of the 4-tuples belongs to a splice already.
    Taken,
    /// The table is full.
    Full,
}

impl Table {
    fn new() -> Result<Self> {
        let mut slots = KVVec::with_capacity(MAX_SPLICES, GFP_KERNEL)?;
        for _ in 0..MAX_SPLICES {
            slots.push(SlabSlot::default(), GFP_KERNEL)?;
        }
        // Two keys per splice; the key table takes 7/8 of its slots.
        let n = 2 * MAX_SPLICES + 2 * MAX_SPLICES / 7 + 2;
        let mut keys = KVVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            keys.push(Slot::Empty, GFP_KERNEL)?;
        }
        // SAFETY: `get_random_u64` may be called from process context.
        let seed = unsafe { kernel::bindings::get_random_u64() };
        Ok(Table {
            entries: Slab::new(slots).ok_or(EINVAL)?,
            keys: FlowTable::new(keys, seed).ok_or(EINVAL)?,
        })
    }

    /// Add a pair in `state` (frozen, or spliced from a peer's state); its handle, and
    /// whether it is new.
    ///
    /// Installing a splice that is already in the table with the same two sides
    /// refreshes it instead (its idle clock restarts) and returns its handle: a
    /// standby's copies see no segment until a takeover, and the active proxy's
    /// repeated announcements keep them from expiring.
    pub(crate) fn add(&mut self, client_key: FlowKey, backend_key: FlowKey, state: State, now: u64) -> core::result::Result<(u32, bool), Refusal> {
        let existing = [self.keys.get(&client_key).copied(), self.keys.get(&backend_key).copied()];
        if let [Some(a), Some(b)] = existing {
            if a == b {
                if let (Some(e), State::Spliced(new)) = (self.entries.get_mut(a), &state) {
                    if let State::Spliced(old) = &e.state {
                        if old.client() == new.client() && old.backend() == new.backend() {
                            e.last_ms = now;
                            return Ok((a, false));
                        }
                    }
                }
            }
        }
        if existing.iter().any(Option::is_some) {
            return Err(Refusal::Taken);
        }
        let entry = Entry {
            client_key,
            backend_key,
            state,
            next_request: SkbQueue::default(),
            ready: false,
            created_ms: now,
            last_ms: now,
            closed_ms: None,
        };
        let h = self.entries.insert(entry).map_err(|_| Refusal::Full)?;
        let ok = self.keys.get_or_insert_with(client_key, || h).is_ok() && self.keys.get_or_insert_with(backend_key, || h).is_ok();
        if !ok {
            self.remove(h);
            return Err(Refusal::Full);
        }
        Ok((h, true))
    }

    /// Take a pair out of the table.
    /// Join backend connection `backend_key` to the client connection that unsplice
    /// left frozen alone under `h` (its backend key is its client key then).
    pub(crate) fn attach(&mut self, h: u32, client_key: FlowKey, backend_key: FlowKey) -> core::result::Result<(), &'static core::ffi::CStr> {
        let e = self.entries.get_mut(h).ok_or(c"no splice has this id")?;
        if e.client_key != client_key || e.backend_key != client_key || !matches!(e.state, State::Frozen(_)) {
            return Err(c"this id is not a client connection left by unsplice, or not this one");
        }
        if self.keys.get(&backend_key).is_some() {
            return Err(c"the backend connection is frozen or spliced already");
        }
        self.keys.get_or_insert_with(backend_key, || h).map_err(|_| c"the splice table is full")?;
        if let Some(e) = self.entries.get_mut(h) {
            e.backend_key = backend_key;
        }
        Ok(())
    }

    /// Take spliced entry `h` apart: its client connection stays frozen alone (its
    /// backend key becomes its client key), its backend connection leaves the table.
    /// Returns where the splice stood and its flags.
    pub(crate) fn unsplice(&mut self, h: u32, now: u64) -> core::result::Result<(ResumePoint, u8), &'static core::ffi::CStr> {
        let e = self.entries.get_mut(h).ok_or(c"no splice has this id")?;
        let State::Spliced(sp) = &e.state else {
            return Err(c"this id is frozen, not spliced");
        };
        let point = sp.resume_point();
        let flags = sp.flags();
        let backend_key = e.backend_key;
        e.backend_key = e.client_key;
        // A held next request stays held, now with the frozen connection: abort
        // thaws it to the proxy's socket, a new splice forwards it.
        e.state = State::Frozen(core::mem::take(&mut e.next_request));
        e.ready = false;
        e.created_ms = now;
        e.last_ms = now;
        e.closed_ms = None;
        if self.keys.get(&backend_key) == Some(&h) {
            self.keys.remove(&backend_key);
        }
        Ok((point, flags))
    }

    pub(crate) fn remove(&mut self, h: u32) -> Option<Entry> {
        let e = self.entries.remove(h)?;
        for k in [&e.client_key, &e.backend_key] {
            if self.keys.get(k) == Some(&h) {
                self.keys.remove(k);
            }
        }
        Some(e)
    }
}

/// Counters, all monotonic.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) pre_splices: AtomicU64,
    pub(crate) splices: AtomicU64,
    pub(crate) installed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) held: AtomicU64,
    pub(crate) hold_overflows: AtomicU64,
    pub(crate) forwarded_segments: AtomicU64,
    pub(crate) forwarded_bytes: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) send_dropped: AtomicU64,
    pub(crate) rewrite_errors: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) table_full: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) unspliced: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the hook, the collector and the netlink family.
///
/// # Invariants
///
/// `table` is only locked with bottom halves disabled ([`Shared::with_table`]), and
/// nothing sleeps while holding it. `count` is the number of entries in the table,
/// updated under its lock (the hook reads it without the lock to skip all work while
/// nothing is spliced).
#[pin_data]
pub(crate) struct Shared {
    pub(crate) count: AtomicU32,
    /// Splices that became ready for the proxy to take back (a next request held,
    /// the response acknowledged), ever: the proxy lists the table only when this
    /// moved.
    pub(crate) next_ready: AtomicU64,
    /// The errno of the latest failed send, for diagnosis.
    pub(crate) last_send_errno: AtomicU32,
    pub(crate) idle_ms: AtomicU32,
    pub(crate) linger_ms: AtomicU32,
    pub(crate) stats: Stats,
    #[pin]
    pub(crate) table: SpinLock<Table>,
}

/// Monotonic milliseconds.
pub(crate) fn now_ms() -> u64 {
    // SAFETY: `ktime_get` may be called from any context.
    (unsafe { kernel::bindings::ktime_get() } / 1_000_000) as u64
}

impl Shared {
    fn new(table: Table) -> impl PinInit<Self> {
        pin_init!(Shared {
            count: AtomicU32::new(0),
            next_ready: AtomicU64::new(0),
            last_send_errno: AtomicU32::new(0),
            idle_ms: AtomicU32::new(IDLE_DEFAULT_MS),
            linger_ms: AtomicU32::new(LINGER_DEFAULT_MS),
            stats: Stats::default(),
            table <- new_spinlock!(table),
        })
    }

    /// Run `f` on the table. Any context; `f` must not sleep.
    pub(crate) fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let _bh = BhGuard::new();
        let mut t = self.table.lock();
        let r = f(&mut t);
        self.count.store(t.entries.len() as u32, Ordering::Relaxed);
        r
    }

    /// Hand segments held for a frozen pair back to the receive path, where they go
    /// through the hook again: spliced now, or to the proxy's sockets after a thaw.
    pub(crate) fn release(&self, mut held: SkbQueue) {
        while let Some(skb) = held.pop_front() {
            // A full backlog drops it; the sender retransmits.
            let _ = skb.reinject();
        }
    }

    /// End splices that closed and lingered, went idle, or stayed frozen too long.
    /// Process context.
    fn collect(&self, now: u64) {
        let idle = self.idle_ms.load(Ordering::Relaxed) as u64;
        let linger = self.linger_ms.load(Ordering::Relaxed) as u64;
        let mut from = Some(0);
        while let Some(start) = from {
            let mut batch = [0u32; 32];
            let mut thawed = SkbQueue::default();
            let (n, next) = self.with_table(|t| {
                let (n, next) = t.entries.select(start, &mut batch, |e| {
                    if let State::Spliced(sp) = &e.state {
                        if e.closed_ms.is_none() && sp.phase() == Phase::Closed {
                            e.closed_ms = Some(e.last_ms);
                        }
                    }
                    match (&e.state, e.closed_ms) {
                        (State::Frozen(_), _) => now.saturating_sub(e.created_ms) > FROZEN_MAX_MS,
                        (State::Spliced(_), Some(at)) => now.saturating_sub(at) > linger,
                        (State::Spliced(_), None) => now.saturating_sub(e.last_ms) > idle,
                    }
                });
                for &h in &batch[..n] {
                    if let Some(e) = t.remove(h) {
                        match e.state {
                            State::Frozen(mut q) => {
                                bump(&self.stats.aborted);
                                while let Some(s) = q.pop_front() {
                                    thawed.push_back(s);
                                }
                            }
                            State::Spliced(_) if e.closed_ms.is_some() => bump(&self.stats.closed),
                            State::Spliced(_) => bump(&self.stats.expired),
                        }
                    }
                }
                (n, next)
            });
            self.release(thawed);
            // A full batch may have stopped early: look at the same range again.
            from = if n == batch.len() { Some(start) } else { next };
        }
    }
}

/// The periodic collector.
struct Collector {
    shared: Arc<Shared>,
}

impl lzk::work::WorkHandler for Collector {
    fn run(&self) -> Option<u32> {
        self.shared.collect(now_ms());
        Some(GC_INTERVAL_MS)
    }
}

struct LazarusSplice {
    shared: Arc<Shared>,
    // Drop order: the hooks stop first, then the collector, then the family.
    _hooks: lzk::netfilter::Registration<hooks::Handler>,
    _collector: lzk::work::DelayedWork<Collector>,
    _family: lzk::genl::Registration<control::Control>,
}

impl kernel::Module for LazarusSplice {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let shared = Arc::pin_init(Shared::new(Table::new()?), GFP_KERNEL)?;
        let family = control::register(module, shared.clone())?;
        let collector = lzk::work::DelayedWork::new(Collector { shared: shared.clone() })?;
        collector.schedule(GC_INTERVAL_MS);
        let hooks = lzk::netfilter::Registration::new(
            lzk::net::Net::init(),
            &[(lzk::netfilter::Hook::PreRouting, hooks::PRIO)],
            hooks::Handler { shared: shared.clone() },
        )?;
        pr_info!("loaded (version {}, {} splices)\n", VERSION.to_str().unwrap_or("?"), MAX_SPLICES);
        Ok(LazarusSplice { shared, _hooks: hooks, _collector: collector, _family: family })
    }
}

impl Drop for LazarusSplice {
    fn drop(&mut self) {
        // Fields drop after this: the hooks are still registered, so only count here.
        let n = self.shared.count.load(Ordering::Relaxed);
        if n > 0 {
            pr_warn!("unloading with {} splices: their connections stall until the peers give up\n", n);
        }
        pr_info!("unloaded\n");
    }
}
