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
//!
//! [shadow]                   # optional: without it the shadow module is left alone
//! role = "backup"            # or "primary"
//! service = "10.77.0.100:8080"
//! peer = "10.77.0.11"        # the other node's own address
//! dev = "lz0"                # client segment interface (required)
//! heartbeat_ms = 100         # 10..=10000
//! beat_port = 7401
//! max_conns = 16384          # 16..=1048576
//! retain_kb = 16384          # 64..=1048576; primary: client bytes kept for the backup
//! max_delay_fin_ms = 500     # 0..=10000; primary: FIN hold while the backup lags (0: never)
//! app_max_lag_kb = 1024      # >= 1; report this node's program lagging its twin by more ...
//! app_max_lag_ms = 2000      # 0..=60000; ... for this long
//! auto_takeover = true       # backup: fence and take over when the primary fails
//! fence = ["/usr/local/sbin/fence-primary", "10.77.0.11"]
//! fence_timeout_ms = 5000
//! key_file = "/etc/lazarus/cluster.key"  # 16-64 bytes, mode 0600, the same on both nodes:
//!                            # heartbeats and progress reports are then authenticated
//! ```
//!
//! A relative `key_file` is taken from the configuration file's directory.
//!
//! ```toml
//! [metrics]                  # optional: Prometheus text format at /metrics
//! listen = "127.0.0.1:9477"  # read at start; a change needs a restart
//! ```

use lazarus_proto::ports::PortSet;
use lznl::{ClusterKey, ShadowConfig, ShadowRole};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    core: RawCore,
    #[serde(default)]
    peer: Vec<RawPeer>,
    shadow: Option<RawShadow>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    listen: String,
}

/// Numbers are read wide and range-checked here, so that an error names the field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShadow {
    pub(crate) role: String,
    pub(crate) service: String,
    pub(crate) peer: String,
    pub(crate) dev: Option<String>,
    pub(crate) heartbeat_ms: Option<i64>,
    pub(crate) beat_port: Option<i64>,
    pub(crate) max_conns: Option<i64>,
    pub(crate) retain_kb: Option<i64>,
    pub(crate) max_delay_fin_ms: Option<i64>,
    pub(crate) app_max_lag_kb: Option<i64>,
    pub(crate) app_max_lag_ms: Option<i64>,
    pub(crate) auto_takeover: Option<bool>,
    pub(crate) fence: Option<Vec<String>>,
    pub(crate) fence_timeout_ms: Option<i64>,
    pub(crate) key_file: Option<String>,
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
    /// The shadowed service; `None` leaves the shadow module alone.
    pub shadow: Option<Shadow>,
    /// Where to serve Prometheus metrics; `None`: not served. Read at start only.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The `[shadow]` section: this node's part in a shadowed (ST-TCP) service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// Primary or backup (never none).
    pub role: ShadowRole,
    pub service: SocketAddrV4,
    pub peer: Ipv4Addr,
    pub dev: Option<String>,
    pub heartbeat_ms: u32,
    pub beat_port: u16,
    pub max_conns: u32,
    /// Primary: client bytes kept until the backup's TCP has them, in KiB over all
    /// connections.
    pub retain_kb: u32,
    /// Primary: how long a FIN is held while the backup's program has not produced it
    /// too (0: never held).
    pub max_delay_fin_ms: u32,
    /// Report this node's program lagging its twin's output by more than this many
    /// KiB ...
    pub app_max_lag_kb: u32,
    /// ... for at least this long.
    pub app_max_lag_ms: u32,
    /// Set on a backup with `auto_takeover`: how to fence the primary.
    pub failover: Option<Failover>,
    /// Where the cluster key is, as written in the file.
    pub key_file: Option<PathBuf>,
    /// The cluster key, read by [`load`] (never by [`parse`]).
    pub key: Option<ClusterKey>,
}

