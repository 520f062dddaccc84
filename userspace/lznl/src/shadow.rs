//! Client for the `lazarus_shadow` generic netlink family (ST-TCP): a backup node
//! shadows every connection of a service and takes over when the primary fails.
//! Constants come from `lazarus_proto::genl_shadow`.
//!
//! On the wire, addresses are big-endian u32 (the octets in order), other integers
//! are in host order, `ifname` is NUL-terminated.

use crate::attrs::Attrs;
use crate::{enum_name, nest_attrs, Error, Events, Genl, RawAttr};
use lazarus_proto::genl_shadow::{self as spec, cmd, conn_attr as c, shadow_attr as a, stats_attr as st};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

/// Bits of a connection's `flags` attribute.
pub mod conn_flags {
    /// The client sent FIN.
    pub const CLIENT_FIN: u8 = 1 << 0;
    /// The server side sent FIN.
    pub const SERVER_FIN: u8 = 1 << 1;
    /// Either side sent RST.
    pub const RST: u8 = 1 << 2;
    /// The two SYN-ACKs disagreed on window scale, SACK or timestamps.
    pub const OPTIONS_MISMATCH: u8 = 1 << 3;
}

/// A node's role for the shadowed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowRole {
    /// No service configured.
    None,
    /// Serves the clients.
    Primary,
    /// Shadows every connection silently and takes over when the primary fails.
    Backup,
}

impl ShadowRole {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            ShadowRole::None => spec::role::NONE,
            ShadowRole::Primary => spec::role::PRIMARY,
            ShadowRole::Backup => spec::role::BACKUP,
        }
    }

    /// From the wire value.
    pub fn from_code(v: u8) -> Option<Self> {
        match v {
            spec::role::NONE => Some(ShadowRole::None),
            spec::role::PRIMARY => Some(ShadowRole::Primary),
            spec::role::BACKUP => Some(ShadowRole::Backup),
            _ => None,
        }
    }

    /// The spec's name: `none`, `primary` or `backup`.
    pub fn name(self) -> &'static str {
        spec::role::NAMES[(self.code() - spec::role::FIRST) as usize]
    }
}

impl fmt::Display for ShadowRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ShadowRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [ShadowRole::None, ShadowRole::Primary, ShadowRole::Backup]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("\"{s}\" is not none, primary or backup"))
    }
}

