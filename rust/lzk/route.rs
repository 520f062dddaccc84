// SPDX-License-Identifier: GPL-2.0
//! Sending a received packet on as this host's own output (include/net/route.h,
//! include/net/ip.h): a splice rewrites a peer's segment into a segment of the
//! proxy's other connection, whose source is a local address, so it leaves the way
//! the proxy's own TCP output would: routed by destination, through LOCAL_OUT and
//! POST_ROUTING, neighbour resolution and GSO included.

use super::net::Net;
use kernel::bindings;
use kernel::prelude::*;

const IPV4_MIN_HLEN: usize = 20;
/// The highest errno an `ERR_PTR` encodes (include/linux/err.h).
const MAX_ERRNO: usize = 4095;

/// Release the route an skb carries, if it holds a counted one, and clear it.
///
/// # Safety
///
/// `skb` must be a valid skb the caller may modify.
pub(crate) unsafe fn drop_dst(skb: *mut bindings::sk_buff) {
    // SAFETY: The caller guarantees `skb` is valid and ours. `_skb_refdst` holds the
    // route pointer with the NOREF flag in bit 0; a counted route (flag clear,
    // non-null) is released once, and the field is cleared so nothing releases it
    // again.
    unsafe {
        let slot = &mut (*skb).__bindgen_anon_3.__bindgen_anon_1._skb_refdst;
        let refdst = *slot;
        *slot = 0;
        if refdst != 0 && refdst & bindings::SKB_DST_NOREF as usize == 0 {
            bindings::dst_release((refdst & bindings::SKB_DST_PTRMASK as usize) as *mut bindings::dst_entry);
        }
    }
}

/// Route the IPv4 packet `skb` by its destination and send it as local output.
/// Consumes `skb` on every path. Softirq or process context.
///
/// Fails with `EINVAL` for a packet without a complete IPv4 header, or the routing
/// error (no route, a source address that is not local, ...); the packet is freed.
///
/// # Safety
///
/// `skb` must be a valid skb the caller owns exclusively and passes on here (it is
/// on no queue and nobody else frees it), whose data starts at an IPv4 header, and
/// that is not on its way through another layer's output already (a received
/// packet at PRE_ROUTING, say).
pub unsafe fn send_local(net: &Net, skb: *mut bindings::sk_buff) -> Result {
    // SAFETY: `skb` is valid and ours (the caller's contract) until it is handed to
    // `ip_local_out` or freed below, each exactly once.
    unsafe {
        let free = || bindings::kfree_skb(skb);
        if bindings::skb_headlen(skb) < IPV4_MIN_HLEN as u32 {
            free();
            return Err(EINVAL);
        }
        let ip = core::slice::from_raw_parts((*skb).data, IPV4_MIN_HLEN);
        let saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let daddr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        let mut fl4: bindings::flowi4 = core::mem::zeroed();
        fl4.saddr = saddr;
        fl4.daddr = daddr;
        fl4.__fl_common.flowic_proto = ip[9];
        let rt = bindings::ip_route_output_flow(net.as_ptr(), &mut fl4, core::ptr::null());
        // IS_ERR: the top MAX_ERRNO addresses encode a negative errno.
        if rt.is_null() || rt as usize > usize::MAX - MAX_ERRNO {
            free();
            let errno = if rt.is_null() { -(bindings::EHOSTUNREACH as i32) } else { rt as isize as i32 };
            return Err(Error::from_errno(errno));
        }
        // The new route carries its own reference (the dst is the rtable's first
        // member), which the skb now holds.
        drop_dst(skb);
        (*skb).__bindgen_anon_3.__bindgen_anon_1._skb_refdst = rt as usize;
        // The receive path's IP control block (options, flags) means something else
        // on the output path, and a receive timestamp must not read as a departure
        // time to a pacing qdisc.
        (*skb).cb = [0; 48];
        (*skb).__bindgen_anon_2.tstamp = 0;
        let r = bindings::ip_local_out(net.as_ptr(), core::ptr::null_mut(), skb);
        // Positive NET_XMIT codes (congestion notification) still sent the packet.
        if r < 0 {
            return Err(Error::from_errno(r));
        }
    }
    Ok(())
}
