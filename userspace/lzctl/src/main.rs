//! `lzctl`: inspect and configure the Lazarus modules over generic netlink.
//!
//! Output is a human table by default and JSON with `-j`, like iproute2. Exit codes:
//! 0 success, 1 the kernel refused the request, 2 bad usage, 3 the module is not
//! loaded or netlink failed.

use clap::{CommandFactory, Parser, Subcommand};
use lazarus_proto::ports::PortSet;
use lznl::{Client, Error, Monitor, PortStats, RawAttr};
use serde_json::json;
use std::net::Ipv4Addr;
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
    /// Send a request with raw attributes (for diagnostics and tests).
    #[command(hide = true)]
    Raw {
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
enum PortCmd {
    /// Start counting ports (a list such as "80 443" or "8000-8003").
    Add { ports: Vec<String> },
    /// Stop counting ports.
    Del { ports: Vec<String> },
    /// Show counters of one port, or of all ports.
    Show { port: Option<u16> },
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
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lzctl", &mut std::io::stdout());
        }
        Cmd::Status => {
            let s = Client::connect()?.status()?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                println!("lazarus_core {}", s.version);
                println!("  counting:        {}", if s.enabled { "on" } else { "off" });
                println!("  ports:           {}", s.port_count);
                println!("  channel port:    {}", s.channel_port);
                println!("  probes answered: {}", s.probes_answered);
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
        Cmd::Raw { cmd, attrs, dump } => {
            let attrs = attrs.iter().map(|s| parse_raw_attr(s)).collect::<Result<Vec<_>, _>>()?;
            let replies = Client::connect()?.request(cmd, &attrs, dump)?;
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
