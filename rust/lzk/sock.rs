// SPDX-License-Identifier: GPL-2.0
//! Kernel-side IPv4 UDP and TCP sockets (include/linux/net.h) for node-to-node
//! channels. All calls block and so need process context.

use super::errno::ECONNRESET;
use super::net::{Ipv4Addr, Net};
use core::ffi::{c_int, c_void};
use kernel::bindings;
use kernel::error::to_result;
use kernel::prelude::*;

/// An IPv4 socket address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SockAddr {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port (host order).
    pub port: u16,
}

impl SockAddr {
    fn to_raw(self) -> bindings::sockaddr_in {
        // SAFETY: All-zero is a valid `sockaddr_in` (its padding must be zero).
        let mut sa: bindings::sockaddr_in = unsafe { core::mem::zeroed() };
        sa.sin_family = bindings::AF_INET as u16;
        sa.sin_port = self.port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(self.addr.0);
        sa
    }

    fn from_raw(sa: &bindings::sockaddr_in) -> Self {
        SockAddr { addr: Ipv4Addr(sa.sin_addr.s_addr.to_ne_bytes()), port: u16::from_be(sa.sin_port) }
    }
}

/// The transport of a [`Socket`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// UDP datagrams.
    Udp,
    /// TCP stream.
    Tcp,
}

/// An owned kernel socket.
///
/// # Invariants
///
/// `sock` is a valid socket created by the kernel for us (`sock_create_kern` or
/// `kernel_accept`), released exactly once, in `Drop`.
pub struct Socket {
    sock: *mut bindings::socket,
}

// SAFETY: Kernel sockets carry their own locking; any thread may use them.
unsafe impl Send for Socket {}
// SAFETY: Socket calls lock the socket internally; concurrent send/recv/shutdown are
// what the socket layer supports for user sockets too.
unsafe impl Sync for Socket {}

impl Socket {
    /// Create a socket in `net`.
    pub fn new(net: &Net, kind: Kind) -> Result<Self> {
        let (ty, proto) = match kind {
            Kind::Udp => (bindings::sock_type_SOCK_DGRAM, bindings::IPPROTO_UDP),
            Kind::Tcp => (bindings::sock_type_SOCK_STREAM, bindings::IPPROTO_TCP),
        };
        let mut sock = core::ptr::null_mut();
        // SAFETY: `net` is live; on success `sock` receives a new socket we own.
        to_result(unsafe {
            bindings::sock_create_kern(net.as_ptr(), bindings::AF_INET as c_int, ty as c_int, proto as c_int, &mut sock)
        })?;
        let s = Socket { sock };
        // SAFETY: `sk` of a fresh socket is valid; these setters take the socket lock.
        unsafe { bindings::sock_set_reuseaddr((*s.sock).sk) };
        if kind == Kind::Tcp {
            // SAFETY: As above; the socket is TCP.
            unsafe { bindings::tcp_sock_set_nodelay((*s.sock).sk) };
        }
        Ok(s)
    }

    /// Bound how long receives and sends block (0: forever).
    pub fn set_timeouts(&self, recv_ms: u32, send_ms: u32) {
        let j = |ms: u32| if ms == 0 { kernel::ffi::c_long::MAX } else {
            // SAFETY: Pure conversion.
            unsafe { bindings::msecs_to_jiffies(ms) as kernel::ffi::c_long }
        };
        // SAFETY: The socket is valid (type invariant); the helper stores two longs.
        unsafe { bindings::lz_sock_set_timeouts(self.sock, j(recv_ms), j(send_ms)) };
    }

    /// Bind to a local address.
    pub fn bind(&self, at: SockAddr) -> Result {
        let mut sa = at.to_raw();
        // SAFETY: `sa` is a valid sockaddr_in for the duration of the call.
        to_result(unsafe {
            bindings::kernel_bind(self.sock, &mut sa as *mut _ as *mut bindings::sockaddr, core::mem::size_of_val(&sa) as c_int)
        })
    }

    /// Listen for TCP connections.
    pub fn listen(&self, backlog: i32) -> Result {
        // SAFETY: The socket is valid.
        to_result(unsafe { bindings::kernel_listen(self.sock, backlog) })
    }