impl Shadow {
    /// The full `configure` request for this service.
    pub fn request(&self) -> ShadowConfig {
        ShadowConfig {
            role: self.role,
            service: Some(self.service),
            peer: Some(self.peer),
            beat_port: Some(self.beat_port),
            ifname: self.dev.clone(),
            heartbeat_ms: Some(self.heartbeat_ms),
            max_conns: Some(self.max_conns),
            retain_kb: Some(self.retain_kb),
            max_delay_fin_ms: Some(self.max_delay_fin_ms),
            app_max_lag_kb: Some(self.app_max_lag_kb),
            app_max_lag_ms: Some(self.app_max_lag_ms),
            key: self.key.clone(),
        }
    }
}

/// Automatic takeover on a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// The fence command and its arguments.
    pub fence: Vec<String>,
    /// The fence command is killed after this long, and counts as failed.
    pub fence_timeout: Duration,
}

/// Defaults of the `[shadow]` section.
pub const SHADOW_HEARTBEAT_MS: u32 = 100;
pub const SHADOW_MAX_CONNS: u32 = 16384;
pub const SHADOW_RETAIN_KB: u32 = 16384;
pub const SHADOW_MAX_DELAY_FIN_MS: u32 = 500;
pub const SHADOW_APP_MAX_LAG_KB: u32 = 1024;
pub const SHADOW_APP_MAX_LAG_MS: u32 = 2000;
/// The module keeps the lag limit in bytes in a u32.
const MAX_APP_MAX_LAG_KB: i64 = (u32::MAX / 1024) as i64;
pub const SHADOW_FENCE_TIMEOUT_MS: u64 = 5000;

/// A peer to probe.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub tcp: bool,
    pub interval_ms: u64,
}

/// Load and validate `path`, a node file or a cluster file (see `cluster.rs`; `node`
/// names this node in it, or else it is found by address). Errors name the file, and
/// the line and field when known. Beyond parsing, this checks that the fence command
/// can be run and reads the key.
pub fn load(path: &Path, node: Option<&str>) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = if crate::cluster::is_cluster_file(&text) {
        crate::cluster::parse(&text, node, crate::cluster::is_local)
    } else if let Some(n) = node {
        Err(format!("--node {n}: only for a cluster file (one with a [cluster] table)"))
    } else {
        parse(&text)
    };
    let mut cfg = parsed.map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(f) = cfg.shadow.as_ref().and_then(|s| s.failover.as_ref()) {
        check_program(&f.fence[0]).map_err(|e| format!("{}: shadow.fence: {e}", path.display()))?;
    }
    if let Some(s) = cfg.shadow.as_mut() {
        if let Some(k) = &s.key_file {
            let at = path.parent().unwrap_or(Path::new(".")).join(k);
            s.key = Some(read_key(&at).map_err(|e| format!("{}: shadow.key_file: {e}", path.display()))?);
        }
    }
    Ok(cfg)
}

/// A cluster key file: only its owner may read it.
pub fn read_key(path: &Path) -> Result<ClusterKey, String> {
    ClusterKey::from_secret_file(path)
}

/// A command that names an executable file, directly or through `PATH`: found out
/// now rather than when the primary has failed.
pub fn check_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return match executable(Path::new(program)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{program} is not an executable file")),
            Err(e) => Err(format!("{program}: {e}")),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| executable(&d.join(program)).unwrap_or(false)) {
        Ok(())
    } else {
        Err(format!("{program} is not found in PATH"))
    }
}

fn in_range(field: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64, String> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("shadow.{field}: {v} is outside {lo}..={hi}"))
    }
}

