// SPDX-License-Identifier: GPL-2.0
//! The `lazarus_backdoor` netlink family: status, configure (admin only) and the
//! monitor's listing of its targets and their sensors.

use super::lzk::errno::EOPNOTSUPP;
use super::lzk::genl::{self, Dump, FamilySpec, Message, Request};
use super::lzk::proto::genl_bdoor::{self as spec, backdoor_attr as a, cmd, peer_attr as pa, role, sensor_attr as sa, stats_attr as st};
use super::lzk::proto::sensor::{Class, Sensor};
use super::{Config, PeerView, Shared, Stats, KERNEL_SENSORS, PEERS_MAX, USER_SENSORS_MAX, VERSION};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

static SPEC: FamilySpec = FamilySpec {
    name: spec::FAMILY_NAME_C,
    version: spec::FAMILY_VERSION,
    maxattr: a::MAX,
    policy: spec::POLICY,
    ops: spec::OPS,
    groups: spec::MCAST_GROUPS,
};

const INTERVAL_MAX_MS: u32 = 60_000;

pub(crate) struct Control {
    shared: Arc<Shared>,
}

pub(crate) fn register(module: &'static ThisModule, shared: Arc<Shared>) -> Result<genl::Registration<Control>> {
    genl::Registration::new(&SPEC, module, Control { shared })
}

fn put_stats(m: &mut Message, s: &Stats) -> Result {
    m.nest(a::STATS, |m| {
        let l = |c: &core::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        m.put_u64(st::ACCEPTED, l(&s.accepted))?;
        m.put_u64(st::REFUSED, l(&s.refused))?;
        m.put_u64(st::READS, l(&s.reads))?;
        m.put_u64(st::READ_ERRORS, l(&s.read_errors))?;
        m.put_u64(st::BAD_BOXES, l(&s.bad_boxes))?;
        m.put_u64(st::ALARMS, l(&s.alarms))?;
        m.put_u64(st::CONNECT_ERRORS, l(&s.connect_errors))?;
        m.put_u64(st::REPAIRS_SENT, l(&s.repairs_sent))?;
        m.put_u64(st::REPAIRS_DONE, l(&s.repairs_done))?;
        m.put_u64(st::REPAIRS_REFUSED, l(&s.repairs_refused))?;
        m.put_u64(st::KILLED, l(&s.killed))
    })
}

fn put_peer(m: &mut Message, p: &PeerView) -> Result {
    m.nest(a::PEER, |m| {
        m.put_u32(pa::ADDR, u32::from_ne_bytes(p.addr))?;
        m.put_u8(pa::STATE, p.state)?;
        m.put_u64(pa::GENERATION, p.generation)?;
        m.put_u64(pa::READS, p.reads)?;
        if let Some(ago) = p.last_read_ms {
            m.put_u32(pa::LAST_READ_MS_AGO, ago.min(u32::MAX as u64) as u32)?;
        }
        for s in p.sensors.iter() {
            m.nest(pa::SENSOR, |m| {
                m.put_u32(sa::ID, s.id)?;
                m.put_u8(sa::CLASS, s.class)?;
                m.put_u64(sa::LIMIT, s.limit)?;
                m.put_u64(sa::VALUE, s.value)?;
                m.put_u8(sa::VERDICT, s.verdict)
            })?;
        }
        Ok(())
    })
}

impl Control {
    fn status(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let (r, port, interval, heal) = {
            let cfg = s.config.lock();
            (cfg.role, cfg.port, cfg.interval_ms, cfg.heal)
        };
        req.reply(c, |m| {
            m.put_str(a::VERSION, VERSION)?;
            m.put_u8(a::ROLE, r)?;
            m.put_u16(a::PORT, port)?;
            m.put_u32(a::INTERVAL_MS, interval)?;
            m.put_u8(a::HEAL, heal)?;
            put_stats(m, &s.stats)
        })
    }

    fn configure(&self, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let r = req.u8(a::ROLE).ok_or_else(|| req.missing(c"missing attribute: role"))?;
        let mut list = [[0u8; 4]; PEERS_MAX];
        let mut n = 0;
        let mut bad = false;
        req.each(a::PEER_ADDR, |b| match b.get(..4) {
            Some(v) if n < PEERS_MAX => {
                let addr = [v[0], v[1], v[2], v[3]];
                if !list[..n].contains(&addr) {
                    list[n] = addr;
                    n += 1;
                }
            }
            _ => bad = true,
        });
        let peers = &list[..n];
        if bad {
            req.set_message(c"at most 16 peer addresses");
            return Err(EINVAL);
        }
        let interval = req.u32(a::INTERVAL_MS).unwrap_or(super::INTERVAL_DEFAULT_MS);
        if !(1..=INTERVAL_MAX_MS).contains(&interval) {
            req.set_message(c"interval-ms must be between 1 and 60000");
            return Err(EINVAL);
        }
        let port = req.u16(a::PORT).unwrap_or(0);
        if r != role::NONE {
            if port == 0 {
                return Err(req.missing(c"missing attribute: port"));
            }
            if peers.is_empty() {
                req.set_message(if r == role::TARGET {
                    c"a target needs at least one monitor (peer-addr)"
                } else {
                    c"a monitor needs at least one target (peer-addr)"
                });
                return Err(EINVAL);
            }
            if peers.iter().any(|p| p[0] == 0 || p[0] >= 224 || *p == [255; 4]) {
                req.set_message(c"peer-addr must be a unicast address");
                return Err(EINVAL);
            }
        }
        let mut cfg = s.config.lock();
        let generation = cfg.generation + 1;
        *cfg = Config::new(r, port, peers, interval, req.u8(a::HEAL).unwrap_or(0), generation);
        Ok(())
    }
}

