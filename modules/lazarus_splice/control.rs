// SPDX-License-Identifier: GPL-2.0
//! The `lazarus_splice` netlink family: freeze, splice, abort, status and the
//! listing. Every change needs CAP_NET_ADMIN (the family's admin flag).

use super::lzk::errno::EOPNOTSUPP;
use super::lzk::genl::{self, Dump, FamilySpec, Message, Request};
use super::lzk::net::Net;
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::genl_splice::{self as spec, cmd, entry_attr as ea, splice_attr as a, state, stats_attr as st};
use super::lzk::proto::seq::Seq;
use super::lzk::proto::splice::{ts_shift, Dir, Endpoint, Side, Splice};
use super::lzk::skbq::SkbQueue;
use super::lzk::tcp::EstablishedSock;
use super::{bump, now_ms, Entry, Refusal, Shared, State, MAX_SPLICES, VERSION};
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

const IDLE_MIN_MS: u32 = 1000;
const LINGER_MIN_MS: u32 = 100;
const LINGER_MAX_MS: u32 = 600_000;

pub(crate) struct Control {
    shared: Arc<Shared>,
}

pub(crate) fn register(module: &'static ThisModule, shared: Arc<Shared>) -> Result<genl::Registration<Control>> {
    genl::Registration::new(&SPEC, module, Control { shared })
}

/// The attribute ids of one side's fields.
struct SideAttrs {
    local_addr: u16,
    local_port: u16,
    remote_addr: u16,
    remote_port: u16,
    snd_nxt: u16,
    rcv_nxt: u16,
    peer_wscale: u16,
    own_wscale: u16,
    ts_now: u16,
    sack: u16,
    name: &'static core::ffi::CStr,
}

const CLIENT: SideAttrs = SideAttrs {
    local_addr: a::CLIENT_LOCAL_ADDR,
    local_port: a::CLIENT_LOCAL_PORT,
    remote_addr: a::CLIENT_REMOTE_ADDR,
    remote_port: a::CLIENT_REMOTE_PORT,
    snd_nxt: a::CLIENT_SND_NXT,
    rcv_nxt: a::CLIENT_RCV_NXT,
    peer_wscale: a::CLIENT_PEER_WSCALE,
    own_wscale: a::CLIENT_OWN_WSCALE,
    ts_now: a::CLIENT_TS_NOW,
    sack: a::CLIENT_SACK,
    name: c"client",
};

const BACKEND: SideAttrs = SideAttrs {
    local_addr: a::BACKEND_LOCAL_ADDR,
    local_port: a::BACKEND_LOCAL_PORT,
    remote_addr: a::BACKEND_REMOTE_ADDR,
    remote_port: a::BACKEND_REMOTE_PORT,
    snd_nxt: a::BACKEND_SND_NXT,
    rcv_nxt: a::BACKEND_RCV_NXT,
    peer_wscale: a::BACKEND_PEER_WSCALE,
    own_wscale: a::BACKEND_OWN_WSCALE,
    ts_now: a::BACKEND_TS_NOW,
    sack: a::BACKEND_SACK,
    name: c"backend",
};

fn refuse(s: &Shared, req: &Request<'_>, msg: &'static core::ffi::CStr, err: Error) -> Error {
    bump(&s.stats.refused);
    req.set_message(msg);
    err
}

/// A side's 4-tuple (the rest zero).
fn tuple(req: &Request<'_>, at: &SideAttrs) -> Option<Side> {
    Some(Side {
        local: Endpoint { addr: req.be32(at.local_addr)?.to_be_bytes(), port: req.u16(at.local_port)? },
        remote: Endpoint { addr: req.be32(at.remote_addr)?.to_be_bytes(), port: req.u16(at.remote_port)? },
        ..Side::default()
    })
}

/// A side in full, as `splice` carries it.
fn side(req: &Request<'_>, at: &SideAttrs) -> Option<Side> {
    Some(Side {
        snd_nxt: Seq(req.u32(at.snd_nxt)?),
        rcv_nxt: Seq(req.u32(at.rcv_nxt)?),
        peer_wscale: req.u8(at.peer_wscale)?,
        own_wscale: req.u8(at.own_wscale)?,
        ts_now: req.u32(at.ts_now),
        sack: req.u8(at.sack).unwrap_or(0) == 1,
        ..tuple(req, at)?
    })
}

/// How segments of a side's connection arrive: from the peer to the proxy.
fn key_of(s: &Side) -> FlowKey {
    FlowKey { client: s.remote.addr, client_port: s.remote.port, service: s.local.addr, service_port: s.local.port }
}

