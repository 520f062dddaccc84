// SPDX-License-Identifier: GPL-2.0
//! The `lazarus_shadow` netlink family: configuration, status, takeover and the
//! connection table.

use super::beat::Beater;
use super::hooks::{Handler, PRIO_RAW};
use super::lzk::dev::{NetDevice, IFNAME_MAX};
use super::lzk::errno::{EALREADY, EOPNOTSUPP};
use super::lzk::genl::{self, Dump, FamilySpec, Message, Request};
use super::lzk::kthread::Thread;
use super::lzk::net::{Ipv4Addr, Net};
use super::lzk::netfilter::{self, Hook};
use super::lzk::proto::auth::Key;
use super::lzk::proto::beat::{Role, DEFAULT_PORT};
use super::lzk::proto::flowtab::{FlowKey, FlowTable, Slot};
use super::lzk::proto::progress::Record;
use super::lzk::proto::shadow::Shadow;
use super::lzk::proto::genl_shadow::{self as spec, cmd, conn_attr as ca, event, role, shadow_attr as a, stats_attr as st};
use super::lzk::sock::{Kind, SockAddr, Socket};
use super::sync::Sync;
use super::takeover::{self, Refused};
use super::{now_ms, Config, Conn, Live, Shared, Table, VERSION};
use core::sync::atomic::{AtomicU64, Ordering};
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

const DEFAULT_HEARTBEAT_MS: u32 = 100;
const DEFAULT_MAX_CONNS: u32 = 16384;
const MAX_MAX_CONNS: u32 = 1 << 20;
const DEFAULT_RETAIN_KB: u32 = 16384;
const MAX_RETAIN_KB: u32 = 1 << 20;
const DEFAULT_MAX_DELAY_FIN_MS: u32 = 500;
const DEFAULT_APP_MAX_LAG_KB: u32 = 1024;
const DEFAULT_APP_MAX_LAG_MS: u32 = 2000;
const MAX_APP_MAX_LAG_MS: u32 = 60_000;
/// How long a stepped-down primary waits for its backup to take over by default, and
/// the bounds an operator may choose from.
const STEP_DOWN_DEFAULT_MS: u32 = 15_000;
const STEP_DOWN_MIN_MS: u32 = 1_000;
const STEP_DOWN_MAX_MS: u32 = 120_000;

pub(crate) struct Control {
    shared: Arc<Shared>,
}

pub(crate) fn register(module: &'static ThisModule, shared: Arc<Shared>) -> Result<genl::Registration<Control>> {
    genl::Registration::new(&SPEC, module, Control { shared })
}

fn be_u32(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr)
}

fn put_stats(m: &mut Message, s: &super::Stats) -> Result {
    let all: [(u16, &AtomicU64); 30] = [
        (st::CLIENT_SEGMENTS, &s.client_segments),
        (st::SWALLOWED, &s.swallowed),
        (st::TRANSLATED_IN, &s.translated_in),
        (st::TRANSLATED_OUT, &s.translated_out),
        (st::UNMAPPED, &s.unmapped),
        (st::TABLE_FULL, &s.table_full),
        (st::OPTIONS_MISMATCH, &s.options_mismatch),
        (st::ARP_WITHHELD, &s.arp_withheld),
        (st::BEATS_SENT, &s.beats_sent),
        (st::BEATS_RECEIVED, &s.beats_received),
        (st::BEATS_REJECTED, &s.beats_rejected),
        (st::PROMPTS, &s.prompts),
        (st::PARSE_ERRORS, &s.parse_errors),
        (st::ACKS_CLAMPED, &s.acks_clamped),
        (st::PROGRESS_SENT, &s.progress_sent),
        (st::PROGRESS_RECEIVED, &s.progress_received),
        (st::PROGRESS_REJECTED, &s.progress_rejected),
        (st::RETAINED_SEGMENTS, &s.retained_segments),
        (st::RESEND_REQUESTS, &s.resend_requests),
        (st::RESENT_SEGMENTS, &s.resent_segments),
        (st::RETENTION_OVERFLOWS, &s.retention_overflows),
        (st::UNPROTECTED_CONNS, &s.unprotected_conns),
        (st::FINS_HELD, &s.fins_held),
        (st::APP_LAG_REPORTS, &s.app_lag_reports),
        (st::CONNS_RESET, &s.conns_reset),
        (st::AUTH_TRUNCATED, &s.auth_truncated),
        (st::AUTH_FORGED, &s.auth_forged),
        (st::AUTH_REPLAYED, &s.auth_replayed),
        (st::AUTH_STALE, &s.auth_stale),
        (st::RSTS_HELD, &s.rsts_held),
    ];
    m.nest(a::STATS, |m| {
        for (id, c) in all {
            m.put_u64(id, c.load(Ordering::Relaxed))?;
        }
        Ok(())
    })
}

