//! The socket calls splicing needs that std does not offer: queue lengths, TCP
//! repair mode and what it reveals (sequence numbers), and the connection's options.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

// From include/uapi/linux/tcp.h and asm-generic/ioctls.h.
const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_TIMESTAMP: libc::c_int = 24;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::c_ulong = libc::FIONREAD;
const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ;

fn ioctl_int(s: &TcpStream, req: libc::c_ulong) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: The descriptor is open for the stream's lifetime; the request writes
    // one int to the pointer we give.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), req, &mut v) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.max(0) as usize)
}

/// Bytes received and not yet read.
pub fn unread(s: &TcpStream) -> io::Result<usize> {
    ioctl_int(s, SIOCINQ)
}

/// Bytes written and not yet acknowledged by the peer.
pub fn unacked(s: &TcpStream) -> io::Result<usize> {
    ioctl_int(s, SIOCOUTQ)
}

fn set_int(s: &TcpStream, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: The descriptor is open; we pass a pointer to one int and its size.
    let r = unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, opt, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_u32(s: &TcpStream, opt: libc::c_int) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: The descriptor is open; the kernel writes at most `len` bytes to `v`.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, opt, (&mut v as *mut u32).cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Put the socket into TCP repair mode (needs CAP_NET_ADMIN): it sends nothing on
/// its own any more, and closing it later sends neither FIN nor RST.
pub fn enter_repair(s: &TcpStream) -> io::Result<()> {
    set_int(s, TCP_REPAIR, 1)
}

/// Leave repair mode (after a splice that did not happen).
pub fn leave_repair(s: &TcpStream) -> io::Result<()> {
    set_int(s, TCP_REPAIR, 0)
}

/// What a settled socket in repair mode says about its connection.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub peer_wscale: u8,
    pub own_wscale: u8,
    pub ts_now: Option<u32>,
    pub sack: bool,
}

/// Read a socket in repair mode.
pub fn snapshot(s: &TcpStream) -> io::Result<Snapshot> {
    set_int(s, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let snd_nxt = get_u32(s, TCP_QUEUE_SEQ)?;
    set_int(s, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    let rcv_nxt = get_u32(s, TCP_QUEUE_SEQ)?;
    // struct tcp_info: byte 5 is tcpi_options, byte 6 holds tcpi_snd_wscale (low
    // nibble, the peer's shift) and tcpi_rcv_wscale (high nibble, ours).
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: The descriptor is open; the kernel writes at most `len` bytes.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
    if r < 0 || len < 8 {
        return Err(io::Error::last_os_error());
    }
    let options = info[5];
    let (peer_wscale, own_wscale) = if options & TCPI_OPT_WSCALE != 0 { (info[6] & 0x0f, info[6] >> 4) } else { (0, 0) };
    let ts_now = if options & TCPI_OPT_TIMESTAMPS != 0 { Some(get_u32(s, TCP_TIMESTAMP)?) } else { None };
    Ok(Snapshot { snd_nxt, rcv_nxt, peer_wscale, own_wscale, ts_now, sack: options & TCPI_OPT_SACK != 0 })
}