fn socket_of(net: &Net, s: &Side) -> Option<EstablishedSock> {
    EstablishedSock::lookup(net, (s.remote.addr, s.remote.port), (s.local.addr, s.local.port))
}

/// Why a socket does not match what the proxy handed over.
enum Mismatch {
    Gone,
    Closing,
    Unsettled,
    Numbers,
}

/// Check a side against the proxy's own socket: it must be open in both directions,
/// settled (everything sent acknowledged, everything received read), and at the
/// numbers the proxy gave. Wrong numbers would corrupt the stream, so they are never
/// taken on trust.
fn check_socket(net: &Net, s: &Side) -> core::result::Result<(), Mismatch> {
    let sock = socket_of(net, s).ok_or(Mismatch::Gone)?;
    let p = sock.progress().ok_or(Mismatch::Gone)?;
    if p.fin_in || p.fin_out {
        return Err(Mismatch::Closing);
    }
    if p.snd_una != p.write_seq || p.copied_seq != p.rcv_nxt {
        return Err(Mismatch::Unsettled);
    }
    if p.write_seq != s.snd_nxt.0 || p.rcv_nxt != s.rcv_nxt.0 {
        return Err(Mismatch::Numbers);
    }
    Ok(())
}

impl Control {
    fn status(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        req.reply(c, |m| {
            m.put_str(a::VERSION, VERSION)?;
            m.put_u32(a::MAX_SPLICES, MAX_SPLICES as u32)?;
            m.put_u32(a::SPLICES, s.count.load(Ordering::Relaxed))?;
            m.put_u32(a::IDLE_TIMEOUT_MS, s.idle_ms.load(Ordering::Relaxed))?;
            m.put_u32(a::LINGER_MS, s.linger_ms.load(Ordering::Relaxed))?;
            m.put_u32(a::LAST_SEND_ERRNO, s.last_send_errno.load(Ordering::Relaxed))?;
            m.put_u64(a::NEXT_READY, s.next_ready.load(Ordering::Relaxed))?;
            put_stats(m, &s.stats)
        })
    }

