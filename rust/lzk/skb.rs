// SPDX-License-Identifier: GPL-2.0
//! Borrowed socket buffers (`struct sk_buff`, include/linux/skbuff.h) as netfilter
//! hooks see them: the data starts at the network header (IPv4 at the IPv4 hooks, ARP at
//! the ARP hooks, any protocol at a device's ingress hook).

use super::proto::packet::{CsumMode, Ipv4Header, Ipv4Tcp, ParseError, Rewriter, IPPROTO_TCP};
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

/// A socket buffer borrowed for the duration of a hook call.
///
/// # Invariants
///
/// `ptr` points to a valid `sk_buff` that the current context may read and modify
/// (but not free) for `'a`, and whose `data` points at the network header.
pub struct SkBuff<'a> {
    ptr: NonNull<bindings::sk_buff>,
    _life: PhantomData<&'a mut bindings::sk_buff>,
}

impl<'a> SkBuff<'a> {
    /// Borrow a raw skb.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid, exclusively usable by the caller for `'a` (as in a
    /// netfilter hook), and its data must start at the network header.
    pub unsafe fn from_raw(ptr: *mut bindings::sk_buff) -> Self {
        SkBuff {
            // SAFETY: The caller guarantees `ptr` is valid, hence non-null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            _life: PhantomData,
        }
    }

    fn raw(&self) -> *mut bindings::sk_buff {
        self.ptr.as_ptr()
    }

    /// The link layer's protocol number (`ETH_P_*`), host order.
    pub fn protocol(&self) -> u16 {
        // SAFETY: The skb is valid (type invariant); `protocol` is a plain field (inside
        // the `headers` group, whose union members alias the same bytes).
        u16::from_be(unsafe { (*self.raw()).__bindgen_anon_4.__bindgen_anon_1.as_ref().protocol })
    }

    /// The Ethernet source address of a received frame, while its link header is
    /// still in front of `data` (the receive path up to IP, e.g. PRE_ROUTING). `None`
    /// when the skb has no Ethernet header there.
    pub fn link_source(&self) -> Option<[u8; 6]> {
        let skb = self.raw();
        // SAFETY: The skb is valid (type invariant). `mac_header` is an offset from
        // `head`, `~0` when unset; the 14 bytes read lie between `head + mac_header`
        // and `data`, inside the buffer, as checked first.
        unsafe {
            let mac = (*skb).__bindgen_anon_4.__bindgen_anon_1.as_ref().mac_header;
            if mac == u16::MAX {
                return None;
            }
            let start = (*skb).head.add(mac as usize);
            let data = (*skb).data;
            if (data as usize).checked_sub(start as usize)? < 14 {
                return None;
            }
            let mut src = [0u8; 6];
            core::ptr::copy_nonoverlapping(start.add(6), src.as_mut_ptr(), 6);
            Some(src)
        }
    }

    /// The link layer's classification of the frame (`PACKET_HOST`, `PACKET_OTHERHOST`, ...).
    pub fn pkt_type(&self) -> u8 {
        // SAFETY: The skb is valid (type invariant); the helper reads a bitfield.
        unsafe { bindings::lz_skb_pkt_type(self.raw()) }
    }

    /// Reclassify the frame. Setting `PACKET_HOST` on a frame addressed to another
    /// host's MAC makes IP accept it as if it had been sent to this host.
    pub fn set_pkt_type(&mut self, t: u8) {
        // SAFETY: The skb is valid and ours to modify (type invariant).
        unsafe { bindings::lz_skb_set_pkt_type(self.raw(), t) }
    }

    /// Offset of the network header from `data`. Zero at the IPv4 hooks; positive
    /// where a link-layer header has already been pushed (ARP output).
    pub fn network_offset(&self) -> usize {
        // SAFETY: The skb is valid (type invariant); both pointers lie in its head.
        let (nh, data) = unsafe { (bindings::skb_network_header(self.raw()), (*self.raw()).data) };
        (nh as usize).saturating_sub(data as usize)
    }

