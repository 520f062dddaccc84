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
use super::lzk::proto::sensor::{self, region, Class, Sensor};
use super::lzk::rdma::{CmEvent, CmId, Cq, DmaPage, EventInfo, Mr, Page, Pd, RawId, PAGE};
use super::lzk::vec;
use super::runner::refuse;
use super::{bump, Config, Shared};
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
mod id {
    pub(crate) const TICKS: u32 = 1;
    pub(crate) const CONTEXT_SWITCHES: u32 = 2;
    pub(crate) const TASKS: u32 = 3;
    pub(crate) const FORKS: u32 = 4;
    pub(crate) const OOM_KILLS: u32 = 5;
}

/// The sensors this kernel feeds and their limits: ticks and context switches must
/// move within a second; tasks stay at or below 32768; forks stay below 2000 a
/// second; any OOM kill is an alarm.
fn kernel_sensors() -> [Sensor; 5] {
    let s = |id, class, limit| Sensor { id, class, flags: 0, limit, value: 0 };
    [
        s(id::TICKS, Class::Progress, 1000),
        s(id::CONTEXT_SWITCHES, Class::Progress, 1000),
        s(id::TASKS, Class::Level, 32768),
        s(id::FORKS, Class::Pressure, 2000),
        s(id::OOM_KILLS, Class::Pressure, 0),
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
            _ => 0,
        }
    }
}

/// Lay the box out in `page` (header, the kernel's sensors, then the programs'),
/// values as of now.
fn write_box(page: &Page, generation: u64, user: &[Sensor]) -> Result {
    let mut all = KVec::with_capacity(5 + user.len(), GFP_KERNEL)?;
    for mut s in kernel_sensors() {
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
fn refresh(page: &Page, user: &[Sensor]) {
    let kernel = kernel_sensors();
    for (i, s) in kernel.iter().enumerate() {
        page.store_u64(sensor::HEADER_LEN + i * sensor::SENSOR_LEN + 16, read_source(s.id));
    }
    for (i, s) in user.iter().enumerate() {
        page.store_u64(sensor::HEADER_LEN + (kernel.len() + i) * sensor::SENSOR_LEN + 16, s.value);
    }
}

/// The box page registered on a device.
///
/// # Invariants
///
/// `mr` is registered on `pd` (fields drop in order: the region before its domain).
struct Registered {
    mr: Mr,
    pd: Pd,
    /// The registration work request completed: the page is readable remotely.
    valid: bool,
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
    reg: Option<Registered>,
    /// The box page while it is not registered.
    page: Option<Page>,
    generation: u64,
    /// The programs' sensor layout the box shows (see `UserSensors::layout`).
    layout: u64,
    _listener: CmId,
    allowed: KVec<[u8; 4]>,
    next_refresh: u64,
}

impl Target {
    pub(crate) fn new(s: &Shared, cfg: &Config) -> Result<Self> {
        let page = Page::new()?;
        let generation = super::now_ms();
        let layout = {
            let u = s.sensors.lock();
            write_box(&page, generation, &u.list[..u.count])?;
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
        Ok(Target { conns: KVec::new(), reg: None, page: Some(page), generation, layout, _listener: listener, allowed, next_refresh: 0 })
    }

    /// A fresh box page after the registered one went (with its device, or with a
    /// failed registration).
    fn new_page(&mut self, s: &Shared) {
        if let Ok(p) = Page::new() {
            self.generation += 1;
            let u = s.sensors.lock();
            if write_box(&p, self.generation, &u.list[..u.count]).is_ok() {
                self.layout = u.layout;
                self.page = Some(p);
            }
        }
    }

    fn box_page(&self) -> Option<&Page> {
        self.page.as_ref().or(self.reg.as_ref().map(|r| &r.mr.page))
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
                self.reg = None;
                s.purge(e.id);
                self.new_page(s);
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
        if self.reg.as_ref().is_some_and(|r| r.pd.device() != dev) {
            // One device serves the box; a second would need its own registration.
            refused(child);
            return Err(EBUSY);
        }
        if self.reg.is_none() {
            let Some(page) = self.page.take() else {
                refused(child);
                return Err(ENOMEM);
            };
            let made = Pd::new(dev).and_then(|pd| Mr::new(&pd, page).map(|mr| Registered { mr, pd, valid: false }));
            match made {
                Ok(r) => self.reg = Some(r),
                Err(err) => {
                    // The page went with the failed registration: lay out a new one.
                    self.new_page(s);
                    refused(child);
                    return Err(err);
                }
            }
        }
        let Some(reg) = self.reg.as_mut() else { return Err(EINVAL) };
        let cq = Cq::new(dev, 16)?;
        if let Err(err) = child.create_qp(&reg.pd, &cq, 16, 1) {
            refused(child);
            return Err(err);
        }
        child.accept(&[], RD_DEPTH)?;
        if !reg.valid {
            child.post_reg_mr(&reg.mr, WR_REG)?;
            reg.valid = wait_for(&cq, WR_REG, REG_WAIT_MS);
            if !reg.valid {
                child.disconnect();
                return Err(EIO);
            }
        }
        let send = DmaPage::new(&reg.pd)?;
        // The whole page: the box may grow as programs add sensors.
        let table = [region::Region { kind: region::kind::SENSOR_BOX, len: PAGE as u32, addr: reg.mr.iova(), rkey: reg.mr.rkey() }];
        let mut buf = [0u8; region::HEADER_LEN + region::ENTRY_LEN];
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
            let user = &u.list[..u.count];
            if u.layout != self.layout {
                // A sensor was added or changed its limit: lay the box out again.
                self.generation += 1;
                self.layout = u.layout;
                if let Some(p) = self.box_page() {
                    let _ = write_box(p, self.generation, user);
                }
            } else if let Some(p) = self.box_page() {
                refresh(p, user);
            }
            drop(u);
            self.next_refresh = now + interval_ms as u64;
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
