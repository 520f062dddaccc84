//! Client for the `lazarus_splice` family: what a splicing proxy and `lzctl splice`
//! need.

use crate::attrs::Attrs;
use crate::{nest_attrs, Error, Genl, RawAttr};
use lazarus_proto::genl_splice::{self as spec, cmd, entry_attr as e, splice_attr as a, state, stats_attr as st};
pub use lazarus_proto::splice::ResumePoint;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};

/// One of the proxy's connections, settled and read in repair mode: what `splice`
/// needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpliceSide {
    /// The proxy's end.
    pub local: SocketAddrV4,
    /// The peer's end.
    pub remote: SocketAddrV4,
    /// The proxy's next sequence number (everything before it acknowledged).
    pub snd_nxt: u32,
    /// The next byte expected from the peer (everything before it read).
    pub rcv_nxt: u32,
    /// The window scale the peer announced.
    pub peer_wscale: u8,
    /// The window scale the proxy announced.
    pub own_wscale: u8,
    /// The proxy's timestamp clock on the connection; `None` without timestamps.
    pub ts_now: Option<u32>,
    /// SACK was negotiated.
    pub sack: bool,
}

fn addr_attr(id: u16, a: Ipv4Addr) -> RawAttr {
    RawAttr { id, payload: a.octets().to_vec() }
}

fn tuple_attrs(client: (SocketAddrV4, SocketAddrV4), backend: (SocketAddrV4, SocketAddrV4)) -> Vec<RawAttr> {
    vec![
        addr_attr(a::CLIENT_LOCAL_ADDR, *client.0.ip()),
        RawAttr::u16(a::CLIENT_LOCAL_PORT, client.0.port()),
        addr_attr(a::CLIENT_REMOTE_ADDR, *client.1.ip()),
        RawAttr::u16(a::CLIENT_REMOTE_PORT, client.1.port()),
        addr_attr(a::BACKEND_LOCAL_ADDR, *backend.0.ip()),
        RawAttr::u16(a::BACKEND_LOCAL_PORT, backend.0.port()),
        addr_attr(a::BACKEND_REMOTE_ADDR, *backend.1.ip()),
        RawAttr::u16(a::BACKEND_REMOTE_PORT, backend.1.port()),
    ]
}

/// Counters of the splice module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpliceStats {
    pub pre_splices: u64,
    pub splices: u64,
    pub installed: u64,
    pub aborted: u64,
    pub held: u64,
    pub hold_overflows: u64,
    pub forwarded_segments: u64,
    pub forwarded_bytes: u64,
    pub send_errors: u64,
    pub send_dropped: u64,
    pub rewrite_errors: u64,
    pub closed: u64,
    pub expired: u64,
    pub table_full: u64,
    pub refused: u64,
    /// Splices taken apart after their backend failed.
    pub unspliced: u64,
}

impl SpliceStats {
    fn from_nest(nest: &[u8]) -> Self {
        let n = nest_attrs(nest);
        let g = |id| n.u64(id).unwrap_or(0);
        SpliceStats {
            pre_splices: g(st::PRE_SPLICES),
            splices: g(st::SPLICES),
            installed: g(st::INSTALLED),
            aborted: g(st::ABORTED),
            held: g(st::HELD),
            hold_overflows: g(st::HOLD_OVERFLOWS),
            forwarded_segments: g(st::FORWARDED_SEGMENTS),
            forwarded_bytes: g(st::FORWARDED_BYTES),
            send_errors: g(st::SEND_ERRORS),
            send_dropped: g(st::SEND_DROPPED),
            rewrite_errors: g(st::REWRITE_ERRORS),
            closed: g(st::CLOSED),
            expired: g(st::EXPIRED),
            table_full: g(st::TABLE_FULL),
            refused: g(st::REFUSED),
            unspliced: g(st::UNSPLICED),
        }
    }
}

/// The module's status.
#[derive(Debug, Clone, Serialize)]
pub struct SpliceStatus {
    pub version: String,
    pub max_splices: u32,
    pub splices: u32,
    pub idle_timeout_ms: u32,
    pub linger_ms: u32,
    /// The errno of the latest segment that could not be sent (0: none yet).
    pub last_send_errno: u32,
    /// Splices that became ready to be taken back for their next request, ever.
    pub next_ready: u64,
    pub stats: SpliceStats,
}

