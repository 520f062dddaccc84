//! Handing a client connection and its backend connection to the kernel.
//!
//! The order matters (see `lazarus_proto::splice`): freeze the pair, settle both
//! sockets (forward what is left in them, wait until everything the proxy sent is
//! acknowledged), read them in repair mode, splice. The module checks the numbers
//! against the sockets, so a mistake here is refused rather than corrupting a
//! stream. Whenever a step fails the freeze is undone and the caller relays the
//! connection itself: a client never notices whether it was spliced.
//!
//! After a splice the two sockets stay open, silent in repair mode, so that their
//! ports cannot be reused while the kernel still forwards under them; a reaper
//! closes them once the splice has left the module's table.

use crate::peer::Peers;
use crate::resume::{self, Connector, Health, Resume};
use crate::sockopt;
use lazarus_proto::proxypeer::SpliceState;
use lazarus_proto::seq::Seq;
use lazarus_proto::splice::{Endpoint, ResumePoint, Side};
use lznl::{SpliceClient, SpliceSide, TsShifts};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the sockets may take to settle before the proxy relays instead.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// How often the reaper looks for ended splices.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// How often the module is asked for connections whose next request waits, while
/// there are splices with a response end: a request after a response waits up to
/// this long. (A small status request each time; faster polling costs a guest with
/// one virtual CPU a visible share of it.)
const NEXT_REQUEST_POLL: Duration = Duration::from_millis(50);

/// Why a connection was not spliced (the proxy relays it instead).
#[derive(Debug)]
pub enum NotSpliced {
    /// An address is not IPv4.
    NotIpv4,
    /// The kernel refused a step.
    Kernel(&'static str, lznl::Error),
    /// The sockets did not settle in time, or a peer closed meanwhile.
    Unsettled(&'static str),
    /// A socket call failed.
    Io(&'static str, io::Error),
    /// The client sent its next request before the response was spliced; the
    /// proxy had passed on this many more body bytes itself.
    EarlyRequest(u64),
}

impl std::fmt::Display for NotSpliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSpliced::NotIpv4 => write!(f, "not IPv4"),
            NotSpliced::Kernel(step, e) => write!(f, "{step}: {e}"),
            NotSpliced::Unsettled(why) => write!(f, "not settled: {why}"),
            NotSpliced::Io(step, e) => write!(f, "{step}: {e}"),
            NotSpliced::EarlyRequest(_) => write!(f, "the client's next request came before the splice"),
        }
    }
}

/// Counters for the proxy's own report.
#[derive(Default)]
pub struct Counts {
    pub spliced: AtomicU64,
    pub relayed: AtomicU64,
    /// Bytes the proxy moved itself while settling (the rest went through the kernel).
    pub settle_bytes: AtomicU64,
    /// Connections carried on with another backend after theirs failed.
    pub resumed: AtomicU64,
    /// Connections on a failed backend that could not be carried on (reset).
    pub resume_failed: AtomicU64,
    /// Connections whose next request came back to the proxy for routing.
    pub taken_back: AtomicU64,
}

/// Where a splice in this proxy's kernel came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// This proxy made it.
    Own,
    /// A copy of peer `peer`'s splice `id`, installed while standing by; `seen` is
    /// the resync generation in which it was last announced.
    Copy { peer: usize, id: u32, seen: u32 },
    /// A copy of peer `peer`'s splice `id` that this proxy took over with the service
    /// address. It turns back into a copy if the proxy stands down again.
    Adopted { peer: usize, id: u32 },
}

/// A splice this proxy keeps: what holds its ports, and its state for the peers.
struct Kept {
    /// The proxy's own two sockets (silent, in repair mode), or a socket bound to the
    /// backend connection's port for a copy.
    _holds: Vec<OwnedFd>,
    state: SpliceState,
    origin: Origin,
    /// When it was kept: a listing taken before then cannot show it yet.
    since: Instant,
    /// For a resumable splice: what a replay elsewhere needs.
    resume: Option<Resume>,
    /// The kernel holds the connection's next request for this proxy once the
    /// response is done (the splice has a response end).
    boundary: bool,
}

