// SPDX-License-Identifier: GPL-2.0
//! The monitor side: one connection per target, a READ of its Sensor Box every
//! interval, and each sensor judged ([`sensor::evaluate`]). A READ is not atomic
//! with the target's stores, so one odd sample is not a verdict: a progress or level
//! alarm counts when two reads in a row agree, a pressure alarm when the next read's
//! count is at least the alarming one (a torn count would not stay). An alarm then
//! stays shown for [`ALARM_HOLD_MS`] after it last held, so that a burst seen by one
//! read is still there when an operator looks.
//!
//! A connection comes up in steps driven by the connection manager's events:
//! resolve the address, create the queue pair and post a receive for the region
//! table, resolve the route, connect; the target sends the table once its page is
//! registered. A failed step, a lost connection or a read that does not complete
//! within a second tears the connection down and retries after [`RETRY_MS`].

use super::lzk::proto::genl_bdoor::{peer_state, verdict};
use super::lzk::proto::heal::{self, ProcBox};
use super::lzk::proto::sensor::{self, region, Class, SensorBox, Verdict};
use super::target::id as tid;
use super::lzk::rdma::{CmEvent, CmId, Cq, DmaPage, EventInfo, Pd};
use super::lzk::vec;
use super::target::RD_DEPTH;
use super::{bump, Config, PeerView, SensorView, Shared};
use kernel::prelude::*;

const WR_RECV: u64 = 1;
const WR_READ: u64 = 2;
const WR_PROCS: u64 = 3;
const WR_REPAIR: u64 = 4;
/// After a repair request, the policies wait this long before they act again (the
/// target needs a moment to kill, the sensors to show it).
const HEAL_COOLDOWN_MS: u64 = 3000;
/// Fork bomb: a group of one user's processes with one command larger than this.
const FORK_BOMB_MEMBERS: u32 = 32;
/// Memory hog: a process with more resident pages than this (64 MiB of 4 KiB).
const MEMORY_HOG_PAGES: u64 = 16384;
/// `heal` bits.
const HEAL_FORK_BOMB: u8 = 1;
const HEAL_MEMORY_HOG: u8 = 2;
/// Wait between connection attempts.
const RETRY_MS: u64 = 1000;
/// A read not completed within this is an error (and ends the connection).
const READ_LIMIT_MS: u64 = 1000;
/// A confirmed alarm stays shown this long after it last held.
const ALARM_HOLD_MS: u64 = 5000;
/// Connection manager steps time out after this.
const RESOLVE_MS: u32 = 5000;

/// A connection's verbs objects. Fields drop in order: the queue pair (with the
/// id) before the completion queue, the buffers, and last the domain.
struct Link {
    id: CmId,
    cq: Option<Cq>,
    recv: Option<DmaPage>,
    read: Option<DmaPage>,
    /// The process box is read into this; repair requests are written from `out`.
    procs: Option<DmaPage>,
    out: Option<DmaPage>,
    pd: Option<Pd>,
}

/// A healing policy's progress on one target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heal {
    /// Acts on the next alarm from the given time on.
    Idle { from: u64 },
    /// Reading the process box since then.
    Reading { since: u64 },
    /// Writing a repair request since then.
    Writing { since: u64 },
}

enum Phase {
    /// Not connected; the next attempt at the given time.
    Idle { at: u64 },
    Resolving,
    Routing,
    Connecting,
    /// Connected, waiting for the region table.
    Established,
    /// Reading: the box's address and key; a read in flight since the given time.
    Reading { addr: u64, rkey: u32, len: u32, in_flight: Option<u64>, next: u64 },
}

/// What the monitor remembers of one sensor.
#[derive(Clone, Copy, Default)]
struct Judged {
    id: u32,
    memory: sensor::Memory,
    /// The previous read's raw verdict was an alarm (progress, level), or the count
    /// that raised a pressure alarm waiting for the next read to confirm it.
    alarm_before: bool,
    pending_count: Option<u64>,
    /// A confirmed alarm is shown until then.
    alarm_until: u64,
    view: SensorView,
}