    fn configure(&self, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let idle = req.u32(a::IDLE_TIMEOUT_MS);
        let linger = req.u32(a::LINGER_MS);
        if idle.is_some_and(|v| v < IDLE_MIN_MS) {
            return Err(refuse(s, req, c"idle-timeout-ms must be at least 1000", EINVAL));
        }
        if linger.is_some_and(|v| !(LINGER_MIN_MS..=LINGER_MAX_MS).contains(&v)) {
            return Err(refuse(s, req, c"linger-ms must be between 100 and 600000", EINVAL));
        }
        if let Some(v) = idle {
            s.idle_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = linger {
            s.linger_ms.store(v, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The hook runs in the initial namespace only: a splice anywhere else would
    /// never forward.
    fn initial_namespace(&self, req: &Request<'_>) -> Result {
        if core::ptr::eq(req.net().as_ptr(), Net::init().as_ptr()) {
            return Ok(());
        }
        Err(refuse(&self.shared, req, c"only the initial network namespace is supported", EOPNOTSUPP()))
    }

    /// Add a pair to the table; its id and whether it is new, or the refusal answered
    /// to `req`.
    fn add(&self, req: &Request<'_>, client: &Side, backend: &Side, state: State) -> Result<(u32, bool)> {
        let s = &*self.shared;
        let now = now_ms();
        match s.with_table(|t| t.add(key_of(client), key_of(backend), state, now)) {
            Ok(added) => Ok(added),
            Err(Refusal::Taken) => Err(refuse(s, req, c"one of the connections is frozen or spliced already", EEXIST)),
            Err(Refusal::Full) => {
                bump(&s.stats.table_full);
                req.set_message(c"the splice table is full");
                Err(ENOSPC)
            }
        }
    }

    fn pre_splice(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        self.initial_namespace(req)?;
        let (Some(client), Some(backend)) = (tuple(req, &CLIENT), tuple(req, &BACKEND)) else {
            return Err(refuse(s, req, c"pre-splice needs both 4-tuples (client-* and backend-* addr and port)", EINVAL));
        };
        super::lzk::proto::splice::validate_pair(&client, &backend).map_err(|e| refuse_sides(s, req, e))?;
        // Only the caller's own connections can be spliced: both must be sockets of
        // this host in the caller's namespace.
        let net = req.net();
        if socket_of(net, &client).is_none() || socket_of(net, &backend).is_none() {
            return Err(refuse(s, req, c"no established connection of this host has one of the 4-tuples", ENOENT));
        }
        let id = match req.u32(a::ID) {
            // A new backend for a client connection that unsplice left frozen.
            Some(id) => {
                s.with_table(|t| t.attach(id, key_of(&client), key_of(&backend))).map_err(|msg| refuse(s, req, msg, EINVAL))?;
                id
            }
            // A frozen pair never matches an existing one: it is always new.
            None => self.add(req, &client, &backend, State::Frozen(SkbQueue::default()))?.0,
        };
        bump(&s.stats.pre_splices);
        req.reply(c, |m| m.put_u32(a::ID, id))
    }

    fn splice(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let Some(id) = req.u32(a::ID) else {
            return Err(refuse(s, req, c"missing attribute: id", EINVAL));
        };
        let (Some(client), Some(backend)) = (side(req, &CLIENT), side(req, &BACKEND)) else {
            return Err(refuse(s, req, c"splice needs every client-* and backend-* attribute (ts-now only with timestamps)", EINVAL));
        };
        let net = req.net();
        // Fix each direction's timestamp shift from the peer's latest value, which
        // only the socket knows (see `ts_shift`).
        let recent = |sd: &Side| socket_of(net, sd).and_then(|k| k.ts_recent());
        let shifts = [
            backend.ts_now.zip(recent(&client)).map(|(now, r)| ts_shift(now, r)),
            client.ts_now.zip(recent(&backend)).map(|(now, r)| ts_shift(now, r)),
        ];
        let mut sp = Splice::new(client, backend, shifts).map_err(|e| refuse_sides(s, req, e))?;
        if req.u8(a::RESUMABLE) == Some(1) {
            sp.make_resumable();
        }
        if let Some(end) = req.u64(a::RESPONSE_END) {
            sp.set_response_end(end);
        }
        for (side, at) in [(&client, &CLIENT), (&backend, &BACKEND)] {
            if let Err(m) = check_socket(net, side) {
                let msg = match (m, at.name == CLIENT.name) {
                    (Mismatch::Gone, true) => c"the client connection is gone",
                    (Mismatch::Gone, false) => c"the backend connection is gone",
                    (Mismatch::Closing, true) => c"the client connection is closing: relay it instead",
                    (Mismatch::Closing, false) => c"the backend connection is closing: relay it instead",
                    (Mismatch::Unsettled, true) => c"the client connection is not settled (bytes unacknowledged or unread)",
                    (Mismatch::Unsettled, false) => c"the backend connection is not settled (bytes unacknowledged or unread)",
                    (Mismatch::Numbers, true) => c"client-snd-nxt or client-rcv-nxt does not match the socket",
                    (Mismatch::Numbers, false) => c"backend-snd-nxt or backend-rcv-nxt does not match the socket",
                };
                return Err(refuse(s, req, msg, EINVAL));
            }
        }
        let now = now_ms();
        let held = s.with_table(|t| {
            let e = t.entries.get_mut(id).ok_or(c"no frozen pair has this id")?;
            if e.client_key != key_of(&client) || e.backend_key != key_of(&backend) {
                return Err(c"the 4-tuples are not the ones frozen under this id");
            }
            let State::Frozen(q) = &mut e.state else {
                return Err(c"this pair is spliced already");
            };
            let held = core::mem::take(q);
            e.state = State::Spliced(sp);
            e.last_ms = now;
            Ok(held)
        });
        match held {
            Ok(held) => {
                bump(&s.stats.splices);
                s.release(held);
                req.reply(c, |m| put_shifts(m, shifts))
            }
            Err(msg) => Err(refuse(s, req, msg, ENOENT)),
        }
    }

    fn install(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        self.initial_namespace(req)?;
        let (Some(client), Some(backend)) = (side(req, &CLIENT), side(req, &BACKEND)) else {
            return Err(refuse(s, req, c"install needs every client-* and backend-* attribute (ts-now only with timestamps)", EINVAL));
        };
        let shifts = [req.u32(a::TS_SHIFT_TO_BACKEND), req.u32(a::TS_SHIFT_TO_CLIENT)];
        let sp = Splice::new(client, backend, shifts).map_err(|e| refuse_sides(s, req, e))?;
        let (id, new) = self.add(req, &client, &backend, State::Spliced(sp))?;
        if new {
            bump(&s.stats.installed);
        }
        req.reply(c, |m| m.put_u32(a::ID, id))
    }

    fn unsplice(&self, c: u8, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let Some(id) = req.u32(a::ID) else {
            return Err(refuse(s, req, c"missing attribute: id", EINVAL));
        };
        let taken = s.with_table(|t| match t.entries.get_mut(id) {
            None => Err(None),
            Some(_) => t.unsplice(id, now_ms()).map_err(Some),
        });
        let (r, flags) = taken.map_err(|msg| match msg {
            None => refuse(s, req, c"no splice has this id", ENOENT),
            Some(msg) => refuse(s, req, msg, EINVAL),
        })?;
        bump(&s.stats.unspliced);
        req.reply(c, |m| {
            m.put_u8(a::FLAGS, flags)?;
            m.put_u8(a::RESUMABLE, r.resumable as u8)?;
            m.put_u64(a::RESUME_HASHED, r.hashed)?;
            m.put_u64(a::RESUME_SENT, r.sent)?;
            m.put_u64(a::RESUME_ACKED, r.acked)?;
            m.put_u64(a::RESUME_CLIENT_SENT, r.client_sent)?;
            m.put_u32(a::RESUME_CLIENT_WINDOW, r.client_window)?;
            if let Some(v) = r.to_client_tsval {
                m.put_u32(a::RESUME_CLIENT_TSVAL, v)?;
            }
            m.put_u64(a::RESUME_DIGEST, r.digest)?;
            m.put_u8(a::RESUME_BROKEN, r.broken as u8)?;
            m.put_u64(a::RESUME_AHEAD_START, r.ahead_start)?;
            m.put_u64(a::RESUME_AHEAD_END, r.ahead_end)?;
            m.put_u64(a::RESUME_AHEAD_DIGEST, r.ahead_digest)?;
            m.put_u8(a::RESUME_SCATTERED, r.scattered as u8)
        })
    }

    fn abort(&self, req: &Request<'_>) -> Result {
        let s = &*self.shared;
        let Some(id) = req.u32(a::ID) else {
            return Err(refuse(s, req, c"missing attribute: id", EINVAL));
        };
        let Some(e) = s.with_table(|t| t.remove(id)) else {
            return Err(refuse(s, req, c"no splice has this id", ENOENT));
        };
        bump(&s.stats.aborted);
        if let State::Frozen(q) = e.state {
            s.release(q);
        }
        Ok(())
    }
}

/// Refuse a request whose sides are unacceptable, saying why.
fn refuse_sides(s: &Shared, req: &Request<'_>, e: super::lzk::proto::splice::SideError) -> Error {
    refuse(s, req, side_error_message(e), EINVAL)
}

fn side_error_message(e: super::lzk::proto::splice::SideError) -> &'static core::ffi::CStr {
    use super::lzk::proto::splice::SideError;
    match e {
        SideError::ZeroPort => c"a port is 0",
        SideError::BadAddress => c"an address is unspecified, multicast or broadcast",
        SideError::BadWscale => c"a window scale is above 14",
        SideError::Ambiguous => c"the two connections have the same 4-tuple",
    }
}

fn put_shifts(m: &mut Message, shifts: [Option<u32>; 2]) -> Result {
    if let Some(v) = shifts[Dir::FromClient as usize] {
        m.put_u32(a::TS_SHIFT_TO_BACKEND, v)?;
    }
    if let Some(v) = shifts[Dir::FromBackend as usize] {
        m.put_u32(a::TS_SHIFT_TO_CLIENT, v)?;
    }
    Ok(())
}

fn put_stats(m: &mut Message, s: &super::Stats) -> Result {
    let all: [(u16, &AtomicU64); 16] = [
        (st::PRE_SPLICES, &s.pre_splices),
        (st::SPLICES, &s.splices),
        (st::INSTALLED, &s.installed),
        (st::ABORTED, &s.aborted),
        (st::HELD, &s.held),
        (st::HOLD_OVERFLOWS, &s.hold_overflows),
        (st::FORWARDED_SEGMENTS, &s.forwarded_segments),
        (st::FORWARDED_BYTES, &s.forwarded_bytes),
        (st::SEND_ERRORS, &s.send_errors),
        (st::SEND_DROPPED, &s.send_dropped),
        (st::REWRITE_ERRORS, &s.rewrite_errors),
        (st::CLOSED, &s.closed),
        (st::EXPIRED, &s.expired),
        (st::TABLE_FULL, &s.table_full),
        (st::REFUSED, &s.refused),
        (st::UNSPLICED, &s.unspliced),
    ];
    m.nest(a::STATS, |m| {
        for (id, c) in all {
            m.put_u64(id, c.load(Ordering::Relaxed))?;
        }
        Ok(())
    })
}

/// What the listing shows of a splice, copied out under the table lock.
#[derive(Clone, Copy, Default)]
struct View {
    id: u32,
    state: u8,
    client: FlowKey,
    backend: FlowKey,
    flags: u8,
    to_backend: (u64, u64),
    to_client: (u64, u64),
    held: u32,
    age_ms: u64,
    idle_ms: u64,
    next_request: u8,
}

impl View {
    fn of(id: u32, e: &Entry, now: u64) -> Self {
        let mut v = View {
            id,
            client: e.client_key,
            backend: e.backend_key,
            age_ms: now.saturating_sub(e.created_ms),
            idle_ms: now.saturating_sub(e.last_ms),
            ..View::default()
        };
        match &e.state {
            State::Frozen(q) => {
                v.state = state::FROZEN;
                v.held = q.len();
            }
            State::Spliced(sp) => {
                v.state = if e.closed_ms.is_some() { state::CLOSED } else { state::OPEN };
                v.held = e.next_request.len();
                v.next_request = match (e.next_request.is_empty(), e.ready) {
                    (true, _) => 0,
                    (false, false) => 1,
                    (false, true) => 2,
                };
                v.flags = sp.flags();
                let b = sp.counters(Dir::FromClient);
                let c = sp.counters(Dir::FromBackend);
                v.to_backend = (b.segments, b.bytes);
                v.to_client = (c.segments, c.bytes);
            }
        }
        v
    }
}

fn put_view(m: &mut Message, v: &View) -> Result {
    m.nest(a::ENTRY, |m| {
        m.put_u32(ea::ID, v.id)?;
        m.put_u8(ea::STATE, v.state)?;
        // Keys are as segments arrive: "client" is the peer, "service" the proxy.
        m.put_u32(ea::CLIENT_ADDR, u32::from_ne_bytes(v.client.client))?;
        m.put_u16(ea::CLIENT_PORT, v.client.client_port)?;
        m.put_u32(ea::LISTEN_ADDR, u32::from_ne_bytes(v.client.service))?;
        m.put_u16(ea::LISTEN_PORT, v.client.service_port)?;
        m.put_u32(ea::LOCAL_ADDR, u32::from_ne_bytes(v.backend.service))?;
        m.put_u16(ea::LOCAL_PORT, v.backend.service_port)?;
        m.put_u32(ea::BACKEND_ADDR, u32::from_ne_bytes(v.backend.client))?;
        m.put_u16(ea::BACKEND_PORT, v.backend.client_port)?;
        m.put_u8(ea::FLAGS, v.flags)?;
        m.put_u64(ea::TO_BACKEND_SEGMENTS, v.to_backend.0)?;
        m.put_u64(ea::TO_BACKEND_BYTES, v.to_backend.1)?;
        m.put_u64(ea::TO_CLIENT_SEGMENTS, v.to_client.0)?;
        m.put_u64(ea::TO_CLIENT_BYTES, v.to_client.1)?;
        m.put_u32(ea::HELD, v.held)?;
        m.put_u64(ea::AGE_MS, v.age_ms)?;
        m.put_u64(ea::IDLE_MS, v.idle_ms)?;
        m.put_u8(ea::NEXT_REQUEST, v.next_request)
    })
}

impl genl::Family for Control {
    fn doit(&self, c: u8, req: &Request<'_>) -> Result {
        match c {
            cmd::GET_STATUS => self.status(c, req),
            cmd::CONFIGURE => self.configure(req),
            cmd::PRE_SPLICE => self.pre_splice(c, req),
            cmd::SPLICE => self.splice(c, req),
            cmd::INSTALL => self.install(c, req),
            cmd::ABORT => self.abort(req),
            cmd::UNSPLICE => self.unsplice(c, req),
            _ => Err(EOPNOTSUPP()),
        }
    }

    fn dumpit(&self, c: u8, dump: &mut Dump<'_>) -> Result {
        if c != cmd::SPLICE_GET {
            return Err(EOPNOTSUPP());
        }
        // The cursor is the next slot; each round copies a batch out under the lock
        // and writes it to the message after releasing it.
        const BATCH: usize = 32;
        loop {
            let from = dump.cursor();
            let now = now_ms();
            let mut batch = [View::default(); BATCH];
            let mut n = 0;
            let next = self.shared.with_table(|t| {
                t.entries.walk(from, BATCH, |id, e| {
                    batch[n] = View::of(id, e, now);
                    n += 1;
                })
            });
            for v in &batch[..n] {
                if !dump.add(cmd::SPLICE_GET, |m| put_view(m, v))? {
                    // Full: resume at this splice's slot.
                    dump.set_cursor((v.id & 0xffff) as usize);
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
