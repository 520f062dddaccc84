// SPDX-License-Identifier: GPL-2.0
//! Socket buffers a module keeps: clones of received IPv4 packets held for later, and
//! a FIFO of them. ST-TCP's primary keeps each client segment this way until its
//! backup has it, and sends it again to the backup on request.

use super::dev::NetDevice;
use super::proto::csum::{fold, pseudo_header};
use super::proto::packet::IPPROTO_TCP;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = bindings::ETH_P_IP as u16;
/// Offset of the checksum field in the TCP header.
const TCP_CHECK_OFFSET: u16 = 16;

/// A socket buffer this module owns.
///
/// # Invariants
///
/// `ptr` is an skb (made by `skb_clone`) that this value alone references and frees
/// on drop, whose `data` points at an IPv4 header, and whose `cb` bytes are this
/// value's (the tag). It is never on any kernel queue.
pub struct OwnedSkb {
    ptr: NonNull<bindings::sk_buff>,
}

// SAFETY: An owned skb may be freed and read from any thread; nothing in it is tied to
// the creating CPU.
unsafe impl Send for OwnedSkb {}

impl OwnedSkb {
    /// Take ownership of `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be a fresh skb the caller owns exclusively, with `data` at an IPv4
    /// header, not on any queue.
    pub(crate) unsafe fn from_raw(ptr: NonNull<bindings::sk_buff>) -> Self {
        OwnedSkb { ptr }
    }

    fn raw(&self) -> *mut bindings::sk_buff {
        self.ptr.as_ptr()
    }

    /// Packet length in bytes (IPv4 header onwards).
    pub fn len(&self) -> usize {
        // SAFETY: The skb is valid (type invariant).
        unsafe { (*self.raw()).len as usize }
    }

    /// True when the packet is empty (never, for a cloned IPv4 packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller's two words stored with the packet (for a TCP segment: its sequence
    /// range).
    pub fn tag(&self) -> (u32, u32) {
        // SAFETY: The skb is valid and its control buffer is ours (type invariant);
        // `cb` is 48 bytes, of which 8 are read.
        let cb = unsafe { &(*self.raw()).cb };
        let w = |i: usize| u32::from_ne_bytes([cb[i] as u8, cb[i + 1] as u8, cb[i + 2] as u8, cb[i + 3] as u8]);
        (w(0), w(4))
    }

    /// Store two words with the packet.
    pub fn set_tag(&mut self, a: u32, b: u32) {
        // SAFETY: As in `tag`; `&mut self` makes this the only access.
        let cb = unsafe { &mut (*self.raw()).cb };
        let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
        for i in 0..4 {
            cb[i] = a[i] as _;
            cb[i + 4] = b[i] as _;
        }
    }

    /// Another clone of the packet (sharing the data). Atomic allocation.
    pub fn clone_again(&self) -> Option<OwnedSkb> {
        // SAFETY: The skb is valid (type invariant); the clone is fresh and ours, with
        // data at the same IPv4 header.
        let c = unsafe { bindings::skb_clone(self.raw(), bindings::GFP_ATOMIC) };
        NonNull::new(c).map(|ptr| OwnedSkb { ptr })
    }

    /// Forget the packet's route. A clone taken on the output path may carry a route
    /// borrowed for the duration of that path only (a "noref" dst, valid under RCU);
    /// a packet kept beyond it must not hold that pointer. A counted route is
    /// released. The packet can then only leave through [`OwnedSkb::send_copy`].
    pub fn drop_route(&mut self) {
        let skb = self.raw();
        // SAFETY: The skb is ours (type invariant). `_skb_refdst` holds the route
        // pointer with the NOREF flag in bit 0; a counted route (flag clear, non-null)
        // is released once, and the field is cleared so that nothing releases it again.
        unsafe {
            let slot = &mut (*skb).__bindgen_anon_3.__bindgen_anon_1._skb_refdst;
            let refdst = *slot;
            *slot = 0;
            if refdst != 0 && refdst & bindings::SKB_DST_NOREF as usize == 0 {
                bindings::dst_release((refdst & bindings::SKB_DST_PTRMASK as usize) as *mut bindings::dst_entry);
            }
        }
    }

