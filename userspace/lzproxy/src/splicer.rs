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

use crate::sockopt;
use lznl::{SpliceClient, SpliceSide};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the sockets may take to settle before the proxy relays instead.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// How often the reaper looks for ended splices.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

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
}

impl std::fmt::Display for NotSpliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSpliced::NotIpv4 => write!(f, "not IPv4"),
            NotSpliced::Kernel(step, e) => write!(f, "{step}: {e}"),
            NotSpliced::Unsettled(why) => write!(f, "not settled: {why}"),
            NotSpliced::Io(step, e) => write!(f, "{step}: {e}"),
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
}

pub struct Splicer {
    nl: Mutex<SpliceClient>,
    /// The sockets of live splices, by splice id.
    retired: Mutex<HashMap<u32, (TcpStream, TcpStream)>>,
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

/// Move whatever `from` has ready to `to`; the byte count, or an error when `from`
/// has ended (EOF) or failed.
fn drain(from: &mut TcpStream, to: &mut TcpStream) -> Result<u64, NotSpliced> {
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
        moved += got as u64;
    }
}

impl Splicer {
    pub fn new() -> Result<Arc<Self>, lznl::Error> {
        let s = Arc::new(Splicer { nl: Mutex::new(SpliceClient::connect()?), retired: Mutex::new(HashMap::new()), counts: Counts::default() });
        let reaper = Arc::downgrade(&s);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                while let Some(s) = reaper.upgrade() {
                    s.reap();
                    drop(s);
                    std::thread::sleep(REAP_INTERVAL);
                }
            })
            .map_err(|e| lznl::Error::Netlink(format!("reaper thread: {e}")))?;
        Ok(s)
    }

    fn nl(&self) -> std::sync::MutexGuard<'_, SpliceClient> {
        // A panic elsewhere while holding the lock leaves the client usable.
        self.nl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close the sockets of splices the module no longer has.
    fn reap(&self) {
        if self.retired.lock().map(|r| r.is_empty()).unwrap_or(true) {
            return;
        }
        let live: Vec<u32> = match self.nl().list() {
            Ok(l) => l.into_iter().map(|e| e.id).collect(),
            Err(e) => {
                eprintln!("lzproxy: listing splices: {e}");
                return;
            }
        };
        if let Ok(mut r) = self.retired.lock() {
            // Dropping the streams closes them; in repair mode that sends nothing.
            r.retain(|id, _| live.contains(id));
        }
    }

    /// Splice `client` to `backend`, or say why not. On success the sockets belong
    /// to the splicer; on failure they are handed back, usable for relaying.
    pub fn splice(&self, mut client: TcpStream, mut backend: TcpStream) -> Result<(), (TcpStream, TcpStream, NotSpliced)> {
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
        let id = match self.nl().pre_splice(c_ends, b_ends) {
            Ok(id) => id,
            Err(e) => return Err((client, backend, NotSpliced::Kernel("pre-splice", e))),
        };
        match self.settle_and_splice(id, &mut client, &mut backend, c_ends, b_ends) {
            Ok(()) => {
                self.counts.spliced.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut r) = self.retired.lock() {
                    r.insert(id, (client, backend));
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
        c_ends: (SocketAddrV4, SocketAddrV4),
        b_ends: (SocketAddrV4, SocketAddrV4),
    ) -> Result<(), NotSpliced> {
        // A peer that stops taking bytes while settling must not hang the proxy.
        for s in [&*client, &*backend] {
            s.set_write_timeout(Some(SETTLE_LIMIT)).map_err(|e| NotSpliced::Io("write timeout", e))?;
        }
        let start = Instant::now();
        loop {
            let moved = drain(client, backend)? + drain(backend, client)?;
            self.counts.settle_bytes.fetch_add(moved, Ordering::Relaxed);
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
        self.nl().splice(id, &side(c_ends, c), &side(b_ends, b)).map_err(|e| NotSpliced::Kernel("splice", e))
    }
}
