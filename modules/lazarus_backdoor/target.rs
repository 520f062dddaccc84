// SPDX-License-Identifier: GPL-2.0
//! The target side: a page of sensors fed by this kernel, registered for remote
//! READ once the first monitor connects, and a listener that accepts only the
//! configured monitors.
//!
//! A connection: the monitor's request arrives (its address checked), the thread
//! creates the queue pair, accepts, registers the page on the first connection
//! (fast registration is a work request, so it needs a connected queue pair), then
//! sends the region table. The monitor reads only after it received the table, so
//! it never reads a page not yet registered.

use super::lzk::kthread::sleep_ms;
use super::heal;
use super::lzk::process;
use super::lzk::proto::sensor::{self, region, Class, Sensor};
use super::lzk::rdma::{Access, CmEvent, CmId, Cq, DmaPage, EventInfo, Mr, Page, Pd, RawId, PAGE};
use super::lzk::vec;
use super::runner::refuse;
use super::{bump, Config, Shared, UserSensors, KERNEL_SENSORS};
use kernel::bindings;
use kernel::prelude::*;

/// Work request ids on a target's queue pairs.
const WR_REG: u64 = 1;
const WR_SEND: u64 = 2;
/// How long the registration may take (a local operation).
const REG_WAIT_MS: u32 = 1000;
/// Depth of outstanding READs and atomics a monitor may have.
pub(crate) const RD_DEPTH: u8 = 4;

/// The kernel's own sensors, in slot order.
pub(crate) mod id {
    pub(crate) const TICKS: u32 = 1;
    pub(crate) const CONTEXT_SWITCHES: u32 = 2;
    pub(crate) const TASKS: u32 = 3;
    pub(crate) const FORKS: u32 = 4;
    pub(crate) const OOM_KILLS: u32 = 5;
    pub(crate) const FREE_PAGES: u32 = 6;
}

/// The sensors this kernel feeds and their default limits: ticks and context
/// switches must move within a second; tasks stay at or below 32768; forks stay
/// below 2000 a second; any OOM kill is an alarm; free memory stays at or above 5 %.
/// An operator may set the limits of 3 to 6 (`limits`, by id).
fn kernel_sensors(limits: &[Option<u64>; KERNEL_SENSORS + 1]) -> [Sensor; KERNEL_SENSORS] {
    let (_, total) = process::memory_pages();
    let s = |id: u32, class, flags, default: u64| Sensor { id, class, flags, limit: limits[id as usize].unwrap_or(default), value: 0 };
    [
        s(id::TICKS, Class::Progress, 0, 1000),
        s(id::CONTEXT_SWITCHES, Class::Progress, 0, 1000),
        s(id::TASKS, Class::Level, 0, 32768),
        s(id::FORKS, Class::Pressure, 0, 2000),
        s(id::OOM_KILLS, Class::Pressure, 0, 0),
        s(id::FREE_PAGES, Class::Level, sensor::flag::AT_LEAST, total / 20),
    ]
}

fn read_source(id: u32) -> u64 {
    // SAFETY: Each helper reads a kernel counter with no precondition; `jiffies` is
    // read with a volatile load, as the kernel's own readers do.
    unsafe {
        match id {
            id::TICKS => core::ptr::read_volatile(core::ptr::addr_of!(bindings::jiffies)) as u64,
            id::CONTEXT_SWITCHES => bindings::lz_nr_context_switches(),
            id::TASKS => bindings::lz_nr_threads().max(0) as u64,
            id::FORKS => bindings::lz_total_forks() as u64,
            id::OOM_KILLS => bindings::lz_oom_kills() as u64,
            id::FREE_PAGES => process::memory_pages().0,
            _ => 0,
        }
    }
}

/// Lay the box out in `page` (header, the kernel's sensors, then the programs'),
/// values as of now.
fn write_box(page: &Page, generation: u64, u: &UserSensors) -> Result {
    let user = &u.list[..u.count];
    let mut all = KVec::with_capacity(KERNEL_SENSORS + user.len(), GFP_KERNEL)?;
    for mut s in kernel_sensors(&u.kernel_limits) {
        s.value = read_source(s.id);
        all.push(s, GFP_KERNEL)?;
    }
    for s in user {
        all.push(*s, GFP_KERNEL)?;
    }
    let mut buf = KVec::from_elem(0u8, sensor::HEADER_LEN + all.len() * sensor::SENSOR_LEN, GFP_KERNEL)?;
    let n = sensor::write_box(&mut buf, generation, &all).ok_or(EINVAL)?;
    // The count goes last: a reader sees the old count (and old slots) or the new.
    page.write(8, &buf[8..n]);
    page.write(0, &buf[..8]);
    Ok(())
}

/// Refresh every value, each with one 64-bit store.
fn refresh(page: &Page, u: &UserSensors) {
    for i in 0..KERNEL_SENSORS {
        page.store_u64(sensor::HEADER_LEN + i * sensor::SENSOR_LEN + 16, read_source(i as u32 + 1));
    }
    for (i, s) in u.list[..u.count].iter().enumerate() {
        page.store_u64(sensor::HEADER_LEN + (KERNEL_SENSORS + i) * sensor::SENSOR_LEN + 16, s.value);
    }
}

