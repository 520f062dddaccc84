//! Client for the `lazarus_backdoor` family: `lzctl backdoor` and `lazarusd`.

use crate::attrs::Attrs;
use crate::{nest_attrs, Error, Genl, RawAttr};
use lazarus_proto::genl_bdoor::{self as spec, backdoor_attr as a, class, cmd, peer_attr as pa, peer_state, role, sensor_attr as sa, stats_attr as st, verdict};
use serde::Serialize;
use std::net::Ipv4Addr;

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackdoorRole {
    None,
    Target,
    Monitor,
}

impl BackdoorRole {
    fn code(self) -> u8 {
        match self {
            BackdoorRole::None => role::NONE,
            BackdoorRole::Target => role::TARGET,
            BackdoorRole::Monitor => role::MONITOR,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            role::NONE => Some(BackdoorRole::None),
            role::TARGET => Some(BackdoorRole::Target),
            role::MONITOR => Some(BackdoorRole::Monitor),
            _ => None,
        }
    }
}

impl std::str::FromStr for BackdoorRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(BackdoorRole::None),
            "target" => Ok(BackdoorRole::Target),
            "monitor" => Ok(BackdoorRole::Monitor),
            _ => Err(format!("role must be none, target or monitor, not {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackdoorStats {
    pub accepted: u64,
    pub refused: u64,
    pub reads: u64,
    pub read_errors: u64,
    pub bad_boxes: u64,
    pub alarms: u64,
    pub connect_errors: u64,
    pub repairs_sent: u64,
    pub repairs_done: u64,
    pub repairs_refused: u64,
    pub killed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackdoorStatus {
    pub version: String,
    pub role: BackdoorRole,
    pub port: u16,
    pub interval_ms: u32,
    /// Healing policies: `fork-bomb`, `memory-hog`.
    pub heal: Vec<&'static str>,
    pub stats: BackdoorStats,
}

/// `heal` bits and their names.
pub const HEAL_POLICIES: &[(u8, &str)] = &[(1, "fork-bomb"), (2, "memory-hog")];

/// The `heal` bits of policy names (`fork-bomb`, `memory-hog`).
pub fn heal_bits(names: &[String]) -> Result<u8, String> {
    names.iter().try_fold(0u8, |bits, n| {
        HEAL_POLICIES.iter().find(|(_, name)| name == n).map(|(b, _)| bits | b).ok_or_else(|| format!("no healing policy {n:?} (fork-bomb, memory-hog)"))
    })
}

/// One sensor as the monitor judged it at its latest read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SensorReading {
    pub id: u32,
    pub class: &'static str,
    pub limit: u64,
    pub value: u64,
    pub verdict: &'static str,
}

/// One target as the monitor sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub addr: Ipv4Addr,
    pub state: &'static str,
    pub generation: u64,
    pub reads: u64,
    pub last_read_ms_ago: Option<u32>,
    pub sensors: Vec<SensorReading>,
}

