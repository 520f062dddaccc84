//! Carrying a spliced connection on after its backend failed (CRAFT's re-splice).
//!
//! For a request on an `idempotent` route, the proxy waits for the response head
//! before it splices, passes the head on itself, and asks the module to make the
//! splice resumable: the kernel then keeps a SHA-256 of the response body bytes it
//! forwards and follows the client's acknowledgments. When the health probes mark
//! the backend down, the proxy
//!
//! 1. takes the splice apart (`unsplice`): the client connection stays frozen and
//!    the kernel reports how far the body went (forwarded, digested, acknowledged)
//!    and whether the client sent anything after the request;
//! 2. rebuilds its client socket in TCP repair mode at the client's numbers (the
//!    next byte to send is the first one the client did not acknowledge);
//! 3. replays the request to another backend of the route, checks that the new
//!    response has the same status and length, that its body starts with the bytes
//!    the proxy passed on itself (compared byte for byte) and continues with bytes
//!    whose digest is the kernel's;
//! 4. sends the client the bytes from its acknowledgment on, and splices the new
//!    backend connection to the rebuilt client connection.
//!
//! Bytes forwarded past a hole (a segment lost on its way from the failed backend)
//! have a digest of their own, checked the same way; the client may hold them out
//! of order, and the bytes resent from its acknowledgment on fill the hole.
//!
//! Anything that does not hold (the client sent more, bytes past a second hole,
//! another response) resets the client connection: a client may lose a connection,
//! never receive wrong bytes.

use crate::sockopt;
use lazarus_proto::http::{parse_response_head, ResponseHead};
use lazarus_proto::sha256::Sha256;
use lazarus_proto::splice::digest64;
use lazarus_proto::splice::ResumePoint;
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Body bytes the proxy may pass on itself before a resumable splice and keep for
/// the comparison; a response whose head came with more is spliced unresumable.
pub const PREFIX_MAX: usize = 256 * 1024;
/// Longest response head the proxy reads before a resumable splice.
pub const RESPONSE_HEAD_MAX: usize = 16 * 1024;
/// How long a replay may take (connect, head, and the bytes to check). The module
/// thaws a frozen connection after 10 s, so a replay must be done before.
const REPLAY_LIMIT: Duration = Duration::from_secs(8);

/// What a resumable splice keeps for a replay elsewhere.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The request as the client sent it (head and any body that came with it).
    pub request: Vec<u8>,
    /// The route's backends, in the order the request tried them.
    pub backends: Vec<SocketAddr>,
    /// The first response's status and length.
    pub status: u16,
    pub content_length: Option<u64>,
    /// Body bytes the proxy passed on itself before the splice: the kernel's digest
    /// covers the body after them.
    pub prefix: Vec<u8>,
}

/// How the proxy reaches a backend: from the service address in a cluster (so that
/// whichever proxy holds it receives the replies), with a timeout per attempt.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    pub vip: Option<Ipv4Addr>,
    pub timeout: Duration,
}

impl Connector {
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match (self.vip, addr) {
            (Some(vip), SocketAddr::V4(a)) => sockopt::connect_from(vip, a, self.timeout),
            _ => TcpStream::connect_timeout(&addr, self.timeout),
        }
    }
}

/// Read a response head from `backend` (within `deadline`). Returns the head and
/// every byte read (the head, then what came after it); on failure, why and the
/// bytes read so far, which belong to the client all the same.
pub fn read_response_head(backend: &mut TcpStream, deadline: Instant) -> Result<(ResponseHead, Vec<u8>), (String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(("no response head in time".into(), buf));
        }
        if let Err(e) = backend.set_read_timeout(Some(left)) {
            return Err((e.to_string(), buf));
        }
        let n = match backend.read(&mut chunk) {
            Ok(0) => return Err(("the backend closed before its response head".into(), buf)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err((format!("reading the response head: {e}"), buf)),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_response_head(&buf, RESPONSE_HEAD_MAX) {
            Ok(None) => continue,
            Ok(Some(h)) => {
                let _ = backend.set_read_timeout(None);
                return Ok((h, buf));
            }
            Err(e) => {
                let _ = backend.set_read_timeout(None);
                return Err((format!("response head: {}", e.as_str()), buf));
            }
        }
    }
}

/// What a replay got: the new backend connection, and the body bytes the client
/// still needs that the proxy already read (from its acknowledgment on).
pub struct Replayed {
    pub backend: TcpStream,
    pub tail: Vec<u8>,
}