/// The target's three pages: the Sensor Box, the process box (`heal`), and the
/// page monitors write repair requests into.
struct Pages {
    sensor: Page,
    procs: Page,
    repair: Page,
}

impl Pages {
    fn new() -> Result<Self> {
        Ok(Pages { sensor: Page::new()?, procs: Page::new()?, repair: Page::new()? })
    }
}

/// The pages registered on a device.
///
/// # Invariants
///
/// The regions are registered on `pd` (fields drop in order: the regions before
/// their domain).
struct Registered {
    sensor: Mr,
    procs: Mr,
    repair: Mr,
    pd: Pd,
    /// The registration work requests completed: the pages are reachable remotely.
    valid: bool,
}

/// Where the pages are: not registered yet, or registered on a device.
enum Store {
    Loose(Pages),
    Registered(Registered),
}

impl Store {
    fn sensor(&self) -> &Page {
        match self {
            Store::Loose(p) => &p.sensor,
            Store::Registered(r) => &r.sensor.page,
        }
    }

    fn procs(&self) -> &Page {
        match self {
            Store::Loose(p) => &p.procs,
            Store::Registered(r) => &r.procs.page,
        }
    }

    fn repair(&self) -> &Page {
        match self {
            Store::Loose(p) => &p.repair,
            Store::Registered(r) => &r.repair.page,
        }
    }
}

/// One monitor's connection. Fields drop in order: the queue pair (with the id)
/// before its completion queue, before the buffer it sent from.
struct Conn {
    id: CmId,
    cq: Cq,
    _send: DmaPage,
}

pub(crate) struct Target {
    // Drop order: connections, then the registration, then the listener.
    conns: KVec<Conn>,
    /// `None` only briefly, while the pages move into a registration, or when no
    /// page could be allocated.
    store: Option<Store>,
    heal: heal::Target,
    generation: u64,
    /// The programs' sensor layout the box shows (see `UserSensors::layout`).
    layout: u64,
    _listener: CmId,
    allowed: KVec<[u8; 4]>,
    next_refresh: u64,
}

impl Target {
    pub(crate) fn new(s: &Shared, cfg: &Config) -> Result<Self> {
        let pages = Pages::new()?;
        let generation = super::now_ms();
        let layout = {
            let u = s.sensors.lock();
            write_box(&pages.sensor, generation, &u)?;
            u.layout
        };
        // SAFETY: `s` is the module's shared state, which outlives the thread that
        // owns this id (and every child of it).
        let listener = unsafe { CmId::new(s) }?;
        listener.listen(cfg.port, 16)?;
        let mut allowed = KVec::new();
        for p in cfg.peers() {
            allowed.push(*p, GFP_KERNEL)?;
        }
        pr_info!("target: listening on RDMA port {} for {} monitor(s)\n", cfg.port, allowed.len());
        Ok(Target {
            conns: KVec::new(),
            store: Some(Store::Loose(pages)),
            heal: heal::Target::new()?,
            generation,
            layout,
            _listener: listener,
            allowed,
            next_refresh: 0,
        })
    }

    /// Fresh pages after the registered ones went (with their device, or with a
    /// failed registration).
    fn new_pages(&mut self, s: &Shared) {
        self.store = None;
        if let Ok(p) = Pages::new() {
            self.generation += 1;
            let u = s.sensors.lock();
            if write_box(&p.sensor, self.generation, &u).is_ok() {
                self.layout = u.layout;
                self.store = Some(Store::Loose(p));
            }
        }
    }