pub struct Splicer {
    nl: Mutex<SpliceClient>,
    /// Live splices, by their id in this proxy's kernel.
    kept: Mutex<HashMap<u32, Kept>>,
    peers: OnceLock<Arc<Peers>>,
    /// Where a connection goes whose next request came back to the proxy.
    next_request: OnceLock<Box<dyn Fn(TcpStream) + Send + Sync>>,
    /// The module's `next_ready` count at the last look.
    next_ready_seen: AtomicU64,
    pub counts: Counts,
}

fn v4(a: SocketAddr) -> Result<SocketAddrV4, NotSpliced> {
    match a {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(NotSpliced::NotIpv4),
    }
}

fn ends(s: &TcpStream) -> Result<(SocketAddrV4, SocketAddrV4), NotSpliced> {
    let local = s.local_addr().map_err(|e| NotSpliced::Io("local address", e))?;
    let peer = s.peer_addr().map_err(|e| NotSpliced::Io("peer address", e))?;
    Ok((v4(local)?, v4(peer)?))
}

/// Move whatever `from` has ready to `to`, appending it to `copy` if given; the
/// byte count, or an error when `from` has ended (EOF) or failed.
fn drain(from: &mut TcpStream, to: &mut TcpStream, mut copy: Option<&mut Vec<u8>>) -> Result<u64, NotSpliced> {
    let mut moved = 0u64;
    let mut buf = [0u8; 16384];
    loop {
        let n = sockopt::unread(from).map_err(|e| NotSpliced::Io("SIOCINQ", e))?;
        if n == 0 {
            return Ok(moved);
        }
        let want = n.min(buf.len());
        let got = match from.read(&mut buf[..want]) {
            Ok(0) => return Err(NotSpliced::Unsettled("a peer closed")),
            Ok(k) => k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(NotSpliced::Io("read while settling", e)),
        };
        to.write_all(&buf[..got]).map_err(|e| NotSpliced::Io("write while settling", e))?;
        if let Some(c) = copy.as_deref_mut() {
            c.extend_from_slice(&buf[..got]);
        }
        moved += got as u64;
    }
}

impl Splicer {
    pub fn new() -> Result<Arc<Self>, lznl::Error> {
        let s = Arc::new(Splicer {
            nl: Mutex::new(SpliceClient::connect()?),
            kept: Mutex::new(HashMap::new()),
            peers: OnceLock::new(),
            next_request: OnceLock::new(),
            next_ready_seen: AtomicU64::new(0),
            counts: Counts::default(),
        });
        s.every("next-request", NEXT_REQUEST_POLL, Splicer::take_back_requests)?;
        s.every("reaper", REAP_INTERVAL, Splicer::reap)?;
        Ok(s)
    }

