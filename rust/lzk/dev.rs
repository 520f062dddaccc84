// SPDX-License-Identifier: GPL-2.0
//! Network devices (include/linux/netdevice.h): a counted reference, promiscuous mode
//! and gratuitous ARP.

use super::net::{Ipv4Addr, Net};
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

/// Most bytes of an interface name, without the NUL (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// A reference to a network device.
///
/// # Invariants
///
/// `ptr` is a device on which this value holds one reference (from
/// `dev_get_by_name`/`dev_get_by_index`), released in `Drop`; the device memory stays
/// valid while the reference is held.
pub struct NetDevice {
    ptr: NonNull<bindings::net_device>,
}

// SAFETY: A device reference may be used and released from any thread.
unsafe impl Send for NetDevice {}
// SAFETY: The methods only read immutable fields or call thread-safe kernel functions.
unsafe impl Sync for NetDevice {}

impl NetDevice {
    /// The device called `name` (at most [`IFNAME_MAX`] bytes) in `net`.
    pub fn by_name(net: &Net, name: &[u8]) -> Result<Self> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains(&0) {
            return Err(EINVAL);
        }
        let mut buf = [0u8; IFNAME_MAX + 1];
        buf[..name.len()].copy_from_slice(name);
        // SAFETY: `net` is a live namespace and `buf` a NUL-terminated name; the call
        // takes a reference on the device it returns.
        let ptr = unsafe { bindings::dev_get_by_name(net.as_ptr(), buf.as_ptr().cast()) };
        NonNull::new(ptr).map(|ptr| NetDevice { ptr }).ok_or(ENODEV)
    }

    /// Another reference to the same device.
    pub fn try_clone(&self, net: &Net) -> Result<Self> {
        // SAFETY: `net` is live; the call takes a reference on the device it returns.
        let ptr = unsafe { bindings::dev_get_by_index(net.as_ptr(), self.ifindex()) };
        NonNull::new(ptr).map(|ptr| NetDevice { ptr }).ok_or(ENODEV)
    }

    /// The raw device, for registering hooks on it.
    pub fn as_ptr(&self) -> *mut bindings::net_device {
        self.ptr.as_ptr()
    }

    /// The device's hardware (MAC) address; zeros for devices with a shorter one.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        // SAFETY: The device is valid (type invariant); `dev_addr` points at
        // `addr_len` bytes. A concurrent address change may tear the read, which at
        // worst sends one frame from a stale source address.
        unsafe {
            let d = self.as_ptr();
            if (*d).addr_len as usize == mac.len() && !(*d).dev_addr.is_null() {
                core::ptr::copy_nonoverlapping((*d).dev_addr, mac.as_mut_ptr(), mac.len());
            }
        }
        mac
    }

    /// Interface index.
    pub fn ifindex(&self) -> i32 {
        // SAFETY: The device is valid (type invariant); `ifindex` is fixed once registered.
        unsafe { (*self.as_ptr()).ifindex }
    }

    /// Change the promiscuity count by `inc` (+1 to listen to every frame on the
    /// segment, -1 to undo). Process context: takes the RTNL lock.
    pub fn promiscuity(&self, inc: i32) -> Result {
        // SAFETY: Process context (callers are netlink handlers or module init/exit);
        // `dev_set_promiscuity` requires the RTNL lock, held around the call.
        let r = unsafe {
            bindings::rtnl_lock();
            let r = bindings::dev_set_promiscuity(self.as_ptr(), inc);
            bindings::rtnl_unlock();
            r
        };
        kernel::error::to_result(r)
    }

    /// Broadcast a gratuitous ARP request announcing that `ip` is at this device's
    /// MAC address, so neighbours and switches update their tables at once.
    pub fn announce(&self, ip: Ipv4Addr) {
        let be = u32::from_be_bytes(ip.0).to_be();
        // SAFETY: The device is valid (type invariant). Null hardware addresses mean
        // broadcast destination, the device's own source address and an empty target,
        // as `arp_send` documents; it allocates atomically and may be called from any
        // context.
        unsafe {
            bindings::arp_send(
                bindings::ARPOP_REQUEST as i32,
                bindings::ETH_P_ARP as i32,
                be,
                self.as_ptr(),
                be,
                core::ptr::null(),
                core::ptr::null(),
                core::ptr::null(),
            )
        };
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        // SAFETY: Releases the reference this value holds (type invariant).
        unsafe { bindings::lz_dev_put(self.as_ptr()) };
    }
}