    fn registered(&mut self) -> Option<&mut Registered> {
        match self.store.as_mut() {
            Some(Store::Registered(r)) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn on_event(&mut self, s: &Shared, e: &EventInfo, _now: u64) {
        match e.event {
            CmEvent::ConnectRequest => {
                if !self.allowed.contains(&e.peer.0) {
                    pr_info!("target: refused a connection from {}.{}.{}.{} (not a configured monitor)\n", e.peer.0[0], e.peer.0[1], e.peer.0[2], e.peer.0[3]);
                    refuse(s, e);
                    return;
                }
                if let Err(err) = self.accept(s, e) {
                    pr_warn!("target: a monitor's connection failed: error {}\n", err.to_errno());
                }
            }
            CmEvent::DeviceRemoval => {
                // The device goes: nothing of ours may stay on it.
                vec::clear(&mut self.conns);
                s.purge(e.id);
                self.new_pages(s);
            }
            CmEvent::Disconnected | CmEvent::Failed { .. } => {
                if self.conns.iter().any(|c| c.id.raw() == e.id) {
                    vec::retain(&mut self.conns, |c| c.id.raw() != e.id);
                    s.purge(e.id);
                }
            }
            _ => {}
        }
    }

    fn accept(&mut self, s: &Shared, e: &EventInfo) -> Result {
        // SAFETY: A `ConnectRequest` names a new child id left to us, handled once.
        let Some(mut child) = (unsafe { CmId::adopt(e.id) }) else { return Err(EINVAL) };
        let refused = |child: CmId| {
            child.reject();
            drop(child);
            s.purge(e.id);
            bump(&s.stats.refused);
        };
        let Some(dev) = child.device() else {
            refused(child);
            return Err(ENODEV);
        };
        if self.registered().is_some_and(|r| r.pd.device() != dev) {
            // One device serves the pages; a second would need its own registration.
            refused(child);
            return Err(EBUSY);
        }
        if let Some(Store::Loose(_)) = self.store {
            let Some(Store::Loose(pages)) = self.store.take() else { return Err(EINVAL) };
            let made = Pd::new(dev).and_then(|pd| {
                let sensor = Mr::new(&pd, pages.sensor)?;
                let procs = Mr::new(&pd, pages.procs)?;
                let repair = Mr::new(&pd, pages.repair)?;
                Ok(Registered { sensor, procs, repair, pd, valid: false })
            });
            match made {
                Ok(r) => self.store = Some(Store::Registered(r)),
                Err(err) => {
                    // The pages went with the failed registration: lay out new ones.
                    self.new_pages(s);
                    refused(child);
                    return Err(err);
                }
            }
        }
        let Some(reg) = self.registered() else {
            refused(child);
            return Err(ENOMEM);
        };
        let cq = Cq::new(dev, 16)?;
        if let Err(err) = child.create_qp(&reg.pd, &cq, 16, 1) {
            refused(child);
            return Err(err);
        }
        child.accept(&[], RD_DEPTH)?;
        if !reg.valid {
            child.post_reg_mr(&reg.sensor, Access::ReadAtomic, WR_REG)?;
            child.post_reg_mr(&reg.procs, Access::ReadAtomic, WR_REG + 1)?;
            child.post_reg_mr(&reg.repair, Access::Write, WR_REG + 2)?;
            reg.valid = (0..3).all(|i| wait_for(&cq, WR_REG + i, REG_WAIT_MS));
            if !reg.valid {
                child.disconnect();
                return Err(EIO);
            }
        }
        let send = DmaPage::new(&reg.pd)?;
        // Whole pages: the box may grow as programs add sensors.
        let r = |kind, mr: &Mr| region::Region { kind, len: PAGE as u32, addr: mr.iova(), rkey: mr.rkey() };
        let table = [
            r(region::kind::SENSOR_BOX, &reg.sensor),
            r(region::kind::PROCESS_BOX, &reg.procs),
            r(region::kind::REPAIR, &reg.repair),
        ];
        let mut buf = [0u8; region::HEADER_LEN + 3 * region::ENTRY_LEN];
        let n = region::write(&mut buf, &table).ok_or(EINVAL)?;
        send.page.write(0, &buf[..n]);
        child.post_send(&send, n as u32, WR_SEND, true)?;
        pr_info!("target: monitor {}.{}.{}.{} connected\n", e.peer.0[0], e.peer.0[1], e.peer.0[2], e.peer.0[3]);
        bump(&s.stats.accepted);
        self.conns.push(Conn { id: child, cq, _send: send }, GFP_KERNEL)?;
        Ok(())
    }

    /// Refresh the sensors every interval and reap completions. Returns how long to
    /// sleep.
    pub(crate) fn tick(&mut self, s: &Shared, now: u64, interval_ms: u32) -> u32 {
        if now >= self.next_refresh {
            let u = s.sensors.lock();
            if let Some(st) = self.store.as_ref() {
                if u.layout != self.layout {
                    // A sensor was added or changed its limit: lay the box out again.
                    self.generation += 1;
                    self.layout = u.layout;
                    let _ = write_box(st.sensor(), self.generation, &u);
                } else {
                    refresh(st.sensor(), &u);
                }
            }
            drop(u);
            self.next_refresh = now + interval_ms as u64;
        }
        if let Some(st) = self.store.as_ref() {
            self.heal.tick(s, st.procs(), st.repair(), now);
        }
        // A failed send (the monitor went away mid-setup) ends the connection.
        let mut failed: Option<RawId> = None;
        for c in self.conns.iter() {
            while let Some(done) = c.cq.poll() {
                if !done.ok {
                    failed = Some(c.id.raw());
                }
            }
        }
        if let Some(raw) = failed {
            vec::retain(&mut self.conns, |c| c.id.raw() != raw);
            s.purge(raw);
        }
        (self.next_refresh.saturating_sub(now) as u32).min(interval_ms)
    }
}

/// Poll `cq` for the completion of `wr_id` for up to `ms` (process context).
fn wait_for(cq: &Cq, wr_id: u64, ms: u32) -> bool {
    for _ in 0..ms {
        while let Some(c) = cq.poll() {
            if c.wr_id == wr_id {
                return c.ok;
            }
        }
        sleep_ms(1);
    }
    false
}
