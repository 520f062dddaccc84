//! `lazarusd`: applies the node configuration to the Lazarus modules and watches peers.
//!
//! It reconciles the module with the file (ports added and removed until they match,
//! counting switched on or off), re-reads the file on SIGHUP, and probes each peer's
//! channel on its interval, logging changes between reachable and unreachable.
//!
//! With a `[shadow]` section it also configures the shadow module (ST-TCP) and watches
//! its events, warning when the node stops being fault-tolerant (`retention-overflow`)
//! or a program lags its twin (`app-lag`). On a backup with `auto_takeover` the watcher
//! is the failover driver: when the heartbeats say the primary has failed, it fences
//! the primary and takes over (see `shadow.rs`).

mod cluster;
mod config;
mod metrics;
mod shadow;

use clap::Parser;
use config::Config;
use lznl::Client;
use shadow::ApplyError;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "lazarusd", version, about = "Lazarus node daemon")]
struct Args {
    /// Configuration file: this node's, or the cluster's (with a [cluster] table).
    #[arg(short, long, default_value = "/etc/lazarus/lazarus.toml")]
    config: PathBuf,
    /// In a cluster file, this node's name (by default, the node whose address is
    /// one of this machine's).
    #[arg(long)]
    node: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Apply the configuration once and exit.
    #[arg(long)]
    once: bool,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("lazarusd: {}", msg.as_ref());
}

/// The exit code for a failed apply: 1 refused (by the kernel or by us), 3 module not
/// loaded or netlink trouble.
fn exit_code(e: &ApplyError) -> u8 {
    match e {
        ApplyError::Netlink(lznl::Error::Kernel { .. }) | ApplyError::Refused(_) => 1,
        ApplyError::Netlink(_) => 3,
    }
}

/// Make the modules' state match `cfg`. Returns the shadow family id when `cfg` has a
/// `[shadow]` section. A shadow service that cannot be reconciled is found out before
/// anything is changed.
fn apply(client: &Client, cfg: &Config) -> Result<Option<u16>, ApplyError> {
    let shadow = cfg.shadow.as_ref().map(shadow::prepare).transpose()?;
    apply_core(client, cfg)?;
    if let (Some((sc, plan)), Some(want)) = (&shadow, &cfg.shadow) {
        shadow::execute(sc, plan, want)?;
    }
    Ok(shadow.map(|(sc, _)| sc.family_id()))
}

fn apply_core(client: &Client, cfg: &Config) -> Result<(), lznl::Error> {
    let current = client.port_list()?;
    for s in &current {
        if !cfg.ports.contains(s.port) {
            client.port_del(s.port)?;
            log(format!("port {} removed", s.port));
        }
    }
    for &p in cfg.ports.as_slice() {
        if !current.iter().any(|s| s.port == p) {
            client.port_add(p)?;
            log(format!("port {p} added"));
        }
    }
    client.set_enabled(cfg.enabled)?;
    Ok(())
}

struct PeerState {
    next: Instant,
    up: Option<bool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match config::load(&args.config, args.node.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log(e);
            return ExitCode::from(2);
        }
    };
    if args.check {
        log(format!("{}: ok", args.config.display()));
        return ExitCode::SUCCESS;
    }
    let client = match Client::connect() {
        Ok(c) => c,
        Err(e) => {
            log(e.to_string());
            return ExitCode::from(3);
        }
    };
    let family = match apply(&client, &cfg) {
        Ok(f) => f,
        Err(e) => {
            log(format!("applying {}: {e}", args.config.display()));
            return ExitCode::from(exit_code(&e));
        }
    };
    let shadow = cfg.shadow.as_ref().map(|s| format!(", shadow {} of {}", s.role, s.service)).unwrap_or_default();
    log(format!("configuration applied: {} port(s), {} peer(s){shadow}", cfg.ports.len(), cfg.peers.len()));
    if args.once {
        return ExitCode::SUCCESS;
    }
    let mut driver = shadow::Driver::new();
    driver.update(cfg.shadow.as_ref().and_then(|s| s.failover.clone()), family);
    if let Some(addr) = cfg.metrics {
        if let Err(e) = metrics::serve(addr, driver.stats()) {
            log(format!("metrics: cannot listen on {addr}: {e}"));
            return ExitCode::from(3);
        }
        log(format!("metrics on http://{addr}/metrics"));
    }

    let hup = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let registered = flag::register(SIGHUP, hup.clone())
        .and_then(|_| flag::register(SIGTERM, stop.clone()))
        .and_then(|_| flag::register(SIGINT, stop.clone()));
    if let Err(e) = registered {
        log(format!("signal handlers: {e}"));
        return ExitCode::from(3);
    }
    let mut peers: Vec<PeerState> = cfg.peers.iter().map(|_| PeerState { next: Instant::now(), up: None }).collect();
    while !stop.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            // A bad file keeps the running configuration: never apply half of one.
            match config::load(&args.config, args.node.as_deref()) {
                Ok(new) => match apply(&client, &new) {
                    Ok(family) => {
                        driver.update(new.shadow.as_ref().and_then(|s| s.failover.clone()), family);
                        log("configuration re-applied");
                        peers = new.peers.iter().map(|_| PeerState { next: Instant::now(), up: None }).collect();
                        cfg = new;
                    }
                    Err(e) => log(format!("re-applying: {e}")),
                },
                Err(e) => log(format!("keeping the running configuration: {e}")),
            }
        }
        let now = Instant::now();
        for (p, st) in cfg.peers.iter().zip(peers.iter_mut()) {
            if now < st.next {
                continue;
            }
            st.next = now + Duration::from_millis(p.interval_ms);
            let timeout = p.interval_ms.clamp(1, 10_000) as u32;
            let up = match client.probe(p.addr, p.port, p.tcp, timeout) {
                Ok(_) => true,
                // Interrupted by one of our signals: says nothing about the peer.
                Err(e) if e.errno() == Some(libc::ECANCELED) => continue,
                Err(e) => {
                    if st.up != Some(false) {
                        log(format!("peer {} ({}): {e}", p.name, p.addr));
                    }
                    false
                }
            };
            if st.up != Some(up) {
                log(format!("peer {} ({}) is {}", p.name, p.addr, if up { "reachable" } else { "unreachable" }));
                st.up = Some(up);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    driver.stop();
    log("stopping");
    ExitCode::SUCCESS
}