impl SpliceStatus {
    fn from_attrs(r: &Attrs) -> Result<Self, Error> {
        Ok(SpliceStatus {
            version: r.string(a::VERSION).ok_or(Error::Reply("version"))?,
            max_splices: r.u32(a::MAX_SPLICES).ok_or(Error::Reply("max-splices"))?,
            splices: r.u32(a::SPLICES).ok_or(Error::Reply("splices"))?,
            idle_timeout_ms: r.u32(a::IDLE_TIMEOUT_MS).ok_or(Error::Reply("idle-timeout-ms"))?,
            linger_ms: r.u32(a::LINGER_MS).ok_or(Error::Reply("linger-ms"))?,
            last_send_errno: r.u32(a::LAST_SEND_ERRNO).unwrap_or(0),
            next_ready: r.u64(a::NEXT_READY).unwrap_or(0),
            stats: r.get(a::STATS).map(SpliceStats::from_nest).ok_or(Error::Reply("stats"))?,
        })
    }
}

/// One splice, from the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpliceEntry {
    pub id: u32,
    /// `frozen`, `open` or `closed`.
    pub state: &'static str,
    pub client: SocketAddrV4,
    pub listen: SocketAddrV4,
    pub local: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub flags: u8,
    pub to_backend_segments: u64,
    pub to_backend_bytes: u64,
    pub to_client_segments: u64,
    pub to_client_bytes: u64,
    pub held: u32,
    pub age_ms: u64,
    pub idle_ms: u64,
    /// 0 nothing held, 1 the client's next request held while the response
    /// finishes, 2 held and the response acknowledged (see `response-end`).
    pub next_request: u8,
}

fn endpoint(n: &Attrs, addr: u16, port: u16, what: &'static str) -> Result<SocketAddrV4, Error> {
    let b: [u8; 4] = n.get(addr).and_then(|b| b.get(..4)).and_then(|b| b.try_into().ok()).ok_or(Error::Reply(what))?;
    Ok(SocketAddrV4::new(Ipv4Addr::from(b), n.u16(port).ok_or(Error::Reply(what))?))
}

impl SpliceEntry {
    fn from_nest(nest: &[u8]) -> Result<Self, Error> {
        let n = nest_attrs(nest);
        let st = n.u8(e::STATE).ok_or(Error::Reply("entry.state"))?;
        Ok(SpliceEntry {
            id: n.u32(e::ID).ok_or(Error::Reply("entry.id"))?,
            state: state::NAMES.get(st as usize).copied().unwrap_or("unknown"),
            client: endpoint(&n, e::CLIENT_ADDR, e::CLIENT_PORT, "entry.client")?,
            listen: endpoint(&n, e::LISTEN_ADDR, e::LISTEN_PORT, "entry.listen")?,
            local: endpoint(&n, e::LOCAL_ADDR, e::LOCAL_PORT, "entry.local")?,
            backend: endpoint(&n, e::BACKEND_ADDR, e::BACKEND_PORT, "entry.backend")?,
            flags: n.u8(e::FLAGS).unwrap_or(0),
            to_backend_segments: n.u64(e::TO_BACKEND_SEGMENTS).unwrap_or(0),
            to_backend_bytes: n.u64(e::TO_BACKEND_BYTES).unwrap_or(0),
            to_client_segments: n.u64(e::TO_CLIENT_SEGMENTS).unwrap_or(0),
            to_client_bytes: n.u64(e::TO_CLIENT_BYTES).unwrap_or(0),
            held: n.u32(e::HELD).unwrap_or(0),
            age_ms: n.u64(e::AGE_MS).unwrap_or(0),
            idle_ms: n.u64(e::IDLE_MS).unwrap_or(0),
            next_request: n.u8(e::NEXT_REQUEST).unwrap_or(0),
        })
    }

