//! Prometheus metrics (`[metrics] listen = "127.0.0.1:9477"`).
//!
//! One thread answers `GET /metrics` with the text exposition format (version 0.0.4).
//! Every scrape reads the modules afresh over netlink, so the figures are the
//! kernel's own; a module that is not loaded shows as `lazarus_module_up 0`. Any
//! other path gets 404, any other method 405; a request that is not HTTP, or that
//! takes more than 2 s to arrive, is closed without an answer.

use crate::log;
use crate::shadow::FailoverStats;
use lznl::{Client, PortStats, ShadowClient, ShadowStatus, SpliceClient, SpliceStatus};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Longest request head read.
const MAX_HEAD: usize = 8192;

/// Start serving on `addr`. An address that cannot be bound is an error now, not a
/// silent absence of metrics.
pub fn serve(addr: SocketAddr, failovers: Arc<FailoverStats>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => {
                    if let Err(e) = answer(c, &failovers) {
                        log(format!("metrics: {e}"));
                    }
                }
                Err(e) => log(format!("metrics: accept: {e}")),
            }
        }
    })?;
    Ok(())
}

fn answer(conn: TcpStream, failovers: &FailoverStats) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?).take(MAX_HEAD as u64);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (words.next(), words.next(), words.next()) else {
        return Ok(());
    };
    if !version.starts_with("HTTP/") {
        return Ok(());
    }
    // The rest of the head is read and ignored (bounded by `take`).
    let mut rest = String::new();
    while reader.read_line(&mut rest)? > 2 {
        rest.clear();
    }
    let (status, body) = match (method, path.split('?').next()) {
        ("GET", Some("/metrics")) => ("200 OK", render(&scrape(), failovers)),
        ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What one scrape read from the modules.
#[derive(Default)]
pub struct Scrape {
    /// `None`: lazarus_core is not loaded (or netlink failed).
    pub ports: Option<Vec<PortStats>>,
    /// `None`: lazarus_shadow is not loaded (or netlink failed).
    pub shadow: Option<ShadowStatus>,
    /// `None`: lazarus_splice is not loaded (or netlink failed).
    pub splice: Option<SpliceStatus>,
}

fn scrape() -> Scrape {
    Scrape {
        ports: Client::connect().and_then(|c| c.port_list()).ok(),
        shadow: ShadowClient::connect().and_then(|c| c.status()).ok(),
        splice: SpliceClient::connect().and_then(|c| c.status()).ok(),
    }
}

/// One metric family: its help and type lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    family(out, name, "gauge", help, &[(String::new(), v)]);
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    family(out, name, "counter", help, &[(String::new(), v as f64)]);
}