    /// Run `job` every `interval` on a thread named `name`, for as long as the
    /// splicer lives.
    fn every(self: &Arc<Self>, name: &str, interval: Duration, job: fn(&Splicer)) -> Result<(), lznl::Error> {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(s) = me.upgrade() {
                    job(&s);
                    drop(s);
                    std::thread::sleep(interval);
                }
            })
            .map(drop)
            .map_err(|e| lznl::Error::Netlink(format!("{name} thread: {e}")))
    }

    fn nl(&self) -> std::sync::MutexGuard<'_, SpliceClient> {
        // A panic elsewhere while holding the lock leaves the client usable.
        self.nl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replicate this proxy's splices to `peers` from now on.
    pub fn set_peers(&self, peers: Arc<Peers>) {
        let _ = self.peers.set(peers);
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close what held the ports of splices the module no longer has, and tell the
    /// peers that this proxy's own splices ended.
    fn reap(&self) {
        if self.kept().is_empty() {
            return;
        }
        // A splice kept after the listing was taken is not in it, and must not be
        // taken for ended.
        let listed_at = Instant::now();
        let live: std::collections::HashSet<u32> = match self.nl().list() {
            Ok(l) => l.into_iter().map(|e| e.id).collect(),
            Err(e) => {
                eprintln!("lzproxy: listing splices: {e}");
                return;
            }
        };
        let mut ended = Vec::new();
        // Dropping a kept entry closes its sockets; in repair mode that sends nothing.
        self.kept().retain(|id, k| {
            let keep = live.contains(id) || k.since >= listed_at;
            if !keep && !matches!(k.origin, Origin::Copy { .. }) {
                ended.push(*id);
            }
            keep
        });
        if let Some(p) = self.peers.get() {
            for id in ended {
                p.ended(id);
            }
        }
    }

    /// Every splice this proxy holds, for a full resync of the peers.
    pub fn states(&self) -> Vec<(u32, SpliceState)> {
        self.kept().iter().map(|(id, k)| (*id, k.state)).collect()
    }

    /// How many splices this proxy holds.
    pub fn held(&self) -> usize {
        self.kept().len()
    }

    /// Install (or refresh) a copy of peer `peer`'s splice `id`.
    pub fn install_copy(&self, peer: usize, id: u32, state: &SpliceState, generation: u32) {
        let shifts = TsShifts { to_backend: state.shifts[0], to_client: state.shifts[1] };
        let known = self.kept().iter().find(|(_, k)| matches!(k.origin, Origin::Copy { peer: p, id: i, .. } if p == peer && i == id)).map(|(l, k)| (*l, k.state));
        // The peer re-spliced it to another backend: the old copy goes first.
        let known = match known {
            Some((local, old)) if old != *state => {
                let _ = self.nl().abort(local);
                self.kept().remove(&local);
                None
            }
            k => k.map(|(l, _)| l),
        };
        if let Some(local) = known {
            // Installing the same splice again refreshes the kernel's copy, whose idle
            // clock would otherwise run out while it waits for a takeover.
            if let Err(e) = self.nl().install(&side_of(&state.client), &side_of(&state.backend), shifts) {
                eprintln!("lzproxy: refreshing the copy of peer splice {id}: {e}");
            }
            if let Some(k) = self.kept().get_mut(&local) {
                k.origin = Origin::Copy { peer, id, seen: generation };
            }
            return;
        }
        // Hold the backend connection's port first, so that nothing here connects
        // from it while the copy waits.
        let hold = match sockopt::reserve_port(endpoint(state.backend.local)) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("lzproxy: copy of peer splice {id}: cannot hold port {}: {e}", state.backend.local.port);
                return;
            }
        };
        let r = self.nl().install(&side_of(&state.client), &side_of(&state.backend), shifts);
        match r {
            Ok(local) => {
                self.kept().insert(local, Kept { _holds: vec![hold], state: *state, origin: Origin::Copy { peer, id, seen: generation }, since: Instant::now(), resume: None, boundary: false });
            }
            Err(e) => eprintln!("lzproxy: copy of peer splice {id}: {e}"),
        }
    }

    fn drop_copies(&self, pick: impl Fn(&Origin) -> bool) {
        let gone: Vec<u32> = self.kept().iter().filter(|(_, k)| pick(&k.origin)).map(|(id, _)| *id).collect();
        for id in gone {
            let _ = self.nl().abort(id);
            self.kept().remove(&id);
        }
    }

    /// Peer `peer`'s splice `id` has ended.
    pub fn drop_copy(&self, peer: usize, id: u32) {
        self.drop_copies(|o| matches!(*o, Origin::Copy { peer: p, id: i, .. } if p == peer && i == id));
    }

    /// A resync round of peer `peer` ended; `generation` is the stamp the copies it
    /// announced in that round carry. The others have ended without this proxy
    /// hearing of it. (Comparing for equality, not order, keeps this right when the
    /// peer's count starts again.)
    pub fn forget_stale_copies(&self, peer: usize, generation: u32) {
        self.drop_copies(|o| matches!(*o, Origin::Copy { peer: p, seen, .. } if p == peer && seen != generation));
    }

    /// This proxy took the service address over: its copies are its own splices now.
    pub fn adopt_copies(&self) -> usize {
        let mut n = 0;
        for k in self.kept().values_mut() {
            if let Origin::Copy { peer, id, .. } = k.origin {
                k.origin = Origin::Adopted { peer, id };
                n += 1;
            }
        }
        n
    }

    /// This proxy stands down (another active proxy ranks first): what it took over
    /// is a copy again, which the active proxy's next resync confirms or drops.
    /// Returns how many.
    pub fn return_adopted(&self, generation: u32) -> usize {
        let mut n = 0;
        for k in self.kept().values_mut() {
            if let Origin::Adopted { peer, id } = k.origin {
                k.origin = Origin::Copy { peer, id, seen: generation };
                n += 1;
            }
        }
        n
    }

    /// Splice `client` to `backend`, or say why not. On success the sockets belong
    /// to the splicer; on failure they are handed back, usable for relaying. With
    /// `resume`, the splice is made resumable (see [`crate::resume`]).
    /// `body_left` is how much of the response body is still to come, when the
    /// proxy read the response head: the connection's next request then comes
    /// back to the proxy (see [`Splicer::set_next_request`]).
    pub fn splice(&self, client: TcpStream, backend: TcpStream, resume: Option<Resume>, body_left: Option<u64>) -> Result<(), (TcpStream, TcpStream, NotSpliced)> {
        self.join(None, client, backend, resume, body_left)
    }

    /// Hand connections whose next request came back to the proxy to `serve`.
    pub fn set_next_request(&self, serve: Box<dyn Fn(TcpStream) + Send + Sync>) {
        let _ = self.next_request.set(serve);
    }

    /// Freeze, settle and splice a pair; `again` is the id under which `unsplice`
    /// left the client connection frozen, when this is a re-splice.
    fn join(
        &self,
        again: Option<u32>,
        mut client: TcpStream,
        mut backend: TcpStream,
        mut resume: Option<Resume>,
        body_left: Option<u64>,
    ) -> Result<(), (TcpStream, TcpStream, NotSpliced)> {
        let ends_of = |c: &TcpStream, b: &TcpStream| -> Result<_, NotSpliced> { Ok((ends(c)?, ends(b)?)) };
        let (c_ends, b_ends) = match ends_of(&client, &backend) {
            Ok(x) => x,
            Err(e) => return Err((client, backend, e)),
        };
        // The request must be acknowledged before the freeze, or the settle would
        // wait for an ACK that may ride on a held data segment.
        let start = Instant::now();
        while sockopt::unacked(&backend).unwrap_or(1) > 0 {
            if start.elapsed() > SETTLE_LIMIT {
                return Err((client, backend, NotSpliced::Unsettled("the backend did not acknowledge the request")));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let frozen = match again {
            None => self.nl().pre_splice(c_ends, b_ends),
            Some(id) => self.nl().pre_splice_again(id, c_ends, b_ends).map(|()| id),
        };
        let id = match frozen {
            Ok(id) => id,
            Err(e) => return Err((client, backend, NotSpliced::Kernel("pre-splice", e))),
        };
        let boundary = body_left.is_some() && self.next_request.get().is_some();
        match self.settle_and_splice(id, &mut client, &mut backend, [c_ends, b_ends], &mut resume, body_left.filter(|_| boundary)) {
            Ok(state) => {
                self.counts.spliced.fetch_add(1, Ordering::Relaxed);
                self.kept().insert(id, Kept { _holds: vec![client.into(), backend.into()], state, origin: Origin::Own, since: Instant::now(), resume, boundary });
                if let Some(p) = self.peers.get() {
                    p.announce(id, &state);
                }
                Ok(())
            }
            Err(e) => {
                let _ = client.set_write_timeout(None);
                let _ = backend.set_write_timeout(None);
                let _ = sockopt::leave_repair(&client);
                let _ = sockopt::leave_repair(&backend);
                // Undo the freeze: the held segments go to the sockets again.
                let _ = self.nl().abort(id);
                Err((client, backend, e))
            }
        }
    }

    fn settle_and_splice(
        &self,
        id: u32,
        client: &mut TcpStream,
        backend: &mut TcpStream,
        [c_ends, b_ends]: [(SocketAddrV4, SocketAddrV4); 2],
        resume: &mut Option<Resume>,
        body_left: Option<u64>,
    ) -> Result<SpliceState, NotSpliced> {
        // A peer that stops taking bytes while settling must not hang the proxy.
        for s in [&*client, &*backend] {
            s.set_write_timeout(Some(SETTLE_LIMIT)).map_err(|e| NotSpliced::Io("write timeout", e))?;
        }
        let start = Instant::now();
        let mut passed = 0u64;
        loop {
            // Response bytes the proxy passes on itself belong to a resumable
            // splice's prefix: the kernel's digest starts after them.
            // With a response end, client bytes are the next request, which is
            // routed on its own: never passed to this backend.
            if body_left.is_some() && sockopt::unread(client).map_err(|e| NotSpliced::Io("SIOCINQ", e))? > 0 {
                return Err(NotSpliced::EarlyRequest(passed));
            }
            let up = if body_left.is_some() { 0 } else { drain(client, backend, None)? };
            let down = drain(backend, client, resume.as_mut().map(|r| &mut r.prefix))?;
            passed += down;
            self.counts.settle_bytes.fetch_add(up + down, Ordering::Relaxed);
            if resume.as_ref().is_some_and(|r| r.prefix.len() > resume::PREFIX_MAX) {
                *resume = None;
            }
            let q = |s: &TcpStream| -> Result<usize, NotSpliced> {
                Ok(sockopt::unread(s).map_err(|e| NotSpliced::Io("SIOCINQ", e))? + sockopt::unacked(s).map_err(|e| NotSpliced::Io("SIOCOUTQ", e))?)
            };
            if q(client)? == 0 && q(backend)? == 0 {
                break;
            }
            if start.elapsed() > SETTLE_LIMIT {
                return Err(NotSpliced::Unsettled("bytes stayed unacknowledged"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        sockopt::enter_repair(client).map_err(|e| NotSpliced::Io("TCP_REPAIR on the client socket", e))?;
        sockopt::enter_repair(backend).map_err(|e| NotSpliced::Io("TCP_REPAIR on the backend socket", e))?;
        let c = sockopt::snapshot(client).map_err(|e| NotSpliced::Io("reading the client socket", e))?;
        let b = sockopt::snapshot(backend).map_err(|e| NotSpliced::Io("reading the backend socket", e))?;
        let side = |(local, remote): (SocketAddrV4, SocketAddrV4), s: sockopt::Snapshot| SpliceSide {
            local,
            remote,
            snd_nxt: s.snd_nxt,
            rcv_nxt: s.rcv_nxt,
            peer_wscale: s.peer_wscale,
            own_wscale: s.own_wscale,
            ts_now: s.ts_now,
            sack: s.sack,
        };
        let (cs, bs) = (side(c_ends, c), side(b_ends, b));
        // More than the rest of the body passed: not the response the head told of.
        let response_end = body_left.and_then(|left| left.checked_sub(passed));
        let shifts = self.nl().splice(id, &cs, &bs, resume.is_some(), response_end).map_err(|e| NotSpliced::Kernel("splice", e))?;
        Ok(SpliceState { client: side_state(&cs), backend: side_state(&bs), shifts: [shifts.to_backend, shifts.to_client] })
    }

    /// Find the splices whose next request waits for this proxy (the response is
    /// done) and take each connection back.
    fn take_back_requests(&self) {
        if !self.kept().values().any(|k| k.boundary) {
            return;
        }
        // A small status request each time; the listing only when a splice became
        // ready since the last look.
        let Ok(now) = self.nl().status().map(|s| s.next_ready) else { return };
        if self.next_ready_seen.swap(now, Ordering::Relaxed) == now {
            return;
        }
        let ready: Vec<u32> = match self.nl().list() {
            Ok(l) => l.into_iter().filter(|e| e.next_request == 2).map(|e| e.id).collect(),
            Err(_) => return,
        };
        for id in ready {
            if let Err(why) = self.take_back(id) {
                eprintln!("lzproxy: splice {id}: next request: {why}");
            }
        }
    }

    /// The response of splice `id` is done and the client sent its next request,
    /// which the module holds: take the splice apart, rebuild the client
    /// connection at its numbers, reset the backend connection (its response is
    /// over), and let the held request reach the rebuilt socket, which then goes
    /// through routing like a new connection.
    fn take_back(&self, id: u32) -> Result<(), String> {
        let kept = {
            let mut k = self.kept();
            match k.get(&id) {
                Some(e) if e.boundary && e.origin == Origin::Own => k.remove(&id),
                _ => None,
            }
        };
        let Some(kept) = kept else { return Ok(()) };
        if let Some(p) = self.peers.get() {
            p.ended(id);
        }
        let Kept { _holds: holds, state, .. } = kept;
        let mut socks = holds.into_iter().map(TcpStream::from);
        let (Some(old_client), Some(old_backend)) = (socks.next(), socks.next()) else {
            let _ = self.nl().abort(id);
            return Err("no sockets kept".into());
        };
        let read = |s: &TcpStream| sockopt::repair_mss_and_window(s).map_err(|e| format!("reading a socket: {e}"));
        let ((c_mss, c_wnd), (b_mss, b_wnd)) = match (read(&old_client), read(&old_backend)) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => {
                let _ = self.nl().abort(id);
                return Err(e);
            }
        };
        let (point, _flags) = self.nl().unsplice(id).map_err(|e| format!("unsplice: {e}"))?;
        let (c, b) = (&state.client, &state.backend);
        drop(old_client);
        let client = match sockopt::rebuild(&rebuild_at(c, point.acked, 0, (c_mss, c_wnd), client_ts_start(c, &point), point.client_window)) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.nl().abort(id);
                return Err(format!("rebuilding the client connection: {e}"));
            }
        };
        // The backend connection ends with a reset at exactly the number the
        // backend expects (a reset is exempt from the timestamp check).
        drop(old_backend);
        if let Ok(s) = sockopt::rebuild(&rebuild_at(b, point.client_sent, point.sent, (b_mss, b_wnd), b.ts_now, point.client_window)) {
            sockopt::reset(s);
        }
        // The held request goes to the rebuilt socket.
        let _ = self.nl().abort(id);
        self.counts.taken_back.fetch_add(1, Ordering::Relaxed);
        match self.next_request.get() {
            Some(serve) => serve(client),
            None => sockopt::reset(client),
        }
        Ok(())
    }

    /// Backend `down` failed: carry each of this proxy's splices on it on
    /// elsewhere, or reset its client, each in a thread of its own (a replay waits
    /// on a backend).
    pub fn backend_failed(self: &Arc<Self>, down: SocketAddr, health: Arc<Health>, via: Connector) {
        let ids: Vec<u32> = self
            .kept()
            .iter()
            .filter(|(_, k)| k.origin == Origin::Own && SocketAddr::V4(endpoint(k.state.backend.remote)) == down)
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            eprintln!("lzproxy: backend {down} failed under {} splice(s)", ids.len());
        }
        for id in ids {
            let (me, health) = (self.clone(), health.clone());
            let spawned = std::thread::Builder::new().stack_size(512 * 1024).spawn(move || me.resume_one(id, down, &health, &via));
            if let Err(e) = spawned {
                eprintln!("lzproxy: no thread to resume splice {id}: {e}");
            }
        }
    }

    fn resume_one(&self, id: u32, down: SocketAddr, health: &Health, via: &Connector) {
        match self.try_resume(id, down, health, via) {
            Ok(()) => {
                self.counts.resumed.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.counts.resume_failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("lzproxy: splice {id}: the client connection is reset: {why}");
            }
        }
    }

    fn try_resume(&self, id: u32, down: SocketAddr, health: &Health, via: &Connector) -> Result<(), String> {
        // Out of the table of kept splices for the whole resume: the reaper must not
        // take the frozen client connection for an ended splice.
        let Some(kept) = self.kept().remove(&id) else {
            return Err("the splice ended meanwhile".into());
        };
        let ended = |why: String| {
            if let Some(p) = self.peers.get() {
                p.ended(id);
            }
            why
        };
        let Kept { _holds: holds, state, resume, .. } = kept;
        // The old client socket stays open, silent in repair mode, until the
        // rebuilt one replaces it: meanwhile it absorbs the client's ACKs, which
        // would otherwise meet no socket and draw a reset from the stack.
        let Some(old_client) = holds.into_iter().next().map(TcpStream::from) else {
            let _ = self.nl().abort(id);
            return Err(ended("no client socket kept".into()));
        };
        let (mss, rcv_wnd) = match sockopt::repair_mss_and_window(&old_client) {
            Ok(x) => x,
            Err(e) => {
                let _ = self.nl().abort(id);
                return Err(ended(format!("reading the client socket: {e}")));
            }
        };
        let (point, flags) = self.nl().unsplice(id).map_err(|e| ended(format!("unsplice: {e}")))?;
        let c = &state.client;
        // The client connection rebuilt with the next byte to send at `offset` into
        // the response (the old socket is closed first: the 4-tuple must be free).
        let rebuild = |old: TcpStream, offset: u64| {
            drop(old);
            sockopt::rebuild(&rebuild_at(c, offset, point.client_sent, (mss, rcv_wnd), client_ts_start(c, &point), point.client_window))
        };
        // A reset at the end of what was sent: the client takes it if it has all of
        // it, and otherwise answers with an ACK that the stack, finding no socket
        // any more, answers with a reset it takes.
        let reset = |old: TcpStream, why: String| {
            let _ = self.nl().abort(id);
            if let Ok(s) = rebuild(old, point.sent) {
                sockopt::reset(s);
            }
            ended(why)
        };
        let Some(resume) = resume else {
            return Err(reset(old_client, "its route's requests may not be replayed (not idempotent, or a body the proxy did not hold)".into()));
        };
        if let Err(e) = point.check(flags) {
            return Err(reset(old_client, format!("cannot replay: {}", e.as_str())));
        }
        let replayed = match resume::replay(&resume, &point, down, health, via) {
            Ok(r) => r,
            Err(why) => return Err(reset(old_client, format!("replay: {why}"))),
        };
        let mut client = match rebuild(old_client, point.acked) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.nl().abort(id);
                return Err(ended(format!("rebuilding the client connection: {e}")));
            }
        };
        let _ = client.set_nodelay(true);
        let sent = client.set_write_timeout(Some(SETTLE_LIMIT)).and_then(|()| client.write_all(&replayed.tail));
        if let Err(e) = sent {
            let _ = self.nl().abort(id);
            sockopt::reset(client);
            return Err(ended(format!("sending the replayed bytes: {e}")));
        }
        let _ = client.set_write_timeout(None);
        eprintln!(
            "lzproxy: splice {id}: replayed on {} ({} body bytes checked{}, {} sent again from the client's acknowledgment)",
            replayed.backend.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            resume.prefix.len() as u64 + point.hashed,
            if point.ahead_end > point.ahead_start {
                format!(" and {} past a hole", point.ahead_end - point.ahead_start)
            } else {
                String::new()
            },
            replayed.tail.len()
        );
        // A connection is resumed once: its body before this splice is no longer
        // all at hand.
        match self.join(Some(id), client, replayed.backend, None, None) {
            Ok(()) => Ok(()),
            Err((client, backend, why)) => {
                // Still a good connection: relay it rather than lose it.
                eprintln!("lzproxy: splice {id}: relaying the resumed connection: {why}");
                self.counts.relayed.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.peers.get() {
                    p.ended(id);
                }
                crate::relay::relay(client, backend);
                Ok(())
            }
        }
    }
}

