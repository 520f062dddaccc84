//! The `[shadow]` section: reconciling the shadow module with the file, and the
//! failover driver of a backup.
//!
//! Reconciling never tears down a live service: only the heartbeat interval of a
//! configured service can change, anything else is refused until an operator
//! deconfigures it (`lzctl shadow configure --role none`, which drops every shadowed
//! connection).
//!
//! The event watcher waits on the shadow events group on every node with a `[shadow]`
//! section and logs what it reports; `retention-overflow` and `app-lag` are logged as
//! warnings (the node is no longer fault-tolerant, or a program lags its twin) and
//! never lead to a takeover. On a backup with `auto_takeover` it is also the failover
//! driver: on `peer-failed` it runs the fence command and, only when that exits 0,
//! takes over. Nothing on that path sleeps or polls: the event wakes a blocked
//! receive, the fence command is waited for by a blocked `waitid`, and the takeover is
//! one netlink request. On `handover-requested` (the primary stepped down for planned
//! maintenance) it takes over without a fence once every connection has the
//! primary's bytes, or declines after 5 s and the primary serves on.

use crate::config::{Failover, Shadow};
use crate::log;
use lznl::{ShadowClient, ShadowConfig, ShadowEvent, ShadowMonitor, ShadowRole, ShadowStatus};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// What reconciling the module with the file needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The module already runs the service as configured.
    Keep,
    /// Only the heartbeat interval differs: a configure with role and heartbeat.
    Heartbeat { from: Option<u32>, request: ShadowConfig },
    /// No service is configured: the full configure.
    Configure(ShadowConfig),
    /// A live service differs in more than its heartbeat interval.
    Refuse(String),
    /// This node took over as backup and the file now makes it the primary: configure
    /// it afresh (role none, then the full configure) once no connection it took
    /// over needs its translation any more.
    Rearm(ShadowConfig),
}

/// Bumped by every apply: a re-arm still waiting from an earlier one gives up.
static REARM_GENERATION: AtomicU64 = AtomicU64::new(0);
/// How often a waiting re-arm looks at the module again.
const REARM_POLL: Duration = Duration::from_secs(1);

fn show<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("unset".to_string(), |v| v.to_string())
}

/// Compare the module's state with the wanted service.
pub fn plan(current: &ShadowStatus, want: &Shadow) -> Plan {
    let role = match current.role() {
        Some(ShadowRole::None) => return Plan::Configure(want.request()),
        Some(r) => r,
        None => return Plan::Refuse(format!("the module reports an unknown role \"{}\"; leaving it alone", current.role)),
    };
    if current.took_over && want.role == ShadowRole::Primary {
        return Plan::Rearm(want.request());
    }
    let mut diffs = Vec::new();
    // A backup that took over serves the same service as primary: the file still
    // describes it.
    let taken_over = want.role == ShadowRole::Backup && role == ShadowRole::Primary;
    if role != want.role && !taken_over {
        diffs.push(format!("role {role} (file: {})", want.role));
    }
    if current.service() != Some(want.service) {
        diffs.push(format!("service {} (file: {})", show(&current.service()), want.service));
    }
    if current.peer_addr != Some(want.peer) {
        diffs.push(format!("peer {} (file: {})", show(&current.peer_addr), want.peer));
    }
    if current.beat_port != Some(want.beat_port) {
        diffs.push(format!("beat_port {} (file: {})", show(&current.beat_port), want.beat_port));
    }
    if current.max_conns != Some(want.max_conns) {
        diffs.push(format!("max_conns {} (file: {})", show(&current.max_conns), want.max_conns));
    }
    // Fixed while the service is live too; compared when the module reports them.
    for (name, has, file) in [
        ("retain_kb", current.retain_kb, want.retain_kb),
        ("max_delay_fin_ms", current.max_delay_fin_ms, want.max_delay_fin_ms),
        ("app_max_lag_kb", current.app_max_lag_kb, want.app_max_lag_kb),
        ("app_max_lag_ms", current.app_max_lag_ms, want.app_max_lag_ms),
    ] {
        if let Some(v) = has.filter(|&v| v != file) {
            diffs.push(format!("{name} {v} (file: {file})"));
        }
    }
    // Without `dev` in the file (a primary), the module's interface is not compared.
    if want.dev.is_some() && current.ifname != want.dev {
        diffs.push(format!("dev {} (file: {})", show(&current.ifname), show(&want.dev)));
    }
    if !diffs.is_empty() {
        return Plan::Refuse(format!(
            "refusing to change a live shadowed service: deconfigure first (lzctl shadow configure --role none drops every shadowed connection); the module has {}",
            diffs.join(", ")
        ));
    }
    if current.heartbeat_ms == Some(want.heartbeat_ms) {
        return Plan::Keep;
    }
    Plan::Heartbeat {
        from: current.heartbeat_ms,
        request: ShadowConfig { heartbeat_ms: Some(want.heartbeat_ms), ..ShadowConfig::new(role) },
    }
}