/// The exposition text for a scrape and the daemon's own counters.
pub fn render(s: &Scrape, failovers: &FailoverStats) -> String {
    let mut out = String::new();
    let up = |present: bool| if present { 1.0 } else { 0.0 };
    family(
        &mut out,
        "lazarus_module_up",
        "gauge",
        "1 when the module answered this scrape.",
        &[
            ("{module=\"lazarus_core\"}".into(), up(s.ports.is_some())),
            ("{module=\"lazarus_shadow\"}".into(), up(s.shadow.is_some())),
            ("{module=\"lazarus_splice\"}".into(), up(s.splice.is_some())),
        ],
    );
    if let Some(ports) = &s.ports {
        let per_port = |f: fn(&PortStats) -> u64| -> Vec<(String, f64)> {
            ports.iter().map(|p| (format!("{{port=\"{}\"}}", p.port), f(p) as f64)).collect()
        };
        family(&mut out, "lazarus_core_packets_in_total", "counter", "TCP segments received on a counted port.", &per_port(|p| p.packets_in));
        family(&mut out, "lazarus_core_bytes_in_total", "counter", "Bytes received on a counted port.", &per_port(|p| p.bytes_in));
        family(&mut out, "lazarus_core_packets_out_total", "counter", "TCP segments sent from a counted port.", &per_port(|p| p.packets_out));
        family(&mut out, "lazarus_core_bytes_out_total", "counter", "Bytes sent from a counted port.", &per_port(|p| p.bytes_out));
    }
    if let Some(st) = &s.shadow {
        let role = ["none", "primary", "backup"].map(|r| (format!("{{role=\"{r}\"}}"), up(st.role == r)));
        family(&mut out, "lazarus_shadow_role", "gauge", "This node's role for the shadowed service.", &role);
        gauge(&mut out, "lazarus_shadow_gate_open", "1 while this node's output reaches the clients.", up(st.gate_open));
        let peer = ["unknown", "alive", "failed"].map(|p| (format!("{{state=\"{p}\"}}"), up(st.peer_state == p)));
        family(&mut out, "lazarus_shadow_peer_state", "gauge", "What the heartbeats say about the peer.", &peer);
        if let Some(ms) = st.peer_silence_ms {
            gauge(&mut out, "lazarus_shadow_peer_silence_seconds", "Time since the peer's last fresh heartbeat.", ms as f64 / 1000.0);
        }
        if let Some(ft) = st.fault_tolerant {
            gauge(&mut out, "lazarus_shadow_fault_tolerant", "1 while a failure of either node loses no client byte.", up(ft));
        }
        if let Some(b) = st.retained_bytes {
            gauge(&mut out, "lazarus_shadow_retained_bytes", "Client bytes the primary keeps for the backup.", b as f64);
        }
        if let Some(f) = st.key_fingerprint {
            gauge(&mut out, "lazarus_shadow_peer_link_authenticated", "1 when a cluster key authenticates the peer link.", up(f != 0));
        }
        gauge(&mut out, "lazarus_shadow_connections", "Connections in the shadow table.", st.conns as f64);
        // Every module counter, under its own name: a counter added to the module
        // appears here without a change.
        if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(st.stats) {
            for (name, v) in counters {
                if let Some(v) = v.as_u64() {
                    let help = format!("The module's {} counter.", name.replace('_', "-"));
                    counter(&mut out, &format!("lazarus_shadow_{name}_total"), &help, v);
                }
            }
        }
    }
    if let Some(sp) = &s.splice {
        gauge(&mut out, "lazarus_splice_splices", "Splices in the table (frozen ones included).", sp.splices as f64);
        gauge(&mut out, "lazarus_splice_max_splices", "Splices the table holds.", sp.max_splices as f64);
        if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(sp.stats) {
            for (name, v) in counters {
                if let Some(v) = v.as_u64() {
                    let help = format!("The module's {} counter.", name.replace('_', "-"));
                    counter(&mut out, &format!("lazarus_splice_{name}_total"), &help, v);
                }
            }
        }
    }
    let driver = [
        ("lazarus_failovers_total", "Takeovers this daemon completed after fencing the primary.", &failovers.failovers),
        ("lazarus_failovers_failed_total", "Failovers that stopped short (fence or takeover failed).", &failovers.failed),
        (
            "lazarus_planned_switchovers_total",
            "Planned takeovers this daemon completed after the primary stepped down.",
            &failovers.planned,
        ),
        (
            "lazarus_planned_switchovers_declined_total",
            "Planned takeovers declined (connections short of the primary's bytes); the primary served on.",
            &failovers.planned_declined,
        ),
    ];
    for (name, help, v) in driver {
        counter(&mut out, name, help, v.load(Ordering::Relaxed));
    }
    gauge(
        &mut out,
        "lazarus_last_failover_seconds",
        "Fence plus takeover of the latest completed failover (0: none yet).",
        failovers.last_ms.load(Ordering::Relaxed) as f64 / 1000.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is a comment or `name{labels} value` with a valid name and a
    /// number; every sample's family was declared with HELP and TYPE first.
    fn check_exposition(text: &str) -> Vec<(String, f64)> {
        let mut declared = std::collections::HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split(' ');
                let name = w.next().unwrap();
                assert!(matches!(w.next(), Some("gauge" | "counter")), "{line}");
                declared.insert(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit()),
                "bad name: {line}"
            );
            assert!(declared.contains(name), "undeclared family: {line}");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
            }
            samples.push((series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}"))));
        }
        samples
    }

    fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
        samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
    }

    #[test]
    fn nothing_loaded() {
        let f = FailoverStats::default();
        let s = check_exposition(&render(&Scrape::default(), &f));
        assert_eq!(value(&s, "lazarus_module_up{module=\"lazarus_core\"}"), Some(0.0));
        assert_eq!(value(&s, "lazarus_module_up{module=\"lazarus_shadow\"}"), Some(0.0));
        assert_eq!(value(&s, "lazarus_module_up{module=\"lazarus_splice\"}"), Some(0.0));
        assert_eq!(value(&s, "lazarus_failovers_total"), Some(0.0));
        assert!(s.iter().all(|(n, _)| !n.starts_with("lazarus_shadow_")));
    }

    #[test]
    fn everything_loaded() {
        let ports = vec![
            PortStats { port: 80, packets_in: 10, bytes_in: 1000, packets_out: 12, bytes_out: 5000 },
            PortStats { port: 443, packets_in: 1, bytes_in: 2, packets_out: 3, bytes_out: 4 },
        ];
        let shadow = ShadowStatus {
            version: "0.1.0".into(),
            role: "backup".into(),
            service_addr: None,
            service_port: None,
            peer_addr: None,
            beat_port: None,
            ifname: None,
            heartbeat_ms: Some(50),
            max_conns: None,
            retain_kb: None,
            max_delay_fin_ms: None,
            app_max_lag_kb: None,
            app_max_lag_ms: None,
            gate_open: false,
            peer_state: "alive".into(),
            peer_silence_ms: Some(12),
            fault_tolerant: Some(true),
            retained_bytes: None,
            key_fingerprint: Some(7),
            conns: 3,
            stepping_down: false,
            handed_over: false,
            behind: None,
            took_over: false,
            translating: None,
            stats: lznl::ShadowStats { prompts: 5, auth_forged: 2, ..Default::default() },
        };
        let f = FailoverStats::default();
        f.failovers.store(1, Ordering::Relaxed);
        f.last_ms.store(250, Ordering::Relaxed);
        let splice = SpliceStatus {
            version: "0.1.0".into(),
            max_splices: 8192,
            splices: 4,
            idle_timeout_ms: 900_000,
            linger_ms: 10_000,
            last_send_errno: 0,
            next_ready: 0,
            stats: lznl::SpliceStats { forwarded_bytes: 123, installed: 2, ..Default::default() },
        };
        let s = check_exposition(&render(&Scrape { ports: Some(ports), shadow: Some(shadow), splice: Some(splice) }, &f));
        assert_eq!(value(&s, "lazarus_splice_splices"), Some(4.0));
        assert_eq!(value(&s, "lazarus_splice_forwarded_bytes_total"), Some(123.0));
        assert_eq!(value(&s, "lazarus_splice_installed_total"), Some(2.0));
        let splice_counters = s.iter().filter(|(n, _)| n.starts_with("lazarus_splice_") && n.ends_with("_total")).count();
        assert_eq!(splice_counters, lazarus_proto::genl_splice::stats_attr::MAX as usize);
        assert_eq!(value(&s, "lazarus_core_bytes_out_total{port=\"80\"}"), Some(5000.0));
        assert_eq!(value(&s, "lazarus_core_packets_in_total{port=\"443\"}"), Some(1.0));
        assert_eq!(value(&s, "lazarus_shadow_role{role=\"backup\"}"), Some(1.0));
        assert_eq!(value(&s, "lazarus_shadow_role{role=\"primary\"}"), Some(0.0));
        assert_eq!(value(&s, "lazarus_shadow_peer_state{state=\"alive\"}"), Some(1.0));
        assert_eq!(value(&s, "lazarus_shadow_peer_silence_seconds"), Some(0.012));
        assert_eq!(value(&s, "lazarus_shadow_prompts_total"), Some(5.0));
        assert_eq!(value(&s, "lazarus_shadow_auth_forged_total"), Some(2.0));
        assert_eq!(value(&s, "lazarus_shadow_peer_link_authenticated"), Some(1.0));
        assert_eq!(value(&s, "lazarus_shadow_connections"), Some(3.0));
        assert_eq!(value(&s, "lazarus_failovers_total"), Some(1.0));
        assert_eq!(value(&s, "lazarus_last_failover_seconds"), Some(0.25));
        assert_eq!(value(&s, "lazarus_planned_switchovers_total"), Some(0.0));
        // Every module counter is exported.
        let counters = s.iter().filter(|(n, _)| n.starts_with("lazarus_shadow_") && n.ends_with("_total")).count();
        assert_eq!(counters, lazarus_proto::genl_shadow::stats_attr::MAX as usize);
    }

    #[test]
    fn http_answers() {
        let f = Arc::new(FailoverStats::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        serve(addr, f).unwrap();
        let ask = |req: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        check_exposition(body);
        assert!(body.contains("lazarus_failovers_total 0"));
        assert!(ask("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert_eq!(ask("junk\r\n\r\n"), "", "not HTTP: closed without an answer");
    }
}