/// The numbers to rebuild one connection of a splice at: the next byte to send
/// `snd` bytes past its splice point and the next expected `rcv` past it, with the
/// MSS and window read from the socket it replaces (`mss_wnd`) and the peer's
/// latest window.
fn rebuild_at(side: &Side, snd: u64, rcv: u64, mss_wnd: (u32, u32), ts_start: Option<u32>, peer_window: u32) -> sockopt::Rebuild {
    let (mss, rcv_wnd) = mss_wnd;
    sockopt::Rebuild {
        local: endpoint(side.local),
        remote: endpoint(side.remote),
        snd_nxt: side.snd_nxt.0.wrapping_add(snd as u32),
        rcv_nxt: side.rcv_nxt.0.wrapping_add(rcv as u32),
        mss,
        peer_wscale: side.peer_wscale,
        own_wscale: side.own_wscale,
        sack: side.sack,
        ts_start,
        snd_wnd: peer_window.max(mss),
        rcv_wnd,
    }
}

/// A rebuilt client connection's timestamps go on from the latest value the client
/// saw, so that its PAWS check passes.
fn client_ts_start(c: &Side, point: &ResumePoint) -> Option<u32> {
    c.ts_now.map(|now| point.to_client_tsval.unwrap_or(now).wrapping_add(1))
}

fn endpoint(e: Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(e.addr.into(), e.port)
}

fn side_of(s: &Side) -> SpliceSide {
    SpliceSide {
        local: endpoint(s.local),
        remote: endpoint(s.remote),
        snd_nxt: s.snd_nxt.0,
        rcv_nxt: s.rcv_nxt.0,
        peer_wscale: s.peer_wscale,
        own_wscale: s.own_wscale,
        ts_now: s.ts_now,
        sack: s.sack,
    }
}

fn side_state(s: &SpliceSide) -> Side {
    let ep = |a: SocketAddrV4| Endpoint { addr: a.ip().octets(), port: a.port() };
    Side {
        local: ep(s.local),
        remote: ep(s.remote),
        snd_nxt: Seq(s.snd_nxt),
        rcv_nxt: Seq(s.rcv_nxt),
        peer_wscale: s.peer_wscale,
        own_wscale: s.own_wscale,
        ts_now: s.ts_now,
        sack: s.sack,
    }
}
