//! The `[shadow]` section: reconciling the shadow module with the file, and the
//! failover driver of a backup.
//!
//! Reconciling never tears down a live service: only the heartbeat interval of a
//! configured service can change, anything else is refused until an operator
//! deconfigures it (`lzctl shadow configure --role none`, which drops every shadowed
//! connection).
//!
//! The failover driver waits on the shadow events group. On `peer-failed` it runs the
//! fence command and, only when that exits 0, takes over. Nothing on that path sleeps
//! or polls: the event wakes a blocked receive, the fence command is waited for by a
//! blocked `waitid`, and the takeover is one netlink request.

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
}

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
                "shadow: {} of {}{dev} configured (peer {}, heartbeat {} ms on udp port {}, {} connections max)",
                want.role, want.service, want.peer, want.heartbeat_ms, want.beat_port, want.max_conns
            ));
        }
        Plan::Refuse(m) => return Err(ApplyError::Refused(m.clone())),
    }
    Ok(())
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

/// What the driver threads share with the main thread.
struct Shared {
    /// Bumped whenever the running driver is replaced or stopped; a driver thread
    /// whose generation is stale exits at its next wake-up without acting.
    generation: AtomicU64,
    /// The fence settings in force (updated on SIGHUP).
    failover: Mutex<Option<Failover>>,
    /// Held while fencing and taking over: one failover at a time.
    running: Mutex<()>,
}

/// Starts, updates and stops the failover driver thread.
pub struct Driver {
    shared: Arc<Shared>,
    /// Family id the running driver joined; a new id means the module was reloaded
    /// and the old membership is gone.
    family: Option<u16>,
}

impl Driver {
    /// No driver running.
    pub fn new() -> Self {
        Driver { shared: Arc::new(Shared { generation: AtomicU64::new(0), failover: Mutex::new(None), running: Mutex::new(()) }), family: None }
    }

    /// After a successful apply: run the driver with `failover`, or stop it for
    /// `None`. `family` is the shadow family id the apply saw.
    pub fn update(&mut self, failover: Option<Failover>, family: Option<u16>) {
        let on = failover.is_some();
        *self.shared.failover.lock().unwrap_or_else(|p| p.into_inner()) = failover;
        match (on, family) {
            (true, Some(f)) if self.family == Some(f) => {}
            (true, Some(f)) => {
                let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let shared = self.shared.clone();
                self.family = Some(f);
                std::thread::Builder::new()
                    .name("failover".into())
                    .spawn(move || drive(shared, generation))
                    .map(drop)
                    .unwrap_or_else(|e| log(format!("shadow: cannot start the failover driver: {e}")));
            }
            _ => {
                if self.family.take().is_some() {
                    self.shared.generation.fetch_add(1, Ordering::SeqCst);
                    log("shadow: automatic takeover off");
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

/// The driver thread: join the events group, catch up with a failure reported before
/// it joined, then act on each `peer-failed`.
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
                    log(format!("shadow: failover driver: {e}; retrying every second"));
                    last_error = Some(e);
                }
                continue;
            }
        };
        last_error = None;
        log("shadow: failover driver watching the peer");
        match client.status() {
            Ok(s) if s.peer_state == "failed" && s.role() == Some(ShadowRole::Backup) && !s.gate_open => {
                failover(&shared, generation, &client, "the peer had already failed")
            }
            Ok(_) => {}
            Err(e) => log(format!("shadow: status: {e}")),
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
            if ev.is_peer_failed() {
                failover(&shared, generation, &client, &describe_event(&ev));
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
            return;
        }
    };
    let result = client.takeover().or_else(|e| match e {
        // Our socket may belong to a family id that went away; one fresh try.
        lznl::Error::Netlink(_) => ShadowClient::connect()?.takeover(),
        e => Err(e),
    });
    match result {
        Ok(r) => log(format!("takeover: {} connections in {} ms (fence took {} ms)", r.conns, r.takeover_ms, took.as_millis())),
        Err(e) => log(format!("TAKEOVER FAILED after fencing the primary (fence took {} ms): {e}", took.as_millis())),
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
            retain_kb: None,
            max_delay_fin_ms: None,
            app_max_lag_kb: None,
            app_max_lag_ms: None,
            gate_open: false,
            peer_state: "alive".into(),
            peer_silence_ms: Some(3),
            fault_tolerant: None,
            retained_bytes: None,
            conns: 2,
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
    fn anything_else_is_refused() {
        let cases: Vec<(ShadowStatus, &str)> = vec![
            (ShadowStatus { service_port: Some(8081), ..live() }, "service 10.77.0.100:8081 (file: 10.77.0.100:8080)"),
            (ShadowStatus { peer_addr: Some(Ipv4Addr::new(10, 77, 0, 12)), ..live() }, "peer 10.77.0.12"),
            (ShadowStatus { beat_port: Some(7402), ..live() }, "beat_port 7402"),
            (ShadowStatus { max_conns: Some(1024), ..live() }, "max_conns 1024"),
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
