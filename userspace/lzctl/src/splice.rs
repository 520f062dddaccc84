//! `lzctl splice ...`: the `lazarus_splice` module (CRAFT splicing) as an operator
//! sees it.

use crate::Failure;
use clap::Subcommand;
use lznl::{SpliceClient, SpliceEntry, SpliceStatus};

#[derive(Subcommand)]
pub enum SpliceCmd {
    /// Table size, splices, timeouts and counters.
    Status,
    /// The live splices with their counters.
    List,
    /// Change the idle timeout or the linger time of every splice.
    Configure {
        /// Drop a splice after this long without a segment (at least 1000).
        #[arg(long)]
        idle_timeout_ms: Option<u32>,
        /// Keep a closed splice this long for stragglers (100-600000).
        #[arg(long)]
        linger_ms: Option<u32>,
    },
    /// Drop a splice (the connections end: the proxy closes its sockets once the
    /// splice leaves the listing), or undo a freeze (the proxy relays instead).
    Abort {
        /// The splice id, from `splice list`.
        id: u32,
    },
}

fn status_lines(s: &SpliceStatus) -> Vec<String> {
    let st = &s.stats;
    let mut v = vec![
        format!("lazarus_splice {}", s.version),
        format!("  splices:        {} of {}", s.splices, s.max_splices),
        format!("  idle timeout:   {} ms", s.idle_timeout_ms),
        format!("  linger:         {} ms", s.linger_ms),
        format!("  set up:         {} (frozen {}, undone {}), {} installed from a peer", st.splices, st.pre_splices, st.aborted, st.installed),
        format!("  forwarded:      {} segments, {} bytes", st.forwarded_segments, st.forwarded_bytes),
        format!("  ended:          {} closed, {} idle, {} taken apart (next request, backend failure)", st.closed, st.expired, st.unspliced),
        format!("  held:           {} (overflowed {})", st.held, st.hold_overflows),
        format!("  dropped:        {} by a full queue on the way out", st.send_dropped),
        format!("  errors:         {} send, {} rewrite, {} refused, {} table full", st.send_errors, st.rewrite_errors, st.refused, st.table_full),
    ];
    if s.last_send_errno != 0 {
        v.push(format!("  last send error: {}", std::io::Error::from_raw_os_error(s.last_send_errno as i32)));
    }
    v
}

fn list_lines(l: &[SpliceEntry]) -> Vec<String> {
    let mut out = vec![format!(
        "{:>10} {:<6} {:<21} {:<21} {:<21} {:>12} {:>12} {:>8} FLAGS",
        "ID", "STATE", "CLIENT", "PROXY", "BACKEND", "TO-BACKEND", "TO-CLIENT", "IDLE-MS"
    )];
    for e in l {
        let flags = e.flag_names().join(",");
        out.push(format!(
            "{:>10} {:<6} {:<21} {:<21} {:<21} {:>12} {:>12} {:>8} {}",
            e.id,
            e.state,
            e.client.to_string(),
            e.listen.to_string(),
            e.backend.to_string(),
            e.to_backend_bytes,
            e.to_client_bytes,
            e.idle_ms,
            if flags.is_empty() { "-" } else { &flags }
        ));
    }
    out
}

pub fn run(cmd: SpliceCmd, json: bool) -> Result<(), Failure> {
    let c = SpliceClient::connect()?;
    match cmd {
        SpliceCmd::Status => {
            let s = c.status()?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                status_lines(&s).iter().for_each(|l| println!("{l}"));
            }
        }
        SpliceCmd::List => {
            let l = c.list()?;
            if json {
                println!("{}", serde_json::to_string(&l).unwrap_or_default());
            } else {
                list_lines(&l).iter().for_each(|l| println!("{l}"));
            }
        }
        SpliceCmd::Configure { idle_timeout_ms, linger_ms } => {
            if idle_timeout_ms.is_none() && linger_ms.is_none() {
                return Err(crate::usage("nothing to configure: give --idle-timeout-ms and/or --linger-ms".into()));
            }
            c.configure(idle_timeout_ms, linger_ms)?;
        }
        SpliceCmd::Abort { id } => c.abort(id)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_names_both_connections_and_the_flags() {
        let e = SpliceEntry {
            id: 65536,
            state: "open",
            client: "10.77.0.1:40000".parse().unwrap(),
            listen: "10.77.0.11:80".parse().unwrap(),
            local: "10.77.0.11:51000".parse().unwrap(),
            backend: "10.77.0.12:8080".parse().unwrap(),
            flags: 0b0011,
            to_backend_segments: 3,
            to_backend_bytes: 100,
            to_client_segments: 9,
            to_client_bytes: 9000,
            held: 0,
            age_ms: 1200,
            idle_ms: 40,
            next_request: 0,
        };
        let l = list_lines(&[e]);
        assert_eq!(l.len(), 2);
        for want in ["65536", "open", "10.77.0.1:40000", "10.77.0.11:80", "10.77.0.12:8080", "9000", "client-fin,backend-fin"] {
            assert!(l[1].contains(want), "{want} missing from {}", l[1]);
        }
    }
}