    /// Accept one connection, blocking up to the receive timeout.
    pub fn accept(&self) -> Result<Socket> {
        let mut new = core::ptr::null_mut();
        // SAFETY: The socket is valid and listening; on success `new` is ours.
        to_result(unsafe { bindings::kernel_accept(self.sock, &mut new, 0) })?;
        Ok(Socket { sock: new })
    }

    /// Connect (TCP) or set the default peer (UDP). Blocks up to the send timeout.
    pub fn connect(&self, to: SockAddr) -> Result {
        let mut sa = to.to_raw();
        // SAFETY: As in `bind`.
        to_result(unsafe {
            bindings::kernel_connect(self.sock, &mut sa as *mut _ as *mut bindings::sockaddr, core::mem::size_of_val(&sa) as c_int, 0)
        })
    }

    /// Send `buf` (to `to` for an unconnected UDP socket). Returns bytes sent.
    pub fn send(&self, buf: &[u8], to: Option<SockAddr>) -> Result<usize> {
        let mut sa = to.map(SockAddr::to_raw);
        // SAFETY: All-zero is an empty `msghdr`.
        let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
        if let Some(sa) = sa.as_mut() {
            msg.msg_name = sa as *mut _ as *mut c_void;
            msg.msg_namelen = core::mem::size_of::<bindings::sockaddr_in>() as c_int;
        }
        msg.msg_flags = bindings::MSG_NOSIGNAL;
        let mut iov = bindings::kvec { iov_base: buf.as_ptr() as *mut c_void, iov_len: buf.len() };
        // SAFETY: `msg`, `iov` and the optional address live through the call; the
        // kernel only reads `buf.len()` bytes of `buf`.
        let n = unsafe { bindings::kernel_sendmsg(self.sock, &mut msg, &mut iov, 1, buf.len()) };
        if n < 0 {
            return Err(Error::from_errno(n));
        }
        Ok(n as usize)
    }

    /// Send all of `buf` on a stream socket.
    pub fn send_all(&self, mut buf: &[u8]) -> Result {
        while !buf.is_empty() {
            let n = self.send(buf, None)?;
            if n == 0 {
                return Err(EPIPE);
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Receive into `buf`, blocking up to the receive timeout (`EAGAIN` after it).
    /// Returns the length and, for UDP, the sender. A length of 0 on a stream is EOF.
    pub fn recv(&self, buf: &mut [u8]) -> Result<(usize, Option<SockAddr>)> {
        // SAFETY: All-zero is a valid `sockaddr_in` to receive into.
        let mut sa: bindings::sockaddr_in = unsafe { core::mem::zeroed() };
        // SAFETY: All-zero is an empty `msghdr`.
        let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_name = &mut sa as *mut _ as *mut c_void;
        msg.msg_namelen = core::mem::size_of_val(&sa) as c_int;
        let mut iov = bindings::kvec { iov_base: buf.as_mut_ptr() as *mut c_void, iov_len: buf.len() };
        // SAFETY: The kernel writes at most `buf.len()` bytes into `buf` and at most
        // `msg_namelen` bytes into `sa`, both alive through the call.
        let n = unsafe { bindings::kernel_recvmsg(self.sock, &mut msg, &mut iov, 1, buf.len(), 0) };
        if n < 0 {
            return Err(Error::from_errno(n));
        }
        let from = (msg.msg_namelen as usize >= core::mem::size_of_val(&sa) && sa.sin_family == bindings::AF_INET as u16)
            .then(|| SockAddr::from_raw(&sa));
        Ok((n as usize, from))
    }

    /// Receive exactly `buf.len()` bytes from a stream, or fail (`ECONNRESET` on EOF).
    pub fn recv_exact(&self, buf: &mut [u8]) -> Result {
        let mut got = 0;
        while got < buf.len() {
            match self.recv(&mut buf[got..])? {
                (0, _) => return Err(ECONNRESET()),
                (n, _) => got += n,
            }
        }
        Ok(())
    }

    /// Shut both directions down, waking any thread blocked on the socket.
    pub fn shutdown(&self) {
        // SAFETY: The socket is valid; shutting down an unconnected socket only
        // marks it and wakes waiters, which is the purpose here.
        unsafe { bindings::kernel_sock_shutdown(self.sock, bindings::sock_shutdown_cmd_SHUT_RDWR) };
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: We own the socket (type invariant) and release it once.
        unsafe { bindings::sock_release(self.sock) };
    }
}
