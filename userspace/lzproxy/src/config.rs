//! The proxy's configuration file: where it listens, the backends, and which
//! requests go to which of them.
//!
//! ```toml
//! [proxy]
//! listen = "10.77.0.100:80"     # address the proxy accepts clients on
//! splice = true                 # optional, default true; false relays in userspace only
//! header_timeout_ms = 5000      # optional; a client must send its request head within this
//! connect_timeout_ms = 2000     # optional; per backend tried
//! max_head_bytes = 16384        # optional; 1024..=1048576
//! max_connections = 4096        # optional; 1..=1000000
//! health_interval_ms = 1000     # optional; how often each backend is probed (0: never)
//! health_misses = 3             # optional; failed probes in a row that mark a backend down
//!
//! [[backend]]
//! name = "b1"
//! addr = "10.77.0.21:8080"
//!
//! [[backend]]
//! name = "b2"
//! addr = "10.77.0.22:8080"
//!
//! [[route]]
//! host = "static.example"       # optional; matches Host without its port, ignoring case
//! path_prefix = "/static/"      # optional, default "/"; a plain byte prefix of the path
//! backends = ["b1", "b2"]       # taken in turn, the others in order as fallbacks
//! idempotent = true             # optional, default false: may a failed request be retried elsewhere
//! ```
//!
//! A request takes the most specific route that matches: one with a host before one
//! without, then the longest prefix. Errors name the file, the line and the field.

use lazarus_proto::http::host_without_port;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Bounds of the `_ms` timeouts: a zero timeout would fail every connection, and
/// beyond ten minutes a stuck client or backend is indistinguishable from a leak.
const TIMEOUT_MS: (i64, i64) = (1, 600_000);
/// Bounds of `max_head_bytes`: no real request head fits in less than 1 KiB, and
/// every connection may buffer this much before it is routed.
const MAX_HEAD_BYTES: (i64, i64) = (1024, 1_048_576);
/// Bounds of `health_interval_ms` (besides 0, which turns the probes off).
const HEALTH_INTERVAL_MS: (i64, i64) = (10, 60_000);
/// Bounds of `health_misses`.
const HEALTH_MISSES: (i64, i64) = (1, 100);
/// Bounds of `max_connections`.
const MAX_CONNECTIONS: (i64, i64) = (1, 1_000_000);

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy: Proxy,
    /// Present when this proxy is one of several sharing the service address.
    pub cluster: Option<Cluster>,
    pub backends: Vec<Backend>,
    /// In file order; [`crate::route::Pick::route`] indexes this.
    pub routes: Vec<Route>,
}

/// The `[proxy]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub listen: SocketAddr,
    /// Splice client and backend in the kernel; false relays through userspace.
    pub splice: bool,
    pub header_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_connections: usize,
    /// How often each backend is probed (a TCP connect); `None`: never.
    pub health_interval: Option<Duration>,
    /// Failed probes in a row that mark a backend down.
    pub health_misses: u32,
}

/// The `[cluster]` table and its `[[peer]]`s: proxies that replicate their splices to
/// each other and take the service address over from a failed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This proxy's name.
    pub name: String,
    /// The service address: `proxy.listen`'s, held by the active proxy.
    pub vip: std::net::Ipv4Addr,
    /// The interface the address lives on.
    pub dev: String,
    /// UDP port of the peer channel, on every proxy.
    pub port: u16,
    pub heartbeat: Duration,
    /// Heartbeats a standby misses before it takes over.
    pub missed_beats: u32,
    /// The cluster key (16 to 64 bytes).
    pub key: Vec<u8>,
    pub peers: Vec<Peer>,
}

/// A `[[peer]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: std::net::Ipv4Addr,
}

/// A `[[backend]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

/// A `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lowercase, without a port; `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: String,
    /// Indices into [`Config::backends`], in the order the route lists them; never
    /// empty, no index twice.
    pub backends: Vec<usize>,
    /// A request that failed on one backend may be sent to the next.
    pub idempotent: bool,
}

