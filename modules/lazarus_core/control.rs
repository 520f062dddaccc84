// SPDX-License-Identifier: GPL-2.0
//! The `lazarus_core` netlink family and the `net.lazarus.core.*` sysctls.

use super::lzk::errno::{EOPNOTSUPP, ETIMEDOUT};
use super::lzk::genl::{self, Dump, FamilySpec, Message, Request};
use super::lzk::net::{Ipv4Addr, Net};
use super::lzk::proto::genl_core::{self as spec, cmd, core_attr as a, event, port_stats_attr as ps};
use super::lzk::proto::ports::{PortSet, RedirectMap};
use super::redirect::Redirects;
use super::lzk::proto::sysctl_core as names;
use super::lzk::sysctl::{Entry, IntValue, Table, TextValue};
use super::lzk::work::{DelayedWork, WorkHandler};
use super::{channel, ConfigError, Core, PortSlot, VERSION};
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

/// Netlink request handlers.
pub(crate) struct Control {
    core: Arc<Core>,
}

pub(crate) fn register(module: &'static ThisModule, core: Arc<Core>) -> Result<genl::Registration<Control>> {
    genl::Registration::new(&SPEC, module, Control { core })
}

fn put_stats(m: &mut Message, port: u16, s: &PortSlot) -> Result {
    m.nest(a::PORT_STATS, |m| {
        m.put_u16(ps::PORT, port)?;
        m.put_u64(ps::PACKETS_IN, s.packets_in.load(Ordering::Relaxed))?;
        m.put_u64(ps::BYTES_IN, s.bytes_in.load(Ordering::Relaxed))?;
        m.put_u64(ps::PACKETS_OUT, s.packets_out.load(Ordering::Relaxed))?;
        m.put_u64(ps::BYTES_OUT, s.bytes_out.load(Ordering::Relaxed))
    })
}

fn config_error(req: &Request<'_>, e: ConfigError) -> Error {
    let (err, msg) = match e {
        ConfigError::Exists => (EEXIST, c"port is already configured"),
        ConfigError::Missing => (ENOENT, c"port is not configured"),
        ConfigError::Full => (ENOSPC, c"port table is full (64 ports)"),
        ConfigError::Zero => (EINVAL, c"port 0 is not a service port"),
    };
    req.set_message(msg);
    err
}

impl genl::Family for Control {
    fn doit(&self, c: u8, req: &Request<'_>) -> Result {
        let core = &*self.core;
        match c {
            cmd::GET_STATUS => req.reply(c, |m| {
                m.put_str(a::VERSION, VERSION)?;
                m.put_u8(a::ENABLED, core.enabled.load(Ordering::Relaxed) as u8)?;
                m.put_u32(a::PORT_COUNT, core.config.lock().len() as u32)?;
                m.put_u16(a::CHANNEL_PORT, channel::PORT)?;
                m.put_u64(a::PROBES_ANSWERED, core.probes_answered.load(Ordering::Relaxed))
            }),
            cmd::PORT_ADD | cmd::PORT_DEL => {
                let port = req.u16(a::PORT).ok_or_else(|| req.missing(c"missing attribute: port"))?;
                let (res, ev) = if c == cmd::PORT_ADD {
                    (core.add_port(port), event::PORT_ADDED)
                } else {
                    (core.del_port(port), event::PORT_REMOVED)
                };
                res.map_err(|e| config_error(req, e))?;
                req.notify_group(spec::MCGRP_EVENTS, cmd::CONFIG_NTF, |m| {
                    m.put_u8(a::EVENT, ev)?;
                    m.put_u16(a::PORT, port)
                })
            }
            cmd::PORT_GET => {
                let port = req.u16(a::PORT).ok_or_else(|| req.missing(c"missing attribute: port"))?;
                let s = core.slot(port).ok_or_else(|| config_error(req, ConfigError::Missing))?;
                req.reply(c, |m| put_stats(m, port, s))
            }
            cmd::STATS_RESET => {
                let port = req.u16(a::PORT);
                core.reset(port).map_err(|e| config_error(req, e))?;
                req.notify_group(spec::MCGRP_EVENTS, cmd::CONFIG_NTF, |m| {
                    m.put_u8(a::EVENT, event::STATS_RESET)?;
                    if let Some(p) = port {
                        m.put_u16(a::PORT, p)?;
                    }
                    Ok(())
                })
            }
            cmd::SET_ENABLED => {
                let on = req.u8(a::ENABLED).ok_or_else(|| req.missing(c"missing attribute: enabled"))?;
                core.enabled.store(on != 0, Ordering::Relaxed);
                req.notify_group(spec::MCGRP_EVENTS, cmd::CONFIG_NTF, |m| {
                    m.put_u8(a::EVENT, event::ENABLED_CHANGED)?;
                    m.put_u8(a::ENABLED, on)
                })
            }
            cmd::PEER_PROBE => {
                let addr = req.be32(a::PEER_ADDR).ok_or_else(|| req.missing(c"missing attribute: peer-addr"))?;
                let port = req.u16(a::PEER_PORT).unwrap_or(channel::PORT);
                let transport = req.u8(a::TRANSPORT).unwrap_or(spec::transport::UDP);
                let timeout = req.u32(a::TIMEOUT_MS).unwrap_or(1000);
                let rtt = channel::probe(req.net(), Ipv4Addr::from_be_u32(addr), port, transport, timeout).map_err(|e| {
                    req.set_message(if e == ETIMEDOUT() || e == EAGAIN {
                        c"no answer from the peer's channel before the timeout"
                    } else {
                        c"could not reach the peer's channel"
                    });
                    e
                })?;
                req.reply(c, |m| m.put_u32(a::RTT_US, rtt))
            }
            _ => Err(EOPNOTSUPP()),
        }
    }