fn name(names: &[&'static str], first: u8, v: u8) -> &'static str {
    v.checked_sub(first).and_then(|i| names.get(i as usize)).copied().unwrap_or("unknown")
}

impl TargetView {
    fn from_nest(nest: &[u8]) -> Result<Self, Error> {
        let n = nest_attrs(nest);
        let addr: [u8; 4] = n.get(pa::ADDR).and_then(|b| b.get(..4)).and_then(|b| b.try_into().ok()).ok_or(Error::Reply("peer.addr"))?;
        let mut sensors = Vec::new();
        for s in n.all(pa::SENSOR) {
            let s = nest_attrs(s);
            sensors.push(SensorReading {
                id: s.u32(sa::ID).ok_or(Error::Reply("sensor.id"))?,
                class: name(class::NAMES, class::FIRST, s.u8(sa::CLASS).unwrap_or(0)),
                limit: s.u64(sa::LIMIT).unwrap_or(0),
                value: s.u64(sa::VALUE).unwrap_or(0),
                verdict: name(verdict::NAMES, verdict::FIRST, s.u8(sa::VERDICT).unwrap_or(u8::MAX)),
            });
        }
        Ok(TargetView {
            addr: Ipv4Addr::from(addr),
            state: name(peer_state::NAMES, peer_state::FIRST, n.u8(pa::STATE).unwrap_or(u8::MAX)),
            generation: n.u64(pa::GENERATION).unwrap_or(0),
            reads: n.u64(pa::READS).unwrap_or(0),
            last_read_ms_ago: n.u32(pa::LAST_READ_MS_AGO),
            sensors,
        })
    }
}

fn status_from(r: &Attrs) -> Result<BackdoorStatus, Error> {
    let s = r.get(a::STATS).map(nest_attrs).ok_or(Error::Reply("stats"))?;
    let g = |id| s.u64(id).unwrap_or(0);
    Ok(BackdoorStatus {
        version: r.string(a::VERSION).ok_or(Error::Reply("version"))?,
        role: r.u8(a::ROLE).and_then(BackdoorRole::from_code).ok_or(Error::Reply("role"))?,
        port: r.u16(a::PORT).unwrap_or(0),
        interval_ms: r.u32(a::INTERVAL_MS).ok_or(Error::Reply("interval-ms"))?,
        heal: {
            let bits = r.u8(a::HEAL).unwrap_or(0);
            HEAL_POLICIES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect()
        },
        stats: BackdoorStats {
            accepted: g(st::ACCEPTED),
            refused: g(st::REFUSED),
            reads: g(st::READS),
            read_errors: g(st::READ_ERRORS),
            bad_boxes: g(st::BAD_BOXES),
            alarms: g(st::ALARMS),
            connect_errors: g(st::CONNECT_ERRORS),
            repairs_sent: g(st::REPAIRS_SENT),
            repairs_done: g(st::REPAIRS_DONE),
            repairs_refused: g(st::REPAIRS_REFUSED),
            killed: g(st::KILLED),
        },
    })
}

/// A connection to the `lazarus_backdoor` family.
pub struct BackdoorClient {
    genl: Genl,
}

impl BackdoorClient {
    pub fn connect() -> Result<Self, Error> {
        Ok(BackdoorClient { genl: Genl::connect(spec::FAMILY_NAME, spec::FAMILY_VERSION)? })
    }

    /// Send a request with raw attributes (for tests of the kernel's checks).
    pub fn request(&self, command: u8, attrs: &[RawAttr], dump: bool) -> Result<Vec<Attrs>, Error> {
        self.genl.request(command, attrs, dump)
    }

    pub fn status(&self) -> Result<BackdoorStatus, Error> {
        status_from(&self.genl.one(cmd::GET_STATUS, &[])?)
    }

    /// Set the role: a target accepts the monitors in `peers`, a monitor reads the
    /// targets in `peers`.
    pub fn configure(&self, role: BackdoorRole, port: u16, peers: &[Ipv4Addr], interval_ms: Option<u32>, heal: u8) -> Result<(), Error> {
        let mut v = vec![RawAttr::u8(a::ROLE, role.code())];
        if port != 0 {
            v.push(RawAttr::u16(a::PORT, port));
        }
        for p in peers {
            v.push(RawAttr { id: a::PEER_ADDR, payload: p.octets().to_vec() });
        }
        if let Some(i) = interval_ms {
            v.push(RawAttr::u32(a::INTERVAL_MS, i));
        }
        if heal != 0 {
            v.push(RawAttr::u8(a::HEAL, heal));
        }
        self.genl.request(cmd::CONFIGURE, &v, false).map(drop)
    }

    /// Create or update a sensor of this node's box (`class` and `limit` are needed
    /// for a new one). `class` is progress, level or pressure.
    pub fn sensor_set(&self, id: u32, class: Option<&str>, limit: Option<u64>, value: u64, at_least: bool) -> Result<(), Error> {
        let mut v = vec![RawAttr::u32(a::SENSOR_ID, id), RawAttr::u64(a::SENSOR_VALUE, value)];
        if let Some(c) = class {
            let i = class::NAMES.iter().position(|n| *n == c).ok_or(Error::Reply("sensor class"))?;
            v.push(RawAttr::u8(a::SENSOR_CLASS, class::FIRST + i as u8));
        }
        if let Some(l) = limit {
            v.push(RawAttr::u64(a::SENSOR_LIMIT, l));
        }
        if at_least {
            v.push(RawAttr::u8(a::SENSOR_FLAGS, 1));
        }
        self.genl.request(cmd::SENSOR_SET, &v, false).map(drop)
    }

    /// The monitor's targets and their sensors.
    pub fn targets(&self) -> Result<Vec<TargetView>, Error> {
        let mut out = Vec::new();
        for r in self.genl.request(cmd::PEER_GET, &[], true)? {
            for nest in r.all(a::PEER) {
                out.push(TargetView::from_nest(nest)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::nla;


    #[test]
    fn a_target_view_reads_its_sensors_and_names_the_enums() {
        let sensor = |id: u32, class: u8, verdict: u8| {
            let mut s = nla(sa::ID, &id.to_ne_bytes());
            s.extend(nla(sa::CLASS, &[class]));
            s.extend(nla(sa::LIMIT, &10u64.to_ne_bytes()));
            s.extend(nla(sa::VALUE, &7u64.to_ne_bytes()));
            s.extend(nla(sa::VERDICT, &[verdict]));
            nla(pa::SENSOR, &s)
        };
        let mut peer = nla(pa::ADDR, &[10, 77, 0, 11]);
        peer.extend(nla(pa::STATE, &[peer_state::CONNECTED]));
        peer.extend(nla(pa::READS, &42u64.to_ne_bytes()));
        peer.extend(sensor(1, class::PROGRESS, verdict::OK));
        peer.extend(sensor(1001, class::LEVEL, verdict::ALARM));
        let t = TargetView::from_nest(&peer).unwrap();
        assert_eq!((t.addr, t.state, t.reads, t.last_read_ms_ago), (Ipv4Addr::new(10, 77, 0, 11), "connected", 42, None));
        assert_eq!(t.sensors.len(), 2);
        assert_eq!((t.sensors[0].class, t.sensors[0].verdict), ("progress", "ok"));
        assert_eq!((t.sensors[1].id, t.sensors[1].class, t.sensors[1].verdict), (1001, "level", "alarm"));
        // Out-of-range codes read as unknown rather than failing.
        let odd = [nla(pa::ADDR, &[10, 77, 0, 11]), nla(pa::STATE, &[9]), sensor(2, 0, 7)].concat();
        let t = TargetView::from_nest(&odd).unwrap();
        assert_eq!((t.state, t.sensors[0].class, t.sensors[0].verdict), ("unknown", "unknown", "unknown"));
        assert!(TargetView::from_nest(&nla(pa::STATE, &[0])).is_err(), "an address is required");
    }

    #[test]
    fn healing_policies_by_name() {
        assert_eq!(heal_bits(&["fork-bomb".into(), "memory-hog".into()]), Ok(3));
        assert_eq!(heal_bits(&[]), Ok(0));
        assert!(heal_bits(&["reboot".into()]).unwrap_err().contains("no healing policy"));
    }

    #[test]
    fn roles_parse_and_round_trip() {
        for r in [BackdoorRole::None, BackdoorRole::Target, BackdoorRole::Monitor] {
            assert_eq!(BackdoorRole::from_code(r.code()), Some(r));
        }
        assert_eq!("monitor".parse::<BackdoorRole>(), Ok(BackdoorRole::Monitor));
        assert!("primary".parse::<BackdoorRole>().is_err());
    }
}
