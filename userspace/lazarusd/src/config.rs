//! The node configuration file (TOML).
//!
//! ```toml
//! [core]
//! enabled = true
//! ports = "80 8000-8003"
//!
//! [[peer]]
//! name = "backup"
//! addr = "10.77.0.12"
//! transport = "udp"          # or "tcp"
//! probe_interval_ms = 1000
//! ```

use lazarus_proto::ports::PortSet;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    core: RawCore,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCore {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    ports: String,
}

impl Default for RawCore {
    fn default() -> Self {
        RawCore { enabled: true, ports: String::new() }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    addr: Ipv4Addr,
    #[serde(default = "udp")]
    transport: String,
    #[serde(default = "default_interval")]
    probe_interval_ms: u64,
    #[serde(default = "default_port")]
    port: u16,
}

fn udp() -> String {
    "udp".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_port() -> u16 {
    lazarus_proto::channel::DEFAULT_PORT
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub enabled: bool,
    pub ports: PortSet,
    pub peers: Vec<Peer>,
}

/// A peer to probe.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub tcp: bool,
    pub interval_ms: u64,
}

/// Load and validate `path`. Errors name the file, and the line and field when known.
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parse and validate configuration text.
pub fn parse(text: &str) -> Result<Config, String> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| match e.span() {
        Some(s) => format!("line {}: {}", line_of(text, s.start), e.message()),
        None => e.message().to_string(),
    })?;
    let ports = PortSet::parse(raw.core.ports.as_bytes()).map_err(|e| format!("core.ports: {e}"))?;
    let mut peers = Vec::new();
    for (i, p) in raw.peer.iter().enumerate() {
        let tcp = match p.transport.as_str() {
            "udp" => false,
            "tcp" => true,
            other => return Err(format!("peer[{i}].transport: \"{other}\" is not udp or tcp")),
        };
        if !(10..=3_600_000).contains(&p.probe_interval_ms) {
            return Err(format!("peer[{i}].probe_interval_ms: {} is outside 10..=3600000", p.probe_interval_ms));
        }
        if p.port == 0 {
            return Err(format!("peer[{i}].port: 0 is not a port"));
        }
        if peers.iter().any(|q: &Peer| q.name == p.name) {
            return Err(format!("peer[{i}].name: \"{}\" is used twice", p.name));
        }
        peers.push(Peer { name: p.name.clone(), addr: p.addr, port: p.port, tcp, interval_ms: p.probe_interval_ms });
    }
    Ok(Config { enabled: raw.core.enabled, ports, peers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let c = parse(
            r#"
[core]
enabled = false
ports = "80, 8000-8001"

[[peer]]
name = "b"
addr = "10.77.0.12"
transport = "tcp"
probe_interval_ms = 200
"#,
        )
        .unwrap();
        assert!(!c.enabled);
        assert_eq!(c.ports.as_slice(), &[80, 8000, 8001]);
        assert_eq!(c.peers.len(), 1);
        assert!(c.peers[0].tcp);
        assert_eq!(c.peers[0].port, 7400);
    }

    #[test]
    fn empty_is_default() {
        let c = parse("").unwrap();
        assert!(c.enabled);
        assert!(c.ports.is_empty());
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse("[core]\nenabled = true\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[core]\nports = \"80 http\"\n").unwrap_err();
        assert!(e.starts_with("core.ports:"), "{e}");
        let e = parse("[[peer]]\nname='a'\naddr='1.2.3.4'\ntransport='sctp'\n").unwrap_err();
        assert!(e.contains("peer[0].transport"), "{e}");
        let e = parse("[[peer]]\nname='a'\naddr='1.2.3.400'\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse("[[peer]]\nname='a'\naddr='1.2.3.4'\nprobe_interval_ms=1\n").unwrap_err();
        assert!(e.contains("probe_interval_ms"), "{e}");
    }
}
