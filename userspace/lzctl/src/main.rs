//! `lzctl`: inspect and configure the Lazarus modules over generic netlink.
//!
//! `lzctl shadow ...` drives the `lazarus_shadow` module (ST-TCP service shadowing),
//! `lzctl splice ...` the `lazarus_splice` module (CRAFT splicing), `lzctl backdoor ...`
//! the `lazarus_backdoor` module (Sensor Boxes over RDMA).
//!
//! Output is a human table by default and JSON with `-j`, like iproute2. Exit codes:
//! 0 success, 1 the kernel refused the request, 2 bad usage, 3 the module is not
//! loaded or netlink failed, 4 a planned switchover did not complete (nothing was
//! lost: the primary serves on).

mod backdoor;
mod splice;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lazarus_proto::ports::PortSet;
use lznl::{
    Client, ClusterKey, Error, Monitor, PlannedRefusal, PortStats, RawAttr, ShadowClient, ShadowConfig, ShadowConn, ShadowEvent, ShadowMonitor, ShadowRole,
    ShadowStatus,
};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "lzctl", version, about = "Control the Lazarus kernel modules")]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(short = 'j', long = "json", global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Module version, state and configuration summary.
    Status,
    /// Configure and inspect counted ports.
    Port {
        #[command(subcommand)]
        cmd: PortCmd,
    },
    /// Zero the counters of one port, or of all ports.
    Reset {
        /// Port to reset; all when omitted.
        port: Option<u16>,
    },
    /// Turn counting on.
    Enable,
    /// Turn counting off (configuration is kept).
    Disable,
    /// Measure the round trip to a peer node's channel, from this node's kernel.
    Probe {
        /// Peer address.
        addr: Ipv4Addr,
        /// Peer channel port.
        #[arg(long, default_value_t = lazarus_proto::channel::DEFAULT_PORT)]
        port: u16,
        /// Probe over TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Give up after this many milliseconds (1-10000).
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u32,
    },
    /// Print configuration events as they happen.
    Monitor {
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Protected connections, whatever protects them (today: the shadowed service's
    /// connections, as `shadow conns`).
    Conn {
        #[command(subcommand)]
        cmd: ConnCmd,
    },
    /// Shadow a TCP service on a backup node and take over when the primary fails
    /// (lazarus_shadow).
    Shadow {
        #[command(subcommand)]
        cmd: ShadowCmd,
    },
    /// Splice a proxy's client and backend connections in the kernel
    /// (lazarus_splice, used by lzproxy).
    Splice {
        #[command(subcommand)]
        cmd: splice::SpliceCmd,
    },
    /// Sensor Boxes read over RDMA (lazarus_backdoor): a target's role, a
    /// monitor's targets and their sensors.
    Backdoor {
        #[command(subcommand)]
        cmd: backdoor::BackdoorCmd,
    },
    /// Send a request with raw attributes (for diagnostics and tests).
    #[command(hide = true)]
    Raw {
        /// Family to send to.
        #[arg(long, value_enum, default_value_t = Family::Core)]
        family: Family,
        /// Command number.
        #[arg(long)]
        cmd: u8,
        /// Attribute as ID:HEX (payload bytes in hex); repeatable.
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Send as a dump request.
        #[arg(long)]
        dump: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConnCmd {
    /// List the protected connections.
    List,
}

#[derive(Subcommand)]
enum PortCmd {
    /// Start counting ports (a list such as "80 443" or "8000-8003").
    Add { ports: Vec<String> },
    /// Stop counting ports.
    Del { ports: Vec<String> },
    /// Show counters of one port, or of all ports.
    Show { port: Option<u16> },
}

#[derive(Subcommand)]
enum ShadowCmd {
    /// Role, service, gate, peer state, connections and counters.
    Status,
    /// Set up the service on this node, change its heartbeat interval, or drop it
    /// (--role none).
    ///
    /// A live service can only change its heartbeat interval: give --heartbeat-ms
    /// alone (the current role is kept). Anything else needs --role none first, which
    /// drops every shadowed connection.
    Configure(ConfigureArgs),
    /// Open the output gate and serve every shadowed connection. Fence the primary
    /// first: it must no longer be able to send on the client segment. With
    /// --planned, after `step-down` on the primary: no fence is needed.
    Takeover {
        /// Planned switchover: the primary has stepped down. Wait until every
        /// connection has all the client bytes the primary had, then take over.
        #[arg(long)]
        planned: bool,
        /// With --planned: give up (exit 4, nothing lost) if connections are still
        /// short after this long.
        #[arg(long, default_value_t = 5000, requires = "planned", value_parser = clap::value_parser!(u64).range(100..=60_000))]
        catch_up_ms: u64,
    },
    /// Planned switchover, on the primary: withhold this node's output for the
    /// service and ask the backup to take over (`takeover --planned` there, or its
    /// lazarusd). Waits until the backup serves; if it has not within --timeout-ms,
    /// this node serves again and the exit code is 4.
    StepDown {
        /// How long to wait for the backup before serving again.
        #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u32).range(1000..=120_000))]
        timeout_ms: u32,
        /// Return once the request is made instead of waiting for the outcome.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the shadowed connections.
    Conns,
    /// Print shadow events (configuration, peer alive/failed, takeover, retention
    /// overflow, application lag) as they happen.
    Monitor {
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(clap::Args)]
struct ConfigureArgs {
    /// This node's role; the current one when omitted.
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Service (virtual) address and TCP port, the same on both nodes.
    #[arg(long, value_name = "ADDR:PORT")]
    service: Option<SocketAddrV4>,
    /// The other node's own address (heartbeats go there).
    #[arg(long, value_name = "ADDR")]
    peer: Option<Ipv4Addr>,
    /// UDP port of the heartbeat channel on both nodes [module default 7401].
    #[arg(long, value_name = "PORT")]
    beat_port: Option<u16>,
    /// Interface on the client segment (required on a backup).
    #[arg(long, value_name = "IFNAME")]
    dev: Option<String>,
    /// Heartbeat interval, 10-10000; the peer fails after 3 silent intervals.
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u32>,
    /// Connection table size, 16-1048576.
    #[arg(long, value_name = "N")]
    max_conns: Option<u32>,
    /// Primary: client bytes kept until the backup's TCP has them, in KiB over all
    /// connections, 64-1048576 [module default 16384].
    #[arg(long, value_name = "KIB")]
    retain_kb: Option<u32>,
    /// Primary: how long a FIN is held while the backup's program has not produced
    /// it too, 0-10000; 0 never holds [module default 500].
    #[arg(long, value_name = "MS")]
    max_delay_fin_ms: Option<u32>,
    /// Report this node's program lagging its twin's output by more than this many
    /// KiB [module default 1024] ...
    #[arg(long, value_name = "KIB")]
    app_max_lag_kb: Option<u32>,
    /// ... for at least this long, 0-60000 [module default 2000].
    #[arg(long, value_name = "MS")]
    app_max_lag_ms: Option<u32>,
    /// File holding the cluster key (16-64 bytes; a text file is trimmed), the same
    /// on both nodes: heartbeats and progress reports are then authenticated.
    #[arg(long, value_name = "PATH")]
    key_file: Option<std::path::PathBuf>,
    /// With --role none on a node that took over: deconfigure even though
    /// connections it took over are still open (they break).
    #[arg(long)]
    force: bool,
}

/// A role as given on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Primary,
    Backup,
    None,
}

impl From<RoleArg> for ShadowRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Primary => ShadowRole::Primary,
            RoleArg::Backup => ShadowRole::Backup,
            RoleArg::None => ShadowRole::None,
        }
    }
}

/// A generic netlink family of the project.
#[derive(Clone, Copy, ValueEnum)]
enum Family {
    Core,
    Shadow,
    Splice,
    Backdoor,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Kernel { .. } => 1,
            _ => 3,
        };
        Failure { code, message: e.to_string() }
    }
}

fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

fn parse_ports(args: &[String]) -> Result<PortSet, Failure> {
    let text = args.join(" ");
    let set = PortSet::parse(text.as_bytes()).map_err(|e| usage(format!("ports \"{text}\": {e}")))?;
    if set.is_empty() {
        return Err(usage("no ports given".into()));
    }
    Ok(set)
}

fn print_stats(json: bool, stats: &[PortStats]) {
    if json {
        println!("{}", serde_json::to_string(stats).unwrap_or_default());
        return;
    }
    println!("{:>6} {:>12} {:>14} {:>12} {:>14}", "PORT", "SEGS-IN", "BYTES-IN", "SEGS-OUT", "BYTES-OUT");
    for s in stats {
        println!("{:>6} {:>12} {:>14} {:>12} {:>14}", s.port, s.packets_in, s.bytes_in, s.packets_out, s.bytes_out);
    }
}

/// The `configure` request for `args`. `current_role` is asked only when --role is
/// omitted.
fn shadow_config(args: ConfigureArgs, current_role: impl FnOnce() -> Result<ShadowRole, Failure>) -> Result<ShadowConfig, Failure> {
    let others = args.service.is_some()
        || args.peer.is_some()
        || args.beat_port.is_some()
        || args.dev.is_some()
        || args.heartbeat_ms.is_some()
        || args.max_conns.is_some()
        || args.retain_kb.is_some()
        || args.max_delay_fin_ms.is_some()
        || args.app_max_lag_kb.is_some()
        || args.app_max_lag_ms.is_some()
        || args.key_file.is_some();
    let role = match args.role {
        Some(RoleArg::None) if others => return Err(usage("--role none drops the service and takes no other options".into())),
        Some(r) => r.into(),
        None if !others => return Err(usage("nothing to configure: give --role, or --heartbeat-ms for a configured service".into())),
        None => match current_role()? {
            ShadowRole::None => return Err(usage("no service is configured here: give --role primary or --role backup".into())),
            r => r,
        },
    };
    if let Some(s) = args.service {
        if s.port() == 0 {
            return Err(usage(format!("--service {s}: 0 is not a port")));
        }
    }
    if let Some(d) = &args.dev {
        if d.is_empty() || d.len() > 15 || d.bytes().any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace()) {
            return Err(usage(format!("--dev \"{d}\": not an interface name (1-15 bytes, no '/' or spaces)")));
        }
    }
    let key = match &args.key_file {
        Some(path) => Some(ClusterKey::from_file(path).map_err(|e| usage(format!("--key-file {e}")))?),
        None => None,
    };
    Ok(ShadowConfig {
        role,
        service: args.service,
        peer: args.peer,
        beat_port: args.beat_port,
        ifname: args.dev,
        heartbeat_ms: args.heartbeat_ms,
        max_conns: args.max_conns,
        retain_kb: args.retain_kb,
        max_delay_fin_ms: args.max_delay_fin_ms,
        app_max_lag_kb: args.app_max_lag_kb,
        app_max_lag_ms: args.app_max_lag_ms,
        key,
    })
}

