//! `lzctl backdoor ...`: the `lazarus_backdoor` module (Sensor Boxes over RDMA).

use crate::Failure;
use clap::Subcommand;
use lznl::{BackdoorClient, BackdoorRole, BackdoorStatus, TargetView};
use std::net::Ipv4Addr;

#[derive(Subcommand)]
pub enum BackdoorCmd {
    /// Role, port, interval and counters.
    Status,
    /// Set this node's role (replaces the previous configuration).
    Configure {
        /// none, target or monitor.
        #[arg(long)]
        role: BackdoorRole,
        /// The RDMA connection manager port (targets listen, monitors connect).
        #[arg(long, default_value_t = 7471)]
        port: u16,
        /// A target: a monitor allowed to connect. A monitor: a target to read.
        /// Repeat for several (at most 16).
        #[arg(long = "peer")]
        peers: Vec<Ipv4Addr>,
        /// Refresh (target) or read (monitor) interval, 1-60000 ms.
        #[arg(long)]
        interval_ms: Option<u32>,
        /// A monitor's healing policies, comma-separated: fork-bomb, memory-hog.
        #[arg(long, value_delimiter = ',')]
        heal: Vec<String>,
    },
    /// The sensors of every target this monitor reads, or of one.
    Sensors {
        /// Only this target.
        node: Option<Ipv4Addr>,
    },
    /// Create or update a sensor in this node's Sensor Box (a program's own
    /// progress counter, level or event count), or set the limit of one of the
    /// kernel's (3 tasks, 4 forks, 5 OOM kills, 6 free pages; its value is the
    /// kernel's, --value is ignored).
    SensorSet {
        /// Sensor id: 1000 or above for a program's, 3 to 6 for a kernel sensor's limit.
        #[arg(long)]
        id: u32,
        /// progress, level or pressure (needed for a new sensor).
        #[arg(long, value_parser = ["progress", "level", "pressure"])]
        class: Option<String>,
        /// progress: ms the value may stay unchanged; level: the bound; pressure:
        /// events per second (needed for a new sensor).
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        value: u64,
        /// A level sensor that must stay at or above its limit.
        #[arg(long)]
        at_least: bool,
    },
}

fn status_lines(s: &BackdoorStatus) -> Vec<String> {
    let st = &s.stats;
    vec![
        format!("lazarus_backdoor {}", s.version),
        format!("  role:      {}", serde_json::to_value(s.role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
        format!("  port:      {}", s.port),
        format!("  interval:  {} ms", s.interval_ms),
        format!("  monitors:  {} accepted, {} refused", st.accepted, st.refused),
        format!("  reads:     {} ({} errors, {} bad boxes), {} alarms", st.reads, st.read_errors, st.bad_boxes, st.alarms),
        format!("  connects:  {} failed", st.connect_errors),
        format!("  healing:   {} (repairs: {} sent, {} done, {} refused; {} processes killed)",
            if s.heal.is_empty() { "off".to_string() } else { s.heal.join(",") }, st.repairs_sent, st.repairs_done, st.repairs_refused, st.killed),
    ]
}

fn sensor_lines(ts: &[TargetView]) -> Vec<String> {
    let mut out = Vec::new();
    for t in ts {
        let ago = t.last_read_ms_ago.map(|ms| format!("{ms} ms ago")).unwrap_or_else(|| "never".into());
        out.push(format!("{} {} (read {} times, last {ago})", t.addr, t.state, t.reads));
        out.push(format!("  {:>4} {:<9} {:>20} {:>20} VERDICT", "ID", "CLASS", "VALUE", "LIMIT"));
        for s in &t.sensors {
            out.push(format!("  {:>4} {:<9} {:>20} {:>20} {}", s.id, s.class, s.value, s.limit, s.verdict));
        }
    }
    out
}

pub fn run(cmd: BackdoorCmd, json: bool) -> Result<(), Failure> {
    let c = BackdoorClient::connect()?;
    match cmd {
        BackdoorCmd::Status => {
            let s = c.status()?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                status_lines(&s).iter().for_each(|l| println!("{l}"));
            }
        }
        BackdoorCmd::Configure { role, port, peers, interval_ms, heal } => {
            if role != BackdoorRole::None && peers.is_empty() {
                return Err(crate::usage("give at least one --peer (a target's monitors, or a monitor's targets)".into()));
            }
            let bits = lznl::heal_bits(&heal).map_err(crate::usage)?;
            c.configure(role, port, &peers, interval_ms, bits)?;
        }
        BackdoorCmd::SensorSet { id, class, limit, value, at_least } => {
            c.sensor_set(id, class.as_deref(), limit, value, at_least)?;
        }
        BackdoorCmd::Sensors { node } => {
            let mut ts = c.targets()?;
            if let Some(n) = node {
                ts.retain(|t| t.addr == n);
                if ts.is_empty() {
                    return Err(crate::usage(format!("{n} is not one of this monitor's targets")));
                }
            }
            if json {
                println!("{}", serde_json::to_string(&ts).unwrap_or_default());
            } else {
                sensor_lines(&ts).iter().for_each(|l| println!("{l}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lznl::SensorReading;

    #[test]
    fn the_sensor_table_names_each_target_and_verdict() {
        let t = TargetView {
            addr: Ipv4Addr::new(10, 77, 0, 11),
            state: "connected",
            generation: 1,
            reads: 42,
            last_read_ms_ago: Some(7),
            sensors: vec![SensorReading { id: 3, class: "level", limit: 32768, value: 91, verdict: "ok" }],
        };
        let l = sensor_lines(&[t]);
        assert!(l[0].contains("10.77.0.11 connected") && l[0].contains("42 times") && l[0].contains("7 ms ago"), "{}", l[0]);
        assert!(l[2].contains("level") && l[2].contains("32768") && l[2].ends_with("ok"), "{}", l[2]);
    }
}
