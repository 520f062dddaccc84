// SPDX-License-Identifier: GPL-2.0
//! The node channel: answers probes from peers on UDP and TCP, and probes peers.
//!
//! Each transport has one kernel thread blocked in `recv`/`accept` with a one-second
//! timeout; unloading shuts the sockets down, which wakes the threads at once.

use super::lzk::errno::{EINPROGRESS, EPROTO, ETIMEDOUT};
use super::lzk::kthread::{self, Thread, ThreadBody};
use super::lzk::net::{Ipv4Addr, Net};
use super::lzk::proto::channel::{Probe, ProbeKind, DEFAULT_PORT, PROBE_LEN};
use super::lzk::proto::genl_core::transport;
use super::lzk::sock::{Kind, SockAddr, Socket};
use super::Core;
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Channel port (UDP and TCP).
pub(crate) const PORT: u16 = DEFAULT_PORT;

/// How long a served TCP connection may stay idle.
const TCP_IDLE_MS: u32 = 2000;

/// The running responders.
pub(crate) struct Channel {
    _udp: Thread<UdpResponder>,
    _tcp: Thread<TcpResponder>,
}

impl Channel {
    pub(crate) fn start(core: Arc<Core>) -> Result<Self> {
        let net = Net::init();
        let any = SockAddr { addr: Ipv4Addr::ANY, port: PORT };
        let udp = Socket::new(net, Kind::Udp)?;
        udp.bind(any)?;
        udp.set_timeouts(1000, 1000);
        let tcp = Socket::new(net, Kind::Tcp)?;
        tcp.bind(any)?;
        tcp.listen(16)?;
        tcp.set_timeouts(1000, 1000);
        Ok(Channel {
            _udp: Thread::spawn(c"lz_chan_udp", UdpResponder { sock: udp, core: core.clone() })?,
            _tcp: Thread::spawn(c"lz_chan_tcp", TcpResponder { sock: tcp, core })?,
        })
    }
}

struct UdpResponder {
    sock: Socket,
    core: Arc<Core>,
}

impl ThreadBody for UdpResponder {
    fn run(&self) {
        let mut buf = [0u8; 64];
        while !kthread::should_stop() {
            match self.sock.recv(&mut buf) {
                Ok((n, Some(from))) => {
                    if let Ok(p) = Probe::decode(&buf[..n]) {
                        if p.kind == ProbeKind::Request && self.sock.send(&p.reply().encode(), Some(from)).is_ok() {
                            self.core.probes_answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e == EAGAIN || e == EINTR => {}
                // Shut down, or an error that would repeat at once: pace the loop.
                Err(_) => kthread::sleep_ms(50),
            }
        }
    }

    fn wake(&self) {
        self.sock.shutdown();
    }
}

struct TcpResponder {
    sock: Socket,
    core: Arc<Core>,
}

impl TcpResponder {
    /// Answer probes on one connection until the peer closes it, it idles out, it
    /// sends something that is not a probe, or the module unloads.
    fn serve(&self, conn: &Socket) {
        conn.set_timeouts(TCP_IDLE_MS, TCP_IDLE_MS);
        let mut frame = [0u8; PROBE_LEN];
        while !kthread::should_stop() {
            if conn.recv_exact(&mut frame).is_err() {
                return;
            }
            match Probe::decode(&frame) {
                Ok(p) if p.kind == ProbeKind::Request => {
                    if conn.send_all(&p.reply().encode()).is_err() {
                        return;
                    }
                    self.core.probes_answered.fetch_add(1, Ordering::Relaxed);
                }
                _ => return,
            }
        }
    }
}

impl ThreadBody for TcpResponder {
    fn run(&self) {
        while !kthread::should_stop() {
            match self.sock.accept() {
                Ok(conn) => self.serve(&conn),
                Err(e) if e == EAGAIN || e == EINTR => {}
                Err(_) => kthread::sleep_ms(50),
            }
        }
    }

    fn wake(&self) {
        self.sock.shutdown();
    }
}

fn now_ns() -> i64 {
    // SAFETY: `ktime_get` reads the monotonic clock; callable in any context.
    unsafe { bindings::ktime_get() }
}

/// Probe a peer's channel; returns the round trip in microseconds.
pub(crate) fn probe(net: &Net, addr: Ipv4Addr, port: u16, via: u8, timeout_ms: u32) -> Result<u32> {
    let to = SockAddr { addr, port };
    // SAFETY: `get_random_u64` may be called from any context.
    let nonce = unsafe { bindings::get_random_u64() };
    let req = Probe { kind: ProbeKind::Request, nonce }.encode();
    let deadline = now_ns() + timeout_ms as i64 * 1_000_000;
    let start;
    if via == transport::TCP {
        let s = Socket::new(net, Kind::Tcp)?;
        s.set_timeouts(timeout_ms, timeout_ms);
        // A connect that runs out of time reports EINPROGRESS; to the caller it is
        // a timeout.
        s.connect(to).map_err(|e| if e == EINPROGRESS() { ETIMEDOUT() } else { e })?;
        start = now_ns();
        s.send_all(&req)?;
        let mut frame = [0u8; PROBE_LEN];
        s.recv_exact(&mut frame)?;
        match Probe::decode(&frame) {
            Ok(p) if p.kind == ProbeKind::Reply && p.nonce == nonce => {}
            _ => return Err(EPROTO()),
        }
    } else {
        let s = Socket::new(net, Kind::Udp)?;
        s.connect(to)?;
        start = now_ns();
        s.send(&req, None)?;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline - now_ns();
            if left <= 0 {
                return Err(ETIMEDOUT());
            }
            s.set_timeouts((left / 1_000_000).max(1) as u32, timeout_ms);
            // The receive timeout surfaces as EAGAIN; to the caller it is a timeout.
            let (n, _) = s.recv(&mut buf).map_err(|e| if e == EAGAIN { ETIMEDOUT() } else { e })?;
            // Stale or foreign datagrams are skipped, not trusted.
            if let Ok(p) = Probe::decode(&buf[..n]) {
                if p.kind == ProbeKind::Reply && p.nonce == nonce {
                    break;
                }
            }
        }
    }
    Ok(((now_ns() - start) / 1000).clamp(0, u32::MAX as i64) as u32)
}
