//! The proxies of a cluster: one active proxy holds the service address; the others
//! stand by with a copy of every splice it holds, and the first of them to notice its
//! heartbeats stop takes the address over. Spliced connections then go on through
//! the new active proxy's kernel, which forwards them from the copied state alone
//! (CRAFT's distributed splice state, with address takeover as the front).
//!
//! The channel is UDP between the proxies' own addresses, each datagram sealed with
//! the cluster key (`lazarus_proto::auth`): a forged, altered, replayed or truncated
//! datagram is refused and counted, never acted on. See `lazarus_proto::proxypeer`
//! for what is said on it.
//!
//! What is not covered: connections the failed proxy had accepted but not spliced
//! yet (they were only in its sockets), and a splice made in the last heartbeat
//! before the failure whose announcement was lost.

use crate::config::Cluster;
use crate::splicer::Splicer;
use lazarus_proto::auth::{Key, Reject, Replay, Sequencer, TRAILER_LEN};
use lazarus_proto::proxypeer::{Msg, MAX_LEN};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the active proxy sends its whole splice state again.
const RESYNC: Duration = Duration::from_secs(1);
/// Refusal log lines per second at most.
const REFUSAL_LOG_BURST: u64 = 5;

/// Datagrams refused, by reason.
#[derive(Default)]
pub struct Refused {
    pub truncated: AtomicU64,
    pub forged: AtomicU64,
    pub replayed: AtomicU64,
    pub stale: AtomicU64,
    pub unknown_sender: AtomicU64,
    pub malformed: AtomicU64,
}

struct PeerState {
    addr: Ipv4Addr,
    role: u8,
    replay: Replay,
    last_beat: Option<Instant>,
    active: bool,
    boot: Option<u32>,
}

pub struct Peers {
    cfg: Cluster,
    key: Key,
    sock: UdpSocket,
    role: u8,
    boot: u32,
    seq: Mutex<Sequencer>,
    peers: Mutex<Vec<PeerState>>,
    active: AtomicBool,
    generation: AtomicU32,
    splicer: Weak<Splicer>,
    pub refused: Refused,
    /// The second (high bits) and the lines logged in it (low 16 bits).
    log_window: AtomicU64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The role byte a node's datagrams are sealed with: its rank among all the nodes'
/// names, so that no node can pass another's datagrams off as its own, nor reflect a
/// node's datagram back to it.
fn rank(all: &[&str], name: &str) -> u8 {
    let mut names = all.to_vec();
    names.sort_unstable();
    names.iter().position(|n| *n == name).map_or(0, |i| i as u8 + 1)
}

impl Peers {
    /// Bind the channel and start the receive and heartbeat threads. The proxy starts
    /// as a standby and becomes active if no active peer speaks up within
    /// `missed_beats` intervals.
    pub fn start(cfg: Cluster, splicer: &Arc<Splicer>) -> Result<Arc<Peers>, String> {
        let key = Key::new(&cfg.key).ok_or("the cluster key must have 16 to 64 bytes")?;
        let mut names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        names.push(&cfg.name);
        let role = rank(&names, &cfg.name);
        let peers = cfg
            .peers
            .iter()
            .map(|p| PeerState { addr: p.addr, role: rank(&names, &p.name), replay: Replay::default(), last_beat: None, active: false, boot: None })
            .collect();
        let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port)).map_err(|e| format!("peer channel port {}: {e}", cfg.port))?;
        let p = Arc::new(Peers {
            key,
            sock,
            role,
            boot: (now_ns() / 1_000_000) as u32,
            seq: Mutex::new(Sequencer::default()),
            peers: Mutex::new(peers),
            active: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            splicer: Arc::downgrade(splicer),
            refused: Refused::default(),
            log_window: AtomicU64::new(0),
            cfg,
        });
        // A proxy starts as a standby: an address left over from an earlier run (a
        // crash, a restart) would make two hosts answer for it.
        p.release(splicer);
        let rx = p.clone();
        std::thread::Builder::new().name("peer-rx".into()).spawn(move || rx.receive()).map_err(|e| e.to_string())?;
        let tick = p.clone();
        std::thread::Builder::new().name("peer-tick".into()).spawn(move || tick.tick()).map_err(|e| e.to_string())?;
        Ok(p)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn send_to(&self, addr: Ipv4Addr, msg: &Msg) {
        let mut buf = [0u8; MAX_LEN + TRAILER_LEN];
        let Some(n) = msg.encode(&mut buf) else { return };
        let seq = self.seq.lock().map(|mut s| s.next(now_ns())).unwrap_or(0);
        if let Some(n) = self.key.seal(&mut buf, n, self.role, seq) {
            let _ = self.sock.send_to(&buf[..n], SocketAddrV4::new(addr, self.cfg.port));
        }
    }