/// After a step-down: poll until the backup serves (`true`) or the step-down ran out
/// and this node serves again (`false`). Returns that, the wait in ms, and the
/// connections this node had.
fn wait_step_down(c: &ShadowClient, timeout_ms: u32) -> Result<(bool, u64, u32), Failure> {
    let start = Instant::now();
    // The module ends the step-down itself at the deadline; the margin covers its
    // heartbeat thread's next turn.
    let limit = Duration::from_millis(u64::from(timeout_ms) + 3000);
    loop {
        let s = c.status()?;
        let waited = start.elapsed().as_millis() as u64;
        if s.handed_over {
            return Ok((true, waited, s.conns));
        }
        if !s.stepping_down || start.elapsed() > limit {
            return Ok((false, waited, s.conns));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shadow status, or `None` when the module is not loaded.
fn shadow_status_if_loaded() -> Result<Option<ShadowStatus>, Failure> {
    match ShadowClient::connect() {
        Ok(c) => Ok(Some(c.status()?)),
        Err(Error::NoFamily(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn line(label: &str, value: impl std::fmt::Display) -> String {
    format!("  {:<17}{value}", format!("{label}:"))
}

/// The summary of a shadow status: version, role and gate, service, peer, heartbeat,
/// connections, then fault tolerance, retention, FIN hold and lag limits (when the
/// module reports them).
fn shadow_summary(s: &ShadowStatus) -> Vec<String> {
    let mut out = vec![format!("lazarus_shadow {}", s.version)];
    if s.role() == Some(ShadowRole::None) {
        out.push(line("role", "none (no service configured)"));
        return out;
    }
    let gate = if s.gate_open { "gate open (serving clients)" } else { "gate closed (shadowing)" };
    out.push(line("role", format!("{}, {gate}", s.role)));
    let service = s.service().map_or("-".to_string(), |a| a.to_string());
    let dev = s.ifname.as_ref().map(|d| format!(" on {d}")).unwrap_or_default();
    out.push(line("service", format!("{service}{dev}")));
    let peer = s.peer_addr.map_or("-".to_string(), |a| a.to_string());
    let beat = match s.peer_silence_ms {
        Some(ms) => format!("last beat {ms} ms ago"),
        None => "no beat yet".to_string(),
    };
    out.push(line("peer", format!("{peer} {}, {beat}", s.peer_state)));
    let every = s.heartbeat_ms.map(|m| format!("every {m} ms")).unwrap_or_else(|| "-".into());
    let port = s.beat_port.map(|p| format!(" on udp port {p}")).unwrap_or_default();
    out.push(line("heartbeat", format!("{every}{port}")));
    let of = s.max_conns.map(|m| format!(" of {m}")).unwrap_or_default();
    out.push(line("connections", format!("{}{of}", s.conns)));
    if let Some(ft) = s.fault_tolerant {
        let why = match (ft, s.peer_state.as_str(), s.role()) {
            (true, _, _) => String::new(),
            (false, "alive", Some(ShadowRole::Primary)) => " (retention overflowed)".into(),
            (false, peer, _) => format!(" (peer {peer})"),
        };
        out.push(line("fault-tolerant", format!("{}{why}", if ft { "yes" } else { "no" })));
    }
    if s.took_over {
        let n = s.translating.unwrap_or(0);
        let what = if n == 0 {
            "no taken-over connection left: configure afresh as primary to take a backup".to_string()
        } else {
            format!("{n} taken-over connection(s) still translated; configure afresh as primary once none")
        };
        out.push(line("took over", what));
    }
    match (s.role(), s.stepping_down, s.handed_over) {
        (_, _, true) => out.push(line("switchover", "handed over: the backup serves the service, this node is silent")),
        (Some(ShadowRole::Primary), true, false) => out.push(line("switchover", "stepped down: output withheld, waiting for the backup")),
        (Some(ShadowRole::Backup), true, _) => {
            let short = s.behind.map(|n| format!("; {n} connection(s) still short of its bytes")).unwrap_or_default();
            out.push(line("switchover", format!("the primary asks this node to take over{short}")))
        }
        _ => {}
    }
    if s.retained_bytes.is_some() || s.retain_kb.is_some() {
        let kept = s.retained_bytes.map_or("-".to_string(), |b| b.to_string());
        let budget = s.retain_kb.map(|k| format!(" of {k} KiB")).unwrap_or_default();
        out.push(line("retained", format!("{kept} bytes{budget}")));
    }
    if let Some(ms) = s.max_delay_fin_ms {
        out.push(line("fin hold", if ms == 0 { "off".to_string() } else { format!("up to {ms} ms") }));
    }
    if s.app_max_lag_kb.is_some() || s.app_max_lag_ms.is_some() {
        out.push(line("app lag limit", format!("{} KiB for {} ms", opt_num(s.app_max_lag_kb), opt_num(s.app_max_lag_ms))));
    }
    match s.key_fingerprint {
        Some(0) => out.push(line("peer link", "NOT authenticated (no cluster key)")),
        Some(f) => out.push(line("peer link", format!("authenticated, key fingerprint {f:016x}"))),
        None => {}
    }
    out
}

/// The counters, two to a line.
fn shadow_counters(s: &ShadowStatus) -> Vec<String> {
    let t = &s.stats;
    let rows = [
        ("client-segments", t.client_segments),
        ("swallowed", t.swallowed),
        ("translated-in", t.translated_in),
        ("translated-out", t.translated_out),
        ("unmapped", t.unmapped),
        ("table-full", t.table_full),
        ("options-mismatch", t.options_mismatch),
        ("arp-withheld", t.arp_withheld),
        ("beats-sent", t.beats_sent),
        ("beats-received", t.beats_received),
        ("beats-rejected", t.beats_rejected),
        ("prompts", t.prompts),
        ("parse-errors", t.parse_errors),
        ("acks-clamped", t.acks_clamped),
        ("progress-sent", t.progress_sent),
        ("progress-received", t.progress_received),
        ("progress-rejected", t.progress_rejected),
        ("retained-segments", t.retained_segments),
        ("resend-requests", t.resend_requests),
        ("resent-segments", t.resent_segments),
        ("retention-overflows", t.retention_overflows),
        ("unprotected-conns", t.unprotected_conns),
        ("fins-held", t.fins_held),
        ("app-lag-reports", t.app_lag_reports),
        ("conns-reset", t.conns_reset),
        ("auth-truncated", t.auth_truncated),
        ("auth-forged", t.auth_forged),
        ("auth-replayed", t.auth_replayed),
        ("auth-stale", t.auth_stale),
        ("rsts-held", t.rsts_held),
    ];
    let mut out = vec!["  counters:".to_string()];
    for pair in rows.chunks(2) {
        let cells: Vec<String> = pair.iter().map(|(n, v)| format!("{n:<19}{v:>12}")).collect();
        out.push(format!("    {}", cells.join("    ")));
    }
    out
}

fn opt_num(v: Option<u32>) -> String {
    v.map_or("-".to_string(), |n| n.to_string())
}

fn conns_table(conns: &[ShadowConn]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<21} {:>6} {:>10} {:>10} {:>11} {:>12} {:>10} {:>10}  {}",
        "CLIENT", "MAPPED", "SEQ-OFFSET", "TS-OFFSET", "CLIENT-NEXT", "CLIENT-ACKED", "PEER-NEXT", "RETAINED", "FLAGS"
    )];
    for c in conns {
        let flags = c.flag_names();
        out.push(format!(
            "{:<21} {:>6} {:>10} {:>10} {:>11} {:>12} {:>10} {:>10}  {}",
            format!("{}:{}", c.client_addr, c.client_port),
            if c.mapped { "yes" } else { "no" },
            opt_num(c.seq_offset),
            opt_num(c.ts_offset),
            opt_num(c.client_next),
            opt_num(c.client_acked),
            opt_num(c.peer_next),
            opt_num(c.retained),
            if flags.is_empty() { "-".to_string() } else { flags.join(",") },
        ));
    }
    out
}

/// One line of `shadow monitor`: the event, then what it carries.
fn event_line(e: &ShadowEvent) -> String {
    let mut l = e.event.clone();
    if let Some(r) = &e.role {
        l += &format!(" role {r}");
    }
    if let Some(a) = e.peer_addr {
        l += &format!(" peer {a}");
    }
    if let Some(p) = &e.peer_state {
        l += &format!(" peer-state {p}");
    }
    if let Some(ms) = e.peer_silence_ms {
        l += &format!(" silence {ms} ms");
    }
    if let Some(n) = e.conns {
        l += &format!(" conns {n}");
    }
    if let Some(b) = e.lag_bytes {
        l += &format!(" lag {b} bytes");
    }
    l
}

fn parse_raw_attr(s: &str) -> Result<RawAttr, Failure> {
    let (id, hex) = s.split_once(':').ok_or_else(|| usage(format!("attribute \"{s}\": expected ID:HEX")))?;
    let id: u16 = id.parse().map_err(|_| usage(format!("attribute \"{s}\": bad id")))?;
    if hex.len() % 2 != 0 {
        return Err(usage(format!("attribute \"{s}\": odd number of hex digits")));
    }
    let payload = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| usage(format!("attribute \"{s}\": bad hex")))?;
    Ok(RawAttr { id, payload })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Splice { cmd } => splice::run(cmd, json)?,
        Cmd::Backdoor { cmd } => backdoor::run(cmd, json)?,
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lzctl", &mut std::io::stdout());
        }
        Cmd::Status => {
            let s = Client::connect()?.status()?;
            // The shadow module is optional: its section appears when it is loaded.
            let shadow = shadow_status_if_loaded()?;
            if json {
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                if let (Some(obj), Some(sh)) = (v.as_object_mut(), &shadow) {
                    obj.insert("shadow".into(), serde_json::to_value(sh).unwrap_or_default());
                }
                println!("{v}");
            } else {
                println!("lazarus_core {}", s.version);
                println!("  counting:        {}", if s.enabled { "on" } else { "off" });
                println!("  ports:           {}", s.port_count);
                println!("  channel port:    {}", s.channel_port);
                println!("  probes answered: {}", s.probes_answered);
                for l in shadow.iter().flat_map(shadow_summary) {
                    println!("{l}");
                }
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::Status } => {
            let s = ShadowClient::connect()?.status()?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                let counters = if s.role() == Some(ShadowRole::None) { Vec::new() } else { shadow_counters(&s) };
                for l in shadow_summary(&s).into_iter().chain(counters) {
                    println!("{l}");
                }
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::Configure(args) } => {
            // Arguments are checked before the kernel is asked anything; the current
            // role is read only when --role is omitted.
            let force = args.force;
            let mut client = None;
            let config = shadow_config(args, || {
                let s = client.insert(ShadowClient::connect()?).status()?;
                s.role().ok_or_else(|| Failure { code: 3, message: format!("the module reports an unknown role \"{}\"", s.role) })
            })?;
            let c = match client {
                Some(c) => c,
                None => ShadowClient::connect()?,
            };
            if config.role == ShadowRole::None && !force {
                if let Some(n) = c.status()?.translating.filter(|&n| n > 0) {
                    return Err(Failure {
                        code: 1,
                        message: format!(
                            "{n} connection(s) this node took over are still open and need this module's translation: \
                             deconfiguring now would break them. Wait until `lzctl shadow status` shows none, or give --force"
                        ),
                    });
                }
            }
            c.configure(&config)?;
        }
        Cmd::Shadow { cmd: ShadowCmd::Takeover { planned: false, .. } } => {
            let r = ShadowClient::connect()?.takeover()?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!("took over {} connection(s) in {} ms", r.conns, r.takeover_ms);
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::Takeover { planned: true, catch_up_ms } } => {
            let r = ShadowClient::connect()?.planned_takeover(Duration::from_millis(catch_up_ms)).map_err(|e| match e {
                PlannedRefusal::Netlink(e) => Failure::from(e),
                e => Failure { code: 4, message: e.to_string() },
            })?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!("caught up after {} ms; took over {} connection(s) in {} ms", r.caught_up_ms, r.conns, r.takeover_ms);
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::StepDown { timeout_ms, no_wait } } => {
            let c = ShadowClient::connect()?;
            c.step_down(Some(timeout_ms))?;
            if no_wait {
                return Ok(());
            }
            let (handed_over, waited_ms, conns) = wait_step_down(&c, timeout_ms)?;
            if json {
                println!("{}", json!({"handed_over": handed_over, "waited_ms": waited_ms, "conns": conns}));
            }
            if !handed_over {
                return Err(Failure {
                    code: 4,
                    message: format!("the backup did not take over within {timeout_ms} ms: this node serves again"),
                });
            }
            if !json {
                println!("the backup serves the service after {waited_ms} ms; this node's {conns} connection(s) retired, it stays silent");
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::Conns } | Cmd::Conn { cmd: ConnCmd::List } => {
            let conns = ShadowClient::connect()?.conns()?;
            if json {
                println!("{}", serde_json::to_string(&conns).unwrap_or_default());
            } else {
                for l in conns_table(&conns) {
                    println!("{l}");
                }
            }
        }
        Cmd::Shadow { cmd: ShadowCmd::Monitor { count } } => {
            let mut m = ShadowMonitor::join()?;
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let e = m.next_event()?;
                if json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    println!("{}", event_line(&e));
                }
                seen += 1;
            }
        }
        Cmd::Port { cmd: PortCmd::Add { ports } } => {
            let c = Client::connect()?;
            for &p in parse_ports(&ports)?.as_slice() {
                c.port_add(p)?;
            }
        }
        Cmd::Port { cmd: PortCmd::Del { ports } } => {
            let c = Client::connect()?;
            for &p in parse_ports(&ports)?.as_slice() {
                c.port_del(p)?;
            }
        }
        Cmd::Port { cmd: PortCmd::Show { port } } => {
            let c = Client::connect()?;
            let stats = match port {
                Some(p) => vec![c.port_get(p)?],
                None => c.port_list()?,
            };
            print_stats(json, &stats);
        }
        Cmd::Reset { port } => Client::connect()?.stats_reset(port)?,
        Cmd::Enable => Client::connect()?.set_enabled(true)?,
        Cmd::Disable => Client::connect()?.set_enabled(false)?,
        Cmd::Probe { addr, port, tcp, timeout_ms } => {
            let rtt = Client::connect()?.probe(addr, port, tcp, timeout_ms)?;
            if json {
                println!("{}", json!({"peer": addr.to_string(), "port": port, "transport": if tcp {"tcp"} else {"udp"}, "rtt_us": rtt}));
            } else {
                println!("{addr}:{port} ({}) rtt {:.3} ms", if tcp { "tcp" } else { "udp" }, rtt as f64 / 1000.0);
            }
        }
        Cmd::Monitor { count } => {
            let mut m = Monitor::join()?;
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let e = m.next_event()?;
                if json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    let port = e.port.map(|p| format!(" port {p}")).unwrap_or_default();
                    let en = e.enabled.map(|b| format!(" enabled {}", b as u8)).unwrap_or_default();
                    println!("{}{port}{en}", e.event);
                }
                seen += 1;
            }
        }
        Cmd::Raw { family, cmd, attrs, dump } => {
            let attrs = attrs.iter().map(|s| parse_raw_attr(s)).collect::<Result<Vec<_>, _>>()?;
            let replies = match family {
                Family::Core => Client::connect()?.request(cmd, &attrs, dump)?,
                Family::Shadow => ShadowClient::connect()?.request(cmd, &attrs, dump)?,
                Family::Splice => lznl::SpliceClient::connect()?.request(cmd, &attrs, dump)?,
                Family::Backdoor => lznl::BackdoorClient::connect()?.request(cmd, &attrs, dump)?,
            };
            println!("{} reply message(s)", replies.len());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("lzctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> ConfigureArgs {
        let argv = ["lzctl", "shadow", "configure"].into_iter().map(String::from).chain(line.split_whitespace().map(String::from));
        match Cli::try_parse_from(argv).unwrap().cmd {
            Cmd::Shadow { cmd: ShadowCmd::Configure(a) } => a,
            _ => unreachable!(),
        }
    }

    fn unasked() -> Result<ShadowRole, Failure> {
        panic!("the current role must not be read when --role is given")
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn configure_full_service() {
        let c = shadow_config(
            args("--role backup --service 10.77.0.100:8080 --peer 10.77.0.11 --dev lz0 --beat-port 7402 --heartbeat-ms 50 --max-conns 1024"),
            unasked,
        )
        .ok()
        .unwrap();
        assert_eq!(c.role, ShadowRole::Backup);
        assert_eq!(c.service, Some("10.77.0.100:8080".parse().unwrap()));
        assert_eq!(c.peer, Some(Ipv4Addr::new(10, 77, 0, 11)));
        assert_eq!(c.ifname.as_deref(), Some("lz0"));
        assert_eq!((c.beat_port, c.heartbeat_ms, c.max_conns), (Some(7402), Some(50), Some(1024)));
        assert_eq!((c.retain_kb, c.max_delay_fin_ms, c.app_max_lag_kb, c.app_max_lag_ms), (None, None, None, None), "module defaults");

        let c = shadow_config(
            args("--role primary --service 10.77.0.100:8080 --peer 10.77.0.12 --dev lz0 --retain-kb 65536 --max-delay-fin-ms 0 --app-max-lag-kb 256 --app-max-lag-ms 5000"),
            unasked,
        )
        .ok()
        .unwrap();
        assert_eq!(c.role, ShadowRole::Primary);
        assert_eq!((c.retain_kb, c.max_delay_fin_ms), (Some(65536), Some(0)));
        assert_eq!((c.app_max_lag_kb, c.app_max_lag_ms), (Some(256), Some(5000)));
        assert_eq!((c.heartbeat_ms, c.max_conns), (None, None));
    }

    #[test]
    fn configure_heartbeat_keeps_the_role() {
        let c = shadow_config(args("--heartbeat-ms 20"), || Ok(ShadowRole::Primary)).ok().unwrap();
        assert_eq!(c, ShadowConfig { heartbeat_ms: Some(20), ..ShadowConfig::new(ShadowRole::Primary) });
        let e = shadow_config(args("--heartbeat-ms 20"), || Ok(ShadowRole::None)).err().unwrap();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("no service is configured"), "{}", e.message);
        // The new settings also ask for the current role (the module refuses a change
        // on a live service, and accepts a request that repeats them).
        let c = shadow_config(args("--retain-kb 16384"), || Ok(ShadowRole::Backup)).ok().unwrap();
        assert_eq!(c, ShadowConfig { retain_kb: Some(16384), ..ShadowConfig::new(ShadowRole::Backup) });
    }

    #[test]
    fn configure_usage_errors() {
        let c = shadow_config(args("--role none"), unasked).ok().unwrap();
        assert_eq!(c, ShadowConfig::new(ShadowRole::None));
        for (line, want) in [
            ("--role none --peer 1.2.3.4", "--role none"),
            ("--role none --retain-kb 64", "--role none"),
            ("--role none --app-max-lag-ms 100", "--role none"),
            ("", "nothing to configure"),
            ("--role primary --service 1.2.3.4:0", "--service"),
            ("--role backup --dev abcdefghijklmnop", "--dev"),
            ("--role backup --dev a/b", "--dev"),
        ] {
            let e = shadow_config(args(line), unasked).err().unwrap();
            assert_eq!(e.code, 2, "{line}");
            assert!(e.message.contains(want), "{line}: {}", e.message);
        }
        assert!(Cli::try_parse_from(["lzctl", "shadow", "configure", "--role", "master"]).is_err());
        assert!(Cli::try_parse_from(["lzctl", "shadow", "configure", "--service", "1.2.3.4"]).is_err());
        assert!(Cli::try_parse_from(["lzctl", "shadow", "configure", "--retain-kb", "-1"]).is_err());
        assert!(Cli::try_parse_from(["lzctl", "shadow", "configure", "--max-delay-fin-ms", "soon"]).is_err());
    }

    fn status(role: &str) -> ShadowStatus {
        ShadowStatus {
            version: "0.1.0".into(),
            role: role.into(),
            service_addr: Some(Ipv4Addr::new(10, 77, 0, 100)),
            service_port: Some(8080),
            peer_addr: Some(Ipv4Addr::new(10, 77, 0, 11)),
            beat_port: Some(7401),
            ifname: Some("lz0".into()),
            heartbeat_ms: Some(100),
            max_conns: Some(16384),
            retain_kb: Some(16384),
            max_delay_fin_ms: Some(500),
            app_max_lag_kb: Some(1024),
            app_max_lag_ms: Some(2000),
            gate_open: false,
            peer_state: "alive".into(),
            peer_silence_ms: Some(12),
            fault_tolerant: Some(true),
            retained_bytes: Some(0),
            key_fingerprint: Some(0x00c0_ffee_0000_0001),
            conns: 3,
            stepping_down: false,
            handed_over: false,
            behind: None,
            took_over: false,
            translating: None,
            stats: lznl::ShadowStats { parse_errors: 7, retention_overflows: 2, app_lag_reports: 5, ..Default::default() },
        }
    }

    #[test]
    fn shadow_text() {
        let l = shadow_summary(&status("backup"));
        assert_eq!(l[0], "lazarus_shadow 0.1.0");
        assert_eq!(l[1], "  role:            backup, gate closed (shadowing)");
        assert_eq!(l[2], "  service:         10.77.0.100:8080 on lz0");
        assert_eq!(l[3], "  peer:            10.77.0.11 alive, last beat 12 ms ago");
        assert_eq!(l[5], "  connections:     3 of 16384");
        assert_eq!(l[6], "  fault-tolerant:  yes");
        assert_eq!(l[7], "  retained:        0 bytes of 16384 KiB");
        assert_eq!(l[8], "  fin hold:        up to 500 ms");
        assert_eq!(l[9], "  app lag limit:   1024 KiB for 2000 ms");
        assert_eq!(l[10], "  peer link:       authenticated, key fingerprint 00c0ffee00000001");
        assert_eq!(l.len(), 11);
        let open = ShadowStatus { key_fingerprint: Some(0), ..status("backup") };
        assert_eq!(shadow_summary(&open)[10], "  peer link:       NOT authenticated (no cluster key)");
        assert_eq!(shadow_summary(&status("none")).len(), 2);
        // A planned switchover shows on both sides.
        let asked = ShadowStatus { stepping_down: true, behind: Some(2), ..status("backup") };
        assert_eq!(
            shadow_summary(&asked)[7],
            "  switchover:      the primary asks this node to take over; 2 connection(s) still short of its bytes"
        );
        let down = ShadowStatus { stepping_down: true, ..status("primary") };
        assert_eq!(shadow_summary(&down)[7], "  switchover:      stepped down: output withheld, waiting for the backup");
        let gone = ShadowStatus { stepping_down: true, handed_over: true, ..status("primary") };
        assert_eq!(shadow_summary(&gone)[7], "  switchover:      handed over: the backup serves the service, this node is silent");
        assert_eq!(shadow_summary(&gone).len(), 12);
        let survivor = ShadowStatus { took_over: true, translating: Some(3), ..status("primary") };
        assert_eq!(
            shadow_summary(&survivor)[7],
            "  took over:       3 taken-over connection(s) still translated; configure afresh as primary once none"
        );
        let c = shadow_counters(&status("backup"));
        assert_eq!(c.len(), 1 + 15);
        assert!(c[7].starts_with("    parse-errors") && c[7].contains(" 7    "), "{}", c[7]);
        assert!(c[11].starts_with("    retention-overflows") && c[11].contains(" 2    unprotected-conns"), "{}", c[11]);
        assert_eq!(c[12].split_whitespace().collect::<Vec<_>>(), ["fins-held", "0", "app-lag-reports", "5"]);
        assert_eq!(c[11].find("unprotected-conns"), c[12].find("app-lag-reports"), "columns line up");
    }

    #[test]
    fn shadow_text_fault_tolerance_and_settings() {
        let ft = |role: &str, peer: &str, ft: bool| {
            let s = ShadowStatus { peer_state: peer.into(), fault_tolerant: Some(ft), ..status(role) };
            shadow_summary(&s)[6].clone()
        };
        assert_eq!(ft("primary", "alive", false), "  fault-tolerant:  no (retention overflowed)");
        assert_eq!(ft("primary", "failed", false), "  fault-tolerant:  no (peer failed)");
        assert_eq!(ft("backup", "unknown", false), "  fault-tolerant:  no (peer unknown)");

        let s = ShadowStatus { retained_bytes: Some(123456), max_delay_fin_ms: Some(0), ..status("primary") };
        let l = shadow_summary(&s);
        assert_eq!(l[7], "  retained:        123456 bytes of 16384 KiB");
        assert_eq!(l[8], "  fin hold:        off");

        // A module that does not report them: the lines are left out.
        let old = ShadowStatus {
            retain_kb: None,
            max_delay_fin_ms: None,
            app_max_lag_kb: None,
            app_max_lag_ms: None,
            fault_tolerant: None,
            retained_bytes: None,
            key_fingerprint: None,
            ..status("backup")
        };
        assert_eq!(shadow_summary(&old).len(), 6);
    }

    #[test]
    fn shadow_status_json_keys() {
        let v = serde_json::to_value(status("primary")).unwrap();
        for k in ["role", "heartbeat_ms", "max_conns", "gate_open", "peer_state", "conns", "stepping_down", "handed_over", "behind", "took_over", "translating"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["retain_kb"], 16384);
        assert_eq!(v["max_delay_fin_ms"], 500);
        assert_eq!(v["app_max_lag_kb"], 1024);
        assert_eq!(v["app_max_lag_ms"], 2000);
        assert_eq!(v["fault_tolerant"], true);
        assert_eq!(v["retained_bytes"], 0);
        let stats = v["stats"].as_object().unwrap();
        for k in [
            "acks_clamped",
            "parse_errors",
            "progress_sent",
            "progress_received",
            "progress_rejected",
            "retained_segments",
            "resend_requests",
            "resent_segments",
            "retention_overflows",
            "unprotected_conns",
            "fins_held",
            "app_lag_reports",
            "conns_reset",
            "auth_truncated",
            "auth_forged",
            "auth_replayed",
            "auth_stale",
            "rsts_held",
        ] {
            assert!(stats.contains_key(k), "stats.{k}");
        }
        assert_eq!(stats.len(), 30);
        assert_eq!(v["key_fingerprint"], 0x00c0_ffee_0000_0001u64);
        assert_eq!((&stats["retention_overflows"], &stats["app_lag_reports"]), (&json!(2), &json!(5)));
    }

    #[test]
    fn conns_text() {
        let conn = ShadowConn {
            client_addr: Ipv4Addr::new(10, 77, 0, 1),
            client_port: 40000,
            mapped: true,
            seq_offset: Some(5),
            ts_offset: None,
            client_next: Some(100),
            client_acked: Some(90),
            peer_next: Some(80),
            retained: Some(20),
            flags: 5,
            client_fin: true,
            server_fin: false,
            rst: true,
            options_mismatch: false,
        };
        let t = conns_table(std::slice::from_ref(&conn));
        assert!(t[0].starts_with("CLIENT"));
        assert!(t[1].starts_with("10.77.0.1:40000 "), "{}", t[1]);
        assert!(t[1].ends_with("  client-fin,rst"), "{}", t[1]);
        assert_eq!(t[0].find("MAPPED").map(|i| i + 6), t[1].find("yes").map(|i| i + 3), "columns line up");
        assert_eq!(t[0].find("PEER-NEXT").map(|i| i + 9), t[1].find(" 80 ").map(|i| i + 3), "{}\n{}", t[0], t[1]);
        assert_eq!(t[0].find("RETAINED").map(|i| i + 8), t[1].find(" 20 ").map(|i| i + 3), "{}\n{}", t[0], t[1]);

        let fresh = ShadowConn { peer_next: None, retained: None, ..conn.clone() };
        let t = conns_table(&[fresh]);
        assert!(t[1].contains("         -          -  client-fin,rst"), "{}", t[1]);

        let v = serde_json::to_value(&conn).unwrap();
        assert_eq!((&v["peer_next"], &v["retained"], &v["client_next"]), (&json!(80), &json!(20), &json!(100)));
    }

    #[test]
    fn monitor_lines() {
        let ev = |event: &str| ShadowEvent {
            event: event.into(),
            code: 0,
            role: Some("primary".into()),
            peer_state: Some("alive".into()),
            peer_addr: Some(Ipv4Addr::new(10, 77, 0, 12)),
            peer_silence_ms: None,
            conns: Some(4),
            lag_bytes: None,
        };
        assert_eq!(event_line(&ev("retention-overflow")), "retention-overflow role primary peer 10.77.0.12 peer-state alive conns 4");
        let lag = ShadowEvent { lag_bytes: Some(1_200_000), ..ev("app-lag") };
        assert_eq!(event_line(&lag), "app-lag role primary peer 10.77.0.12 peer-state alive conns 4 lag 1200000 bytes");
        let v = serde_json::to_value(&lag).unwrap();
        assert_eq!((&v["event"], &v["lag_bytes"]), (&json!("app-lag"), &json!(1_200_000)));
        assert_eq!(serde_json::to_value(ev("takeover")).unwrap()["lag_bytes"], serde_json::Value::Null);
    }
}