/// What a dump shows of a connection, copied out under the table lock.
#[derive(Clone, Copy, Default)]
struct ConnView {
    shadow: Shadow,
    peer: Option<Record>,
    retained: u64,
}

impl ConnView {
    fn of(c: &Conn) -> Self {
        ConnView { shadow: c.shadow, peer: c.peer, retained: c.kept.bytes() }
    }
}

fn put_conn(m: &mut Message, k: &FlowKey, c: &ConnView) -> Result {
    m.nest(a::CONN, |m| {
        let sh = &c.shadow;
        let p = sh.progress();
        m.put_u32(ca::CLIENT_ADDR, be_u32(k.client))?;
        m.put_u16(ca::CLIENT_PORT, k.client_port)?;
        m.put_u8(ca::MAPPED, sh.mapping().is_some() as u8)?;
        if let Some(map) = sh.mapping() {
            m.put_u32(ca::SEQ_OFFSET, map.seq.0)?;
            m.put_u32(ca::TS_OFFSET, map.ts.unwrap_or(0))?;
        }
        m.put_u32(ca::CLIENT_NEXT, p.client_next.0)?;
        m.put_u32(ca::CLIENT_ACKED, p.client_acked.0)?;
        let (own_synack, primary_synack) = sh.synacks_seen();
        let flags = p.client_fin as u8
            | (p.server_fin as u8) << 1
            | (p.rst as u8) << 2
            | (sh.options_mismatch() as u8) << 3
            | (own_synack as u8) << 4
            | (primary_synack as u8) << 5;
        m.put_u8(ca::FLAGS, flags)?;
        if let Some(peer) = &c.peer {
            m.put_u32(ca::PEER_NEXT, peer.rcv_next)?;
        }
        m.put_u32(ca::RETAINED, c.retained.min(u32::MAX as u64) as u32)
    })
}

impl Control {
    fn status(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let live = s.live.lock();
        req.reply(c, |m| {
            m.put_str(a::VERSION, VERSION)?;
            m.put_u8(a::ROLE, s.role.load(Ordering::Relaxed))?;
            if let Some(l) = live.as_ref() {
                let cfg = &l.config;
                m.put_u32(a::SERVICE_ADDR, be_u32(cfg.vip))?;
                m.put_u16(a::SERVICE_PORT, cfg.port)?;
                m.put_u32(a::PEER_ADDR, be_u32(cfg.peer))?;
                m.put_u16(a::BEAT_PORT, cfg.beat_port)?;
                if !cfg.ifname().is_empty() {
                    let name = core::ffi::CStr::from_bytes_with_nul(&cfg.ifname[..=cfg.ifname().len()]).map_err(|_| EINVAL)?;
                    m.put_str(a::IFNAME, name)?;
                }
                m.put_u32(a::MAX_CONNS, cfg.max_conns)?;
                m.put_u32(a::RETAIN_KB, (cfg.retain_bytes / 1024) as u32)?;
                m.put_u32(a::MAX_DELAY_FIN_MS, cfg.max_delay_fin_ms)?;
                m.put_u32(a::APP_MAX_LAG_KB, cfg.app_max_lag_bytes / 1024)?;
                m.put_u32(a::APP_MAX_LAG_MS, cfg.app_max_lag_ms)?;
                m.put_u64(a::KEY_FINGERPRINT, cfg.key_fingerprint)?;
            }
            m.put_u8(a::FAULT_TOLERANT, s.fault_tolerant() as u8)?;
            m.put_u64(a::RETAINED_BYTES, s.retained_bytes.load(Ordering::Relaxed))?;
            m.put_u32(a::HEARTBEAT_MS, s.heartbeat_ms.load(Ordering::Relaxed))?;
            m.put_u8(a::GATE_OPEN, s.gate_open.load(Ordering::Relaxed) as u8)?;
            m.put_u8(a::PEER_STATE, s.peer_state.load(Ordering::Relaxed))?;
            let last = s.last_beat_ms.load(Ordering::Relaxed);
            if last != 0 {
                m.put_u32(a::PEER_SILENCE_MS, now_ms().saturating_sub(last).min(u32::MAX as u64) as u32)?;
            }
            m.put_u32(a::CONNS, s.conns())?;
            let backup = s.role.load(Ordering::Relaxed) == role::BACKUP;
            let stepping = if backup { &s.handover_requested } else { &s.silent };
            m.put_u8(a::STEPPING_DOWN, stepping.load(Ordering::Relaxed) as u8)?;
            m.put_u8(a::HANDED_OVER, s.handed_over.load(Ordering::Relaxed) as u8)?;
            if let (true, Some(l)) = (backup, live.as_ref()) {
                m.put_u32(a::BEHIND, takeover::behind(s, req.net(), l.config.vip, l.config.port))?;
            }
            if let Some(l) = live.as_ref() {
                let took_over = l.config.role == role::BACKUP && s.gate_open.load(Ordering::Relaxed);
                m.put_u8(a::TOOK_OVER, took_over as u8)?;
                if took_over {
                    m.put_u32(a::TRANSLATING, takeover::translating(s, now_ms()))?;
                }
            }
            put_stats(m, &s.stats)
        })
    }