    fn broadcast(&self, msg: &Msg) {
        let addrs: Vec<Ipv4Addr> = self.peers.lock().map(|p| p.iter().map(|p| p.addr).collect()).unwrap_or_default();
        for a in addrs {
            self.send_to(a, msg);
        }
    }

    /// A splice this proxy just made (or holds): tell the standbys.
    pub fn announce(&self, id: u32, state: &lazarus_proto::proxypeer::SpliceState) {
        if self.is_active() {
            self.broadcast(&Msg::Splice { origin: id, state: *state });
        }
    }

    /// A splice this proxy held has ended.
    pub fn ended(&self, id: u32) {
        if self.is_active() {
            self.broadcast(&Msg::End { origin: id });
        }
    }

    fn receive(self: Arc<Self>) {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => continue,
            };
            let SocketAddr::V4(from) = from else { continue };
            let now = now_ns();
            // Who sent it decides which role its tag must carry.
            let opened = {
                let Ok(mut peers) = self.peers.lock() else { return };
                let Some(i) = peers.iter().position(|p| p.addr == *from.ip()) else {
                    self.refused.unknown_sender.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let p = &mut peers[i];
                match self.key.open(&buf[..n], p.role).and_then(|(m, seq)| p.replay.accept(seq, now).map(|()| m.len())) {
                    Ok(len) => Ok((i, len)),
                    Err(e) => Err(e),
                }
            };
            let (i, len) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let c = match e {
                        Reject::Truncated => &self.refused.truncated,
                        Reject::Forged => &self.refused.forged,
                        Reject::Replayed => &self.refused.replayed,
                        Reject::Stale => &self.refused.stale,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    self.log_refusal(format_args!("peer datagram from {from} refused: {e:?}"));
                    continue;
                }
            };
            match Msg::decode(&buf[..len]) {
                Ok(m) => self.handle(i, m),
                Err(e) => {
                    self.refused.malformed.fetch_add(1, Ordering::Relaxed);
                    self.log_refusal(format_args!("peer message from {from} refused: {}", e.as_str()));
                }
            }
        }
    }

    /// Log a refusal, at most [`REFUSAL_LOG_BURST`] lines a second: whoever can send
    /// datagrams to the port must not be able to flood the log. The counters count
    /// every one.
    fn log_refusal(&self, what: std::fmt::Arguments<'_>) {
        let second = now_ns() / 1_000_000_000;
        let window = self.log_window.load(Ordering::Relaxed);
        if window >> 16 != second & 0xffff_ffff_ffff {
            self.log_window.store((second & 0xffff_ffff_ffff) << 16, Ordering::Relaxed);
        } else if window & 0xffff >= REFUSAL_LOG_BURST {
            return;
        }
        self.log_window.fetch_add(1, Ordering::Relaxed);
        eprintln!("lzproxy: {what}");
    }

    fn handle(&self, i: usize, m: Msg) {
        let Some(splicer) = self.splicer.upgrade() else { return };
        match m {
            Msg::Beat { active, boot, .. } => {
                let (restarted, lower_name_active, newly_active) = {
                    let Ok(mut peers) = self.peers.lock() else { return };
                    let p = &mut peers[i];
                    p.last_beat = Some(Instant::now());
                    let newly_active = active && !p.active;
                    p.active = active;
                    let restarted = p.boot != Some(boot);
                    p.boot = Some(boot);
                    (restarted, active && p.role < self.role, newly_active)
                };
                // Two active proxies (they started together, or a standby took a
                // stall of this proxy for a failure): the one whose name sorts first
                // keeps the address.
                if lower_name_active && self.is_active() {
                    eprintln!("lzproxy: peer {} is active too and ranks first: standing by", self.cfg.peers[i].name);
                    self.release(&splicer);
                } else if newly_active && self.is_active() {
                    // The other one announced the address and drew the traffic to
                    // itself; it is standing down, so draw the traffic back.
                    eprintln!("lzproxy: peer {} claimed {} too and ranks after this proxy: announcing it again", self.cfg.peers[i].name, self.cfg.vip);
                    self.announce_vip();
                }
                if restarted && self.is_active() {
                    self.resync(&splicer);
                }
            }
            // Copies are kept only while standing by: the active proxy's own table is
            // the truth.
            Msg::Splice { origin, state } if !self.is_active() => {
                // A peer's splice has the service address at both of the proxy's
                // ends; anything else would rewrite other connections of this host.
                let vip = self.cfg.vip.octets();
                if state.client.local.addr != vip || state.backend.local.addr != vip {
                    self.refused.malformed.fetch_add(1, Ordering::Relaxed);
                    self.log_refusal(format_args!("peer splice {origin} refused: not on the service address {}", self.cfg.vip));
                    return;
                }
                splicer.install_copy(i, origin, &state, self.generation.load(Ordering::Relaxed));
            }
            Msg::End { origin } if !self.is_active() => splicer.drop_copy(i, origin),
            Msg::SyncDone { generation, .. } if !self.is_active() => {
                let g = self.generation.swap(generation, Ordering::Relaxed);
                if g != generation {
                    splicer.forget_stale_copies(i, g);
                }
            }
            _ => {}
        }
    }

    fn resync(&self, splicer: &Splicer) {
        let states = splicer.states();
        let count = states.len() as u32;
        for (id, s) in states {
            self.broadcast(&Msg::Splice { origin: id, state: s });
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.broadcast(&Msg::SyncDone { generation, count });
    }

    fn tick(self: Arc<Self>) {
        let hb = self.cfg.heartbeat;
        let started = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let Some(splicer) = self.splicer.upgrade() else { return };
            let active = self.is_active();
            self.broadcast(&Msg::Beat { active, boot: self.boot, splices: splicer.held() as u32 });
            if active && last_sync.elapsed() >= RESYNC {
                self.resync(&splicer);
                last_sync = Instant::now();
            }
            if !active && started.elapsed() >= hb * self.cfg.missed_beats {
                let limit = hb * self.cfg.missed_beats;
                let someone_active = self
                    .peers
                    .lock()
                    .map(|p| p.iter().any(|p| p.active && p.last_beat.is_some_and(|t| t.elapsed() < limit)))
                    .unwrap_or(true);
                if !someone_active {
                    self.take_over(&splicer);
                }
            }
            drop(splicer);
            std::thread::sleep(hb);
        }
    }

    /// Become the active proxy: hold the service address and announce it.
    fn take_over(&self, splicer: &Splicer) {
        let vip = self.cfg.vip;
        let out = std::process::Command::new("ip").args(["addr", "replace", &format!("{vip}/32"), "dev", &self.cfg.dev]).output();
        if let Err(e) = out.as_ref().map_err(|e| e.to_string()).and_then(|o| if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }) {
            eprintln!("lzproxy: cannot add {vip} to {}: {e}", self.cfg.dev);
            return;
        }
        self.active.store(true, Ordering::Relaxed);
        let copies = splicer.adopt_copies();
        self.announce_vip();
        eprintln!("lzproxy: active: holding {vip} on {} ({copies} spliced connection(s) taken over)", self.cfg.dev);
    }

    /// Gratuitous ARP for the service address: three announcements a little apart,
    /// as a lost one would leave hosts sending to the other proxy until their ARP
    /// entries age out.
    fn announce_vip(&self) {
        let vip = self.cfg.vip;
        for n in 0..3 {
            if n > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Err(e) = crate::garp::announce(&self.cfg.dev, vip) {
                eprintln!("lzproxy: announcing {vip}: {e}");
            }
        }
    }

    /// Stand down: give the address up, and turn what was taken over back into
    /// copies of the active proxy's splices.
    fn release(&self, splicer: &Splicer) {
        self.active.store(false, Ordering::Relaxed);
        let _ = std::process::Command::new("ip").args(["addr", "del", &format!("{}/32", self.cfg.vip), "dev", &self.cfg.dev]).output();
        let n = splicer.return_adopted(self.generation.load(Ordering::Relaxed));
        if n > 0 {
            eprintln!("lzproxy: {n} connection(s) taken over are copies again");
        }
    }
}