    /// The set flags as words.
    pub fn flag_names(&self) -> Vec<&'static str> {
        [(1u8, "client-fin"), (2, "backend-fin"), (4, "fins-acked"), (8, "reset")]
            .into_iter()
            .filter(|(b, _)| self.flags & b != 0)
            .map(|(_, n)| n)
            .collect()
    }
}

/// A connection to the `lazarus_splice` family. One request at a time: share it
/// behind a lock.
pub struct SpliceClient {
    genl: Genl,
}

impl SpliceClient {
    /// Connect and resolve the family.
    pub fn connect() -> Result<Self, Error> {
        Ok(SpliceClient { genl: Genl::connect(spec::FAMILY_NAME, spec::FAMILY_VERSION)? })
    }

    /// Send a request with raw attributes (for tests of the kernel's checks).
    pub fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
        self.genl.request(command, attrs, dump)
    }

    /// Table size, splices, timeouts and counters.
    pub fn status(&self) -> Result<SpliceStatus, Error> {
        SpliceStatus::from_attrs(&self.genl.one(cmd::GET_STATUS, &[])?)
    }

    /// Change the idle timeout and/or the linger time.
    pub fn configure(&self, idle_timeout_ms: Option<u32>, linger_ms: Option<u32>) -> Result<(), Error> {
        let mut v = Vec::new();
        if let Some(x) = idle_timeout_ms {
            v.push(RawAttr::u32(a::IDLE_TIMEOUT_MS, x));
        }
        if let Some(x) = linger_ms {
            v.push(RawAttr::u32(a::LINGER_MS, x));
        }
        self.genl.request(cmd::CONFIGURE, &v, false).map(drop)
    }

    /// Freeze a pair: `client` and `backend` are (proxy's end, peer's end). Returns
    /// the splice id.
    pub fn pre_splice(&self, client: (SocketAddrV4, SocketAddrV4), backend: (SocketAddrV4, SocketAddrV4)) -> Result<u32, Error> {
        let r = self.genl.one(cmd::PRE_SPLICE, &tuple_attrs(client, backend))?;
        r.u32(a::ID).ok_or(Error::Reply("id"))
    }

    /// Give the client connection that [`SpliceClient::unsplice`] left frozen under
    /// `id` a new backend connection: the pair is frozen as by `pre_splice`.
    pub fn pre_splice_again(&self, id: u32, client: (SocketAddrV4, SocketAddrV4), backend: (SocketAddrV4, SocketAddrV4)) -> Result<(), Error> {
        let mut v = vec![RawAttr::u32(a::ID, id)];
        v.extend(tuple_attrs(client, backend));
        self.genl.one(cmd::PRE_SPLICE, &v).map(drop)
    }

    /// Join a frozen pair. Returns the timestamp shifts the kernel fixed, which a
    /// peer proxy needs to install the same splice. A `resumable` splice records
    /// what [`SpliceClient::unsplice`] reports; with `response_end`, the client's
    /// next request is held for the proxy (see [`SpliceEntry::next_request`]).
    pub fn splice(&self, id: u32, client: &SpliceSide, backend: &SpliceSide, resumable: bool, response_end: Option<u64>) -> Result<TsShifts, Error> {
        let mut v = vec![RawAttr::u32(a::ID, id)];
        v.extend(side_attrs(client, backend));
        if resumable {
            v.push(RawAttr::u8(a::RESUMABLE, 1));
        }
        if let Some(end) = response_end {
            v.push(RawAttr::u64(a::RESPONSE_END, end));
        }
        let r = self.genl.one(cmd::SPLICE, &v)?;
        Ok(TsShifts { to_backend: r.u32(a::TS_SHIFT_TO_BACKEND), to_client: r.u32(a::TS_SHIFT_TO_CLIENT) })
    }

    /// Install a splice a peer proxy set up, from its state; returns the local id.
    pub fn install(&self, client: &SpliceSide, backend: &SpliceSide, shifts: TsShifts) -> Result<u32, Error> {
        let mut v = side_attrs(client, backend);
        if let Some(x) = shifts.to_backend {
            v.push(RawAttr::u32(a::TS_SHIFT_TO_BACKEND, x));
        }
        if let Some(x) = shifts.to_client {
            v.push(RawAttr::u32(a::TS_SHIFT_TO_CLIENT, x));
        }
        let r = self.genl.one(cmd::INSTALL, &v)?;
        r.u32(a::ID).ok_or(Error::Reply("id"))
    }

    /// Take a splice apart (its backend failed): the client connection stays frozen
    /// under `id`; returns where the splice stood and its flags.
    pub fn unsplice(&self, id: u32) -> Result<(ResumePoint, u8), Error> {
        let r = self.genl.one(cmd::UNSPLICE, &[RawAttr::u32(a::ID, id)])?;
        let need = |attr: u16, what: &'static str| r.u64(attr).ok_or(Error::Reply(what));
        let point = ResumePoint {
            resumable: r.u8(a::RESUMABLE).ok_or(Error::Reply("resumable"))? != 0,
            hashed: need(a::RESUME_HASHED, "resume-hashed")?,
            sent: need(a::RESUME_SENT, "resume-sent")?,
            acked: need(a::RESUME_ACKED, "resume-acked")?,
            client_sent: need(a::RESUME_CLIENT_SENT, "resume-client-sent")?,
            client_window: r.u32(a::RESUME_CLIENT_WINDOW).ok_or(Error::Reply("resume-client-window"))?,
            to_client_tsval: r.u32(a::RESUME_CLIENT_TSVAL),
            digest: need(a::RESUME_DIGEST, "resume-digest")?,
            broken: r.u8(a::RESUME_BROKEN).ok_or(Error::Reply("resume-broken"))? != 0,
            ahead_start: need(a::RESUME_AHEAD_START, "resume-ahead-start")?,
            ahead_end: need(a::RESUME_AHEAD_END, "resume-ahead-end")?,
            ahead_digest: need(a::RESUME_AHEAD_DIGEST, "resume-ahead-digest")?,
            scattered: r.u8(a::RESUME_SCATTERED).ok_or(Error::Reply("resume-scattered"))? != 0,
        };
        Ok((point, r.u8(a::FLAGS).ok_or(Error::Reply("flags"))?))
    }

    /// Undo a freeze, or drop a splice.
    pub fn abort(&self, id: u32) -> Result<(), Error> {
        self.genl.request(cmd::ABORT, &[RawAttr::u32(a::ID, id)], false).map(drop)
    }

    /// Every splice.
    pub fn list(&self) -> Result<Vec<SpliceEntry>, Error> {
        let mut out = Vec::new();
        for r in self.genl.request(cmd::SPLICE_GET, &[], true)? {
            for nest in r.all(a::ENTRY) {
                out.push(SpliceEntry::from_nest(nest)?);
            }
        }
        Ok(out)
    }
}