impl Serialize for ShadowRole {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Counters of the shadow module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShadowStats {
    pub client_segments: u64,
    pub swallowed: u64,
    pub translated_in: u64,
    pub translated_out: u64,
    pub unmapped: u64,
    pub table_full: u64,
    pub options_mismatch: u64,
    pub arp_withheld: u64,
    pub beats_sent: u64,
    pub beats_received: u64,
    pub beats_rejected: u64,
    pub prompts: u64,
    pub parse_errors: u64,
    /// Client acknowledgments cut back to what this node's program had sent (it lags
    /// the primary).
    pub acks_clamped: u64,
    /// Progress reports (datagrams of per-connection records) sent to the peer.
    pub progress_sent: u64,
    /// Progress reports accepted from the peer.
    pub progress_received: u64,
    /// Progress reports that were malformed, from elsewhere or for another service.
    pub progress_rejected: u64,
    /// Client segments the primary kept for the backup.
    pub retained_segments: u64,
    /// Requests for missed client bytes: sent (backup) or received (primary).
    pub resend_requests: u64,
    /// Kept client segments the primary sent again to the backup.
    pub resent_segments: u64,
    /// Times the retention budget overflowed.
    pub retention_overflows: u64,
    /// Connections the backup never reported; the primary stopped keeping their bytes.
    pub unprotected_conns: u64,
    /// FIN segments the primary held because its backup had not closed yet.
    pub fins_held: u64,
    /// Connections on which this node's program lagged its twin beyond the limits.
    pub app_lag_reports: u64,
    /// Connections reset after a takeover: this node lacked client bytes the old primary had.
    pub conns_reset: u64,
    /// Peer datagrams refused: too short for an authentication trailer ...
    pub auth_truncated: u64,
    /// ... a wrong tag (forged, altered, another key, reflected) ...
    pub auth_forged: u64,
    /// ... not newer than one already accepted ...
    pub auth_replayed: u64,
    /// ... or stamped over 60 s away from this node's clock.
    pub auth_stale: u64,
    /// RST segments the primary held because its backup had not reset the connection.
    pub rsts_held: u64,
}

impl ShadowStats {
    fn from_nest(nest: &[u8]) -> Result<Self, Error> {
        let n = nest_attrs(nest);
        let get = |id, name| n.u64(id).ok_or(Error::Reply(name));
        Ok(ShadowStats {
            client_segments: get(st::CLIENT_SEGMENTS, "stats.client-segments")?,
            swallowed: get(st::SWALLOWED, "stats.swallowed")?,
            translated_in: get(st::TRANSLATED_IN, "stats.translated-in")?,
            translated_out: get(st::TRANSLATED_OUT, "stats.translated-out")?,
            unmapped: get(st::UNMAPPED, "stats.unmapped")?,
            table_full: get(st::TABLE_FULL, "stats.table-full")?,
            options_mismatch: get(st::OPTIONS_MISMATCH, "stats.options-mismatch")?,
            arp_withheld: get(st::ARP_WITHHELD, "stats.arp-withheld")?,
            beats_sent: get(st::BEATS_SENT, "stats.beats-sent")?,
            beats_received: get(st::BEATS_RECEIVED, "stats.beats-received")?,
            beats_rejected: get(st::BEATS_REJECTED, "stats.beats-rejected")?,
            prompts: get(st::PROMPTS, "stats.prompts")?,
            parse_errors: get(st::PARSE_ERRORS, "stats.parse-errors")?,
            acks_clamped: get(st::ACKS_CLAMPED, "stats.acks-clamped")?,
            progress_sent: get(st::PROGRESS_SENT, "stats.progress-sent")?,
            progress_received: get(st::PROGRESS_RECEIVED, "stats.progress-received")?,
            progress_rejected: get(st::PROGRESS_REJECTED, "stats.progress-rejected")?,
            retained_segments: get(st::RETAINED_SEGMENTS, "stats.retained-segments")?,
            resend_requests: get(st::RESEND_REQUESTS, "stats.resend-requests")?,
            resent_segments: get(st::RESENT_SEGMENTS, "stats.resent-segments")?,
            retention_overflows: get(st::RETENTION_OVERFLOWS, "stats.retention-overflows")?,
            unprotected_conns: get(st::UNPROTECTED_CONNS, "stats.unprotected-conns")?,
            fins_held: get(st::FINS_HELD, "stats.fins-held")?,
            app_lag_reports: get(st::APP_LAG_REPORTS, "stats.app-lag-reports")?,
            conns_reset: get(st::CONNS_RESET, "stats.conns-reset")?,
            auth_truncated: get(st::AUTH_TRUNCATED, "stats.auth-truncated")?,
            auth_forged: get(st::AUTH_FORGED, "stats.auth-forged")?,
            auth_replayed: get(st::AUTH_REPLAYED, "stats.auth-replayed")?,
            auth_stale: get(st::AUTH_STALE, "stats.auth-stale")?,
            rsts_held: get(st::RSTS_HELD, "stats.rsts-held")?,
        })
    }
}

/// Status of the shadow module (the `get-status` reply).
///
/// The service attributes are `None` when the module did not report them (no service
/// configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowStatus {
    pub version: String,
    /// `none`, `primary` or `backup`.
    pub role: String,
    pub service_addr: Option<Ipv4Addr>,
    pub service_port: Option<u16>,
    pub peer_addr: Option<Ipv4Addr>,
    pub beat_port: Option<u16>,
    pub ifname: Option<String>,
    pub heartbeat_ms: Option<u32>,
    pub max_conns: Option<u32>,
    /// Retention budget of the primary, in KiB over all connections.
    pub retain_kb: Option<u32>,
    /// How long the primary holds a FIN its backup has not produced yet (0: never).
    pub max_delay_fin_ms: Option<u32>,
    /// Lag of this node's program behind its twin's output that is reported ...
    pub app_max_lag_kb: Option<u32>,
    /// ... once it lasts this long.
    pub app_max_lag_ms: Option<u32>,
    /// This node's output for the service reaches clients.
    pub gate_open: bool,
    /// `unknown`, `alive` or `failed`.
    pub peer_state: String,
    /// Milliseconds since the last fresh heartbeat; `None` before the first one.
    pub peer_silence_ms: Option<u32>,
    /// The peer is alive and (on a primary) the retention has not overflowed: a
    /// failure of either node now loses no client byte.
    pub fault_tolerant: Option<bool>,
    /// Client bytes currently kept for the backup (primary).
    pub retained_bytes: Option<u64>,
    /// Fingerprint of the cluster key; 0 when the peer link is not authenticated.
    pub key_fingerprint: Option<u64>,
    /// Connections in the table.
    pub conns: u32,
    /// Planned switchover. Primary: it stepped down (its output is withheld).
    /// Backup: its primary asks it to take over.
    pub stepping_down: bool,
    /// Primary: its backup took over after it stepped down.
    pub handed_over: bool,
    /// Backup: connections still short of client bytes the primary had; a planned
    /// takeover waits for 0.
    pub behind: Option<u32>,
    /// Configured as backup and has taken over: serves the service, but keeps a
    /// backup's hooks and peer-link role until configured afresh.
    pub took_over: bool,
    /// After a takeover: connections taken over that are still open. Deconfiguring
    /// breaks them; configure this node afresh as primary once this is 0.
    pub translating: Option<u32>,
    pub stats: ShadowStats,
}

impl ShadowStatus {
    /// Decode a `get-status` reply.
    pub fn from_attrs(r: &Attrs) -> Result<Self, Error> {
        let role = r.u8(a::ROLE).ok_or(Error::Reply("role"))?;
        let peer_state = r.u8(a::PEER_STATE).ok_or(Error::Reply("peer-state"))?;
        Ok(ShadowStatus {
            version: r.string(a::VERSION).ok_or(Error::Reply("version"))?,
            role: enum_name(spec::role::NAMES, spec::role::FIRST, role),
            service_addr: ipv4(r, a::SERVICE_ADDR),
            service_port: r.u16(a::SERVICE_PORT),
            peer_addr: ipv4(r, a::PEER_ADDR),
            beat_port: r.u16(a::BEAT_PORT),
            ifname: r.string(a::IFNAME).filter(|s| !s.is_empty()),
            heartbeat_ms: r.u32(a::HEARTBEAT_MS),
            max_conns: r.u32(a::MAX_CONNS),
            retain_kb: r.u32(a::RETAIN_KB),
            max_delay_fin_ms: r.u32(a::MAX_DELAY_FIN_MS),
            app_max_lag_kb: r.u32(a::APP_MAX_LAG_KB),
            app_max_lag_ms: r.u32(a::APP_MAX_LAG_MS),
            gate_open: r.u8(a::GATE_OPEN).ok_or(Error::Reply("gate-open"))? != 0,
            peer_state: enum_name(spec::peer_state::NAMES, spec::peer_state::FIRST, peer_state),
            peer_silence_ms: r.u32(a::PEER_SILENCE_MS),
            fault_tolerant: r.u8(a::FAULT_TOLERANT).map(|v| v != 0),
            retained_bytes: r.u64(a::RETAINED_BYTES),
            key_fingerprint: r.u64(a::KEY_FINGERPRINT),
            conns: r.u32(a::CONNS).ok_or(Error::Reply("conns"))?,
            stepping_down: r.u8(a::STEPPING_DOWN).is_some_and(|v| v != 0),
            handed_over: r.u8(a::HANDED_OVER).is_some_and(|v| v != 0),
            behind: r.u32(a::BEHIND),
            took_over: r.u8(a::TOOK_OVER).is_some_and(|v| v != 0),
            translating: r.u32(a::TRANSLATING),
            stats: ShadowStats::from_nest(r.get(a::STATS).ok_or(Error::Reply("stats"))?)?,
        })
    }