    /// Hand the packet back to the receive path of its device, as if it had just
    /// arrived (it goes through the device's ingress and IP again). Any context.
    pub fn reinject(self) -> Result {
        let p = self.raw();
        core::mem::forget(self);
        // SAFETY: `p` is ours (type invariant; ownership passes to the stack here);
        // it came from a device's receive path, so `dev`, `protocol` and the link
        // header are set, and `data` is at the network header as the stack expects
        // after the link layer. `netif_rx` queues it (or frees it) in any context.
        let r = unsafe { bindings::netif_rx(p) };
        // NET_RX_DROP: the backlog was full and the packet is gone.
        if r == bindings::NET_RX_SUCCESS as i32 {
            Ok(())
        } else {
            Err(ENOMEM)
        }
    }

    /// Send a private copy of this IPv4/TCP packet out of `dev` in an Ethernet frame to
    /// `dst`, as if it came from `dev`. Bypasses IP and netfilter: the copy goes
    /// straight to the device queue. The TCP checksum is left for the device (or the
    /// stack's software fallback) to complete, so the copy is valid however the
    /// original arrived (checksum verified, completed or still partial, one segment or
    /// a GRO aggregate that the device or GSO cuts up again). Atomic context allowed.
    pub fn send_copy(&self, dev: &NetDevice, dst: [u8; 6]) -> Result {
        // SAFETY: The skb is valid (type invariant); `skb_copy` makes a linear private
        // copy (or returns null), with atomic allocation.
        let copy = unsafe { bindings::skb_copy(self.raw(), bindings::GFP_ATOMIC) };
        let copy = NonNull::new(copy).ok_or(ENOMEM)?;
        // From here `copy` is ours until handed to the device queue; `free` on every
        // error path.
        let free = || {
            // SAFETY: `copy` is ours and on no queue.
            unsafe { bindings::kfree_skb(copy.as_ptr()) }
        };
        let c = copy.as_ptr();
        // SAFETY: `c` is a valid linear skb whose data starts at the IPv4 header;
        // `skb_headlen` bytes from `data` are readable and writable (a private copy).
        let head = unsafe { core::slice::from_raw_parts_mut((*c).data, bindings::skb_headlen(c) as usize) };
        let Some(ihl) = head.first().map(|b| ((b & 0x0f) as usize) * 4) else {
            free();
            return Err(EINVAL);
        };
        if ihl < 20 || head.len() < ihl + 20 || head[9] != IPPROTO_TCP {
            free();
            return Err(EINVAL);
        }
        let src = [head[12], head[13], head[14], head[15]];
        let dst_ip = [head[16], head[17], head[18], head[19]];
        let Ok(tcp_len) = u16::try_from(head.len() - ihl) else {
            free();
            return Err(EINVAL);
        };
        // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
        let pseudo = fold(pseudo_header(src, dst_ip, IPPROTO_TCP, tcp_len));
        head[ihl + TCP_CHECK_OFFSET as usize..ihl + TCP_CHECK_OFFSET as usize + 2].copy_from_slice(&pseudo.to_be_bytes());
        // SAFETY: `c` is ours. `skb_partial_csum_set` checks the offsets against the
        // linear length; the headroom holds the received frame's link header (a copy
        // keeps the original headroom), so pushing 14 bytes stays inside the buffer.
        unsafe {
            if !bindings::skb_partial_csum_set(c, ihl as u16, TCP_CHECK_OFFSET) || ((*c).data as usize) - ((*c).head as usize) < ETH_HLEN {
                free();
                return Err(EINVAL);
            }
            let eth = bindings::skb_push(c, ETH_HLEN as u32).cast::<u8>();
            let eth = core::slice::from_raw_parts_mut(eth, ETH_HLEN);
            eth[0..6].copy_from_slice(&dst);
            eth[6..12].copy_from_slice(&dev.mac());
            eth[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            bindings::skb_reset_mac_header(c);
            (*c).__bindgen_anon_1.__bindgen_anon_1.__bindgen_anon_1.dev = dev.as_ptr();
            (*c).__bindgen_anon_4.__bindgen_anon_1.as_mut().protocol = ETH_P_IP.to_be();
            // A receive timestamp must not read as a departure time to a pacing qdisc.
            (*c).__bindgen_anon_2.tstamp = 0;
            // The queue takes the skb whatever it returns.
            let r = bindings::dev_queue_xmit(c);
            if r != 0 {
                return Err(EIO);
            }
        }
        Ok(())
    }
}

impl Drop for OwnedSkb {
    fn drop(&mut self) {
        // SAFETY: This value owns the skb (type invariant); `consume_skb` frees it
        // without counting a drop, in any context but hard interrupts.
        unsafe { bindings::consume_skb(self.raw()) };
    }
}

/// A FIFO of owned skbs, linked through their `next` pointers.
///
/// # Invariants
///
/// `head` is null exactly when `count` is 0. Otherwise following `next` from `head`
/// visits exactly `count` skbs, each owned by the queue (as an [`OwnedSkb`] would be),
/// ending at `tail`, whose `next` is null. `bytes` is the sum of their lengths.
pub struct SkbQueue {
    head: *mut bindings::sk_buff,
    tail: *mut bindings::sk_buff,
    count: u32,
    bytes: u64,
}

// SAFETY: The queue owns its skbs; see `OwnedSkb`.
unsafe impl Send for SkbQueue {}

impl Default for SkbQueue {
    fn default() -> Self {
        SkbQueue { head: core::ptr::null_mut(), tail: core::ptr::null_mut(), count: 0, bytes: 0 }
    }
}

impl SkbQueue {
    /// Number of packets.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append `skb`.
    pub fn push_back(&mut self, skb: OwnedSkb) {
        let p = skb.raw();
        core::mem::forget(skb);
        // SAFETY: `p` is owned (from the `OwnedSkb` just forgotten) and valid; the
        // queue links it last (type invariant maintained).
        unsafe {
            (*p).__bindgen_anon_1.__bindgen_anon_1.next = core::ptr::null_mut();
            if self.tail.is_null() {
                self.head = p;
            } else {
                (*self.tail).__bindgen_anon_1.__bindgen_anon_1.next = p;
            }
            self.bytes += (*p).len as u64;
        }
        self.tail = p;
        self.count += 1;
    }

