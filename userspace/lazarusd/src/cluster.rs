//! The cluster file: one TOML file, the same on every node, that describes the whole
//! cluster. Each node's `lazarusd` picks its own part: the node whose address is one
//! of this machine's (or the one `--node` names), and its role in each service.
//!
//! ```toml
//! [cluster]
//! key_file = "cluster.key"   # optional; relative to this file's directory
//! heartbeat_ms = 100         # 10..=10000
//! fence_timeout_ms = 5000
//!
//! [[node]]
//! name = "alpha"
//! addr = "10.77.0.11"        # the node's own address (heartbeats go there)
//! dev = "lz0"                # its interface on the client segment
//! fence = ["/usr/local/sbin/fence", "alpha"]  # how the other node stops this one
//!
//! [[node]]
//! name = "beta"
//! addr = "10.77.0.12"
//! dev = "lz0"
//! fence = ["/usr/local/sbin/fence", "beta"]
//!
//! [[service]]
//! name = "web"
//! mechanism = "st-tcp"       # the only mechanism built so far
//! address = "10.77.0.100:8080"
//! primary = "alpha"
//! backup = "beta"
//! # optional, as in a node file's [shadow]: auto_takeover, beat_port, max_conns,
//! # retain_kb, max_delay_fin_ms, app_max_lag_kb, app_max_lag_ms
//!
//! [metrics]                  # optional, for every node
//! listen = "127.0.0.1:9477"
//! ```
//!
//! After a failover, swap `primary` and `backup` in the file and reload both nodes:
//! the survivor re-arms as primary once the connections it took over have ended, and
//! the node that comes back joins as its backup.
//!
//! Errors name the line and the field.

use crate::config::{self, Config, RawShadow};
use lazarus_proto::ports::PortSet;
use serde::Deserialize;
use std::net::Ipv4Addr;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    cluster: RawSection,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    service: Vec<RawService>,
    metrics: Option<config::RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    key_file: Option<String>,
    heartbeat_ms: Option<i64>,
    fence_timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    addr: Spanned<String>,
    dev: Spanned<String>,
    fence: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    mechanism: Spanned<String>,
    address: String,
    primary: Spanned<String>,
    backup: Spanned<String>,
    auto_takeover: Option<bool>,
    beat_port: Option<i64>,
    max_conns: Option<i64>,
    retain_kb: Option<i64>,
    max_delay_fin_ms: Option<i64>,
    app_max_lag_kb: Option<i64>,
    app_max_lag_ms: Option<i64>,
}

/// Mechanisms a service may name, and whether this build has them.
const MECHANISMS: &[(&str, bool)] = &[("st-tcp", true), ("ft-tcp", false), ("splice", false), ("salvage", false)];

/// Whether `text` is a cluster file (it has a `[cluster]` table) rather than a node file.
pub fn is_cluster_file(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("cluster"))
}

/// Whether `addr` is one of this machine's addresses: binding to it works.
pub fn is_local(addr: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((addr, 0)).is_ok()
}