    /// The role as an enum; `None` for a value this build does not know.
    pub fn role(&self) -> Option<ShadowRole> {
        self.role.parse().ok()
    }

    /// The service address and port, when both were reported.
    pub fn service(&self) -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(self.service_addr?, self.service_port?))
    }
}

/// A `configure` request. Only the fields that are set are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    pub role: ShadowRole,
    pub service: Option<SocketAddrV4>,
    pub peer: Option<Ipv4Addr>,
    pub beat_port: Option<u16>,
    pub ifname: Option<String>,
    pub heartbeat_ms: Option<u32>,
    pub max_conns: Option<u32>,
    /// Primary: retention budget in KiB over all connections.
    pub retain_kb: Option<u32>,
    /// Primary: how long a FIN is held while the backup has not produced it (0: never).
    pub max_delay_fin_ms: Option<u32>,
    /// Report this node's program lagging its twin's output by more than this ...
    pub app_max_lag_kb: Option<u32>,
    /// ... for at least this long.
    pub app_max_lag_ms: Option<u32>,
    /// The cluster key that authenticates the peer link.
    pub key: Option<ClusterKey>,
}

/// A cluster key: 16 to 64 bytes, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// Shortest and longest keys the module accepts.
    pub const LEN: core::ops::RangeInclusive<usize> =
        lazarus_proto::auth::MIN_KEY_LEN..=lazarus_proto::auth::MAX_KEY_LEN;

    /// A key from its bytes; an error names the accepted lengths.
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if Self::LEN.contains(&bytes.len()) {
            Ok(ClusterKey(bytes))
        } else {
            Err(format!("a cluster key is {} to {} bytes, not {}", Self::LEN.start(), Self::LEN.end(), bytes.len()))
        }
    }

    /// A key from a file: its bytes, or, when the file is text, its content with
    /// surrounding whitespace removed (so `head -c 32 /dev/urandom | base64 > key`
    /// and a raw 32-byte file both work; a text key is used as its characters).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes = match std::str::from_utf8(&raw) {
            Ok(text) => text.trim().as_bytes().to_vec(),
            Err(_) => raw,
        };
        Self::new(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Like [`ClusterKey::from_file`], for a file only its owner may read (the key
    /// must stay secret); an error says how to fix the mode.
    pub fn from_secret_file(path: &std::path::Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is open to group or others (mode {:04o}); the key must be secret: chmod 600 it",
                path.display(),
                mode & 0o7777
            ));
        }
        Self::from_file(path)
    }

    /// The key's bytes, for sealing datagrams in userspace.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The module's fingerprint of this key (what `status` reports).
    pub fn fingerprint(&self) -> u64 {
        lazarus_proto::auth::Key::new(&self.0).map_or(0, |k| k.fingerprint())
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(fingerprint {:016x})", self.fingerprint())
    }
}

impl ShadowConfig {
    /// A request with only the role set.
    pub fn new(role: ShadowRole) -> Self {
        ShadowConfig {
            role,
            service: None,
            peer: None,
            beat_port: None,
            ifname: None,
            heartbeat_ms: None,
            max_conns: None,
            retain_kb: None,
            max_delay_fin_ms: None,
            app_max_lag_kb: None,
            app_max_lag_ms: None,
            key: None,
        }
    }

    /// The request's attributes.
    pub fn attrs(&self) -> Vec<RawAttr> {
        let mut v = vec![RawAttr::u8(a::ROLE, self.role.code())];
        if let Some(s) = self.service {
            v.push(RawAttr { id: a::SERVICE_ADDR, payload: s.ip().octets().to_vec() });
            v.push(RawAttr::u16(a::SERVICE_PORT, s.port()));
        }
        if let Some(p) = self.peer {
            v.push(RawAttr { id: a::PEER_ADDR, payload: p.octets().to_vec() });
        }
        if let Some(p) = self.beat_port {
            v.push(RawAttr::u16(a::BEAT_PORT, p));
        }
        if let Some(d) = &self.ifname {
            let mut payload = d.as_bytes().to_vec();
            payload.push(0);
            v.push(RawAttr { id: a::IFNAME, payload });
        }
        if let Some(h) = self.heartbeat_ms {
            v.push(RawAttr::u32(a::HEARTBEAT_MS, h));
        }
        if let Some(m) = self.max_conns {
            v.push(RawAttr::u32(a::MAX_CONNS, m));
        }
        for (id, value) in [
            (a::RETAIN_KB, self.retain_kb),
            (a::MAX_DELAY_FIN_MS, self.max_delay_fin_ms),
            (a::APP_MAX_LAG_KB, self.app_max_lag_kb),
            (a::APP_MAX_LAG_MS, self.app_max_lag_ms),
        ] {
            if let Some(x) = value {
                v.push(RawAttr::u32(id, x));
            }
        }
        if let Some(k) = &self.key {
            v.push(RawAttr { id: a::KEY, payload: k.0.clone() });
        }
        v
    }
}

/// The `takeover` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TakeoverReply {
    /// Connections now served by this node.
    pub conns: u32,
    /// Time the takeover itself took in the kernel (gate, prompts).
    pub takeover_ms: u32,
}

/// A planned takeover that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedTakeover {
    /// Connections now served by this node.
    pub conns: u32,
    /// Time the takeover itself took in the kernel (gate, prompts).
    pub takeover_ms: u32,
    /// From the request to the moment no connection was short of the primary's bytes.
    pub caught_up_ms: u32,
}

/// Why a planned takeover did not happen. The primary then serves again when its
/// step-down time runs out: nothing is lost either way.
#[derive(Debug)]
pub enum PlannedRefusal {
    /// Netlink failed, or the kernel refused the takeover.
    Netlink(Error),
    /// This node is not a backup with its gate closed.
    NotBackup,
    /// The primary's heartbeats do not ask for a takeover (not stepped down, or its
    /// step-down ran out).
    NotAsked,
    /// Some connections were still short of client bytes the primary had.
    Behind { conns: u32, waited_ms: u32 },
}

