//! Gratuitous ARP: after taking the service address over, tell the segment's hosts
//! and switches that it now lives at this interface's MAC.

use std::io;
use std::net::Ipv4Addr;

const ETH_P_ARP: u16 = 0x0806;

fn ifreq(dev: &str) -> io::Result<libc::ifreq> {
    // SAFETY: `ifreq` is a plain C struct for which all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.is_empty() || name.len() >= r.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {dev:?}")));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

/// Broadcast one gratuitous ARP request for `ip` from `dev`.
pub fn announce(dev: &str, ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: Plain socket creation; the descriptor is closed on every path below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP).to_be() as libc::c_int) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        let mut r = ifreq(dev)?;
        // SAFETY: `fd` is open; the ioctl fills the hardware-address union of `r`.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFHWADDR filled `ifru_hwaddr`.
        let hw = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
        let mac: [u8; 6] = std::array::from_fn(|i| hw[i] as u8);
        let mut r = ifreq(dev)?;
        // SAFETY: As above, for the index.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFINDEX, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFINDEX filled `ifru_ifindex`.
        let ifindex = unsafe { r.ifr_ifru.ifru_ifindex };
        let mut frame = [0u8; 42];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        // Ethernet, IPv4, lengths 6 and 4, request; sender and target are both `ip`.
        frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        frame[22..28].copy_from_slice(&mac);
        frame[28..32].copy_from_slice(&ip.octets());
        frame[38..42].copy_from_slice(&ip.octets());
        // SAFETY: All-zero is a valid `sockaddr_ll`; the fields are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `fd` is open; the frame and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}