    /// Planned switchover, on the primary: go silent and ask the backup to take over
    /// (see the heartbeat thread for the rest).
    fn step_down(&self, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let live = s.live.lock();
        let Some(l) = live.as_ref() else {
            req.set_message(c"no service is configured");
            return Err(ENOENT);
        };
        let ms = req.u32(a::STEP_DOWN_MS).unwrap_or(STEP_DOWN_DEFAULT_MS);
        if !(STEP_DOWN_MIN_MS..=STEP_DOWN_MAX_MS).contains(&ms) {
            req.set_message(c"step-down-ms must be 1000 to 120000");
            return Err(EINVAL);
        }
        if l.config.role != role::PRIMARY || s.role.load(Ordering::Relaxed) != role::PRIMARY {
            req.set_message(c"this node is not the primary");
            return Err(EINVAL);
        }
        if s.silent.load(Ordering::Relaxed) {
            req.set_message(c"this node has stepped down already");
            return Err(EALREADY());
        }
        if !s.fault_tolerant() {
            // Silence without a backup that follows every connection would end them.
            req.set_message(c"not fault-tolerant (backup not alive, or retention overflowed): nobody could take over");
            return Err(EBUSY);
        }
        s.handed_over.store(false, Ordering::Relaxed);
        s.step_down_until.store(now_ms() + ms as u64, Ordering::Relaxed);
        s.silent.store(true, Ordering::Release);
        drop(live);
        pr_info!("stepping down: output withheld, asking the backup to take over within {} ms\n", ms);
        Ok(())
    }