/// Why a configuration was refused: where, which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or whatever `parse` was told the text came from).
    pub origin: String,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {line}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: RawProxy,
    cluster: Option<RawCluster>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<String>,
    splice: Option<bool>,
    header_timeout_ms: Option<Spanned<i64>>,
    connect_timeout_ms: Option<Spanned<i64>>,
    max_head_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    health_interval_ms: Option<Spanned<i64>>,
    health_misses: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    vip: Spanned<String>,
    dev: Spanned<String>,
    port: Option<Spanned<i64>>,
    heartbeat_ms: Option<Spanned<i64>>,
    missed_beats: Option<Spanned<i64>>,
    key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    addr: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Spanned<String>,
    addr: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    backends: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    idempotent: bool,
}

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: None,
        message: e.to_string(),
    })?;
    parse(&text, &origin)
}

/// Validate a configuration; `origin` names it in errors (usually the file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let err = |offset: Option<usize>, message: String| ConfigError {
        origin: origin.to_string(),
        line: offset.map(|o| line_of(text, o)),
        message,
    };
    let at = |offset: usize, message: String| err(Some(offset), message);
    let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.span().map(|s| s.start), e.message().to_string()))?;

    let p = &raw.proxy;
    let listen = p.listen.get_ref().parse().map_err(|_| {
        at(
            p.listen.span().start,
            format!("proxy.listen: \"{}\" is not an address and port such as \"10.77.0.100:80\"", p.listen.get_ref()),
        )
    })?;
    let bounded = |v: &Option<Spanned<i64>>, field: &str, (lo, hi): (i64, i64), default: i64| match v {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(at(v.span().start, format!("proxy.{field}: {} is outside {lo}..={hi}", v.get_ref()))),
    };
    // The bounds are positive and fit every target's usize, so the casts are exact.
    let proxy = Proxy {
        listen,
        splice: p.splice.unwrap_or(true),
        header_timeout: ms(bounded(&p.header_timeout_ms, "header_timeout_ms", TIMEOUT_MS, 5000)?),
        connect_timeout: ms(bounded(&p.connect_timeout_ms, "connect_timeout_ms", TIMEOUT_MS, 2000)?),
        max_head_bytes: bounded(&p.max_head_bytes, "max_head_bytes", MAX_HEAD_BYTES, 16384)? as usize,
        max_connections: bounded(&p.max_connections, "max_connections", MAX_CONNECTIONS, 4096)? as usize,
        health_interval: match &p.health_interval_ms {
            Some(v) if *v.get_ref() == 0 => None,
            v => Some(ms(bounded(v, "health_interval_ms", HEALTH_INTERVAL_MS, 1000)?)),
        },
        health_misses: bounded(&p.health_misses, "health_misses", HEALTH_MISSES, 3)? as u32,
    };

    let mut backends: Vec<Backend> = Vec::new();
    for b in &raw.backend {
        let name = b.name.get_ref();
        let name_at = b.name.span().start;
        if name.is_empty() {
            return Err(at(name_at, "backend.name: empty".into()));
        }
        if backends.iter().any(|o| &o.name == name) {
            return Err(at(name_at, format!("backend.name: \"{name}\" is used twice")));
        }
        let addr: SocketAddr = b.addr.get_ref().parse().map_err(|_| {
            at(
                b.addr.span().start,
                format!(
                    "backend.addr: \"{}\" is not an address and port such as \"10.77.0.21:8080\"",
                    b.addr.get_ref()
                ),
            )
        })?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(at(
                b.addr.span().start,
                format!("backend.addr: {addr} is not an address a connection can go to"),
            ));
        }
        backends.push(Backend { name: name.clone(), addr });
    }

    let mut routes: Vec<Route> = Vec::new();
    for r in &raw.route {
        let host = match &r.host {
            None => None,
            Some(h) => Some(route_host(h.get_ref()).map_err(|m| at(h.span().start, format!("route.host: {m}")))?),
        };
        let path_prefix = match &r.path_prefix {
            None => "/".to_string(),
            Some(p) => {
                check_prefix(p.get_ref()).map_err(|m| at(p.span().start, format!("route.path_prefix: {m}")))?;
                p.get_ref().clone()
            }
        };
        // Where the route is: its first field in the file.
        let route_at = [r.host.as_ref().map(|h| h.span().start), r.path_prefix.as_ref().map(|p| p.span().start)]
            .into_iter()
            .flatten()
            .chain([r.backends.span().start])
            .min()
            .unwrap_or(0);
        if r.backends.get_ref().is_empty() {
            return Err(at(
                r.backends.span().start,
                "route.backends: empty; a route needs at least one backend".into(),
            ));
        }
        let mut picked: Vec<usize> = Vec::new();
        for name in r.backends.get_ref() {
            let i = backends.iter().position(|b| &b.name == name.get_ref()).ok_or_else(|| {
                let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                at(
                    name.span().start,
                    format!(
                        "route.backends: no backend is named \"{}\" (backends: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                )
            })?;
            if picked.contains(&i) {
                return Err(at(name.span().start, format!("route.backends: \"{}\" is listed twice", name.get_ref())));
            }
            picked.push(i);
        }
        if let Some(n) = routes.iter().position(|o| o.host == host && o.path_prefix == path_prefix) {
            return Err(at(
                route_at,
                format!(
                    "route: host {} and path_prefix \"{path_prefix}\" are route {}'s too",
                    host.as_deref().map_or("(any)".to_string(), |h| format!("\"{h}\"")),
                    n + 1
                ),
            ));
        }
        routes.push(Route { host, path_prefix, backends: picked, idempotent: r.idempotent });
    }
    if routes.is_empty() {
        return Err(err(None, "no [[route]]: the proxy would have nowhere to send a request".into()));
    }
    let cluster = match &raw.cluster {
        None if !raw.peer.is_empty() => return Err(err(None, "[[peer]] without [cluster]".into())),
        None => None,
        Some(c) => Some(cluster(c, &raw.peer, &proxy, origin, &at)?),
    };
    Ok(Config { proxy, cluster, backends, routes })
}

/// Bounds of the peer channel's heartbeat interval.
const HEARTBEAT_MS: (i64, i64) = (10, 10_000);
/// Bounds of the heartbeats missed before a takeover: one missed beat is too easily
/// a scheduling hiccup.
const MISSED_BEATS: (i64, i64) = (2, 100);

fn cluster(
    c: &RawCluster,
    peers: &[RawPeer],
    proxy: &Proxy,
    origin: &str,
    at: &dyn Fn(usize, String) -> ConfigError,
) -> Result<Cluster, ConfigError> {
    let ip = |s: &Spanned<String>, field: &str| -> Result<std::net::Ipv4Addr, ConfigError> {
        s.get_ref().parse().map_err(|_| at(s.span().start, format!("{field}: \"{}\" is not an IPv4 address", s.get_ref())))
    };
    if !proxy.splice {
        return Err(at(c.name.span().start, "cluster: needs proxy.splice = true (the proxies replicate splices)".into()));
    }
    let vip = ip(&c.vip, "cluster.vip")?;
    if proxy.listen.ip() != std::net::IpAddr::V4(vip) {
        return Err(at(c.vip.span().start, format!("cluster.vip: {vip} is not proxy.listen's address ({})", proxy.listen.ip())));
    }
    if c.dev.get_ref().is_empty() || c.dev.get_ref().len() > 15 {
        return Err(at(c.dev.span().start, "cluster.dev: not an interface name (1 to 15 characters)".into()));
    }
    let port = match &c.port {
        None => lazarus_proto::proxypeer::DEFAULT_PORT,
        Some(p) => u16::try_from(*p.get_ref())
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| at(p.span().start, format!("cluster.port: {} is not a port", p.get_ref())))?,
    };
    let heartbeat = match &c.heartbeat_ms {
        None => 200,
        Some(v) if (HEARTBEAT_MS.0..=HEARTBEAT_MS.1).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => return Err(at(v.span().start, format!("cluster.heartbeat_ms: {} is outside 10..=10000", v.get_ref()))),
    };
    let missed_beats = match &c.missed_beats {
        None => 3,
        Some(v) if (MISSED_BEATS.0..=MISSED_BEATS.1).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => return Err(at(v.span().start, format!("cluster.missed_beats: {} is outside 2..=100", v.get_ref()))),
    };
    // A relative key file is next to the configuration.
    let key_path = Path::new(origin).parent().unwrap_or(Path::new(".")).join(c.key_file.get_ref());
    // Read as lazarusd reads it: owner-only, surrounding whitespace of a text key ignored.
    let key = lznl::ClusterKey::from_secret_file(&key_path)
        .map_err(|e| at(c.key_file.span().start, format!("cluster.key_file: {e}")))?
        .bytes()
        .to_vec();
    let mut out: Vec<Peer> = Vec::new();
    for p in peers {
        let name = p.name.get_ref();
        if name == c.name.get_ref() || out.iter().any(|o| &o.name == name) {
            return Err(at(p.name.span().start, format!("peer.name: \"{name}\" is used twice")));
        }
        out.push(Peer { name: name.clone(), addr: ip(&p.addr, "peer.addr")? });
    }
    if out.is_empty() {
        return Err(at(c.name.span().start, "cluster: no [[peer]]; a cluster needs another proxy".into()));
    }
    Ok(Cluster {
        name: c.name.get_ref().clone(),
        vip,
        dev: c.dev.get_ref().clone(),
        port,
        heartbeat: ms(heartbeat),
        missed_beats,
        key,
        peers: out,
    })
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v.unsigned_abs())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A route's host: a DNS name or an IP literal, without a port; lowercased, since a
/// request's Host is compared ignoring case.
fn route_host(h: &str) -> Result<String, String> {
    let b = h.as_bytes();
    if b.is_empty() {
        return Err("empty; leave host out to match any host".into());
    }
    if host_without_port(b).len() != b.len() {
        return Err(format!("\"{h}\" has a port; routes match the host without it"));
    }
    let literal = b.starts_with(b"[") && b.ends_with(b"]");
    let ok = if literal {
        b[1..b.len() - 1].iter().all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
    } else {
        b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
    };
    if !ok {
        return Err(format!("\"{h}\" is not a host name or IP address"));
    }
    Ok(h.to_ascii_lowercase())
}