/// This node's configuration from a cluster file: the node `node` names, or else the
/// one whose address `is_local` accepts.
pub fn parse(text: &str, node: Option<&str>, is_local: impl Fn(Ipv4Addr) -> bool) -> Result<Config, String> {
    let at = |offset: usize| config::line_of(text, offset);
    let raw: RawCluster = toml::from_str(text).map_err(|e| match e.span() {
        Some(s) => format!("line {}: {}", at(s.start), e.message()),
        None => e.message().to_string(),
    })?;
    let mut nodes: Vec<(&RawNode, Ipv4Addr)> = Vec::new();
    for n in &raw.node {
        let line = at(n.name.span().start);
        if n.name.get_ref().is_empty() {
            return Err(format!("line {line}: node.name: empty"));
        }
        if nodes.iter().any(|(m, _)| m.name.get_ref() == n.name.get_ref()) {
            return Err(format!("line {line}: node.name: \"{}\" is used twice", n.name.get_ref()));
        }
        let addr: Ipv4Addr = n
            .addr
            .get_ref()
            .parse()
            .map_err(|_| format!("line {}: node.addr: \"{}\" is not an IPv4 address", at(n.addr.span().start), n.addr.get_ref()))?;
        if let Some((m, _)) = nodes.iter().find(|(_, a)| *a == addr) {
            return Err(format!("line {}: node.addr: {addr} is node \"{}\"'s too", at(n.addr.span().start), m.name.get_ref()));
        }
        nodes.push((n, addr));
    }
    let find = |name: &Spanned<String>, field: &str| {
        nodes.iter().find(|(n, _)| n.name.get_ref() == name.get_ref()).copied().ok_or_else(|| {
            let known: Vec<&str> = nodes.iter().map(|(n, _)| n.name.get_ref().as_str()).collect();
            format!("line {}: service.{field}: no node is named \"{}\" (nodes: {})", at(name.span().start), name.get_ref(), known.join(", "))
        })
    };
    // Which node this is.
    let me = match node {
        Some(name) => nodes
            .iter()
            .find(|(n, _)| n.name.get_ref() == name)
            .copied()
            .ok_or_else(|| format!("--node {name}: the cluster file has no such node"))?,
        None => {
            let local: Vec<_> = nodes.iter().filter(|(_, a)| is_local(*a)).copied().collect();
            match local.as_slice() {
                [one] => *one,
                [] => return Err("no node of the cluster file has an address of this machine; give --node NAME".into()),
                _ => return Err("several nodes of the cluster file have addresses of this machine; give --node NAME".into()),
            }
        }
    };
    // The shadow module carries one service per node, and the nodes pair up.
    if let Some(s) = raw.service.get(1) {
        return Err(format!(
            "line {}: service \"{}\": lazarus_shadow protects one service per cluster so far",
            at(s.name.span().start),
            s.name.get_ref()
        ));
    }
    let mut shadow = None;
    let mut names: Vec<&str> = Vec::new();
    for s in &raw.service {
        let line = at(s.name.span().start);
        let name = s.name.get_ref().as_str();
        if names.contains(&name) {
            return Err(format!("line {line}: service.name: \"{name}\" is used twice"));
        }
        names.push(name);
        let mech = s.mechanism.get_ref().as_str();
        match MECHANISMS.iter().find(|(m, _)| *m == mech) {
            Some((_, true)) => {}
            // Splicing proxies run lzproxy, which replicates its splices itself.
            Some(_) if mech == "splice" => {
                return Err(format!(
                    "line {}: service.mechanism: \"splice\" services are run by lzproxy from its own \
                     file (docs/splice-operations.md), not by lazarusd",
                    at(s.mechanism.span().start)
                ))
            }
            Some((_, false)) => {
                return Err(format!(
                    "line {}: service.mechanism: \"{mech}\" is not built yet; this build has st-tcp",
                    at(s.mechanism.span().start)
                ))
            }
            None => {
                return Err(format!(
                    "line {}: service.mechanism: \"{mech}\" is not one of st-tcp, ft-tcp, splice, salvage",
                    at(s.mechanism.span().start)
                ))
            }
        }
        let primary = find(&s.primary, "primary")?;
        let backup = find(&s.backup, "backup")?;
        if primary.0.name.get_ref() == backup.0.name.get_ref() {
            return Err(format!("line {}: service.backup: the same node as the primary", at(s.backup.span().start)));
        }
        let (role, other) = if primary.0.name.get_ref() == me.0.name.get_ref() {
            ("primary", backup)
        } else if backup.0.name.get_ref() == me.0.name.get_ref() {
            ("backup", primary)
        } else {
            continue;
        };
        let section = RawShadow {
            role: role.into(),
            service: s.address.clone(),
            peer: other.1.to_string(),
            dev: Some(me.0.dev.get_ref().clone()),
            heartbeat_ms: raw.cluster.heartbeat_ms,
            beat_port: s.beat_port,
            max_conns: s.max_conns,
            retain_kb: s.retain_kb,
            max_delay_fin_ms: s.max_delay_fin_ms,
            app_max_lag_kb: s.app_max_lag_kb,
            app_max_lag_ms: s.app_max_lag_ms,
            auto_takeover: s.auto_takeover,
            // The backup stops the primary: the primary node's own fence entry.
            fence: other.0.fence.clone(),
            fence_timeout_ms: raw.cluster.fence_timeout_ms,
            key_file: raw.cluster.key_file.clone(),
        };
        let parsed = config::parse_shadow(&section).map_err(|e| {
            // The field names of a node file's [shadow]; say where they come from here.
            let e = e.replacen("shadow.", "", 1);
            format!("line {line}: service \"{name}\" on node \"{}\": {e}", me.0.name.get_ref())
        })?;
        shadow = Some(parsed);
    }
    let metrics = config::parse_metrics(raw.metrics.as_ref())?;
    Ok(Config { enabled: true, ports: PortSet::default(), peers: Vec::new(), shadow, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lznl::ShadowRole;

    const CLUSTER: &str = r#"[cluster]
key_file = "cluster.key"
heartbeat_ms = 50

[[node]]
name = "alpha"
addr = "10.77.0.11"
dev = "lz0"
fence = ["/usr/local/sbin/fence", "alpha"]

[[node]]
name = "beta"
addr = "10.77.0.12"
dev = "eth1"
fence = ["/usr/local/sbin/fence", "beta"]

[[service]]
name = "web"
mechanism = "st-tcp"
address = "10.77.0.100:8080"
primary = "alpha"
backup = "beta"
retain_kb = 8192
"#;

    fn local(a: &str) -> impl Fn(Ipv4Addr) -> bool + '_ {
        move |x| x.to_string() == a
    }

    #[test]
    fn a_splice_service_is_sent_to_lzproxy() {
        let text = CLUSTER.replace("mechanism = \"st-tcp\"", "mechanism = \"splice\"");
        let e = parse(&text, Some("beta"), |_| false).unwrap_err();
        assert!(e.contains("\"splice\" services are run by lzproxy"), "{e}");
    }

    #[test]
    fn each_node_gets_its_part() {
        assert!(is_cluster_file(CLUSTER) && !is_cluster_file("[shadow]\nrole = \"backup\"\n"));
        let a = parse(CLUSTER, None, local("10.77.0.11")).unwrap().shadow.unwrap();
        assert_eq!((a.role, a.peer, a.dev.as_deref()), (ShadowRole::Primary, Ipv4Addr::new(10, 77, 0, 12), Some("lz0")));
        assert_eq!((a.heartbeat_ms, a.retain_kb), (50, 8192));
        assert!(a.failover.is_none());
        let b = parse(CLUSTER, Some("beta"), |_| false).unwrap().shadow.unwrap();
        assert_eq!((b.role, b.peer, b.dev.as_deref()), (ShadowRole::Backup, Ipv4Addr::new(10, 77, 0, 11), Some("eth1")));
        // The backup fences the primary with the primary's entry.
        assert_eq!(b.failover.unwrap().fence, ["/usr/local/sbin/fence", "alpha"]);
        assert_eq!(b.key_file.unwrap().to_str(), Some("cluster.key"));
        assert_eq!(a.service, b.service);
    }

    #[test]
    fn a_node_in_no_service_leaves_the_shadow_module_alone() {
        let extra = CLUSTER.replace("[[service]]", "[[node]]\nname = \"gamma\"\naddr = \"10.77.0.13\"\ndev = \"lz0\"\n\n[[service]]");
        assert!(parse(&extra, Some("gamma"), |_| false).unwrap().shadow.is_none());
    }

    #[test]
    fn which_node_is_this() {
        let e = parse(CLUSTER, None, |_| false).unwrap_err();
        assert!(e.contains("give --node NAME"), "{e}");
        let e = parse(CLUSTER, None, |_| true).unwrap_err();
        assert!(e.starts_with("several nodes"), "{e}");
        let e = parse(CLUSTER, Some("delta"), |_| true).unwrap_err();
        assert_eq!(e, "--node delta: the cluster file has no such node");
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = |from: &str, to: &str| parse(&CLUSTER.replace(from, to), Some("beta"), |_| false).unwrap_err();
        let e = bad("backup = \"beta\"", "backup = \"betta\"");
        assert_eq!(e, "line 22: service.backup: no node is named \"betta\" (nodes: alpha, beta)");
        let e = bad("mechanism = \"st-tcp\"", "mechanism = \"ft-tcp\"");
        assert_eq!(e, "line 19: service.mechanism: \"ft-tcp\" is not built yet; this build has st-tcp");
        let e = bad("mechanism = \"st-tcp\"", "mechanism = \"tcp\"");
        assert!(e.starts_with("line 19: service.mechanism: \"tcp\" is not one of"), "{e}");
        let e = bad("name = \"beta\"", "name = \"alpha\"");
        assert_eq!(e, "line 12: node.name: \"alpha\" is used twice");
        let e = bad("addr = \"10.77.0.12\"", "addr = \"10.77.0.11\"");
        assert_eq!(e, "line 13: node.addr: 10.77.0.11 is node \"alpha\"'s too");
        let e = bad("addr = \"10.77.0.12\"", "addr = \"ten\"");
        assert_eq!(e, "line 13: node.addr: \"ten\" is not an IPv4 address");
        let e = bad("primary = \"alpha\"", "primary = \"beta\"");
        assert_eq!(e, "line 22: service.backup: the same node as the primary");
        let e = bad("retain_kb = 8192", "retain_kb = 1");
        assert_eq!(e, "line 18: service \"web\" on node \"beta\": retain_kb: 1 is outside 64..=1048576");
        let e = bad("heartbeat_ms = 50", "heartbeat_ms = \"fast\"");
        assert!(e.starts_with("line 3: invalid type"), "{e}");
        let e = bad("dev = \"eth1\"", "dev = \"eth 1\"");
        assert!(e.starts_with("line 18: service \"web\" on node \"beta\": dev: \"eth 1\" is not an interface name"), "{e}");
        let e = bad("[cluster]", "[cluster]\ncolour = \"red\"");
        assert!(e.starts_with("line 2: unknown field `colour`"), "{e}");
    }

    #[test]
    fn one_shadowed_service_per_cluster() {
        let two = format!("{CLUSTER}\n[[service]]\nname = \"mail\"\nmechanism = \"st-tcp\"\naddress = \"10.77.0.101:25\"\nprimary = \"alpha\"\nbackup = \"beta\"\n");
        let e = parse(&two, Some("alpha"), |_| false).unwrap_err();
        assert!(e.contains("service \"mail\": lazarus_shadow protects one service per cluster so far"), "{e}");
    }
}
