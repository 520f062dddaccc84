//! Client for the Lazarus generic netlink families, shared by `lzctl` and `lazarusd`:
//! [`Client`] and [`Monitor`] for `lazarus_core`, [`ShadowClient`] and [`ShadowMonitor`]
//! for `lazarus_shadow`. Constants come from `lazarus_proto::genl_core` and
//! `lazarus_proto::genl_shadow`, generated from the same YAML specs as the kernel
//! modules'.

pub mod attrs;
mod backdoor;
mod shadow;
mod splice;

pub use backdoor::{heal_bits, BackdoorClient, BackdoorRole, BackdoorStats, BackdoorStatus, SensorReading, TargetView};
pub use splice::{SpliceClient, SpliceEntry, SpliceSide, SpliceStats, SpliceStatus, TsShifts};
pub use shadow::{
    conn_flags, ClusterKey, PlannedRefusal, PlannedTakeover, ShadowClient, ShadowConfig, ShadowConn, ShadowEvent, ShadowMonitor, ShadowRole, ShadowStats,
    ShadowStatus, TakeoverReply,
};

use attrs::{AttrIter, Attrs};
use lazarus_proto::genl_core::{self as spec, cmd, core_attr as a, port_stats_attr as ps};
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::err::RouterError;
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, NlattrBuilder, NoUserHeader};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::socket::synchronous::NlSocketHandle;
use neli::router::synchronous::NlRouter;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use serde::Serialize;
use std::net::Ipv4Addr;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The family is not registered: the module is not loaded.
    /// Each family is registered by the module of the same name.
    #[error("the {0} family is not registered (is the {0} module loaded?)")]
    NoFamily(&'static str),
    /// The kernel refused the request.
    #[error("{}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        /// Positive errno.
        errno: i32,
        /// Extended-ack message, if the kernel gave one.
        message: Option<String>,
    },
    /// Socket or decoding trouble on our side.
    #[error("netlink: {0}")]
    Netlink(String),
    /// A reply lacked an attribute it must carry.
    #[error("malformed reply: {0}")]
    Reply(&'static str),
}

impl Error {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

type Msg = Nlmsghdr<u16, Genlmsghdr<u8, u16, NoUserHeader>>;

/// NLMSG_DONE, the end of a dump.
const NLMSG_DONE: u16 = 3;

fn kernel_error(code: i32, ext_ack: &GenlBuffer<neli::consts::nl::NlmsgerrAttr, Buffer>) -> Error {
    if std::env::var_os("LZNL_DEBUG").is_some() {
        eprintln!("lznl: error {code} ext_ack {ext_ack:?}");
    }
    let message = ext_ack.iter().find_map(|attr| {
        // NLMSGERR_ATTR_MSG: a NUL-terminated string.
        (*attr.nla_type().nla_type() == neli::consts::nl::NlmsgerrAttr::Msg).then(|| {
            let b = attr.nla_payload().as_ref();
            String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(b)).into_owned()
        })
    });
    Error::Kernel { errno: -code, message }
}

fn router_error<T: std::fmt::Debug, P: std::fmt::Debug>(e: RouterError<T, P>) -> Error {
    match e {
        RouterError::Nlmsgerr(err) => kernel_error(*err.error(), err.ext_ack()),
        other => Error::Netlink(format!("{other:?}")),
    }
}

