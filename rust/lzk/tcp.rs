// SPDX-License-Identifier: GPL-2.0
//! Local TCP sockets found by their 4-tuple, and the one thing Lazarus asks of them:
//! to speak up at once after a takeover.

use super::bh::BhGuard;
use super::net::Net;
use core::ptr::NonNull;
use kernel::bindings;

/// TCP states (include/net/tcp_states.h) in which a socket is not a full socket or
/// has nothing to say: TIME_WAIT, CLOSE, LISTEN, NEW_SYN_RECV.
const QUIET_STATES: [u8; 4] = [6, 7, 10, 12];

/// Full-socket states after the peer's FIN: CLOSE_WAIT, LAST_ACK, CLOSING.
const FIN_IN_STATES: [u8; 3] = [8, 9, 11];
/// Full-socket states after our FIN was queued: FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING.
const FIN_OUT_STATES: [u8; 4] = [4, 5, 9, 11];

/// A snapshot of a connection's sequence state (`struct tcp_sock`).
#[derive(Clone, Copy, Debug)]
pub struct TcpProgress {
    /// Next byte expected from the peer.
    pub rcv_nxt: u32,
    /// Oldest byte sent and not yet acknowledged.
    pub snd_una: u32,
    /// Next byte the program reads.
    pub copied_seq: u32,
    /// One past the last byte the program wrote (its FIN included).
    pub write_seq: u32,
    /// The peer's FIN has arrived.
    pub fin_in: bool,
    /// Our FIN has been queued.
    pub fin_out: bool,
}

/// A counted reference to a socket in the established hash (a full socket, a
/// request socket or a TIME_WAIT socket).
///
/// # Invariants
///
/// `sk` is a socket on which this value holds one reference, taken by
/// `__inet_lookup_established` and released with `sock_gen_put` in `Drop`.
pub struct EstablishedSock {
    sk: NonNull<bindings::sock>,
}

impl EstablishedSock {
    /// The socket of the connection from `remote` to local `local` (addresses as
    /// network-order bytes, ports in host order), if there is one.
    pub fn lookup(net: &Net, remote: ([u8; 4], u16), local: ([u8; 4], u16)) -> Option<Self> {
        let saddr = u32::from_ne_bytes(remote.0);
        let daddr = u32::from_ne_bytes(local.0);
        // SAFETY: `net` is live; the lookup walks RCU-protected hash chains, so it runs
        // inside an RCU read section, and takes a reference on the socket it returns.
        let sk = unsafe {
            bindings::rcu_read_lock();
            let hashinfo = (*net.as_ptr()).ipv4.tcp_death_row.hashinfo;
            let sk = bindings::__inet_lookup_established(
                net.as_ptr(),
                hashinfo,
                saddr,
                remote.1.to_be(),
                daddr,
                local.1,
                0,
                0,
            );
            bindings::rcu_read_unlock();
            sk
        };
        NonNull::new(sk).map(|sk| EstablishedSock { sk })
    }

    fn state(&self) -> u8 {
        // SAFETY: The socket is valid while referenced (type invariant); the state is
        // a single byte read without tearing.
        unsafe { core::ptr::read_volatile(&(*self.sk.as_ptr()).__sk_common.skc_state) }
    }

    /// Where the connection stands, or `None` when this is not a full socket (a
    /// request or TIME_WAIT socket, or a closed one). Read without the socket lock:
    /// each number is one aligned word, so a reading may mix moments a few
    /// microseconds apart but never tears a number. Any context.
    pub fn progress(&self) -> Option<TcpProgress> {
        let state = self.state();
        if QUIET_STATES.contains(&state) {
            return None;
        }
        // SAFETY: A full TCP socket (state checked above; request and TIME_WAIT
        // sockets are separate objects whose state never changes into a full
        // socket's), valid while referenced (type invariant). Plain word reads.
        let (rcv_nxt, snd_una, copied_seq, write_seq) = unsafe {
            let tp = bindings::tcp_sk(self.sk.as_ptr());
            (
                core::ptr::read_volatile(&(*tp).rcv_nxt),
                core::ptr::read_volatile(&(*tp).snd_una),
                core::ptr::read_volatile(&(*tp).copied_seq),
                core::ptr::read_volatile(&(*tp).write_seq),
            )
        };
        Some(TcpProgress {
            rcv_nxt,
            snd_una,
            copied_seq,
            write_seq,
            fin_in: FIN_IN_STATES.contains(&state),
            fin_out: FIN_OUT_STATES.contains(&state),
        })
    }