/// Why applying the `[shadow]` section failed.
#[derive(Debug)]
pub enum ApplyError {
    /// Netlink or the kernel.
    Netlink(lznl::Error),
    /// The live service differs from the file.
    Refused(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Netlink(e) => write!(f, "{e}"),
            ApplyError::Refused(m) => f.write_str(m),
        }
    }
}

impl From<lznl::Error> for ApplyError {
    fn from(e: lznl::Error) -> Self {
        ApplyError::Netlink(e)
    }
}

/// A connection to the shadow module with the plan for `want`; nothing is changed yet,
/// so a refusal leaves everything else as it was.
pub fn prepare(want: &Shadow) -> Result<(ShadowClient, Plan), ApplyError> {
    let client = ShadowClient::connect()?;
    let plan = plan(&client.status()?, want);
    if let Plan::Refuse(m) = &plan {
        return Err(ApplyError::Refused(m.clone()));
    }
    Ok((client, plan))
}

/// Carry out a plan from [`prepare`].
pub fn execute(client: &ShadowClient, plan: &Plan, want: &Shadow) -> Result<(), ApplyError> {
    // Whatever this apply does replaces a re-arm still waiting from an earlier one.
    let generation = REARM_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    match plan {
        Plan::Keep => {}
        Plan::Heartbeat { from, request } => {
            client.configure(request)?;
            log(format!("shadow: heartbeat {} ms -> {} ms", show(from), want.heartbeat_ms));
        }
        Plan::Configure(request) => {
            client.configure(request)?;
            let dev = want.dev.as_ref().map(|d| format!(" on {d}")).unwrap_or_default();
            log(format!(
                "shadow: {} of {}{dev} configured (peer {}, heartbeat {} ms on udp port {}, {} connections max, \
                 retain {} KiB, FIN hold {} ms, app lag limit {} KiB for {} ms)",
                want.role,
                want.service,
                want.peer,
                want.heartbeat_ms,
                want.beat_port,
                want.max_conns,
                want.retain_kb,
                want.max_delay_fin_ms,
                want.app_max_lag_kb,
                want.app_max_lag_ms
            ));
        }
        Plan::Refuse(m) => return Err(ApplyError::Refused(m.clone())),
        Plan::Rearm(request) => {
            let (request, want) = (request.clone(), want.clone());
            std::thread::spawn(move || rearm(generation, &request, &want));
        }
    }
    Ok(())
}

/// Configure a node that took over afresh as primary, once none of the connections
/// it took over needs its translation (deconfiguring would break them). Waits as long
/// as that takes, unless a later apply replaces it.
fn rearm(generation: u64, request: &ShadowConfig, want: &Shadow) {
    let mut told = None;
    loop {
        if REARM_GENERATION.load(Ordering::SeqCst) != generation {
            return;
        }
        let open = ShadowClient::connect().and_then(|c| Ok((c.status()?, c)));
        match open {
            Ok((s, _)) if !s.took_over => {
                log("shadow: re-arm as primary: the module is no longer a node that took over; nothing to do");
                return;
            }
            Ok((s, c)) if s.translating.unwrap_or(0) == 0 => {
                let done = c.deconfigure().and_then(|_| c.configure(request));
                match done {
                    Ok(()) => log(format!(
                        "shadow: re-armed: primary of {} again, backup {} (connections accepted from now on are protected)",
                        want.service, want.peer
                    )),
                    Err(e) => log(format!("shadow: re-arm as primary failed: {e}; fix and reload")),
                }
                return;
            }
            Ok((s, _)) => {
                let n = s.translating.unwrap_or(0);
                if told != Some(n) {
                    log(format!(
                        "shadow: re-arm as primary waits for {n} taken-over connection(s) to end (they need this node's translation)"
                    ));
                    told = Some(n);
                }
            }
            Err(e) => log(format!("shadow: re-arm as primary: {e}; trying again")),
        }
        std::thread::sleep(REARM_POLL);
    }
}

