//! Choosing a backend for a request: the most specific route that matches its Host
//! and path, then the route's backends in turn.

use crate::config::Config;
use lazarus_proto::http::host_matches;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The routes of a [`Config`], most specific first. Shared by every connection
/// thread: the only state is each route's round-robin counter.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Index in [`Config::routes`].
    index: usize,
    host: Option<Vec<u8>>,
    prefix: Vec<u8>,
    backends: Vec<SocketAddr>,
    idempotent: bool,
    next: AtomicUsize,
}

/// Where to send one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index of the route in [`Config::routes`].
    pub route: usize,
    /// The route allows sending a failed request to another backend.
    pub idempotent: bool,
    /// The route's backends, starting with this request's turn and wrapping around:
    /// when a connect fails, the caller goes on to the next.
    pub backends: Vec<SocketAddr>,
}

impl Router {
    /// The routes of a validated configuration. A route naming no backend that
    /// exists (which [`crate::config::parse`] does not let through) never matches.
    pub fn new(config: &Config) -> Router {
        let mut routes: Vec<Entry> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| Entry {
                index,
                host: r.host.as_ref().map(|h| h.as_bytes().to_vec()),
                prefix: r.path_prefix.as_bytes().to_vec(),
                backends: r.backends.iter().filter_map(|&b| config.backends.get(b)).map(|b| b.addr).collect(),
                idempotent: r.idempotent,
                next: AtomicUsize::new(0),
            })
            .collect();
        // Precedence: a route with a host before one without, then the longest prefix.
        // The sort is stable, so equals (which the configuration rules out) keep file order.
        routes.sort_by_key(|e| (e.host.is_none(), std::cmp::Reverse(e.prefix.len())));
        Router { routes }
    }

    /// The backends for a request with this Host (port and case do not matter) and
    /// path (without the query), or `None` when no route matches.
    pub fn pick(&self, host: Option<&[u8]>, path: &[u8]) -> Option<Pick> {
        let e = self.routes.iter().find(|e| {
            let host_ok = match (&e.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => host_matches(got, want),
                (Some(_), None) => false,
            };
            host_ok && path.starts_with(&e.prefix) && !e.backends.is_empty()
        })?;
        let n = e.backends.len();
        // Wrapping at usize::MAX only skews one turn.
        let start = e.next.fetch_add(1, Ordering::Relaxed) % n;
        let backends = e.backends[start..].iter().chain(&e.backends[..start]).copied().collect();
        Some(Pick { route: e.index, idempotent: e.idempotent, backends })
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Backend, Route};

    const CONFIG: &str = r#"[proxy]
listen = "10.77.0.100:80"

[[backend]]
name = "b1"
addr = "10.77.0.21:8080"

[[backend]]
name = "b2"
addr = "10.77.0.22:8080"

[[backend]]
name = "b3"
addr = "10.77.0.23:8080"

# 0: the default
[[route]]
backends = ["b3"]

# 1
[[route]]
path_prefix = "/static/"
backends = ["b1", "b2"]
idempotent = true

# 2
[[route]]
host = "api.example"
backends = ["b2"]

# 3
[[route]]
host = "api.example"
path_prefix = "/v2/"
backends = ["b1", "b2", "b3"]

# 4
[[route]]
path_prefix = "/static/big/"
backends = ["b2"]
"#;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, last], 8080))
    }

    fn router() -> Router {
        Router::new(&parse(CONFIG, "test").unwrap())
    }

    fn route(r: &Router, host: Option<&str>, path: &str) -> Option<usize> {
        r.pick(host.map(str::as_bytes), path.as_bytes()).map(|p| p.route)
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        assert_eq!(r.len(), 5);
        assert_eq!(route(&r, None, "/"), Some(0));
        assert_eq!(route(&r, Some("www.example"), "/index.html"), Some(0));
        assert_eq!(route(&r, Some("www.example"), "/static/a.css"), Some(1));
        assert_eq!(route(&r, None, "/static/big/movie"), Some(4));
        assert_eq!(route(&r, Some("www.example"), "/static"), Some(0));
        // A host route beats a longer hostless prefix.
        assert_eq!(route(&r, Some("api.example"), "/static/big/movie"), Some(2));
        assert_eq!(route(&r, Some("api.example"), "/v2/users"), Some(3));
        assert_eq!(route(&r, Some("API.Example:8443"), "/v2/users"), Some(3));
        assert_eq!(route(&r, Some("api.example"), "/v1/users"), Some(2));
        assert_eq!(route(&r, Some("api.example.evil"), "/v2/users"), Some(0));
        assert_eq!(route(&r, None, "/v2/users"), Some(0));
        // Prefixes are case-sensitive bytes, as paths are.
        assert_eq!(route(&r, None, "/STATIC/a.css"), Some(0));
        let p = r.pick(None, b"/static/a").unwrap();
        assert!(p.idempotent);
        assert!(!r.pick(None, b"/").unwrap().idempotent);
    }

    #[test]
    fn no_match_without_a_default() {
        let text = CONFIG.replace("# 0: the default\n[[route]]\nbackends = [\"b3\"]\n", "");
        let r = Router::new(&parse(&text, "test").unwrap());
        assert_eq!(route(&r, None, "/index.html"), None);
        assert_eq!(route(&r, Some("api.example"), "/index.html"), Some(1));
        // Route indices stay those of the file.
        assert_eq!(route(&r, None, "/static/x"), Some(0));
    }

    #[test]
    fn round_robin_with_fallbacks() {
        let r = router();
        let turns: Vec<Vec<SocketAddr>> =
            (0..4).map(|_| r.pick(Some(&b"api.example"[..]), b"/v2/x").unwrap().backends).collect();
        assert_eq!(turns[0], [addr(21), addr(22), addr(23)]);
        assert_eq!(turns[1], [addr(22), addr(23), addr(21)]);
        assert_eq!(turns[2], [addr(23), addr(21), addr(22)]);
        assert_eq!(turns[3], turns[0]);
        // Each route has its own turn.
        assert_eq!(r.pick(None, b"/static/a").unwrap().backends, [addr(21), addr(22)]);
        assert_eq!(r.pick(None, b"/static/a").unwrap().backends, [addr(22), addr(21)]);
        assert_eq!(r.pick(Some(&b"api.example"[..]), b"/v2/x").unwrap().backends[0], addr(22));
        assert_eq!(r.pick(None, b"/").unwrap().backends, [addr(23)]);
    }

    #[test]
    fn shared_between_threads() {
        fn is_sync<T: Sync + Send>() {}
        is_sync::<Router>();
        let r = router();
        let mut counts = [0usize; 3];
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..300)
                            .map(|_| r.pick(Some(&b"api.example"[..]), b"/v2/").map(|p| p.backends[0]))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for w in workers {
                for first in w.join().unwrap() {
                    match first {
                        Some(a) if a == addr(21) => counts[0] += 1,
                        Some(a) if a == addr(22) => counts[1] += 1,
                        Some(a) if a == addr(23) => counts[2] += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        });
        assert_eq!(counts, [400, 400, 400]);
    }

    #[test]
    fn hand_built_configs_do_not_panic() {
        let mut c = parse(CONFIG, "test").unwrap();
        c.routes.insert(0, Route { host: None, path_prefix: "/".into(), backends: vec![99], idempotent: false });
        c.backends.push(Backend { name: "b4".into(), addr: addr(24) });
        let r = Router::new(&c);
        // The broken route has no backend and is passed over.
        assert_eq!(route(&r, None, "/"), Some(1));
    }
}