impl fmt::Display for PlannedRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlannedRefusal::Netlink(e) => write!(f, "{e}"),
            PlannedRefusal::NotBackup => f.write_str("this node is not a backup waiting to take over"),
            PlannedRefusal::NotAsked => {
                f.write_str("the primary has not stepped down (or its step-down ran out): run `lzctl shadow step-down` on it first")
            }
            PlannedRefusal::Behind { conns, waited_ms } => write!(
                f,
                "{conns} connection(s) still short of client bytes the primary had after {waited_ms} ms: \
                 not taking over (the primary serves again when its step-down time runs out)"
            ),
        }
    }
}

impl From<Error> for PlannedRefusal {
    fn from(e: Error) -> Self {
        PlannedRefusal::Netlink(e)
    }
}

/// One shadowed connection (a `conn-get` dump entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowConn {
    pub client_addr: Ipv4Addr,
    pub client_port: u16,
    /// The offsets are known.
    pub mapped: bool,
    /// Primary sequence number minus the backup's.
    pub seq_offset: Option<u32>,
    /// Primary timestamp clock minus the backup's.
    pub ts_offset: Option<u32>,
    /// One past the last client byte seen.
    pub client_next: Option<u32>,
    /// Highest acknowledgment from the client (primary space).
    pub client_acked: Option<u32>,
    /// The peer's next expected client byte, from its latest progress report.
    pub peer_next: Option<u32>,
    /// Client bytes kept for the backup on this connection (primary).
    pub retained: Option<u32>,
    /// The raw flags; decoded below.
    pub flags: u8,
    pub client_fin: bool,
    pub server_fin: bool,
    pub rst: bool,
    pub options_mismatch: bool,
}

impl ShadowConn {
    /// Decode one `conn` nest.
    pub fn from_nest(nest: &[u8]) -> Result<Self, Error> {
        let n = nest_attrs(nest);
        let flags = n.u8(c::FLAGS).unwrap_or(0);
        Ok(ShadowConn {
            client_addr: ipv4(&n, c::CLIENT_ADDR).ok_or(Error::Reply("conn.client-addr"))?,
            client_port: n.u16(c::CLIENT_PORT).ok_or(Error::Reply("conn.client-port"))?,
            mapped: n.u8(c::MAPPED).is_some_and(|v| v != 0),
            seq_offset: n.u32(c::SEQ_OFFSET),
            ts_offset: n.u32(c::TS_OFFSET),
            client_next: n.u32(c::CLIENT_NEXT),
            client_acked: n.u32(c::CLIENT_ACKED),
            peer_next: n.u32(c::PEER_NEXT),
            retained: n.u32(c::RETAINED),
            flags,
            client_fin: flags & conn_flags::CLIENT_FIN != 0,
            server_fin: flags & conn_flags::SERVER_FIN != 0,
            rst: flags & conn_flags::RST != 0,
            options_mismatch: flags & conn_flags::OPTIONS_MISMATCH != 0,
        })
    }

    /// The set flags as short words (`client-fin`, `server-fin`, `rst`,
    /// `options-mismatch`, and `0x..` for bits this build does not know).
    pub fn flag_names(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            (self.client_fin, "client-fin"),
            (self.server_fin, "server-fin"),
            (self.rst, "rst"),
            (self.options_mismatch, "options-mismatch"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n.to_string())
        .collect();
        let unknown = self.flags & !(conn_flags::CLIENT_FIN | conn_flags::SERVER_FIN | conn_flags::RST | conn_flags::OPTIONS_MISMATCH);
        if unknown != 0 {
            v.push(format!("{unknown:#04x}"));
        }
        v
    }
}

/// A notification from the shadow events group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowEvent {
    /// `configured`, `deconfigured`, `peer-alive`, `peer-failed`, `takeover`,
    /// `retention-overflow`, `app-lag`, `handover-requested`, `handed-over` or
    /// `step-down-expired`.
    pub event: String,
    /// The wire value of `event` (see `lazarus_proto::genl_shadow::event`).
    #[serde(skip)]
    pub code: u8,
    pub role: Option<String>,
    pub peer_state: Option<String>,
    pub peer_addr: Option<Ipv4Addr>,
    pub peer_silence_ms: Option<u32>,
    pub conns: Option<u32>,
    /// How far this node's program is behind its twin's, in bytes (`app-lag`).
    pub lag_bytes: Option<u32>,
}

impl ShadowEvent {
    /// Decode a `shadow-ntf` message.
    pub fn from_attrs(r: &Attrs) -> Result<Self, Error> {
        let code = r.u8(a::EVENT).ok_or(Error::Reply("event"))?;
        Ok(ShadowEvent {
            event: enum_name(spec::event::NAMES, spec::event::FIRST, code),
            code,
            role: r.u8(a::ROLE).map(|v| enum_name(spec::role::NAMES, spec::role::FIRST, v)),
            peer_state: r.u8(a::PEER_STATE).map(|v| enum_name(spec::peer_state::NAMES, spec::peer_state::FIRST, v)),
            peer_addr: ipv4(r, a::PEER_ADDR),
            peer_silence_ms: r.u32(a::PEER_SILENCE_MS),
            conns: r.u32(a::CONNS),
            lag_bytes: r.u32(a::LAG_BYTES),
        })
    }

    /// The heartbeats say the peer has failed.
    pub fn is_peer_failed(&self) -> bool {
        self.code == spec::event::PEER_FAILED
    }

    /// The primary's retention budget overflowed: it keeps no more client bytes for
    /// the backup and is not fault-tolerant until reconfigured.
    pub fn is_retention_overflow(&self) -> bool {
        self.code == spec::event::RETENTION_OVERFLOW
    }