/// Whether `d` can be a Linux interface name.
fn is_ifname(d: &str) -> bool {
    !d.is_empty() && d.len() <= 15 && d != "." && d != ".." && !d.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

pub(crate) fn parse_shadow(r: &RawShadow) -> Result<Shadow, String> {
    let role = match r.role.as_str() {
        "primary" => ShadowRole::Primary,
        "backup" => ShadowRole::Backup,
        other => return Err(format!("shadow.role: \"{other}\" is not primary or backup")),
    };
    let service: SocketAddrV4 =
        r.service.parse().map_err(|_| format!("shadow.service: \"{}\" is not ADDR:PORT (for example \"10.77.0.100:8080\")", r.service))?;
    if service.port() == 0 {
        return Err(format!("shadow.service: \"{}\": the port must be 1-65535", r.service));
    }
    let ip = service.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("shadow.service: {ip} cannot be a service address"));
    }
    let peer: Ipv4Addr = r.peer.parse().map_err(|_| format!("shadow.peer: \"{}\" is not an IPv4 address", r.peer))?;
    if peer.is_unspecified() || peer.is_broadcast() || peer.is_multicast() {
        return Err(format!("shadow.peer: {peer} cannot be a node's address"));
    }
    if peer == *ip {
        return Err(format!("shadow.peer: {peer} is the service address; give the other node's own address"));
    }
    if let Some(d) = &r.dev {
        if !is_ifname(d) {
            return Err(format!("shadow.dev: \"{d}\" is not an interface name (1-15 bytes, no '/', ':' or spaces)"));
        }
    } else {
        // A backup listens there; a primary sends kept client segments to the backup there.
        return Err("shadow.dev: required (the interface on the client segment)".into());
    }
    let heartbeat_ms = in_range("heartbeat_ms", r.heartbeat_ms, SHADOW_HEARTBEAT_MS.into(), 10, 10_000)? as u32;
    let beat_port = in_range("beat_port", r.beat_port, lazarus_proto::beat::DEFAULT_PORT.into(), 1, 65_535)? as u16;
    let max_conns = in_range("max_conns", r.max_conns, SHADOW_MAX_CONNS.into(), 16, 1_048_576)? as u32;
    let retain_kb = in_range("retain_kb", r.retain_kb, SHADOW_RETAIN_KB.into(), 64, 1_048_576)? as u32;
    let max_delay_fin_ms = in_range("max_delay_fin_ms", r.max_delay_fin_ms, SHADOW_MAX_DELAY_FIN_MS.into(), 0, 10_000)? as u32;
    let app_max_lag_kb = in_range("app_max_lag_kb", r.app_max_lag_kb, SHADOW_APP_MAX_LAG_KB.into(), 1, MAX_APP_MAX_LAG_KB)? as u32;
    let app_max_lag_ms = in_range("app_max_lag_ms", r.app_max_lag_ms, SHADOW_APP_MAX_LAG_MS.into(), 0, 60_000)? as u32;
    let fence_timeout_ms = in_range("fence_timeout_ms", r.fence_timeout_ms, SHADOW_FENCE_TIMEOUT_MS as i64, 10, 600_000)? as u64;
    if let Some(f) = &r.fence {
        match f.first() {
            None => return Err("shadow.fence: empty; give the command and its arguments, for example [\"/usr/local/sbin/fence-primary\"]".into()),
            Some(p) if p.is_empty() => return Err("shadow.fence: the command (first element) is empty".into()),
            Some(_) => {}
        }
        if f.iter().any(|a| a.contains('\0')) {
            return Err("shadow.fence: an argument contains a NUL byte".into());
        }
    }
    // Only a backup takes over; on a primary the failover settings are not used.
    let failover = match (role, r.auto_takeover.unwrap_or(true), &r.fence) {
        (ShadowRole::Backup, true, Some(f)) => Some(Failover { fence: f.clone(), fence_timeout: Duration::from_millis(fence_timeout_ms) }),
        (ShadowRole::Backup, true, None) => {
            return Err("shadow.fence: required on a backup with auto_takeover (the command that stops the primary from sending); or set auto_takeover = false".into())
        }
        _ => None,
    };
    Ok(Shadow {
        role,
        service,
        peer,
        dev: r.dev.clone(),
        heartbeat_ms,
        beat_port,
        max_conns,
        retain_kb,
        max_delay_fin_ms,
        app_max_lag_kb,
        app_max_lag_ms,
        failover,
        key_file: match &r.key_file {
            Some(k) if k.is_empty() => return Err("shadow.key_file: empty; give the path of the cluster key".into()),
            Some(k) => Some(PathBuf::from(k)),
            None => None,
        },
        key: None,
    })
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The `[metrics]` section.
pub(crate) fn parse_metrics(m: Option<&RawMetrics>) -> Result<Option<std::net::SocketAddr>, String> {
    match m {
        None => Ok(None),
        Some(m) => m.listen.parse().map(Some).map_err(|_| {
            format!("metrics.listen: \"{}\" is not an address and port such as \"127.0.0.1:9477\"", m.listen)
        }),
    }
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
    let shadow = raw.shadow.as_ref().map(parse_shadow).transpose()?;
    let metrics = parse_metrics(raw.metrics.as_ref())?;
    Ok(Config { enabled: raw.core.enabled, ports, peers, shadow, metrics })
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
        assert!(c.shadow.is_none());
    }

    const BACKUP: &str = r#"