/// Replay `r`'s request to the route's backends other than `down`, and check the
/// new response against what the client already has (`point`, from the kernel).
pub fn replay(r: &Resume, point: &ResumePoint, down: SocketAddr, health: &Health, via: &Connector) -> Result<Replayed, String> {
    let deadline = Instant::now() + REPLAY_LIMIT;
    let mut last = String::from("no other backend on the route");
    for &addr in r.backends.iter().filter(|&&a| a != down && !health.is_down(a)) {
        let mut backend = match via.connect(addr) {
            Ok(b) => b,
            Err(e) => {
                last = format!("backend {addr}: {e}");
                continue;
            }
        };
        let _ = backend.set_nodelay(true);
        if let Err(e) = backend.write_all(&r.request) {
            last = format!("backend {addr}: sending the request: {e}");
            continue;
        }
        // From here on a failure is the response's, not the backend's reachability:
        // another backend would not do better with a response that differs.
        return check_response(r, point, backend, deadline).map_err(|e| format!("backend {addr}: {e}"));
    }
    Err(last)
}

fn check_response(r: &Resume, point: &ResumePoint, mut backend: TcpStream, deadline: Instant) -> Result<Replayed, String> {
    let (head, mut read) = read_response_head(&mut backend, deadline).map_err(|(why, _)| why)?;
    let mut body = read.split_off(head.head_len);
    if head.status != r.status || head.content_length != r.content_length || head.transfer_encoding {
        return Err(format!(
            "another response (status {} length {:?}, the first was {} length {:?})",
            head.status, head.content_length, r.status, r.content_length
        ));
    }
    // The body up to what the client may have: the proxy's own prefix, then the
    // bytes the kernel digested (in order, and a run past a hole if there is one).
    let ahead = point.ahead_start..point.ahead_end;
    let need = r.prefix.len() + point.hashed.max(ahead.end) as usize;
    let mut chunk = vec![0u8; 65536];
    while body.len() < need {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("only {} of the {need} body bytes to check arrived in time", body.len()));
        }
        backend.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match backend.read(&mut chunk) {
            Ok(0) => return Err(format!("the response ended after {} of the {need} body bytes to check", body.len())),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    backend.set_read_timeout(None).map_err(|e| e.to_string())?;
    if body[..r.prefix.len()] != r.prefix[..] {
        return Err("the body's first bytes differ from what the client has".into());
    }
    let at = |offset: u64| r.prefix.len() + offset as usize;
    let mut d = Sha256::new();
    d.update(&body[at(0)..at(point.hashed)]);
    if digest64(d) != point.digest {
        return Err(format!("the {} body bytes the client may have differ (digest mismatch)", point.hashed));
    }
    if !ahead.is_empty() {
        let mut d = Sha256::new();
        d.update(&body[at(ahead.start)..at(ahead.end)]);
        if digest64(d) != point.ahead_digest {
            return Err(format!("the body bytes {ahead:?} the client may hold past a hole differ (digest mismatch)"));
        }
    }
    // The client cannot have acknowledged bytes it was never sent; a point that
    // says so is not one to resume from.
    let in_order = if !ahead.is_empty() && ahead.start == point.hashed { ahead.end } else { point.hashed };
    if point.acked > in_order {
        return Err(format!("the client acknowledged {} bytes of {in_order} forwarded in order", point.acked));
    }
    let from = r.prefix.len() + point.acked as usize;
    Ok(Replayed { backend, tail: body.split_off(from) })
}

/// The backends' health, from TCP connect probes.
#[derive(Default)]
pub struct Health {
    down: Mutex<HashSet<SocketAddr>>,
}

impl Health {
    pub fn is_down(&self, a: SocketAddr) -> bool {
        self.down.lock().map(|d| d.contains(&a)).unwrap_or(false)
    }

    /// Probe each backend every `interval` (a connect that must succeed within the
    /// interval); `misses` failures in a row mark it down and call `on_down` once.
    pub fn start(backends: Vec<SocketAddr>, interval: Duration, misses: u32, on_down: Arc<dyn Fn(SocketAddr) + Send + Sync>) -> Arc<Health> {
        let h = Arc::new(Health::default());
        for addr in backends {
            let (h, on_down) = (h.clone(), on_down.clone());
            let spawned = std::thread::Builder::new().name("health".into()).spawn(move || {
                let mut missed = 0u32;
                loop {
                    let started = Instant::now();
                    if TcpStream::connect_timeout(&addr, interval).is_ok() {
                        missed = 0;
                        if h.down.lock().map(|mut d| d.remove(&addr)).unwrap_or(false) {
                            eprintln!("lzproxy: backend {addr} is up again");
                        }
                    } else {
                        missed = missed.saturating_add(1);
                        if missed == misses {
                            eprintln!("lzproxy: backend {addr} is down ({misses} probes failed)");
                            if let Ok(mut d) = h.down.lock() {
                                d.insert(addr);
                            }
                            on_down(addr);
                        }
                    }
                    std::thread::sleep(interval.saturating_sub(started.elapsed()));
                }
            });
            if let Err(e) = spawned {
                eprintln!("lzproxy: no health probe for {addr}: {e}");
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const BODY_LEN: usize = 5000;

    fn body() -> Vec<u8> {
        (0..BODY_LEN as u32).map(|i| (i * 7 + (i >> 8)) as u8).collect()
    }

    fn digest(bytes: &[u8]) -> u64 {
        let mut d = Sha256::new();
        d.update(bytes);
        digest64(d)
    }

    /// A backend that answers one connection with `body` behind a 200 head.
    fn backend_with(body: Vec<u8>) -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        });
        TcpStream::connect(addr).unwrap()
    }

