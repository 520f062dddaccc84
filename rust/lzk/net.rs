// SPDX-License-Identifier: GPL-2.0
//! Network namespaces (`struct net`, include/net/net_namespace.h) and IPv4 addresses.

use kernel::bindings;
use kernel::types::Opaque;

/// A network namespace.
///
/// # Invariants
///
/// A `&Net` always refers to a live `struct net`: either `init_net`, which lives for
/// the kernel's lifetime, or one borrowed from a context (a netlink request) that holds
/// it for at least the borrow.
#[repr(transparent)]
pub struct Net(Opaque<bindings::net>);

// SAFETY: `struct net` is designed to be used from any thread; the fields we touch
// through the C API are protected by the kernel's own locking.
unsafe impl Sync for Net {}
// SAFETY: As above; a namespace is not tied to the thread that looked it up.
unsafe impl Send for Net {}

impl Net {
    /// The initial network namespace.
    pub fn init() -> &'static Net {
        // SAFETY: `init_net` is a static that lives as long as the kernel; `Net` is
        // `repr(transparent)` over `Opaque<net>`, which has the layout of `net`.
        unsafe { &*(core::ptr::addr_of_mut!(bindings::init_net) as *const Net) }
    }

    /// Borrow a namespace from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a live `struct net` that stays alive for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::net) -> &'a Net {
        // SAFETY: The caller guarantees validity for `'a`; the layouts match.
        unsafe { &*(ptr as *const Net) }
    }

    /// The raw pointer, for C calls.
    pub fn as_ptr(&self) -> *mut bindings::net {
        self.0.get()
    }

    /// Take a counted reference, which keeps the namespace alive until dropped.
    pub fn get(&self) -> NetRef {
        // SAFETY: `self` is live (type invariant), so its count is non-zero and may
        // be incremented; `get_net` returns the same pointer.
        NetRef(unsafe { core::ptr::NonNull::new_unchecked(bindings::get_net(self.as_ptr())) })
    }
}

/// An owned reference to a network namespace.
///
/// # Invariants
///
/// The pointer came from `get_net` and holds one reference, released in `Drop`.
/// Holding it keeps the namespace from being dismantled, so owners of long-lived
/// registrations must drop it when they are done (module unload).
pub struct NetRef(core::ptr::NonNull<bindings::net>);

// SAFETY: Namespace references may be taken and released on any thread.
unsafe impl Send for NetRef {}
// SAFETY: `NetRef` only gives out shared `&Net`.
unsafe impl Sync for NetRef {}

impl core::ops::Deref for NetRef {
    type Target = Net;

    fn deref(&self) -> &Net {
        // SAFETY: The reference we hold keeps the namespace alive (type invariant).
        unsafe { Net::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for NetRef {
    fn drop(&mut self) {
        // SAFETY: We hold one reference from `get_net` (type invariant).
        unsafe { bindings::put_net(self.0.as_ptr()) };
    }
}

/// An IPv4 address in network byte order, as the wire and `struct sockaddr_in` hold it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Ipv4Addr(pub [u8; 4]);

impl Ipv4Addr {
    /// From a big-endian (network order) `u32` as carried in netlink attributes.
    pub const fn from_be_u32(v: u32) -> Self {
        Ipv4Addr(v.to_be_bytes())
    }

    /// Any address (0.0.0.0).
    pub const ANY: Ipv4Addr = Ipv4Addr([0; 4]);
}

impl core::fmt::Display for Ipv4Addr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}