/// Programs' sensors have ids from here on.
const USER_ID_FIRST: usize = 1000;

impl Control {
    /// A new limit for one of the kernel's sensors (its class and value are the
    /// kernel's): tasks, forks, OOM kills, free pages.
    fn kernel_limit(&self, req: &Request<'_>, id: u32) -> Result {
        let id = id as usize;
        if !(3..=KERNEL_SENSORS).contains(&id) {
            req.set_message(c"only the limits of kernel sensors 3 to 6 can be set (programs' sensors are 1000 and up)");
            return Err(EINVAL);
        }
        if req.attr(a::SENSOR_CLASS).is_some() || req.attr(a::SENSOR_FLAGS).is_some() {
            req.set_message(c"a kernel sensor's class and flags are fixed");
            return Err(EINVAL);
        }
        let limit = req.u64(a::SENSOR_LIMIT).ok_or_else(|| req.missing(c"missing attribute: sensor-limit"))?;
        let mut u = self.shared.sensors.lock();
        u.kernel_limits[id] = Some(limit);
        u.layout += 1;
        Ok(())
    }

    fn sensor_set(&self, req: &Request<'_>) -> Result {
        let id = req.u32(a::SENSOR_ID).ok_or_else(|| req.missing(c"missing attribute: sensor-id"))?;
        if (id as usize) < USER_ID_FIRST {
            return self.kernel_limit(req, id);
        }
        let value = req.u64(a::SENSOR_VALUE).ok_or_else(|| req.missing(c"missing attribute: sensor-value"))?;
        let class = match req.u8(a::SENSOR_CLASS) {
            None => None,
            Some(spec::class::PROGRESS) => Some(Class::Progress),
            Some(spec::class::LEVEL) => Some(Class::Level),
            Some(spec::class::PRESSURE) => Some(Class::Pressure),
            Some(_) => {
                req.set_message(c"sensor-class must be progress, level or pressure");
                return Err(EINVAL);
            }
        };
        let mut u = self.shared.sensors.lock();
        let n = u.count;
        if let Some(s) = u.list[..n].iter_mut().find(|s| s.id == id) {
            let (class, limit, flags) = (class.unwrap_or(s.class), req.u64(a::SENSOR_LIMIT).unwrap_or(s.limit), req.u8(a::SENSOR_FLAGS).unwrap_or(s.flags));
            let relaid = (class, limit, flags) != (s.class, s.limit, s.flags);
            *s = Sensor { id, class, flags, limit, value };
            if relaid {
                u.layout += 1;
            }
            return Ok(());
        }
        let Some(class) = class else {
            return Err(req.missing(c"a new sensor needs sensor-class"));
        };
        let Some(limit) = req.u64(a::SENSOR_LIMIT) else {
            return Err(req.missing(c"a new sensor needs sensor-limit"));
        };
        if n == USER_SENSORS_MAX {
            req.set_message(c"at most 32 sensors can be added");
            return Err(ENOSPC);
        }
        u.list[n] = Sensor { id, class, flags: req.u8(a::SENSOR_FLAGS).unwrap_or(0), limit, value };
        u.count += 1;
        u.layout += 1;
        Ok(())
    }
}

impl genl::Family for Control {
    fn doit(&self, c: u8, req: &Request<'_>) -> Result {
        match c {
            cmd::GET_STATUS => self.status(c, req),
            cmd::CONFIGURE => self.configure(req),
            cmd::SENSOR_SET => self.sensor_set(req),
            _ => Err(EOPNOTSUPP()),
        }
    }

    fn dumpit(&self, c: u8, dump: &mut Dump<'_>) -> Result {
        if c != cmd::PEER_GET {
            return Err(EOPNOTSUPP());
        }
        let views = self.shared.view.lock();
        let mut i = dump.cursor();
        while i < views.len() {
            if !dump.add(cmd::PEER_GET, |m| put_peer(m, &views[i]))? {
                dump.set_cursor(i);
                return Ok(());
            }
            i += 1;
        }
        dump.set_cursor(usize::MAX);
        Ok(())
    }
}
