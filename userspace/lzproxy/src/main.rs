//! lzproxy: the Lazarus L7 proxy. It accepts HTTP/1.x clients, reads each request's
//! head, picks a backend by Host and path, connects and sends the request, and then
//! hands both connections to the `lazarus_splice` module, which forwards the rest of
//! the connection in the kernel. Without the module (or with `splice = false`) it
//! relays in userspace, which is also the baseline the benchmarks compare against.

mod config;
mod garp;
mod peer;
mod relay;
mod resume;
mod route;
mod sockopt;
mod splicer;

use clap::Parser;
use lazarus_proto::http::{parse_request_head, BodyKind, HeadError, Limits, Parsed};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Lazarus L7 proxy with in-kernel TCP splicing")]
struct Args {
    /// The proxy's configuration file.
    #[arg(long, short, default_value = "/etc/lazarus/lzproxy.toml")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

struct Proxy {
    config: config::Config,
    router: route::Router,
    splicer: Option<Arc<splicer::Splicer>>,
    active: AtomicUsize,
    via: resume::Connector,
    health: Arc<resume::Health>,
}

fn respond_error(client: &mut TcpStream, status: u16, reason: &str) {
    let body = format!("{status} {reason}\n");
    let msg = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = client.write_all(msg.as_bytes());
    let _ = client.shutdown(std::net::Shutdown::Write);
}

/// A request as read from the client.
struct Request {
    /// The head, and whatever of the body came with it.
    bytes: Vec<u8>,
    /// The body (if any) came whole with the head, and nothing after it.
    whole: bool,
    /// A HEAD request: its response has no body whatever its Content-Length says.
    head_only: bool,
}

/// Why a client got no backend.
enum Refusal {
    Head(HeadError),
    Vanished,
    TimedOut,
    NoRoute,
    NoBackend,
}

impl Proxy {
    /// Read a request head (and whatever body bytes came with it).
    /// Returns the bytes read, the route's pick, whether the request's body (if
    /// any) came whole with the head, and whether it is a HEAD request.
    fn read_head(&self, client: &mut TcpStream) -> Result<(Vec<u8>, Option<route::Pick>, bool, bool), Refusal> {
        let limits = Limits { max_head: self.config.proxy.max_head_bytes, ..Limits::default() };
        // A deadline for the whole head, not each read: a client trickling a byte at
        // a time must not hold a connection slot for ever.
        let deadline = std::time::Instant::now() + self.config.proxy.header_timeout;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(if buf.is_empty() { Refusal::Vanished } else { Refusal::TimedOut });
            }
            client.set_read_timeout(Some(left)).map_err(|_| Refusal::Vanished)?;
            let n = match client.read(&mut chunk) {
                Ok(0) => return Err(Refusal::Vanished),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Nothing at all within the timeout: an idle connection (a
                // keep-alive one between requests) is closed without a word; half
                // a head gets 408.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(if buf.is_empty() { Refusal::Vanished } else { Refusal::TimedOut })
                }
                Err(_) => return Err(Refusal::Vanished),
            };
            buf.extend_from_slice(&chunk[..n]);
            match parse_request_head(&buf, &limits) {
                Ok(Parsed::Incomplete) => continue,
                Ok(Parsed::Complete(head)) => {
                    let pick = self.router.pick(head.host, head.path);
                    // The body (if any) came whole with the head, and nothing after it:
                    // a request sent along with it (pipelined) goes to the same
                    // backend, with the rest of the connection.
                    let after_head = (buf.len() - head.head_len) as u64;
                    let whole = match head.body_kind() {
                        BodyKind::None => after_head == 0,
                        BodyKind::Length(n) => after_head == n,
                        BodyKind::Chunked => false,
                    };
                    let head_only = head.method.as_bytes() == b"HEAD";
                    return Ok((buf, pick, whole, head_only));
                }
                Err(e) => return Err(Refusal::Head(e)),
            }
        }
    }

    fn connect(&self, pick: &route::Pick) -> Option<TcpStream> {
        // Backends the probes marked down are tried last, not skipped: a probe can
        // be wrong, and a connect attempt costs little.
        let (up, down): (Vec<&std::net::SocketAddr>, Vec<_>) = pick.backends.iter().partition(|&&a| !self.health.is_down(a));
        for addr in up.into_iter().chain(down) {
            match self.via.connect(*addr) {
                Ok(s) => return Some(s),
                Err(e) => eprintln!("lzproxy: backend {addr}: {e}"),
            }
        }
        None
    }

    /// Serve `client` on a thread of its own, counted in `active` meanwhile.
    fn spawn_serve(self: &Arc<Self>, client: TcpStream) {
        self.active.fetch_add(1, Ordering::Relaxed);
        let p = self.clone();
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            p.serve(client);
            p.active.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            eprintln!("lzproxy: no thread for a connection: {e}");
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Serve a connection's requests: each is routed and forwarded, until one is
    /// spliced or relayed for good (or the client goes).
    fn serve(&self, client: TcpStream) {
        let mut next = Some(client);
        while let Some(client) = next {
            next = self.serve_one(client);
        }
    }

    /// Serve one request; returns the connection when the proxy is to read the next
    /// request on it itself.
    fn serve_one(&self, mut client: TcpStream) -> Option<TcpStream> {
        let (request, pick, whole, head_only) = match self.read_head(&mut client) {
            Ok(x) => x,
            Err(Refusal::Head(e)) => {
                respond_error(&mut client, e.status(), e.reason());
                return None;
            }
            Err(Refusal::TimedOut) => {
                respond_error(&mut client, 408, "Request Timeout");
                return None;
            }
            Err(_) => return None,
        };
        let refusal = match pick {
            None => Refusal::NoRoute,
            Some(pick) => match self.connect(&pick) {
                None => Refusal::NoBackend,
                Some(backend) => {
                    // Only a request the proxy holds whole can be replayed elsewhere.
                    let replayable = (pick.idempotent && whole).then_some(pick.backends);
                    return self.forward(client, backend, Request { bytes: request, whole, head_only }, replayable);
                }
            },
        };
        match refusal {
            Refusal::NoRoute => respond_error(&mut client, 404, "Not Found"),
            _ => respond_error(&mut client, 502, "Bad Gateway"),
        }
        None
    }

    /// Forward a request and what follows; returns the connection when its next
    /// request is for the proxy to read.
    fn forward(&self, mut client: TcpStream, mut backend: TcpStream, request: Request, replayable: Option<Vec<std::net::SocketAddr>>) -> Option<TcpStream> {
        let _ = client.set_read_timeout(None);
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        if backend.write_all(&request.bytes).is_err() {
            respond_error(&mut client, 502, "Bad Gateway");
            return None;
        }
        // For a request it holds whole, the proxy passes the response head on
        // itself and splices the body: it then knows where the response ends (so
        // that the next request of the connection comes back to it for routing),
        // and a resumable splice's digest covers the body alone, which another
        // backend must reproduce (headers such as Date may differ).
        let mut resume = None;
        let mut body_left = None;
        if self.splicer.is_some() && request.whole {
            let deadline = std::time::Instant::now() + self.config.proxy.header_timeout;
            let (head, mut read) = match resume::read_response_head(&mut backend, deadline) {
                Ok((head, read)) => (Some(head), read),
                Err((why, read)) => {
                    eprintln!("lzproxy: splicing without reading the response head: {why}");
                    (None, read)
                }
            };
            // Whatever was read is the client's.
            if client.write_all(&read).is_err() {
                return None;
            }
            if let Some(h) = head.filter(|h| h.status >= 200 && !h.transfer_encoding) {
                let passed = (read.len() - h.head_len) as u64;
                let body = if request.head_only || h.status == 204 || h.status == 304 { Some(0) } else { h.content_length };
                body_left = body.and_then(|n| n.checked_sub(passed));
                if body_left == Some(0) {
                    // The whole response went through the proxy already: nothing to
                    // splice. The backend connection ends here and the client's
                    // next request (if any) is served like a new connection's.
                    drop(backend);
                    return Some(client);
                }
                if let Some(backends) = replayable.filter(|_| passed as usize <= resume::PREFIX_MAX) {
                    resume = Some(resume::Resume {
                        request: request.bytes,
                        backends,
                        status: h.status,
                        content_length: h.content_length,
                        prefix: read.split_off(h.head_len),
                    });
                }
            }
        }
        let (client, backend) = match &self.splicer {
            Some(s) => match s.splice(client, backend, resume, body_left) {
                Ok(()) => return None,
                Err((c, b, splicer::NotSpliced::EarlyRequest(passed))) => {
                    // The rest of this response in userspace, then the next
                    // request as on a new connection.
                    let left = body_left.unwrap_or(0).saturating_sub(passed);
                    return relay::copy_exact(b, &c, left).is_ok().then_some(c);
                }
                Err((c, b, why)) => {
                    eprintln!("lzproxy: relaying instead of splicing: {why}");
                    s.counts.relayed.fetch_add(1, Ordering::Relaxed);
                    (c, b)
                }
            },
            None => (client, backend),
        };
        relay::relay(client, backend);
        None
    }
}

