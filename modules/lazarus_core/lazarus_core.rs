// SPDX-License-Identifier: GPL-2.0
//! lazarus_core: per-port TCP traffic counters and the node-to-node channel.
//!
//! - Counts TCP segments and payload bytes for configured service ports: received
//!   segments at LOCAL_IN by destination port, sent ones at LOCAL_OUT by source port.
//!   GSO/GRO buffers count as the wire segments they carry.
//! - Ports and counting are configured over the `lazarus_core` generic netlink family
//!   (`lzctl`) or the `net.lazarus.core.*` sysctls.
//! - Answers channel probes on UDP and TCP port 7400, and measures the round trip to a
//!   peer's channel on request: the liveness path later mechanisms build on.
//! - Redirects TCP ports statelessly (`net.lazarus.core.redirect`), rewriting headers
//!   in flight with incremental checksum updates.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::{new_mutex, pin_init};

// The shared library: each module uses part of it, and its `pub` items are for
// the modules, not for export.
#[allow(dead_code, unreachable_pub)]
#[path = "../../rust/lzk/mod.rs"]
mod lzk;

mod channel;
mod control;
mod redirect;

use lzk::netfilter::{self, Hook, HookHandler, Verdict};
use lzk::proto::ports::{PortSet, MAX_PORTS};
use lzk::skb::SkBuff;

module! {
    type: LazarusCore,
    name: "lazarus_core",
    author: "Lazarus developers",
    description: "Lazarus core: per-port TCP counters and node channel",
    license: "GPL",
}

/// Module version reported over netlink.
pub(crate) const VERSION: &core::ffi::CStr = c"0.1.0";