    /// Total length of the packet (linear part and fragments).
    pub fn len(&self) -> usize {
        // SAFETY: The skb is valid (type invariant); `len` is a plain field.
        unsafe { (*self.raw()).len as usize }
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the linear (contiguous) part.
    pub fn headlen(&self) -> usize {
        // SAFETY: The skb is valid (type invariant).
        unsafe { bindings::skb_headlen(self.raw()) as usize }
    }

    /// Number of wire segments a buffer carrying `payload_len` TCP payload bytes stands
    /// for: a GSO/GRO buffer is cut into `gso_size` pieces on the wire, any other
    /// buffer is one segment. Computed rather than read from `gso_segs`, which is
    /// still 0 on GSO buffers received from virtio or tap devices.
    pub fn segments(&self, payload_len: usize) -> u32 {
        // SAFETY: The skb is valid (type invariant); both helpers only read it.
        let gso_size = unsafe {
            if !bindings::skb_is_gso(self.raw()) {
                return 1;
            }
            bindings::lz_skb_gso_size(self.raw()) as usize
        };
        if gso_size == 0 {
            return 1;
        }
        payload_len.div_ceil(gso_size).max(1) as u32
    }

    /// How the TCP checksum field must be updated when headers change.
    pub fn csum_mode(&self) -> CsumMode {
        // SAFETY: The skb is valid (type invariant).
        let summed = unsafe { bindings::lz_skb_ip_summed(self.raw()) } as u32;
        if summed == bindings::CHECKSUM_PARTIAL {
            CsumMode::Partial
        } else {
            CsumMode::Full
        }
    }

    /// Make the first `len` bytes contiguous (pulling from fragments if needed).
    /// Fails when the packet is shorter or memory is short; may reallocate the head,
    /// so slices taken earlier must not be kept (the borrow checker enforces this).
    pub fn pull(&mut self, len: usize) -> Result {
        let len = u32::try_from(len).map_err(|_| EINVAL)?;
        // SAFETY: The skb is valid and ours to modify (type invariant);
        // `pskb_may_pull` uses atomic allocation, allowed in any context.
        if unsafe { bindings::pskb_may_pull(self.raw(), len) } {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }

    /// The contiguous bytes from the network header to the end of the linear part.
    pub fn head(&self) -> &[u8] {
        // SAFETY: The skb is valid; `data` points at the network header (type invariant)
        // and `skb_headlen` bytes from there are readable.
        unsafe { core::slice::from_raw_parts((*self.raw()).data, self.headlen()) }
    }

    /// Mutable access to the first `len` bytes, after making them contiguous and
    /// private to this skb (unsharing a cloned head).
    pub fn head_mut(&mut self, len: usize) -> Result<&mut [u8]> {
        let l = i32::try_from(len).map_err(|_| EINVAL)?;
        // SAFETY: The skb is valid and ours (type invariant); `skb_ensure_writable`
        // pulls and unclones with atomic allocation.
        kernel::error::to_result(unsafe { bindings::skb_ensure_writable(self.raw(), l as u32) })?;
        // SAFETY: After `skb_ensure_writable(len)`, `len` bytes from `data` are linear
        // and writable by us alone; `&mut self` prevents aliasing views.
        Ok(unsafe { core::slice::from_raw_parts_mut((*self.raw()).data, len) })
    }

    /// Parse the IPv4 and TCP headers, pulling them into the linear part first.
    /// Payload bytes may stay in fragments.
    pub fn ipv4_tcp(&mut self) -> core::result::Result<Ipv4Tcp, ParseError> {
        self.pull(20).map_err(|_| ParseError::Truncated)?;
        // Validate the IP header before trusting its IHL and protocol.
        let ip = Ipv4Header::parse_headers(self.head(), self.len())?;
        if ip.protocol != IPPROTO_TCP {
            return Err(ParseError::NotTcp);
        }
        let ihl = ip.header_len;
        // The data offset is validated by the parser; here it only bounds how much to
        // pull, and a bogus value fails the pull or the parse.
        self.pull(ihl + 20).map_err(|_| ParseError::Truncated)?;
        let doff = ((self.head()[ihl + 12] >> 4) as usize) * 4;
        self.pull(ihl + doff).map_err(|_| ParseError::Truncated)?;
        Ipv4Tcp::parse_headers(self.head(), self.len())
    }

    /// A rewriter over the IPv4/TCP headers, made writable first.
    pub fn rewriter(&mut self) -> core::result::Result<Rewriter<'_>, ParseError> {
        let p = self.ipv4_tcp()?;
        let mode = self.csum_mode();
        let pkt_len = self.len();
        let head = self.head_mut(p.payload_offset()).map_err(|_| ParseError::NoRoom)?;
        Rewriter::new_headers(head, pkt_len, mode)
    }

    /// Exempt the packet from connection tracking. A packet rewritten before conntrack
    /// sees it would otherwise be tracked under a tuple that no longer matches its
    /// flow, and may be marked INVALID.
    pub fn set_untracked(&mut self) {
        // SAFETY: The skb is valid and ours to modify (type invariant); the helper
        // drops any conntrack reference and attaches the untracked template.
        unsafe { bindings::lz_skb_set_untracked(self.raw()) };
    }

    /// A clone of the packet that the caller owns (sharing the data, which nobody
    /// writes without unsharing first). Atomic allocation; `None` when memory is
    /// short.
    pub fn clone_owned(&self) -> Option<super::skbq::OwnedSkb> {
        // SAFETY: The skb is valid (type invariant); `skb_clone` returns a new skb
        // header (or null) that we own exclusively, with `data` where the original's
        // is: at the network header.
        let c = unsafe { bindings::skb_clone(self.raw(), bindings::GFP_ATOMIC) };
        // SAFETY: As above: fresh, exclusively ours, on no queue.
        NonNull::new(c).map(|c| unsafe { super::skbq::OwnedSkb::from_raw(c) })
    }

    /// Copy `dst.len()` bytes starting at `offset` (from the network header) out of the
    /// packet, wherever they are stored.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Result {
        let off = i32::try_from(offset).map_err(|_| EINVAL)?;
        let len = i32::try_from(dst.len()).map_err(|_| EINVAL)?;
        // SAFETY: The skb is valid (type invariant); `skb_copy_bits` bounds-checks
        // against the packet length and writes at most `len` bytes into `dst`.
        kernel::error::to_result(unsafe {
            bindings::skb_copy_bits(self.raw(), off, dst.as_mut_ptr().cast(), len)
        })
    }
}