    /// The tag of the oldest packet.
    pub fn front_tag(&self) -> Option<(u32, u32)> {
        let mut tag = None;
        self.for_each(|s| {
            tag = Some(s.tag());
            false
        });
        tag
    }

    /// Remove and return the oldest packet.
    pub fn pop_front(&mut self) -> Option<OwnedSkb> {
        let p = NonNull::new(self.head)?;
        // SAFETY: `p` is the queue's first skb (type invariant); unlinking it hands its
        // ownership to the returned value.
        unsafe {
            self.head = (*p.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.next;
            (*p.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.next = core::ptr::null_mut();
            self.bytes -= (*p.as_ptr()).len as u64;
        }
        if self.head.is_null() {
            self.tail = core::ptr::null_mut();
        }
        self.count -= 1;
        // SAFETY: Unlinked above and exclusively ours; data still at the IPv4 header.
        Some(unsafe { OwnedSkb::from_raw(p) })
    }

    /// Visit the packets oldest first.
    pub fn for_each(&self, mut f: impl FnMut(&OwnedSkb) -> bool) {
        let mut p = self.head;
        while !p.is_null() {
            // A view of `p` as an `OwnedSkb` that is never dropped: the queue keeps
            // ownership.
            let view = core::mem::ManuallyDrop::new(OwnedSkb {
                // SAFETY: `p` is non-null (loop condition).
                ptr: unsafe { NonNull::new_unchecked(p) },
            });
            if !f(&view) {
                return;
            }
            // SAFETY: `p` is a queued skb (type invariant).
            p = unsafe { (*p).__bindgen_anon_1.__bindgen_anon_1.next };
        }
    }

    /// Free everything.
    pub fn clear(&mut self) {
        while self.pop_front().is_some() {}
    }
}

impl Drop for SkbQueue {
    fn drop(&mut self) {
        self.clear();
    }
}