/// A path prefix must be able to match a request path: those start with `/` and are
/// visible ASCII up to the query.
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("\"{p}\" does not start with '/'"));
    }
    if let Some(c) = p.chars().find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#') {
        return Err(format!("\"{p}\" has {c:?}, which a request path cannot"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"[proxy]
listen = "10.77.0.100:80"
splice = true
header_timeout_ms = 5000
connect_timeout_ms = 2000
max_head_bytes = 16384
max_connections = 4096

[[backend]]
name = "b1"
addr = "10.77.0.21:8080"

[[backend]]
name = "b2"
addr = "10.77.0.22:8080"

[[route]]
host = "Static.Example"
path_prefix = "/static/"
backends = ["b1", "b2"]
idempotent = true

[[route]]
backends = ["b2"]
"#;

    fn bad(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "{from}");
        parse(&EXAMPLE.replace(from, to), "lzproxy.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_example() {
        let c = parse(EXAMPLE, "lzproxy.toml").unwrap();
        assert_eq!(c.proxy.listen, "10.77.0.100:80".parse().unwrap());
        assert!(c.proxy.splice);
        assert_eq!((c.proxy.header_timeout, c.proxy.connect_timeout), (Duration::from_secs(5), Duration::from_secs(2)));
        assert_eq!((c.proxy.max_head_bytes, c.proxy.max_connections), (16384, 4096));
        assert_eq!(c.backends[1], Backend { name: "b2".into(), addr: "10.77.0.22:8080".parse().unwrap() });
        assert_eq!(
            c.routes[0],
            Route {
                host: Some("static.example".into()),
                path_prefix: "/static/".into(),
                backends: vec![0, 1],
                idempotent: true
            }
        );
        assert_eq!(c.routes[1], Route { host: None, path_prefix: "/".into(), backends: vec![1], idempotent: false });
    }

    #[test]
    fn proxy_defaults() {
        let text = "[proxy]\nlisten = \"[::1]:8080\"\n[[backend]]\nname = \"a\"\naddr = \"[::1]:9000\"\n[[route]]\nbackends = [\"a\"]\n";
        let p = parse(text, "t").unwrap().proxy;
        let want = Proxy {
            listen: "[::1]:8080".parse().unwrap(),
            splice: true,
            header_timeout: Duration::from_millis(5000),
            connect_timeout: Duration::from_millis(2000),
            max_head_bytes: 16384,
            max_connections: 4096,
            health_interval: Some(Duration::from_millis(1000)),
            health_misses: 3,
        };
        assert_eq!(p, want);
        let off = parse(&text.replace("[[backend]]", "health_interval_ms = 0\n[[backend]]"), "t").unwrap().proxy;
        assert_eq!(off.health_interval, None);
        let e = parse(&text.replace("[[backend]]", "health_interval_ms = 5\n[[backend]]"), "t").unwrap_err().to_string();
        assert!(e.contains("proxy.health_interval_ms: 5 is outside 10..=60000"), "{e}");
        let e = parse(&text.replace("[[backend]]", "health_misses = 0\n[[backend]]"), "t").unwrap_err().to_string();
        assert!(e.contains("proxy.health_misses: 0 is outside 1..=100"), "{e}");
    }

    #[test]
    fn bounds() {
        assert_eq!(
            bad("header_timeout_ms = 5000", "header_timeout_ms = 0"),
            "lzproxy.toml: line 4: proxy.header_timeout_ms: 0 is outside 1..=600000"
        );
        assert_eq!(
            bad("connect_timeout_ms = 2000", "connect_timeout_ms = 600001"),
            "lzproxy.toml: line 5: proxy.connect_timeout_ms: 600001 is outside 1..=600000"
        );
        assert_eq!(
            bad("max_head_bytes = 16384", "max_head_bytes = 1023"),
            "lzproxy.toml: line 6: proxy.max_head_bytes: 1023 is outside 1024..=1048576"
        );
        assert_eq!(
            bad("max_head_bytes = 16384", "max_head_bytes = 1048577"),
            "lzproxy.toml: line 6: proxy.max_head_bytes: 1048577 is outside 1024..=1048576"
        );
        assert_eq!(
            bad("max_connections = 4096", "max_connections = -1"),
            "lzproxy.toml: line 7: proxy.max_connections: -1 is outside 1..=1000000"
        );
        assert_eq!(
            bad("max_connections = 4096", "max_connections = 1000001"),
            "lzproxy.toml: line 7: proxy.max_connections: 1000001 is outside 1..=1000000"
        );
        let edges = EXAMPLE
            .replace("header_timeout_ms = 5000", "header_timeout_ms = 1")
            .replace("connect_timeout_ms = 2000", "connect_timeout_ms = 600000")
            .replace("max_head_bytes = 16384", "max_head_bytes = 1024")
            .replace("max_connections = 4096", "max_connections = 1000000");
        let p = parse(&edges, "t").unwrap().proxy;
        assert_eq!((p.header_timeout, p.connect_timeout), (Duration::from_millis(1), Duration::from_secs(600)));
        assert_eq!((p.max_head_bytes, p.max_connections), (1024, 1_000_000));
    }

    #[test]
    fn syntax_types_and_unknown_fields() {
        let e = bad("splice = true", "splice = \"yes\"");
        assert!(e.starts_with("lzproxy.toml: line 3: invalid type"), "{e}");
        let e = bad("[proxy]", "[proxy]\ncolour = \"red\"");
        assert!(e.starts_with("lzproxy.toml: line 2: unknown field `colour`"), "{e}");
        let e = bad("addr = \"10.77.0.22:8080\"", "addr = \"10.77.0.22:8080\"\nweight = 2");
        assert!(e.starts_with("lzproxy.toml: line 16: unknown field `weight`"), "{e}");
        let e = bad("idempotent = true", "idempotent = true\nretries = 3");
        assert!(e.starts_with("lzproxy.toml: line 22: unknown field `retries`"), "{e}");
        let e = bad("[[route]]\nbackends = [\"b2\"]", "[[routes]]\nbackends = [\"b2\"]");
        assert!(e.starts_with("lzproxy.toml: line 23: unknown field `routes`"), "{e}");
        let e = bad("listen = \"10.77.0.100:80\"\n", "");
        assert!(e.contains("missing field `listen`"), "{e}");
        let e = bad("backends = [\"b2\"]", "idempotent = false");
        assert!(e.contains("missing field `backends`"), "{e}");
        let e = bad("[proxy]", "[proxy");
        assert!(e.starts_with("lzproxy.toml: line 1: "), "{e}");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            bad("listen = \"10.77.0.100:80\"", "listen = \"10.77.0.100\""),
            "lzproxy.toml: line 2: proxy.listen: \"10.77.0.100\" is not an address and port such as \"10.77.0.100:80\""
        );
        assert_eq!(
            bad("addr = \"10.77.0.22:8080\"", "addr = \"b2.example:8080\""),
            "lzproxy.toml: line 15: backend.addr: \"b2.example:8080\" is not an address and port such as \"10.77.0.21:8080\""
        );
        assert_eq!(
            bad("addr = \"10.77.0.22:8080\"", "addr = \"10.77.0.22:0\""),
            "lzproxy.toml: line 15: backend.addr: 10.77.0.22:0 is not an address a connection can go to"
        );
        assert_eq!(
            bad("addr = \"10.77.0.22:8080\"", "addr = \"0.0.0.0:8080\""),
            "lzproxy.toml: line 15: backend.addr: 0.0.0.0:8080 is not an address a connection can go to"
        );
    }

    #[test]
    fn backend_names() {
        assert_eq!(bad("name = \"b2\"", "name = \"b1\""), "lzproxy.toml: line 14: backend.name: \"b1\" is used twice");
        assert_eq!(bad("name = \"b2\"", "name = \"\""), "lzproxy.toml: line 14: backend.name: empty");
    }

    #[test]
    fn route_backends() {
        assert_eq!(
            bad("backends = [\"b1\", \"b2\"]", "backends = [\"b1\", \"b3\"]"),
            "lzproxy.toml: line 20: route.backends: no backend is named \"b3\" (backends: b1, b2)"
        );
        assert_eq!(
            bad("backends = [\"b1\", \"b2\"]", "backends = []"),
            "lzproxy.toml: line 20: route.backends: empty; a route needs at least one backend"
        );
        assert_eq!(
            bad("backends = [\"b1\", \"b2\"]", "backends = [\"b2\", \"b2\"]"),
            "lzproxy.toml: line 20: route.backends: \"b2\" is listed twice"
        );
        // Backends declared after the route are still found.
        let moved = EXAMPLE.replace("[[backend]]\nname = \"b2\"\naddr = \"10.77.0.22:8080\"\n", "")
            + "\n[[backend]]\nname = \"b2\"\naddr = \"10.77.0.22:8080\"\n";
        assert_eq!(parse(&moved, "t").unwrap().routes[0].backends, [0, 1]);
    }

    #[test]
    fn routes() {
        let none = EXAMPLE.split("[[route]]").next().unwrap_or_default();
        assert_eq!(
            parse(none, "lzproxy.toml").unwrap_err().to_string(),
            "lzproxy.toml: no [[route]]: the proxy would have nowhere to send a request"
        );
        let e = parse(
            &format!(
                "{EXAMPLE}\n[[route]]\nhost = \"STATIC.example\"\npath_prefix = \"/static/\"\nbackends = [\"b1\"]\n"
            ),
            "f",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "f: line 27: route: host \"static.example\" and path_prefix \"/static/\" are route 1's too"
        );
        let e = parse(&format!("{EXAMPLE}\n[[route]]\npath_prefix = \"/\"\nbackends = [\"b1\"]\n"), "f");
        assert_eq!(e.unwrap_err().to_string(), "f: line 27: route: host (any) and path_prefix \"/\" are route 2's too");
        // The same prefix for another host is another route.
        assert!(parse(&format!("{EXAMPLE}\n[[route]]\nhost = \"a.example\"\nbackends = [\"b1\"]\n"), "f").is_ok());
        assert_eq!(
            bad("path_prefix = \"/static/\"", "path_prefix = \"static/\""),
            "lzproxy.toml: line 19: route.path_prefix: \"static/\" does not start with '/'"
        );
        assert_eq!(
            bad("path_prefix = \"/static/\"", "path_prefix = \"/a b\""),
            "lzproxy.toml: line 19: route.path_prefix: \"/a b\" has ' ', which a request path cannot"
        );
        assert_eq!(
            bad("path_prefix = \"/static/\"", "path_prefix = \"/a?b\""),
            "lzproxy.toml: line 19: route.path_prefix: \"/a?b\" has '?', which a request path cannot"
        );
        assert_eq!(
            bad("host = \"Static.Example\"", "host = \"static.example:80\""),
            "lzproxy.toml: line 18: route.host: \"static.example:80\" has a port; routes match the host without it"
        );
        assert_eq!(
            bad("host = \"Static.Example\"", "host = \"\""),
            "lzproxy.toml: line 18: route.host: empty; leave host out to match any host"
        );
        assert_eq!(
            bad("host = \"Static.Example\"", "host = \"static example\""),
            "lzproxy.toml: line 18: route.host: \"static example\" is not a host name or IP address"
        );
        let v6 = EXAMPLE.replace("host = \"Static.Example\"", "host = \"[FD00::1]\"");
        assert_eq!(parse(&v6, "t").unwrap().routes[0].host.as_deref(), Some("[fd00::1]"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("lzproxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lzproxy.toml");
        std::fs::write(&path, EXAMPLE.replace("max_connections = 4096", "max_connections = 0")).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!((e.origin.as_str(), e.line), (path.to_str().unwrap(), Some(7)));
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap().routes.len(), 2);
        let missing = dir.join("absent.toml");
        let e = load(&missing).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{}: ", missing.display())), "{e}");
        assert_eq!(e.line, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A configuration with a cluster, its key in a fresh directory with `mode`.
    fn cluster_file(mode: u32, extra: &str) -> (std::path::PathBuf, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lzproxy-cfg-{}-{mode:o}-{}", std::process::id(), extra.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("cluster.key");
        std::fs::write(&key, "a cluster key of 32 characters..\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let text = format!(
            "{EXAMPLE}\n[cluster]\nname = \"p1\"\nvip = \"10.77.0.100\"\ndev = \"lz0\"\nkey_file = \"cluster.key\"\n{extra}\n\n[[peer]]\nname = \"p2\"\naddr = \"10.77.0.12\"\n"
        );
        let path = dir.join("lzproxy.toml");
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }

    #[test]
    fn a_cluster_reads_its_key_next_to_the_file() {
        let (path, _) = cluster_file(0o600, "");
        let c = load(&path).unwrap().cluster.unwrap();
        // A text key is taken without its trailing newline, as lazarusd takes it.
        assert_eq!(c.key, b"a cluster key of 32 characters..".to_vec());
        assert_eq!((c.port, c.heartbeat, c.peers.len()), (7402, Duration::from_millis(200), 1));
    }

    #[test]
    fn cluster_errors_name_the_field() {
        let (path, _) = cluster_file(0o644, "");
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("cluster.key_file") && e.contains("chmod 600"), "{e}");
        let (path, _) = cluster_file(0o600, "heartbeat_ms = 5");
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("cluster.heartbeat_ms: 5 is outside 10..=10000"), "{e}");
        let (path, _) = cluster_file(0o600, "missed_beats = 1");
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("cluster.missed_beats: 1 is outside 2..=100"), "{e}");
        let (path, text) = cluster_file(0o600, "port = 7402");
        let e = parse(&text.replace("vip = \"10.77.0.100\"", "vip = \"10.77.0.99\""), path.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("cluster.vip: 10.77.0.99 is not proxy.listen's address"), "{e}");
        let e = parse(&text.replace("splice = true", "splice = false"), path.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("needs proxy.splice = true"), "{e}");
        let e = parse(&text.replace("name = \"p2\"", "name = \"p1\""), path.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("peer.name: \"p1\" is used twice"), "{e}");
    }
}