    /// The primary stepped down and asks this backup to take over (planned).
    pub fn is_handover_requested(&self) -> bool {
        self.code == spec::event::HANDOVER_REQUESTED
    }

    /// This node's program lags its twin's output beyond the configured limits.
    pub fn is_app_lag(&self) -> bool {
        self.code == spec::event::APP_LAG
    }
}

/// A big-endian IPv4 address attribute.
fn ipv4(r: &Attrs, id: u16) -> Option<Ipv4Addr> {
    let b: [u8; 4] = r.get(id)?.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// A connection to the `lazarus_shadow` family.
pub struct ShadowClient {
    genl: Genl,
}

impl ShadowClient {
    /// Connect and resolve the family.
    pub fn connect() -> Result<Self, Error> {
        Ok(ShadowClient { genl: Genl::connect(spec::FAMILY_NAME, spec::FAMILY_VERSION)? })
    }

    /// The family id the kernel assigned; a new one means the module was reloaded.
    pub fn family_id(&self) -> u16 {
        self.genl.family_id()
    }

    /// Send a request with raw attributes; returns the reply messages' attributes.
    pub fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
        self.genl.request(command, attrs, dump)
    }

    /// Role, service, gate, peer state and counters.
    pub fn status(&self) -> Result<ShadowStatus, Error> {
        ShadowStatus::from_attrs(&self.genl.one(cmd::GET_STATUS, &[])?)
    }

    /// Set up the service (role primary or backup), change the heartbeat interval of a
    /// configured one, or drop it (role none).
    pub fn configure(&self, config: &ShadowConfig) -> Result<(), Error> {
        self.genl.request(cmd::CONFIGURE, &config.attrs(), false).map(drop)
    }

    /// Drop the service and every shadow (configure with role none).
    pub fn deconfigure(&self) -> Result<(), Error> {
        self.configure(&ShadowConfig::new(ShadowRole::None))
    }

    /// Open the output gate and serve every shadowed connection. The primary must be
    /// fenced first.
    pub fn takeover(&self) -> Result<TakeoverReply, Error> {
        let r = self.genl.one(cmd::TAKEOVER, &[])?;
        Ok(TakeoverReply {
            conns: r.u32(a::CONNS).ok_or(Error::Reply("conns"))?,
            takeover_ms: r.u32(a::TAKEOVER_MS).ok_or(Error::Reply("takeover-ms"))?,
        })
    }

    /// Planned switchover, on the primary: withhold the service's output and ask the
    /// backup to take over; serve again if it has not within `timeout_ms` (the
    /// module's default when `None`).
    pub fn step_down(&self, timeout_ms: Option<u32>) -> Result<(), Error> {
        let attrs: Vec<RawAttr> = timeout_ms.map(|ms| RawAttr::u32(a::STEP_DOWN_MS, ms)).into_iter().collect();
        self.genl.request(cmd::STEP_DOWN, &attrs, false).map(drop)
    }

    /// Planned switchover, on the backup, once the primary has stepped down: wait
    /// until every connection has all the client bytes the primary had (at most
    /// `catch_up`), then take over. Without a fence: the primary is silent, not dead,
    /// and keeps answering resend requests meanwhile, so nothing is lost.
    pub fn planned_takeover(&self, catch_up: std::time::Duration) -> Result<PlannedTakeover, PlannedRefusal> {
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let s = self.status()?;
        if s.role() != Some(ShadowRole::Backup) || s.gate_open {
            return Err(PlannedRefusal::NotBackup);
        }
        if !s.stepping_down {
            return Err(PlannedRefusal::NotAsked);
        }
        // Two intervals: the primary's reports sent after it went silent (they say
        // how far it had each client) have arrived by then.
        std::thread::sleep(Duration::from_millis(2 * u64::from(s.heartbeat_ms.unwrap_or(100))));
        loop {
            let s = self.status()?;
            if !s.stepping_down {
                return Err(PlannedRefusal::NotAsked);
            }
            let waited_ms = start.elapsed().as_millis().min(u32::MAX as u128) as u32;
            match s.behind {
                Some(0) | None => {
                    let r = self.takeover()?;
                    return Ok(PlannedTakeover { conns: r.conns, takeover_ms: r.takeover_ms, caught_up_ms: waited_ms });
                }
                Some(conns) if start.elapsed() >= catch_up => return Err(PlannedRefusal::Behind { conns, waited_ms }),
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The connection table.
    pub fn conns(&self) -> Result<Vec<ShadowConn>, Error> {
        let mut out = Vec::new();
        for r in self.genl.request(cmd::CONN_GET, &[], true)? {
            for nest in r.all(a::CONN) {
                out.push(ShadowConn::from_nest(nest)?);
            }
        }
        Ok(out)
    }
}

/// Receives notifications from the `lazarus_shadow` events group.
pub struct ShadowMonitor {
    events: Events,
}

impl ShadowMonitor {
    /// Join the events group.
    pub fn join() -> Result<Self, Error> {
        Ok(ShadowMonitor { events: Events::join(spec::FAMILY_NAME, spec::MCAST_GROUPS[spec::MCGRP_EVENTS as usize])? })
    }

    /// Wait for the next notification (blocks without polling).
    pub fn next_event(&mut self) -> Result<ShadowEvent, Error> {
        ShadowEvent::from_attrs(&self.events.next(cmd::SHADOW_NTF)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::nla;


    fn stats_nest() -> Vec<u8> {
        (1..=st::MAX).flat_map(|id| nla(id, &(id as u64 * 10).to_ne_bytes())).collect()
    }

    fn attrs(pairs: Vec<(u16, Vec<u8>)>) -> Attrs {
        Attrs::from_pairs(pairs)
    }

    #[test]
    fn roles() {
        for r in [ShadowRole::None, ShadowRole::Primary, ShadowRole::Backup] {
            assert_eq!(ShadowRole::from_code(r.code()), Some(r));
            assert_eq!(r.name().parse::<ShadowRole>(), Ok(r));
        }
        assert_eq!(ShadowRole::Backup.to_string(), "backup");
        assert_eq!(ShadowRole::from_code(3), None);
        assert!("master".parse::<ShadowRole>().unwrap_err().contains("\"master\""));
    }

    #[test]
    fn configure_sends_only_what_is_set() {
        let only = ShadowConfig::new(ShadowRole::None).attrs();
        assert_eq!(only.len(), 1);
        assert_eq!((only[0].id, only[0].payload.as_slice()), (a::ROLE, &[spec::role::NONE][..]));

        let mut c = ShadowConfig::new(ShadowRole::Backup);
        c.service = Some("10.77.0.100:8080".parse().unwrap());
        c.peer = Some(Ipv4Addr::new(10, 77, 0, 11));
        c.ifname = Some("lz0".into());
        c.heartbeat_ms = Some(50);
        let v = c.attrs();
        let get = |id| v.iter().find(|x| x.id == id).map(|x| x.payload.clone());
        assert_eq!(get(a::ROLE), Some(vec![spec::role::BACKUP]));
        assert_eq!(get(a::SERVICE_ADDR), Some(vec![10, 77, 0, 100]), "addresses are big-endian");
        assert_eq!(get(a::SERVICE_PORT), Some(8080u16.to_ne_bytes().to_vec()), "ports are host order");
        assert_eq!(get(a::PEER_ADDR), Some(vec![10, 77, 0, 11]));
        assert_eq!(get(a::IFNAME), Some(b"lz0\0".to_vec()), "ifname is NUL-terminated");
        assert_eq!(get(a::HEARTBEAT_MS), Some(50u32.to_ne_bytes().to_vec()));
        assert_eq!(get(a::BEAT_PORT), None);
        assert_eq!(get(a::MAX_CONNS), None);
        for id in [a::RETAIN_KB, a::MAX_DELAY_FIN_MS, a::APP_MAX_LAG_KB, a::APP_MAX_LAG_MS] {
            assert_eq!(get(id), None, "attribute {id} is not set");
        }
        assert_eq!(v.len(), 6);

        let mut c = ShadowConfig::new(ShadowRole::Primary);
        c.retain_kb = Some(8192);
        c.max_delay_fin_ms = Some(0);
        c.app_max_lag_kb = Some(64);
        c.app_max_lag_ms = Some(1500);
        let v = c.attrs();
        let get = |id| v.iter().find(|x| x.id == id).map(|x| x.payload.clone());
        assert_eq!(get(a::RETAIN_KB), Some(8192u32.to_ne_bytes().to_vec()));
        assert_eq!(get(a::MAX_DELAY_FIN_MS), Some(0u32.to_ne_bytes().to_vec()), "0 is a value, not unset");
        assert_eq!(get(a::APP_MAX_LAG_KB), Some(64u32.to_ne_bytes().to_vec()));
        assert_eq!(get(a::APP_MAX_LAG_MS), Some(1500u32.to_ne_bytes().to_vec()));
        assert_eq!(get(a::HEARTBEAT_MS), None);
        assert_eq!(v.len(), 5);

        let mut c = ShadowConfig::new(ShadowRole::Primary);
        c.app_max_lag_ms = Some(1);
        assert_eq!(c.attrs().iter().map(|x| x.id).collect::<Vec<_>>(), [a::ROLE, a::APP_MAX_LAG_MS]);

        let mut c = ShadowConfig::new(ShadowRole::Backup);
        c.key = Some(ClusterKey::new(vec![9; 32]).unwrap());
        let v = c.attrs();
        assert_eq!(v.iter().find(|x| x.id == a::KEY).map(|x| x.payload.clone()), Some(vec![9; 32]));
    }

    #[test]
    fn cluster_keys_are_checked_and_never_printed() {
        assert!(ClusterKey::new(vec![1; 15]).unwrap_err().contains("16 to 64 bytes, not 15"));
        assert!(ClusterKey::new(vec![1; 65]).is_err());
        let k = ClusterKey::new(b"correct horse battery staple".to_vec()).unwrap();
        let shown = format!("{k:?} {:?}", ShadowConfig { key: Some(k.clone()), ..ShadowConfig::new(ShadowRole::Primary) });
        assert!(!shown.contains("horse") && !shown.contains("99, 111"), "{shown}");
        assert!(shown.contains(&format!("{:016x}", k.fingerprint())));
        let dir = std::env::temp_dir().join(format!("lznl-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A text file is trimmed; a binary one is used as it is.
        std::fs::write(dir.join("text"), "  correct horse battery staple\n").unwrap();
        assert_eq!(ClusterKey::from_file(&dir.join("text")).unwrap(), k);
        let raw: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
        std::fs::write(dir.join("raw"), &raw).unwrap();
        assert_eq!(ClusterKey::from_file(&dir.join("raw")).unwrap(), ClusterKey::new(raw).unwrap());
        std::fs::write(dir.join("short"), "too short").unwrap();
        let e = ClusterKey::from_file(&dir.join("short")).unwrap_err();
        assert!(e.contains("short") && e.contains("not 9"), "{e}");
        assert!(ClusterKey::from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_decodes_every_attribute() {
        let r = attrs(vec![
            (a::VERSION, b"0.1.0\0".to_vec()),
            (a::ROLE, vec![spec::role::BACKUP]),
            (a::SERVICE_ADDR, vec![10, 77, 0, 100]),
            (a::SERVICE_PORT, 8080u16.to_ne_bytes().to_vec()),
            (a::PEER_ADDR, vec![10, 77, 0, 11]),
            (a::BEAT_PORT, 7401u16.to_ne_bytes().to_vec()),
            (a::IFNAME, b"lz0\0".to_vec()),
            (a::HEARTBEAT_MS, 100u32.to_ne_bytes().to_vec()),
            (a::MAX_CONNS, 16384u32.to_ne_bytes().to_vec()),
            (a::RETAIN_KB, 16384u32.to_ne_bytes().to_vec()),
            (a::MAX_DELAY_FIN_MS, 500u32.to_ne_bytes().to_vec()),
            (a::APP_MAX_LAG_KB, 1024u32.to_ne_bytes().to_vec()),
            (a::APP_MAX_LAG_MS, 2000u32.to_ne_bytes().to_vec()),
            (a::GATE_OPEN, vec![0]),
            (a::PEER_STATE, vec![spec::peer_state::ALIVE]),
            (a::PEER_SILENCE_MS, 12u32.to_ne_bytes().to_vec()),
            (a::FAULT_TOLERANT, vec![1]),
            (a::RETAINED_BYTES, (5u64 << 32 | 7).to_ne_bytes().to_vec()),
            (a::CONNS, 3u32.to_ne_bytes().to_vec()),
            (a::KEY_FINGERPRINT, 0x0123_4567_89ab_cdefu64.to_ne_bytes().to_vec()),
            (a::STATS | 0x8000, stats_nest()),
        ]);
        let s = ShadowStatus::from_attrs(&r).unwrap();
        assert_eq!(s.key_fingerprint, Some(0x0123_4567_89ab_cdef));
        assert_eq!(s.role, "backup");
        assert_eq!(s.role(), Some(ShadowRole::Backup));
        assert_eq!(s.service(), Some("10.77.0.100:8080".parse().unwrap()));
        assert_eq!(s.peer_addr, Some(Ipv4Addr::new(10, 77, 0, 11)));
        assert_eq!(s.ifname.as_deref(), Some("lz0"));
        assert_eq!((s.beat_port, s.heartbeat_ms, s.max_conns), (Some(7401), Some(100), Some(16384)));
        assert!(!s.gate_open);
        assert_eq!(s.peer_state, "alive");
        assert_eq!((s.peer_silence_ms, s.conns), (Some(12), 3));
        assert_eq!(s.stats.client_segments, 10);
        assert_eq!(s.stats.parse_errors, 130);
        assert_eq!(s.stats.acks_clamped, 140);
        assert_eq!((s.retain_kb, s.max_delay_fin_ms), (Some(16384), Some(500)));
        assert_eq!((s.app_max_lag_kb, s.app_max_lag_ms), (Some(1024), Some(2000)));
        assert_eq!(s.fault_tolerant, Some(true));
        assert_eq!(s.retained_bytes, Some(5 << 32 | 7), "retained-bytes is a u64");
        let t = &s.stats;
        assert_eq!((t.progress_sent, t.progress_received, t.progress_rejected), (150, 160, 170));
        assert_eq!((t.retained_segments, t.resend_requests, t.resent_segments), (180, 190, 200));
        assert_eq!((t.retention_overflows, t.unprotected_conns, t.fins_held, t.app_lag_reports), (210, 220, 230, 240));
        assert_eq!(t.conns_reset, 250);

        // A counter missing from the nest is a malformed reply.
        let short: Vec<u8> = (1..=st::MAX).filter(|&id| id != st::PARSE_ERRORS).flat_map(|id| nla(id, &0u64.to_ne_bytes())).collect();
        let r = attrs(vec![
            (a::VERSION, b"x\0".to_vec()),
            (a::ROLE, vec![0]),
            (a::GATE_OPEN, vec![0]),
            (a::PEER_STATE, vec![0]),
            (a::CONNS, 0u32.to_ne_bytes().to_vec()),
            (a::STATS, short),
        ]);
        let got = ShadowStatus::from_attrs(&r);
        assert!(matches!(got, Err(Error::Reply("stats.parse-errors"))), "{got:?}");
        let short: Vec<u8> = (1..=st::MAX).filter(|&id| id != st::APP_LAG_REPORTS).flat_map(|id| nla(id, &0u64.to_ne_bytes())).collect();
        let r = attrs(vec![
            (a::VERSION, b"x\0".to_vec()),
            (a::ROLE, vec![0]),
            (a::GATE_OPEN, vec![0]),
            (a::PEER_STATE, vec![0]),
            (a::CONNS, 0u32.to_ne_bytes().to_vec()),
            (a::STATS, short),
        ]);
        let got = ShadowStatus::from_attrs(&r);
        assert!(matches!(got, Err(Error::Reply("stats.app-lag-reports"))), "{got:?}");
    }

    #[test]
    fn every_counter_is_decoded() {
        // A counter added to the spec must be added to ShadowStats (and to lzctl's table).
        assert_eq!(st::MAX, st::RSTS_HELD, "the stats set has a counter ShadowStats does not decode");
        assert_eq!(st::MAX, 30);
    }

    #[test]
    fn unconfigured_status() {
        let r = attrs(vec![
            (a::VERSION, b"0.1.0\0".to_vec()),
            (a::ROLE, vec![spec::role::NONE]),
            (a::IFNAME, b"\0".to_vec()),
            (a::GATE_OPEN, vec![0]),
            (a::PEER_STATE, vec![spec::peer_state::UNKNOWN]),
            (a::CONNS, 0u32.to_ne_bytes().to_vec()),
            (a::STATS, stats_nest()),
        ]);
        let s = ShadowStatus::from_attrs(&r).unwrap();
        assert_eq!(s.role(), Some(ShadowRole::None));
        assert_eq!(s.service(), None);
        assert_eq!(s.ifname, None, "an empty ifname means none");
        assert_eq!(s.peer_silence_ms, None);
        assert_eq!(s.peer_state, "unknown");
        assert_eq!((s.retain_kb, s.max_delay_fin_ms, s.app_max_lag_kb, s.app_max_lag_ms), (None, None, None, None));
        assert_eq!((s.fault_tolerant, s.retained_bytes), (None, None), "not reported without a service");

        // A node that is not fault-tolerant says so with 0.
        let r = attrs(vec![
            (a::VERSION, b"0.1.0\0".to_vec()),
            (a::ROLE, vec![spec::role::PRIMARY]),
            (a::GATE_OPEN, vec![1]),
            (a::PEER_STATE, vec![spec::peer_state::ALIVE]),
            (a::FAULT_TOLERANT, vec![0]),
            (a::RETAINED_BYTES, 0u64.to_ne_bytes().to_vec()),
            (a::CONNS, 0u32.to_ne_bytes().to_vec()),
            (a::STATS, stats_nest()),
        ]);
        let s = ShadowStatus::from_attrs(&r).unwrap();
        assert_eq!((s.fault_tolerant, s.retained_bytes), (Some(false), Some(0)));
    }

    #[test]
    fn conn_flags_decode() {
        let conn = |flags: u8| {
            let mut n = nla(c::CLIENT_ADDR, &[10, 77, 0, 1]);
            n.extend(nla(c::CLIENT_PORT, &40000u16.to_ne_bytes()));
            n.extend(nla(c::MAPPED, &[1]));
            n.extend(nla(c::SEQ_OFFSET, &0xfffffff0u32.to_ne_bytes()));
            n.extend(nla(c::FLAGS, &[flags]));
            ShadowConn::from_nest(&n).unwrap()
        };
        let x = conn(0);
        assert_eq!((x.client_addr, x.client_port), (Ipv4Addr::new(10, 77, 0, 1), 40000));
        assert!(x.mapped);
        assert_eq!((x.seq_offset, x.ts_offset), (Some(0xfffffff0), None));
        assert_eq!((x.peer_next, x.retained), (None, None), "no progress report yet");
        assert!(!x.client_fin && !x.server_fin && !x.rst && !x.options_mismatch);
        assert!(x.flag_names().is_empty());

        let x = conn(conn_flags::CLIENT_FIN);
        assert!(x.client_fin && !x.server_fin && !x.rst && !x.options_mismatch);
        let x = conn(conn_flags::SERVER_FIN);
        assert!(!x.client_fin && x.server_fin && !x.rst && !x.options_mismatch);
        let x = conn(conn_flags::RST);
        assert!(!x.client_fin && !x.server_fin && x.rst && !x.options_mismatch);
        let x = conn(conn_flags::OPTIONS_MISMATCH);
        assert!(!x.client_fin && !x.server_fin && !x.rst && x.options_mismatch);
        let x = conn(0x1f);
        assert!(x.client_fin && x.server_fin && x.rst && x.options_mismatch);
        assert_eq!(x.flags, 0x1f);
        assert_eq!(x.flag_names(), ["client-fin", "server-fin", "rst", "options-mismatch", "0x10"]);

        let mut n = nla(c::CLIENT_ADDR, &[10, 77, 0, 1]);
        n.extend(nla(c::CLIENT_PORT, &40000u16.to_ne_bytes()));
        n.extend(nla(c::CLIENT_NEXT, &1000u32.to_ne_bytes()));
        n.extend(nla(c::PEER_NEXT, &0xfffffffeu32.to_ne_bytes()));
        n.extend(nla(c::RETAINED, &2896u32.to_ne_bytes()));
        let x = ShadowConn::from_nest(&n).unwrap();
        assert_eq!((x.client_next, x.peer_next, x.retained), (Some(1000), Some(0xfffffffe), Some(2896)));

        // A nest without an address is malformed.
        assert!(matches!(ShadowConn::from_nest(&nla(c::CLIENT_PORT, &1u16.to_ne_bytes())), Err(Error::Reply("conn.client-addr"))));
    }

    #[test]
    fn events_decode() {
        let r = attrs(vec![
            (a::EVENT, vec![spec::event::PEER_FAILED]),
            (a::ROLE, vec![spec::role::BACKUP]),
            (a::PEER_STATE, vec![spec::peer_state::FAILED]),
            (a::PEER_ADDR, vec![10, 77, 0, 11]),
            (a::PEER_SILENCE_MS, 312u32.to_ne_bytes().to_vec()),
        ]);
        let e = ShadowEvent::from_attrs(&r).unwrap();
        assert!(e.is_peer_failed());
        assert_eq!(e.event, "peer-failed");
        assert_eq!(e.role.as_deref(), Some("backup"));
        assert_eq!(e.peer_state.as_deref(), Some("failed"));
        assert_eq!(e.peer_addr, Some(Ipv4Addr::new(10, 77, 0, 11)));
        assert_eq!((e.peer_silence_ms, e.conns, e.lag_bytes), (Some(312), None, None));
        assert!(!e.is_retention_overflow() && !e.is_app_lag());

        let e = ShadowEvent::from_attrs(&attrs(vec![(a::EVENT, vec![spec::event::TAKEOVER]), (a::CONNS, 7u32.to_ne_bytes().to_vec())])).unwrap();
        assert_eq!((e.event.as_str(), e.conns, e.role.as_deref()), ("takeover", Some(7), None));
        assert!(!e.is_peer_failed());

        let e = ShadowEvent::from_attrs(&attrs(vec![
            (a::EVENT, vec![spec::event::RETENTION_OVERFLOW]),
            (a::ROLE, vec![spec::role::PRIMARY]),
            (a::CONNS, 12u32.to_ne_bytes().to_vec()),
        ]))
        .unwrap();
        assert_eq!((e.event.as_str(), e.role.as_deref(), e.conns, e.lag_bytes), ("retention-overflow", Some("primary"), Some(12), None));
        assert!(e.is_retention_overflow() && !e.is_app_lag() && !e.is_peer_failed());

        let e = ShadowEvent::from_attrs(&attrs(vec![
            (a::EVENT, vec![spec::event::APP_LAG]),
            (a::ROLE, vec![spec::role::BACKUP]),
            (a::LAG_BYTES, 1_500_000u32.to_ne_bytes().to_vec()),
        ]))
        .unwrap();
        assert_eq!((e.event.as_str(), e.lag_bytes), ("app-lag", Some(1_500_000)));
        assert!(e.is_app_lag() && !e.is_retention_overflow() && !e.is_peer_failed());

        assert_eq!(ShadowEvent::from_attrs(&attrs(vec![(a::EVENT, vec![99])])).unwrap().event, "unknown-99");
        assert!(ShadowEvent::from_attrs(&attrs(vec![])).is_err());
    }
}