    fn configure(&self, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let r = req.u8(a::ROLE).ok_or_else(|| req.missing(c"missing attribute: role"))?;
        let mut live = s.live.lock();
        if r == role::NONE {
            drop(live);
            if s.deconfigure() {
                pr_info!("service deconfigured\n");
                self.notify(req, event::DECONFIGURED);
            }
            return Ok(());
        }
        let heartbeat = req.u32(a::HEARTBEAT_MS);
        if let Some(l) = live.as_ref() {
            // A live service: only the heartbeat interval may change, and a request
            // that repeats the configuration is accepted as is.
            let same = |id: u16, v: Option<u32>| req.attr(id).is_none() || v == Some(1);
            let cfg = &l.config;
            let unchanged = r == cfg.role
                && same(a::SERVICE_ADDR, req.be32(a::SERVICE_ADDR).map(|v| (v == u32::from_be_bytes(cfg.vip)) as u32))
                && same(a::SERVICE_PORT, req.u16(a::SERVICE_PORT).map(|v| (v == cfg.port) as u32))
                && same(a::PEER_ADDR, req.be32(a::PEER_ADDR).map(|v| (v == u32::from_be_bytes(cfg.peer)) as u32))
                && same(a::BEAT_PORT, req.u16(a::BEAT_PORT).map(|v| (v == cfg.beat_port) as u32))
                && same(a::MAX_CONNS, req.u32(a::MAX_CONNS).map(|v| (v == cfg.max_conns) as u32))
                && same(a::RETAIN_KB, req.u32(a::RETAIN_KB).map(|v| (v as u64 * 1024 == cfg.retain_bytes) as u32))
                && same(a::MAX_DELAY_FIN_MS, req.u32(a::MAX_DELAY_FIN_MS).map(|v| (v == cfg.max_delay_fin_ms) as u32))
                && same(a::APP_MAX_LAG_KB, req.u32(a::APP_MAX_LAG_KB).map(|v| (v.saturating_mul(1024) == cfg.app_max_lag_bytes) as u32))
                && same(a::APP_MAX_LAG_MS, req.u32(a::APP_MAX_LAG_MS).map(|v| (v == cfg.app_max_lag_ms) as u32))
                && same(a::IFNAME, req.attr(a::IFNAME).map(|v| (trim_nul(v) == cfg.ifname()) as u32))
                && same(a::KEY, req.attr(a::KEY).map(|v| (Key::new(v).map_or(0, |k| k.fingerprint()) == cfg.key_fingerprint) as u32));
            if !unchanged {
                req.set_message(c"the service is live: only heartbeat-ms may change; configure role none first");
                return Err(EBUSY);
            }
            if let Some(ms) = heartbeat {
                s.heartbeat_ms.store(ms, Ordering::Relaxed);
            }
            return Ok(());
        }
        let vip = req.be32(a::SERVICE_ADDR).ok_or_else(|| req.missing(c"missing attribute: service-addr"))?;
        let port = req.u16(a::SERVICE_PORT).ok_or_else(|| req.missing(c"missing attribute: service-port"))?;
        let peer = req.be32(a::PEER_ADDR).ok_or_else(|| req.missing(c"missing attribute: peer-addr"))?;
        let mut ifname = [0u8; IFNAME_MAX + 1];
        if let Some(n) = req.attr(a::IFNAME).map(trim_nul) {
            if n.is_empty() || n.len() > IFNAME_MAX {
                req.set_message(c"ifname must be 1 to 15 bytes");
                return Err(EINVAL);
            }
            ifname[..n.len()].copy_from_slice(n);
        } else {
            return Err(req.missing(c"missing attribute: ifname (the interface on the client segment)"));
        }
        let max_conns = req.u32(a::MAX_CONNS).unwrap_or(DEFAULT_MAX_CONNS);
        if max_conns > MAX_MAX_CONNS {
            // Netlink's inline policy ranges are 16-bit, so this bound is checked here.
            req.set_message(c"max-conns is at most 1048576");
            return Err(ERANGE);
        }
        let retain_kb = req.u32(a::RETAIN_KB).unwrap_or(DEFAULT_RETAIN_KB);
        if retain_kb > MAX_RETAIN_KB {
            req.set_message(c"retain-kb is at most 1048576");
            return Err(ERANGE);
        }
        let app_max_lag_kb = req.u32(a::APP_MAX_LAG_KB).unwrap_or(DEFAULT_APP_MAX_LAG_KB);
        if app_max_lag_kb > (u32::MAX / 1024) {
            req.set_message(c"app-max-lag-kb is at most 4194303");
            return Err(ERANGE);
        }
        let app_max_lag_ms = req.u32(a::APP_MAX_LAG_MS).unwrap_or(DEFAULT_APP_MAX_LAG_MS);
        if app_max_lag_ms > MAX_APP_MAX_LAG_MS {
            // Above netlink's 16-bit inline range, so checked here.
            req.set_message(c"app-max-lag-ms is at most 60000");
            return Err(ERANGE);
        }
        let key = match req.attr(a::KEY) {
            None => None,
            Some(k) => Some(Key::new(k).ok_or_else(|| {
                req.set_message(c"key must be 16 to 64 bytes");
                EINVAL
            })?),
        };
        if vip == 0 || peer == 0 || vip == peer {
            req.set_message(c"service-addr and peer-addr must be distinct unicast addresses");
            return Err(EINVAL);
        }
        let config = Config {
            role: r,
            vip: vip.to_be_bytes(),
            port,
            peer: peer.to_be_bytes(),
            beat_port: req.u16(a::BEAT_PORT).unwrap_or(DEFAULT_PORT),
            ifname,
            max_conns,
            retain_bytes: retain_kb as u64 * 1024,
            max_delay_fin_ms: req.u32(a::MAX_DELAY_FIN_MS).unwrap_or(DEFAULT_MAX_DELAY_FIN_MS),
            app_max_lag_bytes: app_max_lag_kb * 1024,
            app_max_lag_ms,
            key_fingerprint: key.map_or(0, |k| k.fingerprint()),
        };
        s.heartbeat_ms.store(heartbeat.unwrap_or(DEFAULT_HEARTBEAT_MS), Ordering::Relaxed);
        *live = Some(self.start(req, config, key)?);
        drop(live);
        pr_info!(
            "service {}:{} configured as {}, peer {}\n",
            Ipv4Addr(config.vip),
            port,
            if r == role::BACKUP { "backup" } else { "primary" },
            Ipv4Addr(config.peer)
        );
        if config.key_fingerprint == 0 {
            pr_warn!("no cluster key: heartbeats and progress reports with the peer are not authenticated\n");
        } else {
            pr_info!("peer link authenticated, key fingerprint {:016x}\n", config.key_fingerprint);
        }
        self.notify(req, event::CONFIGURED);
        Ok(())
    }