/// One attribute of a request, as raw payload bytes.
#[derive(Clone, Debug)]
pub struct RawAttr {
    /// Attribute id.
    pub id: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

impl RawAttr {
    /// A u8 attribute.
    pub fn u8(id: u16, v: u8) -> Self {
        RawAttr { id, payload: vec![v] }
    }
    /// A u16 attribute (host order).
    pub fn u16(id: u16, v: u16) -> Self {
        RawAttr { id, payload: v.to_ne_bytes().to_vec() }
    }
    /// A u32 attribute (host order).
    pub fn u32(id: u16, v: u32) -> Self {
        RawAttr { id, payload: v.to_ne_bytes().to_vec() }
    }
    /// A u64 attribute (host order).
    pub fn u64(id: u16, v: u64) -> Self {
        RawAttr { id, payload: v.to_ne_bytes().to_vec() }
    }
}

/// Status of the module.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: String,
    pub enabled: bool,
    pub port_count: u32,
    pub channel_port: u16,
    pub probes_answered: u64,
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortStats {
    pub port: u16,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// A config notification.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: String,
    pub port: Option<u16>,
    pub enabled: Option<bool>,
}

/// A request socket bound to one generic netlink family, resolved by name.
pub(crate) struct Genl {
    socket: NlSocketHandle,
    family: u16,
    version: u8,
    seq: std::sync::atomic::AtomicU32,
}

impl Genl {
    /// Connect and resolve family `name`; requests carry `version` in their header.
    pub(crate) fn connect(name: &'static str, version: u8) -> Result<Self, Error> {
        let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        let family = router.resolve_genl_family(name).map_err(|_| Error::NoFamily(name))?;
        let socket = NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        socket.enable_ext_ack(true).map_err(|e| Error::Netlink(e.to_string()))?;
        Ok(Genl { socket, family, version, seq: std::sync::atomic::AtomicU32::new(1) })
    }

    /// The family id the kernel assigned (it changes when the module is reloaded).
    pub(crate) fn family_id(&self) -> u16 {
        self.family
    }

    /// Send a request with raw attributes; returns the reply messages' attributes.
    ///
    /// Requests go through a plain socket rather than neli's router: the router drops
    /// the kernel's extended-ack messages when it converts errors, and those messages
    /// are what tells an operator which attribute was wrong.
    pub(crate) fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
        let mut buf = GenlBuffer::<u16, Buffer>::new();
        for at in attrs {
            let nla = NlattrBuilder::default()
                .nla_type(AttrTypeBuilder::default().nla_type(at.id).build().map_err(|e| Error::Netlink(e.to_string()))?)
                .nla_payload(at.payload.clone())
                .build()
                .map_err(|e| Error::Netlink(e.to_string()))?;
            buf.push(nla);
        }
        let hdr = GenlmsghdrBuilder::<u8, u16, NoUserHeader>::default()
            .cmd(command)
            .version(self.version)
            .attrs(buf)
            .build()
            .map_err(|e| Error::Netlink(e.to_string()))?;
        // Dumps end with NLMSG_DONE; other requests with an ACK (or an error).
        let flags = if dump { NlmF::REQUEST | NlmF::DUMP } else { NlmF::REQUEST | NlmF::ACK };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let msg = NlmsghdrBuilder::default()
            .nl_type(self.family)
            .nl_flags(flags)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(hdr))
            .build()
            .map_err(|e| Error::Netlink(e.to_string()))?;
        self.socket.send(&msg).map_err(|e| Error::Netlink(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            let (msgs, _) = self
                .socket
                .recv::<u16, Genlmsghdr<u8, u16, NoUserHeader>>()
                .map_err(|e| Error::Netlink(e.to_string()))?;
            for m in msgs {
                let m: Msg = m.map_err(|e| Error::Netlink(e.to_string()))?;
                if *m.nl_seq() != seq {
                    continue;
                }
                if *m.nl_type() == NLMSG_DONE {
                    return Ok(out);
                }
                match m.nl_payload() {
                    NlPayload::Payload(p) => out.push(payload_attrs(p)),
                    NlPayload::Ack(_) => return Ok(out),
                    NlPayload::Err(e) => return Err(kernel_error(*e.error(), e.ext_ack())),
                    _ => {}
                }
            }
        }
    }

    /// A request answered by exactly one message.
    pub(crate) fn one(&self, command: u8, attrs: &[RawAttr]) -> Result<Attrs, Error> {
        self.request(command, attrs, false)?.into_iter().next().ok_or(Error::Reply("no reply message"))
    }
}

fn payload_attrs(p: &Genlmsghdr<u8, u16, NoUserHeader>) -> Attrs {
    Attrs::from_pairs(p.attrs().iter().map(|at| (*at.nla_type().nla_type(), at.nla_payload().as_ref().to_vec())).collect())
}