    fn dumpit(&self, c: u8, dump: &mut Dump<'_>) -> Result {
        if c != cmd::PORT_GET {
            return Err(EOPNOTSUPP());
        }
        // Dump configured ports in ascending order; the cursor is the next index.
        let ports = *self.core.config.lock();
        let mut i = dump.cursor();
        while let Some(&port) = ports.as_slice().get(i) {
            if let Some(s) = self.core.slot(port) {
                if !dump.add(c, |m| put_stats(m, port, s))? {
                    break;
                }
            }
            i += 1;
        }
        dump.set_cursor(i);
        Ok(())
    }
}

/// Objects behind the sysctls. Boxed, so the table's pointers stay valid.
pub(crate) struct SysctlValues {
    enabled: Enabled,
    ports: Ports,
    redirect: Redirect,
    stats_log: StatsLog,
}

struct Enabled(Arc<Core>);
struct Ports(Arc<Core>);
struct Redirect(Arc<Redirects>);
struct StatsLog {
    core: Arc<Core>,
    work: DelayedWork<StatsLogJob>,
}
struct StatsLogJob(Arc<Core>);

impl SysctlValues {
    pub(crate) fn new(core: Arc<Core>, redirects: Arc<Redirects>) -> Result<KBox<Self>> {
        let work = DelayedWork::new(StatsLogJob(core.clone()))?;
        Ok(KBox::new(
            SysctlValues {
                enabled: Enabled(core.clone()),
                ports: Ports(core.clone()),
                redirect: Redirect(redirects),
                stats_log: StatsLog { core, work },
            },
            GFP_KERNEL,
        )?)
    }

    /// Register the table; `self` must outlive it (the module drops the table first).
    pub(crate) fn register(&self) -> Result<Table> {
        // SAFETY: `self` is boxed and owned by the module, which drops the table before
        // it (field order of `LazarusCore`).
        let entries = unsafe {
            [
                Entry::int(names::enabled::NAME, &self.enabled),
                Entry::text(names::ports::NAME, &self.ports),
                Entry::text(names::redirect::NAME, &self.redirect),
                Entry::int(names::stats_log_interval_ms::NAME, &self.stats_log),
            ]
        };
        Table::register(Net::init(), names::PATH, &entries)
    }
}

impl IntValue for Enabled {
    const MIN: i32 = names::enabled::MIN;
    const MAX: i32 = names::enabled::MAX;
    fn get(&self) -> i32 {
        self.0.enabled.load(Ordering::Relaxed) as i32
    }
    fn set(&self, v: i32) -> Result {
        self.0.enabled.store(v != 0, Ordering::Relaxed);
        Ok(())
    }
}

impl TextValue for Ports {
    fn show(&self, out: &mut [u8]) -> usize {
        show_display(out, &*self.0.config.lock())
    }
    fn store(&self, text: &[u8]) -> Result {
        let set = PortSet::parse(text).map_err(|e| {
            pr_warn!("net.lazarus.core.ports: rejected: {}\n", e);
            EINVAL
        })?;
        self.0.set_ports(&set);
        Ok(())
    }
}

impl TextValue for Redirect {
    fn show(&self, out: &mut [u8]) -> usize {
        show_display(out, &self.0.get())
    }
    fn store(&self, text: &[u8]) -> Result {
        let map = RedirectMap::parse(text).map_err(|e| {
            pr_warn!("net.lazarus.core.redirect: rejected: {}\n", e);
            EINVAL
        })?;
        self.0.set(&map);
        Ok(())
    }
}

impl IntValue for StatsLog {
    const MIN: i32 = names::stats_log_interval_ms::MIN;
    const MAX: i32 = names::stats_log_interval_ms::MAX;
    fn get(&self) -> i32 {
        self.core.stats_log_ms.load(Ordering::Relaxed)
    }
    fn set(&self, v: i32) -> Result {
        self.core.stats_log_ms.store(v, Ordering::Relaxed);
        if v > 0 {
            self.work.schedule(v as u32);
        }
        Ok(())
    }
}

impl WorkHandler for StatsLogJob {
    fn run(&self) -> Option<u32> {
        let ms = self.0.stats_log_ms.load(Ordering::Relaxed);
        if ms <= 0 {
            return None;
        }
        for s in self.0.slots.iter() {
            let port = s.port.load(Ordering::Relaxed);
            if port != 0 {
                pr_info!(
                    "port {}: in {} segs {} bytes, out {} segs {} bytes\n",
                    port,
                    s.packets_in.load(Ordering::Relaxed),
                    s.bytes_in.load(Ordering::Relaxed),
                    s.packets_out.load(Ordering::Relaxed),
                    s.bytes_out.load(Ordering::Relaxed)
                );
            }
        }
        Some(ms as u32)
    }
}

/// Write `value` into `out` as text; returns the length used. Both values shown this
/// way (64 ports, 8 redirections) fit the sysctl buffer.
fn show_display(out: &mut [u8], value: &impl core::fmt::Display) -> usize {
    let mut w = SliceWriter { buf: out, len: 0 };
    let _ = core::fmt::write(&mut w, format_args!("{value}"));
    w.len
}

/// `core::fmt::Write` into a fixed buffer; output beyond it is cut off.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}