/// Run the fence command; `Ok` with its duration only when it exits 0 within
/// `timeout`. On timeout its whole process group is killed.
pub fn fence(argv: &[String], timeout: Duration) -> Result<Duration, String> {
    let shown = argv.join(" ");
    let (program, args) = argv.split_first().ok_or("no fence command")?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let pid = child.id() as libc::pid_t;
    // Wait for the exit without reaping: until `child.wait()` reaps it, the pid (and
    // so the process group id) cannot be reused, which makes the kill below safe.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || loop {
        // SAFETY: waitid only writes into `info`, which outlives the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            let _ = tx.send(());
            return;
        }
    });
    let timed_out = rx.recv_timeout(timeout).is_err();
    if timed_out {
        // SAFETY: plain syscall; the group is ours and its leader is not reaped yet.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let status = child.wait().map_err(|e| format!("waiting for `{shown}`: {e}"));
    let _ = waiter.join();
    let took = start.elapsed();
    if timed_out {
        return Err(format!("`{shown}` did not finish within {} ms and was killed", timeout.as_millis()));
    }
    match status? {
        s if s.success() => Ok(took),
        s => Err(format!("`{shown}` {} after {} ms", describe(s), took.as_millis())),
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// What the failover driver has done (for the metrics endpoint).
#[derive(Default)]
pub struct FailoverStats {
    /// Takeovers completed after a successful fence.
    pub failovers: AtomicU64,
    /// Failovers that stopped short: the fence or the takeover failed.
    pub failed: AtomicU64,
    /// Fence plus takeover of the latest completed failover, in milliseconds.
    pub last_ms: AtomicU64,
    /// Planned switchovers this node completed (the primary stepped down).
    pub planned: AtomicU64,
    /// Planned switchovers it declined (connections short of the primary's bytes, or
    /// the request withdrawn): the primary then serves on.
    pub planned_declined: AtomicU64,
}

/// What the watcher threads share with the main thread.
struct Shared {
    stats: Arc<FailoverStats>,
    /// Bumped whenever the running watcher is replaced or stopped; a watcher thread
    /// whose generation is stale exits at its next wake-up without acting.
    generation: AtomicU64,
    /// The fence settings in force (updated on SIGHUP); `None`: no automatic takeover.
    failover: Mutex<Option<Failover>>,
    /// Held while fencing and taking over: one failover at a time.
    running: Mutex<()>,
}

/// Starts, updates and stops the event watcher thread (the failover driver on a
/// backup with `auto_takeover`).
pub struct Driver {
    shared: Arc<Shared>,
    /// Family id the running watcher joined; a new id means the module was reloaded
    /// and the old membership is gone.
    family: Option<u16>,
}

impl Driver {
    /// No driver running.
    pub fn new() -> Self {
        let shared = Shared {
            stats: Arc::default(),
            generation: AtomicU64::new(0),
            failover: Mutex::new(None),
            running: Mutex::new(()),
        };
        Driver { shared: Arc::new(shared), family: None }
    }

    /// The driver's counters, shared with whoever reports them.
    pub fn stats(&self) -> Arc<FailoverStats> {
        self.shared.stats.clone()
    }

    /// After a successful apply: watch the module's events while `family` (the
    /// shadow family id the apply saw, `None` without a `[shadow]` section) is set,
    /// and take over automatically with `failover`.
    pub fn update(&mut self, failover: Option<Failover>, family: Option<u16>) {
        let on = failover.is_some();
        let was_on = std::mem::replace(&mut *self.shared.failover.lock().unwrap_or_else(|p| p.into_inner()), failover).is_some();
        match family {
            // Turning automatic takeover on starts afresh, so that a peer that has
            // already failed is found at once.
            Some(f) if self.family == Some(f) && (was_on || !on) => {
                if was_on && !on {
                    log("shadow: automatic takeover off");
                }
            }
            Some(f) => {
                let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let shared = self.shared.clone();
                self.family = Some(f);
                std::thread::Builder::new()
                    .name("shadow-events".into())
                    .spawn(move || drive(shared, generation))
                    .map(drop)
                    .unwrap_or_else(|e| log(format!("shadow: cannot start the event watcher: {e}")));
            }
            None => {
                if self.family.take().is_some() {
                    self.shared.generation.fetch_add(1, Ordering::SeqCst);
                    log(if was_on { "shadow: automatic takeover off, no longer watching events" } else { "shadow: no longer watching events" });
                }
            }
        }
    }

    /// Stop acting on events, after letting a failover in progress finish: exiting
    /// between the fence and the takeover would leave nobody serving.
    pub fn stop(&mut self) {
        let _wait = self.shared.running.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.family = None;
    }
}

fn current(shared: &Shared, generation: u64) -> bool {
    shared.generation.load(Ordering::SeqCst) == generation
}

fn takeover_on(shared: &Shared) -> bool {
    shared.failover.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// The watcher thread: join the events group; with automatic takeover, catch up with
/// a failure reported before it joined and act on each `peer-failed`. Every other
/// event is logged, the ones that need an operator as warnings.
fn drive(shared: Arc<Shared>, generation: u64) {
    let mut first = true;
    let mut last_error = None;
    while current(&shared, generation) {
        if !first {
            // Only after a lost event stream; never on the failover path.
            std::thread::sleep(Duration::from_secs(1));
        }
        first = false;
        let joined = ShadowMonitor::join().and_then(|m| Ok((m, ShadowClient::connect()?)));
        let (mut monitor, client) = match joined {
            Ok(x) => x,
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    log(format!("shadow: event watcher: {e}; retrying every second"));
                    last_error = Some(e);
                }
                continue;
            }
        };
        last_error = None;
        if takeover_on(&shared) {
            log("shadow: failover driver watching the peer");
            match client.status() {
                Ok(s) if s.peer_state == "failed" && s.role() == Some(ShadowRole::Backup) && !s.gate_open => {
                    failover(&shared, generation, &client, "the peer had already failed")
                }
                Ok(_) => {}
                Err(e) => log(format!("shadow: status: {e}")),
            }
        } else {
            log("shadow: watching the module's events (no automatic takeover)");
        }
        loop {
            let ev = match monitor.next_event() {
                Ok(ev) => ev,
                Err(e) => {
                    log(format!("shadow: event stream: {e}; joining again"));
                    break;
                }
            };
            if !current(&shared, generation) {
                return;
            }
            if let Some(w) = warning(&ev) {
                log(w);
            } else if ev.is_peer_failed() && takeover_on(&shared) {
                failover(&shared, generation, &client, &describe_event(&ev));
            } else if ev.is_handover_requested() && takeover_on(&shared) {
                planned(&shared, generation, &client);
            } else {
                log(format!("shadow: {}", describe_event(&ev)));
            }
        }
    }
}

fn describe_event(ev: &ShadowEvent) -> String {
    let mut s = ev.event.clone();
    if let Some(a) = ev.peer_addr {
        s += &format!(" (peer {a}");
        if let Some(ms) = ev.peer_silence_ms {
            s += &format!(", silent for {ms} ms");
        }
        s += ")";
    }
    if let Some(n) = ev.conns {
        s += &format!(", {n} connections");
    }
    s
}

/// The warning line for an event that needs an operator but never a takeover:
/// `retention-overflow` and `app-lag`. `None` for any other event.
fn warning(ev: &ShadowEvent) -> Option<String> {
    let role = ev.role.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    let conns = ev.conns.map(|n| format!("; {n} connections open")).unwrap_or_default();
    if ev.is_retention_overflow() {
        Some(format!(
            "WARNING: shadow: retention-overflow{role}: the backup fell more than retain_kb behind; this node kept no more client bytes \
             for it and is NOT fault-tolerant until the service is configured again (role none, then configure){conns}"
        ))
    } else if ev.is_app_lag() {
        let by = ev.lag_bytes.map(|b| format!("by {b} bytes ")).unwrap_or_default();
        Some(format!(
            "WARNING: shadow: app-lag{role}: this node's program lags its twin's output {by}(beyond app_max_lag_kb for app_max_lag_ms); \
             no takeover for this{conns}"
        ))
    } else {
        None
    }
}

/// How long a planned takeover waits for every connection to have the primary's
/// bytes; well inside the primary's own step-down time (15 s by default), so that it
/// never serves again while this node takes over.
const PLANNED_CATCH_UP: Duration = Duration::from_secs(5);

/// The primary stepped down (planned switchover): take over once caught up, with no
/// fence (the primary is alive and silent, and serves on if this declines).
fn planned(shared: &Shared, generation: u64, client: &ShadowClient) {
    let _one_at_a_time = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    if !current(shared, generation) {
        return;
    }
    log("shadow: the primary stepped down: taking over once every connection has its bytes");
    match client.planned_takeover(PLANNED_CATCH_UP) {
        Ok(r) => {
            log(format!(
                "planned takeover: caught up after {} ms, {} connections in {} ms",
                r.caught_up_ms, r.conns, r.takeover_ms
            ));
            shared.stats.planned.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            log(format!("planned takeover declined: {e}"));
            shared.stats.planned_declined.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fence the primary and take over, if this node is a backup that is not serving yet.
fn failover(shared: &Shared, generation: u64, client: &ShadowClient, why: &str) {
    let _one_at_a_time = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cfg) = shared.failover.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return };
    if !current(shared, generation) {
        return;
    }
    // One status round trip: after a takeover, or as a primary, a failed peer is not
    // ours to fence.
    match client.status() {
        Ok(s) if s.role() != Some(ShadowRole::Backup) => {
            log(format!("shadow: {why}: this node is {}, not taking over", s.role));
            return;
        }
        Ok(s) if s.gate_open => {
            log(format!("shadow: {why}: already serving, not taking over again"));
            return;
        }
        Ok(_) => {}
        Err(e) => log(format!("shadow: status before fencing: {e}; fencing anyway")),
    }
    log(format!("shadow: {why}: fencing the primary: {}", cfg.fence.join(" ")));
    let took = match fence(&cfg.fence, cfg.fence_timeout) {
        Ok(t) => t,
        Err(e) => {
            log(format!(
                "FENCING FAILED: {e}. NOT taking over: the primary may still be sending. Will fence again on the next peer-failed event"
            ));
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let result = client.takeover().or_else(|e| match e {
        // Our socket may belong to a family id that went away; one fresh try.
        lznl::Error::Netlink(_) => ShadowClient::connect()?.takeover(),
        e => Err(e),
    });
    match result {
        Ok(r) => {
            log(format!("takeover: {} connections in {} ms (fence took {} ms)", r.conns, r.takeover_ms, took.as_millis()));
            shared.stats.failovers.fetch_add(1, Ordering::Relaxed);
            shared.stats.last_ms.store(took.as_millis() as u64 + r.takeover_ms as u64, Ordering::Relaxed);
        }
        Err(e) => {
            log(format!("TAKEOVER FAILED after fencing the primary (fence took {} ms): {e}", took.as_millis()));
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn want() -> Shadow {
        crate::config::parse(
            "[shadow]\nrole='backup'\nservice='10.77.0.100:8080'\npeer='10.77.0.11'\ndev='lz0'\nheartbeat_ms=50\nauto_takeover=false\n",
        )
        .unwrap()
        .shadow
        .unwrap()
    }

    fn live() -> ShadowStatus {
        ShadowStatus {
            version: "0.1.0".into(),
            role: "backup".into(),
            service_addr: Some(Ipv4Addr::new(10, 77, 0, 100)),
            service_port: Some(8080),
            peer_addr: Some(Ipv4Addr::new(10, 77, 0, 11)),
            beat_port: Some(7401),
            ifname: Some("lz0".into()),
            heartbeat_ms: Some(50),
            max_conns: Some(16384),
            retain_kb: Some(16384),
            max_delay_fin_ms: Some(500),
            app_max_lag_kb: Some(1024),
            app_max_lag_ms: Some(2000),
            gate_open: false,
            peer_state: "alive".into(),
            peer_silence_ms: Some(3),
            fault_tolerant: Some(true),
            retained_bytes: Some(0),
            key_fingerprint: Some(0),
            conns: 2,
            stepping_down: false,
            handed_over: false,
            behind: None,
            took_over: false,
            translating: None,
            stats: Default::default(),
        }
    }

    #[test]
    fn unchanged_service_is_kept() {
        assert_eq!(plan(&live(), &want()), Plan::Keep);
    }

    #[test]
    fn unconfigured_module_gets_everything() {
        let none = ShadowStatus { role: "none".into(), service_addr: None, service_port: None, peer_addr: None, ..live() };
        assert_eq!(plan(&none, &want()), Plan::Configure(want().request()));
    }

    #[test]
    fn heartbeat_alone_changes_live() {
        let cur = ShadowStatus { heartbeat_ms: Some(100), ..live() };
        match plan(&cur, &want()) {
            Plan::Heartbeat { from, request } => {
                assert_eq!(from, Some(100));
                assert_eq!(request, ShadowConfig { heartbeat_ms: Some(50), ..ShadowConfig::new(ShadowRole::Backup) });
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn a_backup_that_took_over_is_kept() {
        let cur = ShadowStatus { role: "primary".into(), gate_open: true, ..live() };
        assert_eq!(plan(&cur, &want()), Plan::Keep);
        // Its heartbeat changes with its current role.
        let cur = ShadowStatus { heartbeat_ms: Some(100), ..cur };
        match plan(&cur, &want()) {
            Plan::Heartbeat { request, .. } => assert_eq!(request.role, ShadowRole::Primary),
            p => panic!("{p:?}"),
        }
        // The other way round is a different service.
        let mut w = want();
        w.role = ShadowRole::Primary;
        assert!(matches!(plan(&live(), &w), Plan::Refuse(m) if m.contains("role backup (file: primary)")));
    }

    #[test]
    fn a_node_that_took_over_is_rearmed_when_the_file_makes_it_primary() {
        let took_over = ShadowStatus { role: "primary".into(), gate_open: true, took_over: true, translating: Some(2), ..live() };
        let primary = Shadow { role: ShadowRole::Primary, peer: "10.77.0.13".parse().unwrap(), ..want() };
        // Even with a new peer: the configure is a fresh one.
        assert_eq!(plan(&took_over, &primary), Plan::Rearm(primary.request()));
        // While the file still says backup, the survivor is kept as it is.
        assert_eq!(plan(&took_over, &want()), Plan::Keep);
        // A primary that never took over is not re-armed: other settings are compared.
        let native = ShadowStatus { role: "primary".into(), gate_open: true, ..live() };
        assert!(matches!(plan(&native, &primary), Plan::Refuse(_)));
    }

    #[test]
    fn anything_else_is_refused() {
        let cases: Vec<(ShadowStatus, &str)> = vec![
            (ShadowStatus { service_port: Some(8081), ..live() }, "service 10.77.0.100:8081 (file: 10.77.0.100:8080)"),
            (ShadowStatus { peer_addr: Some(Ipv4Addr::new(10, 77, 0, 12)), ..live() }, "peer 10.77.0.12"),
            (ShadowStatus { beat_port: Some(7402), ..live() }, "beat_port 7402"),
            (ShadowStatus { max_conns: Some(1024), ..live() }, "max_conns 1024"),
            (ShadowStatus { retain_kb: Some(8192), ..live() }, "retain_kb 8192 (file: 16384)"),
            (ShadowStatus { max_delay_fin_ms: Some(0), ..live() }, "max_delay_fin_ms 0 (file: 500)"),
            (ShadowStatus { app_max_lag_kb: Some(64), ..live() }, "app_max_lag_kb 64 (file: 1024)"),
            (ShadowStatus { app_max_lag_ms: Some(100), heartbeat_ms: Some(10), ..live() }, "app_max_lag_ms 100 (file: 2000)"),
            (ShadowStatus { ifname: Some("eth1".into()), heartbeat_ms: Some(10), ..live() }, "dev eth1 (file: lz0)"),
            (ShadowStatus { role: "observer".into(), ..live() }, "unknown role"),
        ];
        for (cur, want_text) in cases {
            match plan(&cur, &want()) {
                Plan::Refuse(m) => assert!(m.contains(want_text), "{m}"),
                p => panic!("{want_text}: {p:?}"),
            }
        }
        let Plan::Refuse(m) = plan(&ShadowStatus { max_conns: Some(1024), ..live() }, &want()) else { unreachable!() };
        assert!(m.starts_with("refusing to change a live shadowed service: deconfigure first"), "{m}");
    }

    #[test]
    fn settings_the_module_does_not_report_are_not_compared() {
        let old = ShadowStatus { retain_kb: None, max_delay_fin_ms: None, app_max_lag_kb: None, app_max_lag_ms: None, ..live() };
        assert_eq!(plan(&old, &want()), Plan::Keep);
        // The file's settings go into a full configure, and not into a heartbeat change.
        let mut w = want();
        w.retain_kb = 65536;
        w.app_max_lag_ms = 0;
        let none = ShadowStatus { role: "none".into(), service_addr: None, service_port: None, peer_addr: None, ..live() };
        let Plan::Configure(r) = plan(&none, &w) else { panic!() };
        assert_eq!((r.retain_kb, r.max_delay_fin_ms, r.app_max_lag_kb, r.app_max_lag_ms), (Some(65536), Some(500), Some(1024), Some(0)));
        let cur = ShadowStatus { heartbeat_ms: Some(100), retain_kb: Some(65536), app_max_lag_ms: Some(0), ..live() };
        let Plan::Heartbeat { request, .. } = plan(&cur, &w) else { panic!() };
        assert_eq!((request.retain_kb, request.app_max_lag_ms), (None, None));
    }

    fn event(code: u8, name: &str) -> ShadowEvent {
        ShadowEvent {
            event: name.into(),
            code,
            role: Some("primary".into()),
            peer_state: Some("alive".into()),
            peer_addr: Some(Ipv4Addr::new(10, 77, 0, 12)),
            peer_silence_ms: None,
            conns: Some(42),
            lag_bytes: None,
        }
    }

    #[test]
    fn warnings_for_overflow_and_lag_only() {
        use lazarus_proto::genl_shadow::event as ev;
        let w = warning(&event(ev::RETENTION_OVERFLOW, "retention-overflow")).unwrap();
        assert_eq!(
            w,
            "WARNING: shadow: retention-overflow (primary): the backup fell more than retain_kb behind; this node kept no more client bytes \
             for it and is NOT fault-tolerant until the service is configured again (role none, then configure); 42 connections open"
        );
        assert!(!w.contains("  "), "{w}");

        let lag = ShadowEvent { role: Some("backup".into()), lag_bytes: Some(2_000_000), ..event(ev::APP_LAG, "app-lag") };
        let w = warning(&lag).unwrap();
        assert!(w.starts_with("WARNING: shadow: app-lag (backup): this node's program lags its twin's output by 2000000 bytes "), "{w}");
        assert!(w.ends_with("(beyond app_max_lag_kb for app_max_lag_ms); no takeover for this; 42 connections open"), "{w}");
        let w = warning(&ShadowEvent { lag_bytes: None, ..lag }).unwrap();
        assert!(w.contains("output (beyond"), "{w}");

        for (code, name) in
            [(ev::PEER_FAILED, "peer-failed"), (ev::PEER_ALIVE, "peer-alive"), (ev::TAKEOVER, "takeover"), (ev::CONFIGURED, "configured")]
        {
            assert_eq!(warning(&event(code, name)), None, "{name}");
        }
    }

    #[test]
    fn primary_without_dev_ignores_the_interface() {
        let mut w = want();
        w.role = ShadowRole::Primary;
        w.dev = None;
        let cur = ShadowStatus { role: "primary".into(), ifname: Some("eth0".into()), gate_open: true, ..live() };
        assert_eq!(plan(&cur, &w), Plan::Keep);
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fence_success_and_failure() {
        assert!(fence(&argv(&["true"]), Duration::from_secs(5)).is_ok());
        let e = fence(&argv(&["sh", "-c", "exit 3"]), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("exited with status 3"), "{e}");
        let e = fence(&argv(&["sh", "-c", "kill -9 $$"]), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("killed by signal 9"), "{e}");
        let e = fence(&argv(&["/nonexistent/fence"]), Duration::from_secs(5)).unwrap_err();
        assert!(e.starts_with("cannot run `/nonexistent/fence`"), "{e}");
    }

    #[test]
    fn fence_timeout_kills_the_group() {
        let marker = std::env::temp_dir().join(format!("lazarusd-fence-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let t = Instant::now();
        let e = fence(&argv(&["sh", "-c", &script]), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish within 200 ms and was killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // The background child was in the group too.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists(), "a process started by the fence command survived the timeout");
    }

    #[test]
    fn fence_returns_as_soon_as_it_exits() {
        let t = Instant::now();
        let took = fence(&argv(&["sh", "-c", "sleep 0.1"]), Duration::from_secs(10)).unwrap();
        assert!(took >= Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