/// The name of enum value `v` in a generated `NAMES` table starting at `first`, or
/// `unknown-<v>` for a value this build does not know.
pub(crate) fn enum_name(names: &[&str], first: u8, v: u8) -> String {
    v.checked_sub(first)
        .and_then(|i| names.get(i as usize))
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("unknown-{v}"))
}

/// A connection to the `lazarus_core` family.
pub struct Client {
    genl: Genl,
}

impl Client {
    /// Connect and resolve the family.
    pub fn connect() -> Result<Self, Error> {
        Ok(Client { genl: Genl::connect(spec::FAMILY_NAME, spec::FAMILY_VERSION)? })
    }

    /// Send a request with raw attributes; returns the reply messages' attributes.
    /// Used directly by tests that need malformed requests.
    pub fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
        self.genl.request(command, attrs, dump)
    }

    fn one(&self, command: u8, attrs: &[RawAttr]) -> Result<Attrs, Error> {
        self.genl.one(command, attrs)
    }

    /// Module status.
    pub fn status(&self) -> Result<Status, Error> {
        let r = self.one(cmd::GET_STATUS, &[])?;
        Ok(Status {
            version: r.string(a::VERSION).ok_or(Error::Reply("version"))?,
            enabled: r.u8(a::ENABLED).ok_or(Error::Reply("enabled"))? != 0,
            port_count: r.u32(a::PORT_COUNT).ok_or(Error::Reply("port-count"))?,
            channel_port: r.u16(a::CHANNEL_PORT).ok_or(Error::Reply("channel-port"))?,
            probes_answered: r.u64(a::PROBES_ANSWERED).ok_or(Error::Reply("probes-answered"))?,
        })
    }

    /// Start counting a port.
    pub fn port_add(&self, port: u16) -> Result<(), Error> {
        self.request(cmd::PORT_ADD, &[RawAttr::u16(a::PORT, port)], false).map(drop)
    }

    /// Stop counting a port.
    pub fn port_del(&self, port: u16) -> Result<(), Error> {
        self.request(cmd::PORT_DEL, &[RawAttr::u16(a::PORT, port)], false).map(drop)
    }

    /// Counters of one port.
    pub fn port_get(&self, port: u16) -> Result<PortStats, Error> {
        let r = self.one(cmd::PORT_GET, &[RawAttr::u16(a::PORT, port)])?;
        let nest = r.get(a::PORT_STATS).ok_or(Error::Reply("port-stats"))?;
        parse_stats(nest)
    }

    /// Counters of every port.
    pub fn port_list(&self) -> Result<Vec<PortStats>, Error> {
        let mut out = Vec::new();
        for r in self.request(cmd::PORT_GET, &[], true)? {
            for nest in r.all(a::PORT_STATS) {
                out.push(parse_stats(nest)?);
            }
        }
        Ok(out)
    }

    /// Zero counters.
    pub fn stats_reset(&self, port: Option<u16>) -> Result<(), Error> {
        let attrs: Vec<RawAttr> = port.map(|p| RawAttr::u16(a::PORT, p)).into_iter().collect();
        self.request(cmd::STATS_RESET, &attrs, false).map(drop)
    }

    /// Turn counting on or off.
    pub fn set_enabled(&self, on: bool) -> Result<(), Error> {
        self.request(cmd::SET_ENABLED, &[RawAttr::u8(a::ENABLED, on as u8)], false).map(drop)
    }

    /// Probe a peer's channel; returns the round trip in microseconds.
    pub fn probe(&self, addr: Ipv4Addr, port: u16, tcp: bool, timeout_ms: u32) -> Result<u32, Error> {
        let attrs = [
            RawAttr { id: a::PEER_ADDR, payload: addr.octets().to_vec() },
            RawAttr::u16(a::PEER_PORT, port),
            RawAttr::u8(a::TRANSPORT, if tcp { spec::transport::TCP } else { spec::transport::UDP }),
            RawAttr::u32(a::TIMEOUT_MS, timeout_ms),
        ];
        self.one(cmd::PEER_PROBE, &attrs)?.u32(a::RTT_US).ok_or(Error::Reply("rtt-us"))
    }
}

