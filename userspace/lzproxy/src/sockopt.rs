//! The socket calls splicing needs that std does not offer: queue lengths, TCP
//! repair mode and what it reveals (sequence numbers), and the connection's options.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

// From include/uapi/linux/tcp.h and asm-generic/ioctls.h.
const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_REPAIR_OPTIONS: libc::c_int = 22;
const TCP_TIMESTAMP: libc::c_int = 24;
const TCP_REPAIR_WINDOW: libc::c_int = 29;
// TCP option kinds as TCP_REPAIR_OPTIONS takes them (include/net/tcp.h).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
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

fn sockaddr_in(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn tcp_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: Plain socket creation; ownership of the new descriptor passes to OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &std::os::fd::OwnedFd, at: std::net::SocketAddrV4, freebind: bool) -> io::Result<()> {
    if freebind {
        let one: libc::c_int = 1;
        // SAFETY: The descriptor is open; one int is passed.
        let r = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_FREEBIND, (&one as *const libc::c_int).cast(), 4) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr_in(at);
    // SAFETY: The descriptor is open; `sa` is a valid sockaddr_in of the given size.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hold a local TCP port on `at` (an address this host may not carry yet), so that
/// no connection of this host takes it while a splice forwards under it.
pub fn reserve_port(at: std::net::SocketAddrV4) -> io::Result<std::os::fd::OwnedFd> {
    let fd = tcp_socket()?;
    bind(&fd, at, true)?;
    Ok(fd)
}

/// Connect to `to` from the address `from` (port chosen by the kernel), giving up
/// after `timeout`.
pub fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddrV4, timeout: std::time::Duration) -> io::Result<TcpStream> {
    let fd = tcp_socket()?;
    bind(&fd, std::net::SocketAddrV4::new(from, 0), true)?;
    // A blocking connect gives up after the send timeout.
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as libc::suseconds_t };
    // SAFETY: The descriptor is open; one timeval is passed.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let sa = sockaddr_in(to);
    // SAFETY: As for bind.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let s = TcpStream::from(fd);
    s.set_write_timeout(None)?;
    Ok(s)
}

/// Listen on `at`, which this host may not carry yet (a standby proxy listens on the
/// service address before it takes it over).
pub fn listen_freebind(at: std::net::SocketAddrV4) -> io::Result<std::net::TcpListener> {
    let fd = tcp_socket()?;
    let one: libc::c_int = 1;
    // SAFETY: The descriptor is open; one int is passed.
    if unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4) } < 0 {
        return Err(io::Error::last_os_error());
    }
    bind(&fd, at, true)?;
    // SAFETY: The descriptor is open and bound.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(fd))
}

/// What a connection rebuilt in repair mode takes over from the socket it replaces.
#[derive(Debug, Clone, Copy)]
pub struct Rebuild {
    pub local: std::net::SocketAddrV4,
    pub remote: std::net::SocketAddrV4,
    /// The next byte to send: the peer acknowledged everything before it.
    pub snd_nxt: u32,
    /// The next byte expected from the peer.
    pub rcv_nxt: u32,
    /// The MSS the peer announced.
    pub mss: u32,
    pub peer_wscale: u8,
    pub own_wscale: u8,
    pub sack: bool,
    /// The value the timestamp clock starts from, when the connection uses them.
    pub ts_start: Option<u32>,
    /// The peer's latest window, in bytes.
    pub snd_wnd: u32,
    /// The window this end last offered, in bytes.
    pub rcv_wnd: u32,
}

/// The MSS the peer announced and the window this end offers, from a socket in
/// repair mode: what [`rebuild`] needs besides the numbers.
pub fn repair_mss_and_window(s: &TcpStream) -> io::Result<(u32, u32)> {
    // In repair mode TCP_MAXSEG reads the peer's announced MSS (mss_clamp).
    let mss = get_u32(s, libc::TCP_MAXSEG)?;
    // struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    let mut w = [0u32; 5];
    let mut len = std::mem::size_of_val(&w) as libc::socklen_t;
    // SAFETY: The descriptor is open; the kernel writes at most `len` bytes.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, w.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((mss, w[3]))
}

fn set_bytes<T>(fd: &std::os::fd::OwnedFd, opt: libc::c_int, v: &[T]) -> io::Result<()> {
    // SAFETY: The descriptor is open; we pass a pointer to `v` and its size in bytes.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, opt, v.as_ptr().cast(), std::mem::size_of_val(v) as libc::socklen_t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_fd_int(fd: &std::os::fd::OwnedFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    set_bytes(fd, opt, &[v])
}

/// Re-create an established connection at the given numbers, without a packet on
/// the wire (TCP repair, as checkpoint/restore does; needs CAP_NET_ADMIN). The
/// socket it replaces must be closed first: the 4-tuple must be free. Leaving repair
/// mode sends one window probe, whose acknowledgment brings the peer's timestamp
/// and window in.
pub fn rebuild(r: &Rebuild) -> io::Result<TcpStream> {
    let fd = tcp_socket()?;
    set_fd_int(&fd, TCP_REPAIR, 1)?;
    // Repair mode lets the socket share the listener's port.
    bind(&fd, r.local, true)?;
    set_fd_int(&fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    set_bytes(&fd, TCP_QUEUE_SEQ, &[r.snd_nxt])?;
    set_fd_int(&fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    set_bytes(&fd, TCP_QUEUE_SEQ, &[r.rcv_nxt])?;
    let sa = sockaddr_in(r.remote);
    // SAFETY: The descriptor is open; `sa` is a valid sockaddr_in of the given size.
    // In repair mode connect only records the peer: no SYN is sent.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // struct tcp_repair_opt: opt_code, opt_val.
    let mut opts = vec![[TCPOPT_MSS, r.mss]];
    if r.peer_wscale > 0 || r.own_wscale > 0 {
        opts.push([TCPOPT_WINDOW, u32::from(r.peer_wscale) | u32::from(r.own_wscale) << 16]);
    }
    if r.sack {
        opts.push([TCPOPT_SACK_PERM, 0]);
    }
    if r.ts_start.is_some() {
        opts.push([TCPOPT_TIMESTAMP, 0]);
    }
    set_bytes(&fd, TCP_REPAIR_OPTIONS, &opts)?;
    if let Some(ts) = r.ts_start {
        set_bytes(&fd, TCP_TIMESTAMP, &[ts])?;
    }
    // snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    let w = [r.rcv_nxt, r.snd_wnd, r.snd_wnd, r.rcv_wnd, r.rcv_nxt];
    set_bytes(&fd, TCP_REPAIR_WINDOW, &w)?;
    set_fd_int(&fd, TCP_REPAIR, 0)?;
    Ok(TcpStream::from(fd))
}

/// Close with a reset rather than a FIN (SO_LINGER with a zero timeout).
pub fn reset(s: TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: The descriptor is open; one struct linger is passed.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
    drop(s);
}