/// The timestamp shift of each direction, fixed when splicing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TsShifts {
    pub to_backend: Option<u32>,
    pub to_client: Option<u32>,
}

/// Both sides in full, as `splice` and `install` take them.
fn side_attrs(client: &SpliceSide, backend: &SpliceSide) -> Vec<RawAttr> {
    let mut v = tuple_attrs((client.local, client.remote), (backend.local, backend.remote));
    let sides = [
        (client, [a::CLIENT_SND_NXT, a::CLIENT_RCV_NXT, a::CLIENT_PEER_WSCALE, a::CLIENT_OWN_WSCALE, a::CLIENT_TS_NOW, a::CLIENT_SACK]),
        (backend, [a::BACKEND_SND_NXT, a::BACKEND_RCV_NXT, a::BACKEND_PEER_WSCALE, a::BACKEND_OWN_WSCALE, a::BACKEND_TS_NOW, a::BACKEND_SACK]),
    ];
    for (s, ids) in sides {
        v.push(RawAttr::u32(ids[0], s.snd_nxt));
        v.push(RawAttr::u32(ids[1], s.rcv_nxt));
        v.push(RawAttr::u8(ids[2], s.peer_wscale));
        v.push(RawAttr::u8(ids[3], s.own_wscale));
        if let Some(ts) = s.ts_now {
            v.push(RawAttr::u32(ids[4], ts));
        }
        v.push(RawAttr::u8(ids[5], s.sack as u8));
    }
    v
}