/// The attributes inside a nest.
pub(crate) fn nest_attrs(nest: &[u8]) -> Attrs {
    Attrs::from_pairs(AttrIter::new(nest).map(|(t, p)| (t, p.to_vec())).collect())
}

fn parse_stats(nest: &[u8]) -> Result<PortStats, Error> {
    let n = nest_attrs(nest);
    Ok(PortStats {
        port: n.u16(ps::PORT).ok_or(Error::Reply("port"))?,
        packets_in: n.u64(ps::PACKETS_IN).ok_or(Error::Reply("packets-in"))?,
        bytes_in: n.u64(ps::BYTES_IN).ok_or(Error::Reply("bytes-in"))?,
        packets_out: n.u64(ps::PACKETS_OUT).ok_or(Error::Reply("packets-out"))?,
        bytes_out: n.u64(ps::BYTES_OUT).ok_or(Error::Reply("bytes-out"))?,
    })
}

/// A membership of one family's multicast group; yields the notifications it carries.
pub(crate) struct Events {
    router: NlRouter,
    receiver: neli::router::synchronous::NlRouterReceiverHandle<u16, Genlmsghdr<u8, u16, NoUserHeader>>,
}

impl Events {
    /// Join multicast group `group` of family `family`.
    pub(crate) fn join(family: &'static str, group: &str) -> Result<Self, Error> {
        let (router, receiver) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        let id = router.resolve_nl_mcast_group(family, group).map_err(|_| Error::NoFamily(family))?;
        router.add_mcast_membership(Groups::new_groups(&[id])).map_err(router_error)?;
        Ok(Events { router, receiver })
    }

    /// Wait for the next message with command `command` and return its attributes.
    /// Blocks without polling.
    pub(crate) fn next(&mut self, command: u8) -> Result<Attrs, Error> {
        let _ = &self.router;
        loop {
            let m: Msg = self
                .receiver
                .next()
                .ok_or(Error::Netlink("event stream closed".into()))?
                .map_err(router_error)?;
            let Some(p) = m.get_payload() else { continue };
            if *p.cmd() != command {
                continue;
            }
            return Ok(payload_attrs(p));
        }
    }
}

/// Receives config notifications from the `lazarus_core` events group.
pub struct Monitor {
    events: Events,
}

impl Monitor {
    /// Join the events group.
    pub fn join() -> Result<Self, Error> {
        Ok(Monitor { events: Events::join(spec::FAMILY_NAME, spec::MCAST_GROUPS[spec::MCGRP_EVENTS as usize])? })
    }

    /// Wait for the next notification.
    pub fn next_event(&mut self) -> Result<Event, Error> {
        let r = self.events.next(cmd::CONFIG_NTF)?;
        let ev = r.u8(a::EVENT).ok_or(Error::Reply("event"))?;
        let name = enum_name(spec::event::NAMES, spec::event::FIRST, ev);
        Ok(Event { event: name, port: r.u16(a::PORT), enabled: r.u8(a::ENABLED).map(|v| v != 0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_family_names_the_module() {
        assert_eq!(
            Error::NoFamily("lazarus_shadow").to_string(),
            "the lazarus_shadow family is not registered (is the lazarus_shadow module loaded?)"
        );
        assert!(Error::NoFamily(spec::FAMILY_NAME).to_string().contains("lazarus_core module"));
    }

    #[test]
    fn enum_names() {
        assert_eq!(enum_name(spec::event::NAMES, spec::event::FIRST, spec::event::FIRST), spec::event::NAMES[0]);
        assert_eq!(enum_name(&["a", "b"], 1, 2), "b");
        assert_eq!(enum_name(&["a", "b"], 1, 0), "unknown-0");
        assert_eq!(enum_name(&["a", "b"], 1, 3), "unknown-3");
    }
}