    /// The peer's latest timestamp value (`ts_recent`), or `None` when the connection
    /// does not use timestamps, has not seen one yet, or this is not a full socket. Read without the socket
    /// lock, like [`EstablishedSock::progress`]. Any context.
    pub fn ts_recent(&self) -> Option<u32> {
        if QUIET_STATES.contains(&self.state()) {
            return None;
        }
        // SAFETY: A full TCP socket (state checked above), valid while referenced
        // (type invariant). `ts_recent` is one aligned word; the option bits are
        // fixed once the connection is established.
        unsafe {
            let tp = bindings::tcp_sk(self.sk.as_ptr());
            // A connection rebuilt in repair mode has no value until the peer's
            // first stamped segment arrives: 0 then is no value.
            if (*tp).rx_opt.tstamp_ok() == 0 || core::ptr::read_volatile(&(*tp).rx_opt.ts_recent_stamp) == 0 {
                return None;
            }
            Some(core::ptr::read_volatile(&(*tp).rx_opt.ts_recent))
        }
    }

    /// Abort the connection: a RST goes to the peer and the socket is closed with
    /// `ECONNABORTED` for its program. Process context (takes the socket lock).
    pub fn abort(&self) {
        if QUIET_STATES.contains(&self.state()) {
            return;
        }
        // SAFETY: A full socket (checked above), referenced (type invariant);
        // `tcp_abort` locks it itself and may sleep, which the caller allows.
        unsafe { bindings::tcp_abort(self.sk.as_ptr(), bindings::ECONNABORTED as i32) };
    }

    /// Make the socket send an ACK with its current state now, and bring a pending
    /// retransmission (or tail-loss probe) forward to now. Process context.
    ///
    /// Returns false when the socket has nothing to say (not a full, synchronized
    /// socket) or its owner holds it; the caller may retry later.
    pub fn prompt(&self) -> bool {
        if QUIET_STATES.contains(&self.state()) {
            return false;
        }
        let sk = self.sk.as_ptr();
        let _bh = BhGuard::new();
        // SAFETY: A full socket (checked above; the state of a full socket never
        // becomes that of a request or TIME_WAIT socket, which are separate objects).
        // The socket spinlock is taken with bottom halves off, as the TCP timers do;
        // when a process owns the socket we back off instead of touching it. Under the
        // lock we may send and re-arm the timer exactly as the timer handlers do.
        unsafe {
            bindings::lz_bh_lock_sock(sk);
            if bindings::lz_sock_owned_by_user(sk) {
                bindings::lz_bh_unlock_sock(sk);
                return false;
            }
            let tp = bindings::tcp_sk(sk);
            bindings::__tcp_send_ack(sk, (*tp).rcv_nxt, 0);
            let icsk = bindings::inet_csk(sk);
            let pending = (*icsk).icsk_pending as u32;
            if matches!(
                pending,
                bindings::ICSK_TIME_RETRANS | bindings::ICSK_TIME_LOSS_PROBE | bindings::ICSK_TIME_REO_TIMEOUT
            ) {
                let now = bindings::lz_jiffies();
                (*icsk).icsk_timeout = now;
                bindings::sk_reset_timer(sk, &mut (*icsk).icsk_retransmit_timer, now);
            }
            bindings::lz_bh_unlock_sock(sk);
        }
        true
    }
}

impl Drop for EstablishedSock {
    fn drop(&mut self) {
        // SAFETY: Releases the reference this value holds (type invariant);
        // `sock_gen_put` handles every kind of socket the lookup can return.
        unsafe { bindings::sock_gen_put(self.sk.as_ptr()) };
    }
}