struct Peer {
    addr: [u8; 4],
    link: Option<Link>,
    phase: Phase,
    /// The target's process box and repair page, from its region table.
    procs_region: Option<region::Region>,
    repair_region: Option<region::Region>,
    heal: Heal,
    repair_seq: u64,
    generation: u64,
    reads: u64,
    last_read: Option<u64>,
    judged: KVec<Judged>,
}

pub(crate) struct Monitor {
    port: u16,
    heal: u8,
    peers: KVec<Peer>,
    /// When the view for netlink was last refreshed.
    published_at: u64,
}

/// The netlink view is refreshed at most this often (the thread loops every
/// millisecond while a read is in flight).
const PUBLISH_MS: u64 = 20;

impl Monitor {
    pub(crate) fn new(cfg: &Config) -> Self {
        let mut peers = KVec::new();
        for a in cfg.peers() {
            let p = Peer {
                addr: *a,
                link: None,
                phase: Phase::Idle { at: 0 },
                procs_region: None,
                repair_region: None,
                heal: Heal::Idle { from: 0 },
                // A target carries out a request whose number differs from the
                // last one's: starting from the clock makes a new configuration's
                // first request differ from the previous one's.
                repair_seq: super::now_ms(),
                generation: 0,
                reads: 0,
                last_read: None,
                judged: KVec::new(),
            };
            if peers.push(p, GFP_KERNEL).is_err() {
                break;
            }
        }
        Monitor { port: cfg.port, heal: cfg.heal, peers, published_at: 0 }
    }

    pub(crate) fn on_event(&mut self, s: &Shared, e: &EventInfo, now: u64) {
        if e.event == CmEvent::ConnectRequest {
            super::runner::refuse(s, e);
            return;
        }
        let Some(p) = self.peers.iter_mut().find(|p| p.link.as_ref().is_some_and(|l| l.id.raw() == e.id)) else {
            return;
        };
        let step = match (e.event, &p.phase) {
            (CmEvent::AddrResolved, Phase::Resolving) => p.on_addr(),
            (CmEvent::RouteResolved, Phase::Routing) => p.on_route(),
            (CmEvent::Established, Phase::Connecting) => {
                p.phase = Phase::Established;
                Ok(())
            }
            (CmEvent::Failed { status }, _) => {
                pr_info!("monitor: {}.{}.{}.{}: connection failed ({})\n", p.addr[0], p.addr[1], p.addr[2], p.addr[3], status);
                Err(super::lzk::errno::ECONNREFUSED())
            }
            (CmEvent::Disconnected | CmEvent::DeviceRemoval, _) => Err(super::lzk::errno::ENOTCONN()),
            _ => Ok(()),
        };
        if step.is_err() {
            bump(&s.stats.connect_errors);
            p.reset(s, now);
        }
    }

    /// Connect, read, judge. Returns how long to sleep.
    pub(crate) fn tick(&mut self, s: &Shared, now: u64, interval_ms: u32) -> u32 {
        let mut nap = interval_ms;
        for p in self.peers.iter_mut() {
            match p.phase {
                Phase::Idle { at } if now >= at => {
                    if p.start(s, self.port).is_err() {
                        bump(&s.stats.connect_errors);
                        p.reset(s, now);
                    }
                }
                Phase::Established => p.take_table(s, now),
                Phase::Reading { .. } => {
                    if p.read_step(s, now, interval_ms, self.heal).is_err() {
                        bump(&s.stats.read_errors);
                        p.reset(s, now);
                    }
                    // A read in flight is polled every millisecond.
                    nap = 1;
                }
                _ => {}
            }
        }
        if now >= self.published_at + PUBLISH_MS {
            self.publish(s, now);
            self.published_at = now;
        }
        nap
    }