    /// Allocate the table, start the heartbeat thread and (on a backup) the hooks.
    /// On error everything started so far is undone by the drops.
    fn start(&self, req: &Request<'_>, config: Config, key: Option<Key>) -> Result<Live> {
        let s = &self.shared;
        let net = Net::init();
        if !core::ptr::eq(req.net().as_ptr(), net.as_ptr()) {
            req.set_message(c"only the initial network namespace is supported");
            return Err(EOPNOTSUPP());
        }
        // Capacity is 7/8 of the slots (see FlowTable).
        let slots = (config.max_conns as usize) + (config.max_conns as usize) / 7 + 2;
        let mut v = KVVec::with_capacity(slots, GFP_KERNEL).inspect_err(|_| {
            req.set_message(c"not enough memory for max-conns connections");
        })?;
        for _ in 0..slots {
            v.push(Slot::Empty, GFP_KERNEL)?;
        }
        // SAFETY: `get_random_u64` may be called from process context.
        let seed = unsafe { kernel::bindings::get_random_u64() };
        let table: Table = FlowTable::new(v, seed).ok_or(EINVAL)?;
        let dev = NetDevice::by_name(net, config.ifname()).inspect_err(|_| {
            req.set_message(c"no such interface (ifname)");
        })?;
        let sock = Socket::new(net, Kind::Udp)?;
        sock.bind(SockAddr { addr: Ipv4Addr::ANY, port: config.beat_port }).inspect_err(|_| {
            req.set_message(c"cannot bind the heartbeat port (in use?)");
        })?;
        {
            let _bh = super::lzk::bh::BhGuard::new();
            *s.table.lock() = Some(table);
        }
        s.vip.store(u32::from_ne_bytes(config.vip), Ordering::Relaxed);
        s.role.store(config.role, Ordering::Relaxed);
        s.gate_open.store(config.role == role::PRIMARY, Ordering::Relaxed);
        s.retain_limit.store(config.retain_bytes, Ordering::Relaxed);
        s.max_delay_fin_ms.store(config.max_delay_fin_ms, Ordering::Relaxed);
        s.overflowed.store(false, Ordering::Relaxed);
        s.retained_bytes.store(0, Ordering::Relaxed);
        s.clear_step_down();
        // SAFETY: The notifier lives in the heartbeat thread, which `Live` owns; the
        // module tears `Live` down before it unregisters the family.
        let notifier = unsafe { req.notifier() };
        let beater = Beater {
            sock,
            shared: s.clone(),
            peer: SockAddr { addr: Ipv4Addr(config.peer), port: config.beat_port },
            vip: config.vip,
            port: config.port,
            notifier,
            sync: Sync {
                dev: dev.try_clone(net)?,
                role: if config.role == role::BACKUP { Role::Backup } else { Role::Primary },
                vip: config.vip,
                port: config.port,
                app_max_lag_bytes: config.app_max_lag_bytes,
                app_max_lag_ms: config.app_max_lag_ms as u64,
            },
            key,
        };
        let beat = Thread::spawn(c"lz_shadow_hb", beater)?;
        let backup = config.role == role::BACKUP;
        let hooks: &[(Hook, i32)] = if backup {
            &[(Hook::Ingress, 0), (Hook::PreRouting, PRIO_RAW), (Hook::LocalOut, PRIO_RAW), (Hook::ArpOut, 0)]
        } else {
            // ARP_OUT too: a primary that steps down withholds its ARP for the address.
            // Ingress: frames to a multicast MAC for the address (see hooks.rs).
            &[(Hook::Ingress, 0), (Hook::PreRouting, PRIO_RAW), (Hook::LocalOut, PRIO_RAW), (Hook::ArpOut, 0)]
        };
        // Only the ingress hook is per device.
        let hook_dev = Some(dev.try_clone(net)?);
        let hooks = netfilter::Registration::with_device(net, hook_dev, hooks, Handler { shared: s.clone(), backup })?;
        let promisc = if backup {
            let p = dev.try_clone(net)?;
            p.promiscuity(1)?;
            Some(p)
        } else {
            None
        };
        // Publish last: the hooks do nothing until the port is set.
        s.port.store(config.port as u32, Ordering::Release);
        Ok(Live { config, dev: Some(dev), _beat: beat, _hooks: Some(hooks), promisc })
    }