[shadow]
role = "backup"
service = "10.77.0.100:8080"
peer = "10.77.0.11"
dev = "lz0"
heartbeat_ms = 50
beat_port = 7402
max_conns = 1024
retain_kb = 8192
max_delay_fin_ms = 250
app_max_lag_kb = 512
app_max_lag_ms = 3000
auto_takeover = true
fence = ["/usr/local/sbin/fence-primary", "10.77.0.11"]
fence_timeout_ms = 3000
"#;

    #[test]
    fn shadow_backup() {
        let s = parse(BACKUP).unwrap().shadow.unwrap();
        assert_eq!(s.role, ShadowRole::Backup);
        assert_eq!(s.service, "10.77.0.100:8080".parse().unwrap());
        assert_eq!(s.peer, Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(s.dev.as_deref(), Some("lz0"));
        assert_eq!((s.heartbeat_ms, s.beat_port, s.max_conns), (50, 7402, 1024));
        assert_eq!((s.retain_kb, s.max_delay_fin_ms, s.app_max_lag_kb, s.app_max_lag_ms), (8192, 250, 512, 3000));
        let f = s.failover.as_ref().unwrap();
        assert_eq!(f.fence, ["/usr/local/sbin/fence-primary", "10.77.0.11"]);
        assert_eq!(f.fence_timeout, Duration::from_millis(3000));
        let r = s.request();
        assert_eq!(r.role, ShadowRole::Backup);
        assert_eq!(r.service, Some(s.service));
        assert_eq!(r.ifname.as_deref(), Some("lz0"));
        assert_eq!((r.beat_port, r.heartbeat_ms, r.max_conns), (Some(7402), Some(50), Some(1024)));
        assert_eq!((r.retain_kb, r.max_delay_fin_ms, r.app_max_lag_kb, r.app_max_lag_ms), (Some(8192), Some(250), Some(512), Some(3000)));
    }

    #[test]
    fn shadow_defaults() {
        let s = parse("[shadow]\nrole = 'primary'\nservice = '10.77.0.100:80'\npeer = '10.77.0.12'\ndev = 'lz0'\n").unwrap().shadow.unwrap();
        assert_eq!(s.role, ShadowRole::Primary);
        assert_eq!(s.dev.as_deref(), Some("lz0"));
        let e = parse("[shadow]\nrole = 'primary'\nservice = '10.77.0.100:80'\npeer = '10.77.0.12'\n").unwrap_err();
        assert!(e.starts_with("shadow.dev: required"), "{e}");
        assert_eq!((s.heartbeat_ms, s.beat_port, s.max_conns), (100, 7401, 16384));
        assert_eq!((s.retain_kb, s.max_delay_fin_ms, s.app_max_lag_kb, s.app_max_lag_ms), (16384, 500, 1024, 2000), "the module's defaults");
        let r = s.request();
        assert_eq!((r.retain_kb, r.max_delay_fin_ms, r.app_max_lag_kb, r.app_max_lag_ms), (Some(16384), Some(500), Some(1024), Some(2000)));
        assert_eq!(s.failover, None, "a primary never takes over");

        let s = parse("[shadow]\nrole='backup'\nservice='10.0.0.1:80'\npeer='10.0.0.2'\ndev='eth0'\nfence=['true']\n").unwrap().shadow.unwrap();
        assert_eq!(s.failover.unwrap().fence_timeout, Duration::from_millis(5000));

        let s = parse("[shadow]\nrole='backup'\nservice='10.0.0.1:80'\npeer='10.0.0.2'\ndev='eth0'\nauto_takeover=false\n").unwrap().shadow.unwrap();
        assert_eq!(s.failover, None, "no fence needed without auto_takeover");
    }

    #[test]
    fn shadow_settings_accept_their_bounds() {
        for (field, value) in [
            ("retain_kb", 64),
            ("retain_kb", 1_048_576),
            ("max_delay_fin_ms", 0),
            ("max_delay_fin_ms", 10_000),
            ("app_max_lag_kb", 1),
            ("app_max_lag_kb", 4_194_303),
            ("app_max_lag_ms", 0),
            ("app_max_lag_ms", 60_000),
        ] {
            let text = BACKUP.replace(&format!("\n{field} = "), &format!("\n{field} = {value}\n#"));
            let s = parse(&text).unwrap_or_else(|e| panic!("{field} = {value}: {e}")).shadow.unwrap();
            let got = match field {
                "retain_kb" => s.retain_kb,
                "max_delay_fin_ms" => s.max_delay_fin_ms,
                "app_max_lag_kb" => s.app_max_lag_kb,
                _ => s.app_max_lag_ms,
            };
            assert_eq!(got, value, "{field}");
        }
    }

    #[test]
    fn shadow_errors_name_the_field() {
        let cases = [
            ("role", "'master'", "shadow.role:"),
            ("role", "'none'", "shadow.role:"),
            ("service", "'10.77.0.100'", "shadow.service:"),
            ("service", "'10.77.0.100:0'", "shadow.service:"),
            ("service", "'10.77.0.100:70000'", "shadow.service:"),
            ("service", "'0.0.0.0:80'", "shadow.service:"),
            ("service", "'host:80'", "shadow.service:"),
            ("peer", "'10.77.0.300'", "shadow.peer:"),
            ("peer", "'10.77.0.100'", "shadow.peer:"),
            ("dev", "''", "shadow.dev:"),
            ("dev", "'abcdefghijklmnop'", "shadow.dev:"),
            ("dev", "'a/b'", "shadow.dev:"),
            ("heartbeat_ms", "5", "shadow.heartbeat_ms:"),
            ("heartbeat_ms", "10001", "shadow.heartbeat_ms:"),
            ("beat_port", "0", "shadow.beat_port:"),
            ("beat_port", "65536", "shadow.beat_port:"),
            ("max_conns", "15", "shadow.max_conns:"),
            ("max_conns", "1048577", "shadow.max_conns:"),
            ("retain_kb", "63", "shadow.retain_kb: 63 is outside 64..=1048576"),
            ("retain_kb", "1048577", "shadow.retain_kb: 1048577 is outside 64..=1048576"),
            ("retain_kb", "-1", "shadow.retain_kb:"),
            ("max_delay_fin_ms", "-1", "shadow.max_delay_fin_ms: -1 is outside 0..=10000"),
            ("max_delay_fin_ms", "10001", "shadow.max_delay_fin_ms: 10001 is outside 0..=10000"),
            ("app_max_lag_kb", "0", "shadow.app_max_lag_kb: 0 is outside 1..=4194303"),
            ("app_max_lag_kb", "4194304", "shadow.app_max_lag_kb:"),
            ("app_max_lag_ms", "-5", "shadow.app_max_lag_ms: -5 is outside 0..=60000"),
            ("app_max_lag_ms", "60001", "shadow.app_max_lag_ms: 60001 is outside 0..=60000"),
            ("fence", "[]", "shadow.fence:"),
            ("fence", "['', 'x']", "shadow.fence:"),
            ("fence_timeout_ms", "0", "shadow.fence_timeout_ms:"),
        ];
        for (field, value, want) in cases {
            let text: String = BACKUP
                .lines()
                .map(|l| if l.starts_with(&format!("{field} =")) { format!("{field} = {value}") } else { l.to_string() })
                .collect::<Vec<_>>()
                .join("\n");
            assert!(text.contains(&format!("{field} = {value}")), "{field}");
            let e = parse(&text).unwrap_err();
            assert!(e.starts_with(want), "{field} = {value}: {e}");
        }
    }

    #[test]
    fn metrics_section() {
        assert_eq!(parse("").unwrap().metrics, None);
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9477\"\n").unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.starts_with("metrics.listen: \"localhost\" is not an address and port"), "{e}");
        let e = parse("[metrics]\nport = 1\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn cluster_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lazarusd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("lazarus.toml");
        let key = dir.join("cluster.key");
        // Relative to the configuration file; no fence command so that load() does
        // not look for one.
        let text = BACKUP.replace("auto_takeover = true", "auto_takeover = false") + "key_file = \"cluster.key\"\n";
        std::fs::write(&cfg, &text).unwrap();
        let e = load(&cfg, None).unwrap_err();
        assert!(e.contains("shadow.key_file:") && e.contains("cluster.key"), "{e}");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&cfg, None).unwrap_err();
        assert!(e.contains("open to group or others (mode 0644)") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&cfg, None).unwrap();
        let want = ClusterKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let s = c.shadow.unwrap();
        assert_eq!(s.key.as_ref(), Some(&want));
        assert_eq!(s.request().key, Some(want));
        std::fs::write(&key, "short").unwrap();
        let e = load(&cfg, None).unwrap_err();
        assert!(e.contains("16 to 64 bytes, not 5"), "{e}");
        assert!(parse(&(BACKUP.to_string() + "key_file = \"\"\n")).unwrap_err().starts_with("shadow.key_file: empty"));
        // Without a key file there is no key.
        assert_eq!(parse(BACKUP).unwrap().shadow.unwrap().request().key, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shadow_missing_and_unknown_fields() {
        let without = |field: &str| BACKUP.lines().filter(|l| !l.starts_with(&format!("{field} ="))).collect::<Vec<_>>().join("\n");
        // A node needs its interface and, a backup with auto_takeover, a fence command.
        let e = parse(&without("dev")).unwrap_err();
        assert!(e.starts_with("shadow.dev: required"), "{e}");
        let e = parse(&without("fence")).unwrap_err();
        assert!(e.starts_with("shadow.fence: required on a backup with auto_takeover"), "{e}");
        for field in ["role", "service", "peer"] {
            let e = parse(&without(field)).unwrap_err();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        let e = parse(&format!("{BACKUP}fence_timeout = 1\n")).unwrap_err();
        assert!(e.starts_with("line 17:") && e.contains("fence_timeout"), "{e}");
        let e = parse(&BACKUP.replace("retain_kb = 8192", "retain_kb = 8192.5")).unwrap_err();
        assert!(e.starts_with("line 10:") && e.contains("expected i64"), "{e}");
        let e = parse(&BACKUP.replace("heartbeat_ms = 50", "heartbeat_ms = \"50\"")).unwrap_err();
        assert!(e.starts_with("line 7:"), "{e}");
    }

    #[test]
    fn fence_program_is_checked() {
        assert!(check_program("/bin/sh").is_ok());
        assert!(check_program("sh").is_ok());
        assert!(check_program("/nonexistent/fence").unwrap_err().contains("/nonexistent/fence"));
        let plain = std::env::temp_dir().join(format!("lazarusd-test-{}", std::process::id()));
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let e = check_program(plain.to_str().unwrap());
        std::fs::remove_file(&plain).unwrap();
        assert!(e.unwrap_err().contains("not an executable file"));
        assert!(check_program("no-such-fence-command").unwrap_err().contains("not found in PATH"));
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