    /// Copy the peers' state for the netlink dump.
    fn publish(&self, s: &Shared, now: u64) {
        let mut views = KVec::new();
        for p in self.peers.iter() {
            let mut sensors = KVec::new();
            for j in p.judged.iter() {
                let _ = sensors.push(j.view, GFP_KERNEL);
            }
            let state = match p.phase {
                Phase::Reading { .. } => peer_state::CONNECTED,
                Phase::Idle { .. } if p.reads > 0 || p.last_read.is_some() => peer_state::FAILED,
                Phase::Idle { at } if at > 0 => peer_state::FAILED,
                _ => peer_state::CONNECTING,
            };
            let v = PeerView {
                addr: p.addr,
                state,
                generation: p.generation,
                reads: p.reads,
                last_read_ms: p.last_read.map(|t| now.saturating_sub(t)),
                sensors,
            };
            if views.push(v, GFP_KERNEL).is_err() {
                return;
            }
        }
        *s.view.lock() = views;
    }
}

impl Peer {
    fn reset(&mut self, s: &Shared, now: u64) {
        if let Some(l) = self.link.take() {
            let raw = l.id.raw();
            drop(l);
            s.purge(raw);
        }
        self.phase = Phase::Idle { at: now + RETRY_MS };
    }

    fn start(&mut self, s: &Shared, port: u16) -> Result {
        // SAFETY: `s` is the module's shared state, which outlives the thread that
        // owns this id.
        let id = unsafe { CmId::new(s) }?;
        id.resolve_addr(self.addr, port, RESOLVE_MS)?;
        self.link = Some(Link { id, cq: None, recv: None, read: None, procs: None, out: None, pd: None });
        self.phase = Phase::Resolving;
        Ok(())
    }

    fn on_addr(&mut self) -> Result {
        let l = self.link.as_mut().ok_or(EINVAL)?;
        let dev = l.id.device().ok_or(ENODEV)?;
        let pd = Pd::new(dev)?;
        let cq = Cq::new(dev, 16)?;
        l.id.create_qp(&pd, &cq, 8, 2)?;
        let recv = DmaPage::new(&pd)?;
        let read = DmaPage::new(&pd)?;
        let procs = DmaPage::new(&pd)?;
        let out = DmaPage::new(&pd)?;
        l.id.post_recv(&recv, WR_RECV)?;
        l.id.resolve_route(RESOLVE_MS)?;
        (l.cq, l.recv, l.read, l.procs, l.out, l.pd) = (Some(cq), Some(recv), Some(read), Some(procs), Some(out), Some(pd));
        self.phase = Phase::Routing;
        Ok(())
    }

    fn on_route(&mut self) -> Result {
        let l = self.link.as_ref().ok_or(EINVAL)?;
        l.id.connect(&[], RD_DEPTH)?;
        self.phase = Phase::Connecting;
        Ok(())
    }

    /// The target's region table, once it arrived.
    fn take_table(&mut self, s: &Shared, now: u64) {
        let Some(l) = self.link.as_ref() else { return };
        let (Some(cq), Some(recv)) = (l.cq.as_ref(), l.recv.as_ref()) else { return };
        while let Some(c) = cq.poll() {
            if c.wr_id != WR_RECV {
                continue;
            }
            let mut table = [0u8; region::HEADER_LEN + region::MAX * region::ENTRY_LEN];
            let n = (c.byte_len as usize).min(table.len());
            let found = c.ok && recv.page.read(0, &mut table[..n]);
            let fits = |r: &region::Region| r.len as usize <= super::lzk::rdma::PAGE;
            self.procs_region = found.then(|| region::find(&table[..n], region::kind::PROCESS_BOX)).flatten().filter(fits);
            self.repair_region = found.then(|| region::find(&table[..n], region::kind::REPAIR)).flatten().filter(fits);
            match found.then(|| region::find(&table[..n], region::kind::SENSOR_BOX)).flatten() {
                Some(r) if fits(&r) => {
                    pr_info!("monitor: {}.{}.{}.{}: connected, box of {} bytes\n", self.addr[0], self.addr[1], self.addr[2], self.addr[3], r.len);
                    self.phase = Phase::Reading { addr: r.addr, rkey: r.rkey, len: r.len, in_flight: None, next: now };
                }
                _ => {
                    bump(&s.stats.bad_boxes);
                    self.reset(s, now);
                }
            }
            return;
        }
    }