    fn takeover(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let live = s.live.lock();
        let Some(l) = live.as_ref() else {
            req.set_message(c"no service is configured");
            return Err(ENOENT);
        };
        let out = takeover::run(s, l, req.net()).map_err(|e| {
            let (err, msg) = match e {
                Refused::NotBackup => (EINVAL, c"this node is not a backup"),
                Refused::Already => (EALREADY(), c"this node already serves the service"),
            };
            req.set_message(msg);
            err
        })?;
        drop(live);
        self.notify(req, event::TAKEOVER);
        req.reply(c, |m| {
            m.put_u32(a::CONNS, out.conns)?;
            m.put_u32(a::TAKEOVER_MS, out.took_ms)
        })
    }

    fn notify(&self, req: &Request<'_>, ev: u8) {
        let s = &*self.shared;
        let _ = req.notify_group(spec::MCGRP_EVENTS, cmd::SHADOW_NTF, |m| {
            m.put_u8(a::EVENT, ev)?;
            m.put_u8(a::ROLE, s.role.load(Ordering::Relaxed))?;
            m.put_u8(a::PEER_STATE, s.peer_state.load(Ordering::Relaxed))?;
            m.put_u32(a::CONNS, s.conns())
        });
    }
}

use super::trim_nul;

impl genl::Family for Control {
    fn doit(&self, c: u8, req: &Request<'_>) -> Result {
        match c {
            cmd::GET_STATUS => self.status(c, req),
            cmd::CONFIGURE => self.configure(req),
            cmd::TAKEOVER => self.takeover(c, req),
            cmd::STEP_DOWN => self.step_down(req),
            _ => Err(EOPNOTSUPP()),
        }
    }

    fn dumpit(&self, c: u8, dump: &mut Dump<'_>) -> Result {
        if c != cmd::CONN_GET {
            return Err(EOPNOTSUPP());
        }
        // The cursor is the next table slot; each round copies a batch out under the
        // lock and writes it to the message after releasing it.
        const BATCH: usize = 32;
        loop {
            let from = dump.cursor();
            let mut batch = [(0usize, FlowKey::default(), ConnView::default()); BATCH];
            let mut n = 0;
            let next = self
                .shared
                .with_table(|t| {
                    t.walk(from, BATCH, |slot, k, c| {
                        batch[n] = (slot, *k, ConnView::of(c));
                        n += 1;
                    })
                })
                .flatten();
            for (slot, k, c) in &batch[..n] {
                if !dump.add(cmd::CONN_GET, |m| put_conn(m, k, c))? {
                    // The message is full: resume at this connection next time. Slot
                    // positions are stable enough for a dump (see FlowTable::walk).
                    dump.set_cursor(*slot);
                    return Ok(());
                }
            }
            match next {
                Some(slot) => dump.set_cursor(slot),
                None => {
                    dump.set_cursor(usize::MAX);
                    return Ok(());
                }
            }
        }
    }
}
