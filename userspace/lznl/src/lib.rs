//! Client for the `lazarus_core` generic netlink family, shared by `lzctl` and
//! `lazarusd`. Constants come from `lazarus_proto::genl_core`, generated from the same
//! YAML spec as the kernel module's.

pub mod attrs;

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
    #[error("the {0} family is not registered (is the lazarus_core module loaded?)")]
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

/// A connection to the `lazarus_core` family.
pub struct Client {
    socket: NlSocketHandle,
    family: u16,
    seq: std::sync::atomic::AtomicU32,
}

impl Client {
    /// Connect and resolve the family.
    pub fn connect() -> Result<Self, Error> {
        let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        let family = router.resolve_genl_family(spec::FAMILY_NAME).map_err(|_| Error::NoFamily(spec::FAMILY_NAME))?;
        let socket = NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        socket.enable_ext_ack(true).map_err(|e| Error::Netlink(e.to_string()))?;
        Ok(Client { socket, family, seq: std::sync::atomic::AtomicU32::new(1) })
    }

    /// Send a request with raw attributes; returns the reply messages' attributes.
    /// Used directly by tests that need malformed requests.
    ///
    /// Requests go through a plain socket rather than neli's router: the router drops
    /// the kernel's extended-ack messages when it converts errors, and those messages
    /// are what tells an operator which attribute was wrong.
    pub fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
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
            .version(spec::FAMILY_VERSION)
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
                    NlPayload::Payload(p) => {
                        let raw = p.attrs().iter().map(|at| (u16::from(*at.nla_type().nla_type()), at.nla_payload().as_ref().to_vec())).collect();
                        out.push(Attrs::from_pairs(raw));
                    }
                    NlPayload::Ack(_) => return Ok(out),
                    NlPayload::Err(e) => return Err(kernel_error(*e.error(), e.ext_ack())),
                    _ => {}
                }
            }
        }
    }

    fn one(&self, command: u8, attrs: &[RawAttr]) -> Result<Attrs, Error> {
        self.request(command, attrs, false)?.into_iter().next().ok_or(Error::Reply("no reply message"))
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

fn parse_stats(nest: &[u8]) -> Result<PortStats, Error> {
    let n = Attrs::from_pairs(AttrIter::new(nest).map(|(t, p)| (t, p.to_vec())).collect());
    Ok(PortStats {
        port: n.u16(ps::PORT).ok_or(Error::Reply("port"))?,
        packets_in: n.u64(ps::PACKETS_IN).ok_or(Error::Reply("packets-in"))?,
        bytes_in: n.u64(ps::BYTES_IN).ok_or(Error::Reply("bytes-in"))?,
        packets_out: n.u64(ps::PACKETS_OUT).ok_or(Error::Reply("packets-out"))?,
        bytes_out: n.u64(ps::BYTES_OUT).ok_or(Error::Reply("bytes-out"))?,
    })
}

/// Receives config notifications from the events group.
pub struct Monitor {
    router: NlRouter,
    receiver: neli::router::synchronous::NlRouterReceiverHandle<u16, Genlmsghdr<u8, u16, NoUserHeader>>,
}

impl Monitor {
    /// Join the events group.
    pub fn join() -> Result<Self, Error> {
        let (router, receiver) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| Error::Netlink(e.to_string()))?;
        let group = router
            .resolve_nl_mcast_group(spec::FAMILY_NAME, spec::MCAST_GROUPS[spec::MCGRP_EVENTS as usize])
            .map_err(|_| Error::NoFamily(spec::FAMILY_NAME))?;
        router.add_mcast_membership(Groups::new_groups(&[group])).map_err(router_error)?;
        Ok(Monitor { router, receiver })
    }

    /// Wait for the next notification.
    pub fn next_event(&mut self) -> Result<Event, Error> {
        let _ = &self.router;
        loop {
            let m: Msg = self
                .receiver
                .next()
                .ok_or(Error::Netlink("event stream closed".into()))?
                .map_err(router_error)?;
            let Some(p) = m.get_payload() else { continue };
            if *p.cmd() != cmd::CONFIG_NTF {
                continue;
            }
            let raw: Vec<_> = p.attrs().iter().map(|at| (u16::from(*at.nla_type().nla_type()), at.nla_payload().as_ref().to_vec())).collect();
            let r = Attrs::from_pairs(raw);
            let ev = r.u8(a::EVENT).ok_or(Error::Reply("event"))?;
            let name = ev
                .checked_sub(spec::event::FIRST)
                .and_then(|i| spec::event::NAMES.get(i as usize))
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("unknown-{ev}"));
            return Ok(Event { event: name, port: r.u16(a::PORT), enabled: r.u8(a::ENABLED).map(|v| v != 0) });
        }
    }
}