fn main() {
    let args = Args::parse();
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lzproxy: {e}");
            std::process::exit(2);
        }
    };
    if args.check {
        println!("{}: ok ({} routes, {} backends)", args.config.display(), config.routes.len(), config.backends.len());
        return;
    }
    let splicer = if config.proxy.splice {
        match splicer::Splicer::new() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("lzproxy: splicing is configured but unavailable: {e}");
                std::process::exit(3);
            }
        }
    } else {
        None
    };
    let listener = match (&config.cluster, config.proxy.listen) {
        // A standby listens on the service address before it holds it.
        (Some(_), std::net::SocketAddr::V4(a)) => sockopt::listen_freebind(a),
        _ => TcpListener::bind(config.proxy.listen),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lzproxy: listen on {}: {e}", config.proxy.listen);
            std::process::exit(3);
        }
    };
    if let (Some(c), Some(s)) = (&config.cluster, &splicer) {
        match peer::Peers::start(c.clone(), s) {
            Ok(p) => s.set_peers(p),
            Err(e) => {
                eprintln!("lzproxy: {e}");
                std::process::exit(3);
            }
        }
    }
    let router = route::Router::new(&config);
    // The probes' callback needs the health table the probes fill.
    let health_slot: Arc<std::sync::OnceLock<Arc<resume::Health>>> = Arc::new(std::sync::OnceLock::new());
    eprintln!(
        "lzproxy: listening on {} ({}; {} routes)",
        config.proxy.listen,
        if splicer.is_some() { "splicing" } else { "relaying" },
        router.len()
    );
    let via = resume::Connector { vip: config.cluster.as_ref().map(|c| c.vip), timeout: config.proxy.connect_timeout };
    let health = match config.proxy.health_interval {
        Some(every) => {
            let mut backends: Vec<std::net::SocketAddr> = config.backends.iter().map(|b| b.addr).collect();
            backends.dedup();
            // A failed backend's resumable splices are replayed elsewhere.
            let on_down: Arc<dyn Fn(std::net::SocketAddr) + Send + Sync> = match &splicer {
                Some(s) => {
                    let (s, slot) = (Arc::downgrade(s), health_slot.clone());
                    Arc::new(move |down| {
                        if let (Some(s), Some(h)) = (s.upgrade(), slot.get()) {
                            s.backend_failed(down, h.clone(), via);
                        }
                    })
                }
                None => Arc::new(|_| {}),
            };
            resume::Health::start(backends, every, config.proxy.health_misses, on_down)
        }
        None => Arc::new(resume::Health::default()),
    };
    let _ = health_slot.set(health.clone());
    let proxy = Arc::new(Proxy { router, config, splicer, active: AtomicUsize::new(0), via, health });
    if let Some(s) = &proxy.splicer {
        // A spliced connection whose next request came back is served like a new
        // one.
        let p = Arc::downgrade(&proxy);
        s.set_next_request(Box::new(move |client| {
            if let Some(p) = p.upgrade() {
                p.spawn_serve(client);
            }
        }));
    }
    for conn in listener.incoming() {
        let mut client = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lzproxy: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if proxy.active.load(Ordering::Relaxed) >= proxy.config.proxy.max_connections {
            respond_error(&mut client, 503, "Service Unavailable");
            continue;
        }
        proxy.spawn_serve(client);
    }
}