    /// Post a read when due; take the completions (the box's, and a healing
    /// policy's) and act on them.
    fn read_step(&mut self, s: &Shared, now: u64, interval_ms: u32, heal: u8) -> Result {
        let Phase::Reading { addr, rkey, len, in_flight, next } = self.phase else { return Ok(()) };
        let (mut box_done, mut procs_done, mut repair_done) = (None, None, None);
        {
            let l = self.link.as_ref().ok_or(EINVAL)?;
            let cq = l.cq.as_ref().ok_or(EINVAL)?;
            while let Some(c) = cq.poll() {
                match c.wr_id {
                    WR_READ => box_done = Some(c.ok),
                    WR_PROCS => procs_done = Some(c.ok),
                    WR_REPAIR => repair_done = Some(c.ok),
                    _ => {}
                }
            }
        }
        // A failed one-sided operation has put the queue pair in error: reconnect.
        if box_done == Some(false) || procs_done == Some(false) || repair_done == Some(false) {
            return Err(EIO);
        }
        if procs_done.is_some() {
            self.choose(s, now, heal)?;
        }
        if repair_done.is_some() {
            bump(&s.stats.repairs_sent);
            self.heal = Heal::Idle { from: now + HEAL_COOLDOWN_MS };
        }
        if let Heal::Reading { since } | Heal::Writing { since } = self.heal {
            if now.saturating_sub(since) > READ_LIMIT_MS {
                return Err(super::lzk::errno::ETIMEDOUT());
            }
        }
        match (in_flight, box_done) {
            (None, _) if now >= next => {
                let l = self.link.as_ref().ok_or(EINVAL)?;
                let read = l.read.as_ref().ok_or(EINVAL)?;
                l.id.post_read(read, len, addr, rkey, WR_READ)?;
                self.phase = Phase::Reading { addr, rkey, len, in_flight: Some(now), next };
            }
            (Some(since), Some(true)) => {
                let mut buf = KVec::from_elem(0u8, len as usize, GFP_KERNEL)?;
                let l = self.link.as_ref().ok_or(EINVAL)?;
                if !l.read.as_ref().ok_or(EINVAL)?.page.read(0, &mut buf) {
                    return Err(EINVAL);
                }
                bump(&s.stats.reads);
                self.reads += 1;
                self.last_read = Some(now);
                self.judge(s, &buf, now);
                self.phase = Phase::Reading { addr, rkey, len, in_flight: None, next: since + interval_ms as u64 };
                self.maybe_heal(now, heal)?;
            }
            (Some(since), _) if now.saturating_sub(since) > READ_LIMIT_MS => return Err(super::lzk::errno::ETIMEDOUT()),
            _ => {}
        }
        Ok(())
    }

    /// Whether a sensor `id` shows an alarm now.
    fn alarm(&self, id: u32) -> bool {
        self.judged.iter().any(|j| j.id == id && j.view.verdict == verdict::ALARM)
    }

    /// Which enabled policies' sensors show an alarm: (fork bomb, memory hog).
    fn triggered(&self, heal: u8) -> (bool, bool) {
        let bomb = heal & HEAL_FORK_BOMB != 0 && (self.alarm(tid::TASKS) || self.alarm(tid::FORKS));
        let hog = heal & HEAL_MEMORY_HOG != 0 && self.alarm(tid::FREE_PAGES);
        (bomb, hog)
    }

    /// A policy whose sensor shows an alarm reads the process box.
    fn maybe_heal(&mut self, now: u64, heal: u8) -> Result {
        let Heal::Idle { from } = self.heal else { return Ok(()) };
        let (bomb, hog) = self.triggered(heal);
        let (Some(r), true) = (self.procs_region, now >= from && (bomb || hog)) else { return Ok(()) };
        let l = self.link.as_ref().ok_or(EINVAL)?;
        l.id.post_read(l.procs.as_ref().ok_or(EINVAL)?, r.len, r.addr, r.rkey, WR_PROCS)?;
        self.heal = Heal::Reading { since: now };
        Ok(())
    }

