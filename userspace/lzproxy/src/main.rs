//! lzproxy: the Lazarus L7 proxy. It accepts HTTP/1.x clients, reads each request's
//! head, picks a backend by Host and path, connects and sends the request, and then
//! hands both connections to the `lazarus_splice` module, which forwards the rest of
//! the connection in the kernel. Without the module (or with `splice = false`) it
//! relays in userspace, which is also the baseline the benchmarks compare against.

mod config;
mod garp;
mod peer;
mod relay;
mod route;
mod sockopt;
mod splicer;

use clap::Parser;
use lazarus_proto::http::{parse_request_head, HeadError, Limits, Parsed};
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
}

fn respond_error(client: &mut TcpStream, status: u16, reason: &str) {
    let body = format!("{status} {reason}\n");
    let msg = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = client.write_all(msg.as_bytes());
    let _ = client.shutdown(std::net::Shutdown::Write);
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
    fn read_head(&self, client: &mut TcpStream) -> Result<(Vec<u8>, Option<route::Pick>), Refusal> {
        let limits = Limits { max_head: self.config.proxy.max_head_bytes, ..Limits::default() };
        // A deadline for the whole head, not each read: a client trickling a byte at
        // a time must not hold a connection slot for ever.
        let deadline = std::time::Instant::now() + self.config.proxy.header_timeout;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Refusal::TimedOut);
            }
            client.set_read_timeout(Some(left)).map_err(|_| Refusal::Vanished)?;
            let n = match client.read(&mut chunk) {
                Ok(0) => return Err(Refusal::Vanished),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(Refusal::TimedOut),
                Err(_) => return Err(Refusal::Vanished),
            };
            buf.extend_from_slice(&chunk[..n]);
            match parse_request_head(&buf, &limits) {
                Ok(Parsed::Incomplete) => continue,
                Ok(Parsed::Complete(head)) => {
                    let pick = self.router.pick(head.host, head.path);
                    return Ok((buf, pick));
                }
                Err(e) => return Err(Refusal::Head(e)),
            }
        }
    }

    fn connect(&self, pick: &route::Pick) -> Option<TcpStream> {
        let timeout = self.config.proxy.connect_timeout;
        for addr in &pick.backends {
            // In a cluster the backend connection starts at the service address too,
            // so that whichever proxy holds the address receives both connections.
            let r = match (&self.config.cluster, addr) {
                (Some(c), std::net::SocketAddr::V4(a)) => sockopt::connect_from(c.vip, *a, timeout),
                _ => TcpStream::connect_timeout(addr, timeout),
            };
            match r {
                Ok(s) => return Some(s),
                Err(e) => eprintln!("lzproxy: backend {addr}: {e}"),
            }
        }
        None
    }

    fn serve(&self, mut client: TcpStream) {
        let (request, pick) = match self.read_head(&mut client) {
            Ok(x) => x,
            Err(Refusal::Head(e)) => return respond_error(&mut client, e.status(), e.reason()),
            Err(Refusal::TimedOut) => return respond_error(&mut client, 408, "Request Timeout"),
            Err(_) => return,
        };
        let refusal = match pick {
            None => Refusal::NoRoute,
            Some(pick) => match self.connect(&pick) {
                None => Refusal::NoBackend,
                Some(backend) => return self.forward(client, backend, &request),
            },
        };
        match refusal {
            Refusal::NoRoute => respond_error(&mut client, 404, "Not Found"),
            _ => respond_error(&mut client, 502, "Bad Gateway"),
        }
    }

    fn forward(&self, client: TcpStream, mut backend: TcpStream, request: &[u8]) {
        let _ = client.set_read_timeout(None);
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        if backend.write_all(request).is_err() {
            let mut client = client;
            return respond_error(&mut client, 502, "Bad Gateway");
        }
        let (client, backend) = match &self.splicer {
            Some(s) => match s.splice(client, backend) {
                Ok(()) => return,
                Err((c, b, why)) => {
                    eprintln!("lzproxy: relaying instead of splicing: {why}");
                    s.counts.relayed.fetch_add(1, Ordering::Relaxed);
                    (c, b)
                }
            },
            None => (client, backend),
        };
        relay::relay(client, backend);
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
    eprintln!(
        "lzproxy: listening on {} ({}; {} routes)",
        config.proxy.listen,
        if splicer.is_some() { "splicing" } else { "relaying" },
        router.len()
    );
    let proxy = Arc::new(Proxy { router, config, splicer, active: AtomicUsize::new(0) });
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
        proxy.active.fetch_add(1, Ordering::Relaxed);
        let p = proxy.clone();
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            p.serve(client);
            p.active.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            eprintln!("lzproxy: no thread for a connection: {e}");
            proxy.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