/// Counters of one configured port.
///
/// # Invariants
///
/// `port` is 0 for a free slot. A slot is reused only after its port was cleared and
/// a grace period passed (`synchronize_net`), and its counters are zeroed before the
/// new port is published, so counts never leak from a removed port into the next
/// port that takes the slot. (`reset` also zeroes live slots on request; increments
/// racing with it may survive, as with any counter reset under traffic.)
pub(crate) struct PortSlot {
    pub(crate) port: AtomicU32,
    pub(crate) packets_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) packets_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl PortSlot {
    const fn new() -> Self {
        PortSlot {
            port: AtomicU32::new(0),
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    fn zero(&self) {
        for c in [&self.packets_in, &self.bytes_in, &self.packets_out, &self.bytes_out] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// State shared by the hooks, the netlink family, the sysctls and the channel.
///
/// The packet path reads `slots` and `enabled` without locks (softirq context);
/// configuration changes are serialized by `config` (process context only).
#[pin_data]
pub(crate) struct Core {
    pub(crate) slots: [PortSlot; MAX_PORTS],
    /// Number of configured ports; the hooks skip parsing while it is 0.
    active: AtomicU32,
    pub(crate) enabled: AtomicBool,
    pub(crate) probes_answered: AtomicU64,
    pub(crate) stats_log_ms: AtomicI32,
    #[pin]
    pub(crate) config: Mutex<PortSet>,
}

/// Why a configuration change was refused.
pub(crate) enum ConfigError {
    Exists,
    Missing,
    Full,
    Zero,
}

impl Core {
    fn new() -> impl PinInit<Self> {
        pin_init!(Core {
            slots: [const { PortSlot::new() }; MAX_PORTS],
            active: AtomicU32::new(0),
            enabled: AtomicBool::new(true),
            probes_answered: AtomicU64::new(0),
            stats_log_ms: AtomicI32::new(0),
            config <- new_mutex!(PortSet::new()),
        })
    }

    /// The slot counting `port`, if configured. Lock-free; any context.
    pub(crate) fn slot(&self, port: u16) -> Option<&PortSlot> {
        let p = port as u32;
        self.slots.iter().find(|s| s.port.load(Ordering::Acquire) == p && p != 0)
    }

    /// Start counting `port`. Process context.
    pub(crate) fn add_port(&self, port: u16) -> core::result::Result<(), ConfigError> {
        self.add_port_locked(&mut self.config.lock(), port)
    }

    /// Stop counting `port`. Process context; waits for running hooks.
    pub(crate) fn del_port(&self, port: u16) -> core::result::Result<(), ConfigError> {
        self.del_port_locked(&mut self.config.lock(), port)
    }

    /// Replace the whole port set (the `ports` sysctl) under one lock hold, so
    /// concurrent writers cannot interleave. Process context.
    pub(crate) fn set_ports(&self, new: &PortSet) {
        let mut cfg = self.config.lock();
        let old = *cfg;
        for &p in old.as_slice() {
            if !new.contains(p) {
                let _ = self.del_port_locked(&mut cfg, p);
            }
        }
        for &p in new.as_slice() {
            let _ = self.add_port_locked(&mut cfg, p);
        }
    }

    fn add_port_locked(&self, cfg: &mut PortSet, port: u16) -> core::result::Result<(), ConfigError> {
        match cfg.insert(port) {
            Ok(true) => {}
            Ok(false) => return Err(ConfigError::Exists),
            Err(lzk::proto::ports::InsertError::Full) => return Err(ConfigError::Full),
            Err(lzk::proto::ports::InsertError::Zero) => return Err(ConfigError::Zero),
        }
        // The config set and the slots hold the same ports, so a free slot exists.
        if let Some(s) = self.slots.iter().find(|s| s.port.load(Ordering::Relaxed) == 0) {
            s.zero();
            s.port.store(port as u32, Ordering::Release);
        }
        self.active.store(cfg.len() as u32, Ordering::Relaxed);
        Ok(())
    }

    fn del_port_locked(&self, cfg: &mut PortSet, port: u16) -> core::result::Result<(), ConfigError> {
        if !cfg.remove(port) {
            return Err(ConfigError::Missing);
        }
        if let Some(s) = self.slot(port) {
            s.port.store(0, Ordering::Release);
        }
        self.active.store(cfg.len() as u32, Ordering::Relaxed);
        // Hooks run under RCU: after a grace period none still holds the old slot.
        // SAFETY: `synchronize_net` may sleep; we are in process context.
        unsafe { kernel::bindings::synchronize_net() };
        Ok(())
    }

    /// Zero the counters of `port`, or of every port.
    pub(crate) fn reset(&self, port: Option<u16>) -> core::result::Result<(), ConfigError> {
        let _cfg = self.config.lock();
        match port {
            Some(p) => self.slot(p).ok_or(ConfigError::Missing)?.zero(),
            None => self.slots.iter().for_each(PortSlot::zero),
        }
        Ok(())
    }
}

/// The packet path.
struct Counter {
    core: Arc<Core>,
}

impl HookHandler for Counter {
    fn hook(&self, hook: Hook, skb: &mut SkBuff<'_>) -> Verdict {
        if !self.core.enabled.load(Ordering::Relaxed) || self.core.active.load(Ordering::Relaxed) == 0 {
            return Verdict::Accept;
        }
        // Not TCP or malformed: not ours to count; TCP itself will judge it.
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        let (port, inbound) = match hook {
            Hook::LocalIn => (p.tcp.dst_port, true),
            Hook::LocalOut => (p.tcp.src_port, false),
            _ => return Verdict::Accept,
        };
        if let Some(s) = self.core.slot(port) {
            let segs = skb.segments(p.payload_len()) as u64;
            let bytes = p.payload_len() as u64;
            let (pk, by) = if inbound { (&s.packets_in, &s.bytes_in) } else { (&s.packets_out, &s.bytes_out) };
            pk.fetch_add(segs, Ordering::Relaxed);
            by.fetch_add(bytes, Ordering::Relaxed);
        }
        Verdict::Accept
    }
}

struct LazarusCore {
    // Field order is teardown order: stop the interfaces that reach `core` first.
    _sysctl: lzk::sysctl::Table,
    _family: lzk::genl::Registration<control::Control>,
    _hooks: netfilter::Registration<Counter>,
    _redirect_hooks: netfilter::Registration<redirect::Redirector>,
    _channel: channel::Channel,
    _sysctl_values: KBox<control::SysctlValues>,
}

impl kernel::Module for LazarusCore {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let core = Arc::pin_init(Core::new(), GFP_KERNEL)?;
        let channel = channel::Channel::start(core.clone())?;
        let hooks = netfilter::Registration::new(
            lzk::net::Net::init(),
            &[(Hook::LocalIn, 0), (Hook::LocalOut, 0)],
            Counter { core: core.clone() },
        )?;
        let redirects = Arc::pin_init(redirect::Redirects::new(), GFP_KERNEL)?;
        let redirect_hooks = netfilter::Registration::new(
            lzk::net::Net::init(),
            &[(Hook::PreRouting, redirect::PRIORITY), (Hook::LocalOut, redirect::PRIORITY)],
            redirect::Redirector { table: redirects.clone() },
        )?;
        let family = control::register(module, core.clone())?;
        let values = control::SysctlValues::new(core, redirects)?;
        let sysctl = values.register()?;
        pr_info!("loaded (version {}, channel port {})\n", VERSION.to_str().unwrap_or("?"), channel::PORT);
        Ok(LazarusCore {
            _sysctl: sysctl,
            _family: family,
            _hooks: hooks,
            _redirect_hooks: redirect_hooks,
            _channel: channel,
            _sysctl_values: values,
        })
    }
}

impl Drop for LazarusCore {
    fn drop(&mut self) {
        pr_info!("unloading\n");
    }
}