    /// The process box arrived: pick the culprits and write the repair request.
    fn choose(&mut self, s: &Shared, now: u64, heal: u8) -> Result {
        self.heal = Heal::Idle { from: now + 1000 };
        let l = self.link.as_ref().ok_or(EINVAL)?;
        let mut buf = KVec::from_elem(0u8, super::lzk::rdma::PAGE, GFP_KERNEL)?;
        if !l.procs.as_ref().ok_or(EINVAL)?.page.read(0, &mut buf) {
            return Err(EINVAL);
        }
        let Ok(pb) = ProcBox::parse(&buf) else {
            bump(&s.stats.bad_boxes);
            return Ok(());
        };
        let (bomb, hog) = self.triggered(heal);
        let culprit = if bomb { heal::fork_bomb(&pb, FORK_BOMB_MEMBERS) } else { None }
            .or_else(|| if hog { heal::memory_hog(&pb, MEMORY_HOG_PAGES) } else { None });
        let (Some(c), Some(r)) = (culprit, self.repair_region) else { return Ok(()) };
        self.repair_seq += 1;
        let out = l.out.as_ref().ok_or(EINVAL)?;
        let mut req = [0u8; heal::REPAIR_HEADER_LEN + heal::CULPRIT_LEN];
        let n = heal::write_repair(&mut req, self.repair_seq, &[c]).ok_or(EINVAL)?;
        out.page.write(0, &req[..n]);
        l.id.post_write(out, n as u32, r.addr, r.rkey, WR_REPAIR)?;
        match c {
            heal::Culprit::Group { uid, comm } => pr_warn!(
                "monitor: {}.{}.{}.{}: fork bomb: killing uid {}'s {} processes\n",
                self.addr[0], self.addr[1], self.addr[2], self.addr[3], uid, super::heal::comm_str(&comm)
            ),
            heal::Culprit::Process { pid, .. } => pr_warn!(
                "monitor: {}.{}.{}.{}: memory hog: killing process {}\n",
                self.addr[0], self.addr[1], self.addr[2], self.addr[3], pid
            ),
        }
        self.heal = Heal::Writing { since: now };
        Ok(())
    }

    fn judge(&mut self, s: &Shared, bytes: &[u8], now: u64) {
        let b = match SensorBox::parse(bytes) {
            Ok(b) => b,
            Err(_) => {
                bump(&s.stats.bad_boxes);
                return;
            }
        };
        if b.generation() != self.generation {
            // Sensors added or removed (or a new target): judge afresh.
            self.generation = b.generation();
            vec::clear(&mut self.judged);
        }
        for sn in b.sensors() {
            let at = match self.judged.iter().position(|j| j.id == sn.id) {
                Some(i) => i,
                None => {
                    if self.judged.push(Judged { id: sn.id, ..Judged::default() }, GFP_KERNEL).is_err() {
                        continue;
                    }
                    self.judged.len() - 1
                }
            };
            let j = &mut self.judged[at];
            let raw = sensor::evaluate(&sn, &mut j.memory, now);
            let alarm = raw == Verdict::Alarm;
            let confirmed = match sn.class {
                Class::Pressure => j.pending_count.is_some_and(|c| sn.value >= c),
                _ => alarm && j.alarm_before,
            };
            j.alarm_before = alarm;
            j.pending_count = (alarm && sn.class == Class::Pressure).then_some(sn.value);
            if confirmed {
                j.alarm_until = now + ALARM_HOLD_MS;
            }
            let shown = if now < j.alarm_until {
                verdict::ALARM
            } else if raw == Verdict::Learning {
                verdict::LEARNING
            } else {
                verdict::OK
            };
            if shown == verdict::ALARM && j.view.verdict != verdict::ALARM {
                bump(&s.stats.alarms);
                pr_warn!("monitor: {}.{}.{}.{}: sensor {} alarm (value {}, limit {})\n", self.addr[0], self.addr[1], self.addr[2], self.addr[3], sn.id, sn.value, sn.limit);
            }
            j.view = SensorView { id: sn.id, class: sn.class as u8, limit: sn.limit, value: sn.value, verdict: shown };
        }
    }
}