    fn resume(prefix: usize) -> Resume {
        Resume {
            request: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            backends: vec![],
            status: 200,
            content_length: Some(BODY_LEN as u64),
            prefix: body()[..prefix].to_vec(),
        }
    }

    /// The kernel's view after forwarding body bytes `[p, p+hashed)` in order and
    /// `ahead` past a hole, of `served` (what the failed backend sent).
    fn point(served: &[u8], p: usize, hashed: usize, ahead: Option<(usize, usize)>, acked: usize) -> ResumePoint {
        let (s, e) = ahead.unwrap_or((0, 0));
        ResumePoint {
            resumable: true,
            hashed: hashed as u64,
            sent: hashed.max(e) as u64,
            acked: acked as u64,
            digest: digest(&served[p..p + hashed]),
            ahead_start: s as u64,
            ahead_end: e as u64,
            ahead_digest: if e > s { digest(&served[p + s..p + e]) } else { 0 },
            ..ResumePoint::default()
        }
    }

    /// The bytes to send the client start at its acknowledgment (`from`) and reach
    /// at least `checked`, as far as they were read.
    fn assert_tail(ok: &Replayed, body: &[u8], from: usize, checked: usize) {
        assert!(from + ok.tail.len() >= checked, "{} bytes from {from}", ok.tail.len());
        assert!(ok.tail[..] == body[from..from + ok.tail.len()], "the bytes from {from} differ");
    }

    fn check(r: &Resume, pt: &ResumePoint, replayed: Vec<u8>) -> Result<Replayed, String> {
        check_response(r, pt, backend_with(replayed), Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn a_replay_with_the_same_bytes_resumes_from_the_acknowledgment() {
        let b = body();
        let r = resume(100);
        let pt = point(&b, 100, 1000, None, 600);
        let ok = check(&r, &pt, b.clone()).unwrap();
        assert_tail(&ok, &b, 100 + 600, 100 + 1000);
    }

    #[test]
    fn a_run_past_a_hole_is_checked_on_its_own() {
        let b = body();
        let r = resume(0);
        // [0, 800) in order, [800, 900) lost, [900, 2000) forwarded past it.
        let pt = point(&b, 0, 800, Some((900, 2000)), 800);
        let ok = check(&r, &pt, b.clone()).unwrap();
        assert_tail(&ok, &b, 800, 2000);
        // The same place with other bytes in the run: refused.
        let mut other = b.clone();
        other[1500] ^= 1;
        let e = check(&r, &pt, other).err().unwrap();
        assert!(e.contains("past a hole differ"), "{e}");
        // A hole filled later: the prefix meets the run, and the client may have
        // acknowledged into it.
        let pt = point(&b, 0, 900, Some((900, 2000)), 1500);
        assert_tail(&check(&r, &pt, b.clone()).unwrap(), &b, 1500, 2000);
        // But not past bytes that never reached it in order.
        let pt = point(&b, 0, 800, Some((900, 2000)), 1500);
        let e = check(&r, &pt, b.clone()).err().unwrap();
        assert!(e.contains("acknowledged 1500"), "{e}");
    }

    #[test]
    fn a_replay_that_differs_anywhere_the_client_may_have_is_refused() {
        let b = body();
        let r = resume(100);
        let pt = point(&b, 100, 1000, None, 0);
        for at in [0usize, 99, 100, 1099] {
            let mut other = b.clone();
            other[at] ^= 0x40;
            assert!(check(&r, &pt, other).is_err(), "a change at {at} passed");
        }
        // A byte past what the client may have is none of its business.
        let mut other = b.clone();
        other[1100] ^= 0x40;
        assert!(check(&r, &pt, other).is_ok());
        // Another length is another response.
        let e = check(&r, &pt, b[..4000].to_vec()).err().unwrap();
        assert!(e.contains("another response"), "{e}");
    }
}
