// SPDX-License-Identifier: GPL-2.0
//! RDMA through the kernel's connection manager and verbs (include/rdma/rdma_cm.h,
//! include/rdma/ib_verbs.h), for one-sided READ, atomic compare-and-swap and
//! registered regions over soft-RoCE or a real RNIC.
//!
//! The model: a connection manager id ([`CmId`]) per connection, its events
//! delivered to an [`CmEvents`] handler that only records them; a thread of the
//! module acts on them (creates the queue pair, accepts, connects, tears down), so
//! no verb call happens inside the connection manager's ordered workqueues except
//! what must (none here: `accept` brackets itself with the handler lock).
//! Completion queues are polled directly ([`Cq::poll`]) by that thread; every work
//! request carries a plain `wr_id`.
//!
//! Memory a peer reads is registered with fast registration ([`Mr`]): it must be in
//! the kernel's direct map (pages from [`Page`]), never vmalloc or the stack.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

const CALLER: &core::ffi::CStr = c"lazarus_backdoor";

fn errno(r: c_int) -> Result {
    if r < 0 {
        Err(Error::from_errno(r))
    } else {
        Ok(())
    }
}

fn from_err_ptr<T>(p: *mut T) -> Result<NonNull<T>> {
    // SAFETY: `IS_ERR`/`PTR_ERR` only look at the pointer's value.
    unsafe {
        if bindings::IS_ERR(p as *const c_void) {
            return Err(Error::from_errno(bindings::PTR_ERR(p as *const c_void) as c_int));
        }
    }
    NonNull::new(p).ok_or(ENOMEM)
}

/// A connection manager event, copied out of the kernel's event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CmEvent {
    AddrResolved,
    RouteResolved,
    ConnectRequest,
    Established,
    /// The connection failed to come up (address, route, connect errors,
    /// unreachable, rejected): `status` is the kernel's.
    Failed { status: i32 },
    Disconnected,
    DeviceRemoval,
    Other(u32),
}

/// What a peer may do to a registered region.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// READ and atomics (compare-and-swap).
    ReadAtomic,
    /// WRITE only.
    Write,
}

/// Up to this many bytes of private data travel with a connect or accept.
pub const PRIVATE_MAX: usize = 56;

/// What a handler receives: the event, the id it is about, and for connection
/// events the peer's private data and IPv4 address.
#[derive(Clone, Copy)]
pub struct EventInfo {
    pub id: RawId,
    pub event: CmEvent,
    pub private: [u8; PRIVATE_MAX],
    pub private_len: usize,
    pub peer: ([u8; 4], u16),
}

/// An id's address as an opaque token: the module's thread owns ids; handlers only
/// name them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawId(pub usize);

/// Receives connection manager events. Runs in process context with the id's
/// handler mutex held: record, never block or call verbs.
pub trait CmEvents: Send + Sync + 'static {
    fn event(&self, e: EventInfo);
}

unsafe extern "C" fn trampoline<T: CmEvents>(id: *mut bindings::rdma_cm_id, ev: *mut bindings::rdma_cm_event) -> c_int {
    // SAFETY: The connection manager calls this with a live id and event; `context`
    // is the `T` given to `CmId::new` (inherited by children of a listener), which
    // outlives every id created with it (the owner destroys the ids first).
    let (handler, e) = unsafe { (&*((*id).context as *const T), &*ev) };
    let event = match e.event {
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_RESOLVED => CmEvent::AddrResolved,
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_RESOLVED => CmEvent::RouteResolved,
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_REQUEST => CmEvent::ConnectRequest,
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_ESTABLISHED => CmEvent::Established,
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_ERROR
        | bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_ERROR
        | bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_ERROR
        | bindings::rdma_cm_event_type_RDMA_CM_EVENT_UNREACHABLE
        | bindings::rdma_cm_event_type_RDMA_CM_EVENT_REJECTED => CmEvent::Failed { status: e.status },
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_DISCONNECTED | bindings::rdma_cm_event_type_RDMA_CM_EVENT_TIMEWAIT_EXIT => {
            CmEvent::Disconnected
        }
        bindings::rdma_cm_event_type_RDMA_CM_EVENT_DEVICE_REMOVAL => CmEvent::DeviceRemoval,
        other => CmEvent::Other(other),
    };
    let mut private = [0u8; PRIVATE_MAX];
    let mut private_len = 0;
    if matches!(event, CmEvent::ConnectRequest | CmEvent::Established) {
        // SAFETY: For connection events `param.conn` is the active member; its
        // private data (when not null) holds `private_data_len` readable bytes.
        unsafe {
            let c = &e.param.conn;
            if !c.private_data.is_null() {
                private_len = (c.private_data_len as usize).min(PRIVATE_MAX);
                core::ptr::copy_nonoverlapping(c.private_data as *const u8, private.as_mut_ptr(), private_len);
            }
        }
    }
    // SAFETY: The id is live; its route's destination is a sockaddr_storage, read as
    // IPv4 only when its family says so.
    let peer = unsafe { sockaddr_v4(&(*id).route.addr.dst_addr as *const _ as *const bindings::sockaddr) };
    handler.event(EventInfo { id: RawId(id as usize), event, private, private_len, peer });
    // Never ask the core to destroy the id: the module's thread owns it.
    0
}

/// # Safety
/// `sa` points to a readable `sockaddr_storage`.
unsafe fn sockaddr_v4(sa: *const bindings::sockaddr) -> ([u8; 4], u16) {
    // SAFETY: Per the function's contract; a sockaddr_in is read only for AF_INET.
    unsafe {
        if (*sa).sa_family as u32 != bindings::AF_INET {
            return ([0; 4], 0);
        }
        let sin = &*(sa as *const bindings::sockaddr_in);
        (sin.sin_addr.s_addr.to_ne_bytes(), u16::from_be(sin.sin_port))
    }
}

fn sockaddr_in(addr: [u8; 4], port: u16) -> bindings::sockaddr_in {
    // SAFETY: All-zero is a valid sockaddr_in (padding included).
    let mut sin: bindings::sockaddr_in = unsafe { core::mem::zeroed() };
    sin.sin_family = bindings::AF_INET as _;
    sin.sin_port = port.to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(addr);
    sin
}

/// A connection manager id, with its queue pair once created.
///
/// # Invariants
///
/// `id` is a live id created by `__rdma_create_kernel_id` (or handed to a listener's
/// handler as a new child and adopted with [`CmId::adopt`]), owned by this value:
/// `Drop` destroys its queue pair (if any) and then the id. `T`, its context,
/// outlives it.
pub struct CmId {
    id: NonNull<bindings::rdma_cm_id>,
    has_qp: bool,
}

// SAFETY: Ids are used from one thread at a time (the module's), and the
// connection manager's calls are thread-safe.
unsafe impl Send for CmId {}

impl CmId {
    /// A new id in the initial network namespace, for reliable connections, whose
    /// events go to `ctx`.
    ///
    /// # Safety
    /// `ctx` must outlive the id and every child id a listener gets.
    pub unsafe fn new<T: CmEvents>(ctx: &T) -> Result<Self> {
        // SAFETY: `init_net` is static; the handler is `trampoline::<T>`, whose
        // context is `ctx` (the caller guarantees its lifetime); `CALLER` is static,
        // as restrack keeps the pointer.
        let id = unsafe {
            bindings::__rdma_create_kernel_id(
                core::ptr::addr_of_mut!(bindings::init_net),
                Some(trampoline::<T>),
                ctx as *const T as *mut c_void,
                bindings::rdma_ucm_port_space_RDMA_PS_TCP,
                bindings::ib_qp_type_IB_QPT_RC,
                CALLER.as_ptr().cast(),
            )
        };
        Ok(CmId { id: from_err_ptr(id)?, has_qp: false })
    }

    /// Take ownership of a child id a listener's handler reported.
    ///
    /// # Safety
    /// `raw` must be a child id from a `ConnectRequest` event that nobody owns yet
    /// and that the connection manager has not destroyed (the handler returned 0).
    pub unsafe fn adopt(raw: RawId) -> Option<Self> {
        NonNull::new(raw.0 as *mut bindings::rdma_cm_id).map(|id| CmId { id, has_qp: false })
    }

    pub fn raw(&self) -> RawId {
        RawId(self.id.as_ptr() as usize)
    }

    fn ptr(&self) -> *mut bindings::rdma_cm_id {
        self.id.as_ptr()
    }

    /// Listen on `port` on every address and RDMA device (devices added later too).
    pub fn listen(&self, port: u16, backlog: i32) -> Result {
        let mut sin = sockaddr_in([0; 4], port);
        // SAFETY: The id is live (type invariant); `sin` is a valid sockaddr_in the
        // call copies.
        errno(unsafe { bindings::rdma_bind_addr(self.ptr(), &mut sin as *mut _ as *mut bindings::sockaddr) })?;
        // SAFETY: As above.
        errno(unsafe { bindings::rdma_listen(self.ptr(), backlog) })
    }

    /// Start resolving `addr:port` (an [`CmEvent::AddrResolved`] follows).
    pub fn resolve_addr(&self, addr: [u8; 4], port: u16, timeout_ms: u32) -> Result {
        let mut sin = sockaddr_in(addr, port);
        // SAFETY: The id is live; `sin` is copied by the call.
        errno(unsafe {
            bindings::rdma_resolve_addr(self.ptr(), core::ptr::null_mut(), &mut sin as *mut _ as *mut bindings::sockaddr, timeout_ms as _)
        })
    }

    /// Start resolving the route (a [`CmEvent::RouteResolved`] follows).
    pub fn resolve_route(&self, timeout_ms: u32) -> Result {
        // SAFETY: The id is live and its address resolved.
        errno(unsafe { bindings::rdma_resolve_route(self.ptr(), timeout_ms as _) })
    }

    /// The device the id is bound to, once its address is resolved or for a child.
    pub fn device(&self) -> Option<NonNull<bindings::ib_device>> {
        // SAFETY: The id is live; `device` is set by the connection manager.
        NonNull::new(unsafe { (*self.ptr()).device })
    }

    /// Create the id's reliable-connection queue pair on `pd`, completions to `cq`.
    pub fn create_qp(&mut self, pd: &Pd, cq: &Cq, send_wr: u32, recv_wr: u32) -> Result {
        // SAFETY: All-zero is a valid initial ib_qp_init_attr (no handler, no SRQ).
        let mut attr: bindings::ib_qp_init_attr = unsafe { core::mem::zeroed() };
        attr.send_cq = cq.ptr();
        attr.recv_cq = cq.ptr();
        attr.cap.max_send_wr = send_wr;
        attr.cap.max_recv_wr = recv_wr;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        attr.sq_sig_type = bindings::ib_sig_type_IB_SIGNAL_REQ_WR;
        attr.qp_type = bindings::ib_qp_type_IB_QPT_RC;
        // SAFETY: The id is live and bound to `pd`'s device (callers pass the PD of
        // `device()`; the core checks it too); `attr` is copied.
        errno(unsafe { bindings::rdma_create_qp(self.ptr(), pd.ptr(), &mut attr) })?;
        self.has_qp = true;
        Ok(())
    }

    fn conn_param(private: &[u8], depth: u8) -> bindings::rdma_conn_param {
        // SAFETY: All-zero is a valid rdma_conn_param.
        let mut p: bindings::rdma_conn_param = unsafe { core::mem::zeroed() };
        let len = private.len().min(PRIVATE_MAX);
        p.private_data = private.as_ptr() as *const c_void;
        p.private_data_len = len as u8;
        // Both ends must agree on a depth for READ and atomics, or they stall.
        p.responder_resources = depth;
        p.initiator_depth = depth;
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        p
    }

    /// Connect (after [`CmEvent::RouteResolved`]), sending `private`.
    pub fn connect(&self, private: &[u8], depth: u8) -> Result {
        let mut p = Self::conn_param(private, depth);
        // SAFETY: The id is live with a queue pair; `p` and `private` live across the
        // call, which copies the private data. Not called from a handler.
        errno(unsafe { bindings::rdma_connect(self.ptr(), &mut p) })
    }

    /// Accept a connection request (on a child with a queue pair), sending `private`.
    /// Outside a handler, as the core requires, under the id's handler lock.
    pub fn accept(&self, private: &[u8], depth: u8) -> Result {
        let mut p = Self::conn_param(private, depth);
        // SAFETY: The id is live; lock and unlock pair up around the accept, which
        // asserts the handler lock is held; `p` lives across the call.
        unsafe {
            bindings::rdma_lock_handler(self.ptr());
            let r = bindings::rdma_accept(self.ptr(), &mut p);
            bindings::rdma_unlock_handler(self.ptr());
            errno(r)
        }
    }

    /// Refuse a connection request.
    pub fn reject(&self) {
        // SAFETY: The id is a live child with a pending request; no private data.
        unsafe { bindings::rdma_reject(self.ptr(), core::ptr::null(), 0, 0) };
    }

    pub fn disconnect(&self) {
        // SAFETY: The id is live; disconnecting an unconnected id only fails.
        unsafe { bindings::rdma_disconnect(self.ptr()) };
    }

    fn qp(&self) -> Result<*mut bindings::ib_qp> {
        // SAFETY: The id is live.
        let qp = unsafe { (*self.ptr()).qp };
        if !self.has_qp || qp.is_null() {
            return Err(super::errno::ENOTCONN());
        }
        Ok(qp)
    }

    fn post(&self, wr: &bindings::ib_send_wr) -> Result {
        let qp = self.qp()?;
        let mut bad: *const bindings::ib_send_wr = core::ptr::null();
        // SAFETY: `qp` is the id's live queue pair; `wr` and what it points to are
        // valid for the call (the driver copies the request).
        errno(unsafe { bindings::ib_post_send(qp, wr, &mut bad) })
    }

    fn send_wr(wr_id: u64, opcode: u32, sge: Option<&mut bindings::ib_sge>, signaled: bool) -> bindings::ib_send_wr {
        // SAFETY: All-zero is a valid ib_send_wr.
        let mut wr: bindings::ib_send_wr = unsafe { core::mem::zeroed() };
        wr.__bindgen_anon_1.wr_id = wr_id;
        wr.opcode = opcode;
        if let Some(s) = sge {
            wr.sg_list = s;
            wr.num_sge = 1;
        }
        if signaled {
            wr.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED;
        }
        wr
    }

    /// Register `mr` for the peer with `access` (a local operation on this queue
    /// pair; completes with `wr_id`). The queue pair must be connected.
    pub fn post_reg_mr(&self, mr: &Mr, access: Access, wr_id: u64) -> Result {
        // SAFETY: All-zero is a valid ib_reg_wr.
        let mut reg: bindings::ib_reg_wr = unsafe { core::mem::zeroed() };
        reg.wr = Self::send_wr(wr_id, bindings::ib_wr_opcode_IB_WR_REG_MR, None, true);
        reg.mr = mr.ptr();
        reg.key = mr.rkey();
        let remote = match access {
            Access::ReadAtomic => bindings::ib_access_flags_IB_ACCESS_REMOTE_READ | bindings::ib_access_flags_IB_ACCESS_REMOTE_ATOMIC,
            Access::Write => bindings::ib_access_flags_IB_ACCESS_REMOTE_WRITE,
        };
        reg.access = (bindings::ib_access_flags_IB_ACCESS_LOCAL_WRITE | remote) as c_int;
        self.post(&reg.wr)
    }

    /// Write `len` bytes of `buf` at the peer's `remote_addr` (under `rkey`).
    pub fn post_write(&self, buf: &DmaPage, len: u32, remote_addr: u64, rkey: u32, wr_id: u64) -> Result {
        let mut sge = buf.sge(len)?;
        // SAFETY: All-zero is a valid ib_rdma_wr.
        let mut wr: bindings::ib_rdma_wr = unsafe { core::mem::zeroed() };
        wr.wr = Self::send_wr(wr_id, bindings::ib_wr_opcode_IB_WR_RDMA_WRITE, Some(&mut sge), true);
        wr.remote_addr = remote_addr;
        wr.rkey = rkey;
        self.post(&wr.wr)
    }

    /// Send `len` bytes of `buf` (unsignaled unless `signaled`).
    pub fn post_send(&self, buf: &DmaPage, len: u32, wr_id: u64, signaled: bool) -> Result {
        let mut sge = buf.sge(len.min(buf.len()))?;
        let wr = Self::send_wr(wr_id, bindings::ib_wr_opcode_IB_WR_SEND, Some(&mut sge), signaled);
        self.post(&wr)
    }

    /// Post a receive into `buf`.
    pub fn post_recv(&self, buf: &DmaPage, wr_id: u64) -> Result {
        let qp = self.qp()?;
        let mut sge = buf.sge(buf.len())?;
        // SAFETY: All-zero is a valid ib_recv_wr.
        let mut wr: bindings::ib_recv_wr = unsafe { core::mem::zeroed() };
        wr.__bindgen_anon_1.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad: *const bindings::ib_recv_wr = core::ptr::null();
        // SAFETY: `qp` is live; `wr` and `sge` are valid for the call.
        errno(unsafe { bindings::ib_post_recv(qp, &wr, &mut bad) })
    }

    /// Read `len` bytes at the peer's `remote_addr` (under `rkey`) into `buf`.
    pub fn post_read(&self, buf: &DmaPage, len: u32, remote_addr: u64, rkey: u32, wr_id: u64) -> Result {
        if len > buf.len() {
            return Err(EINVAL);
        }
        let mut sge = buf.sge(len)?;
        // SAFETY: All-zero is a valid ib_rdma_wr.
        let mut wr: bindings::ib_rdma_wr = unsafe { core::mem::zeroed() };
        wr.wr = Self::send_wr(wr_id, bindings::ib_wr_opcode_IB_WR_RDMA_READ, Some(&mut sge), true);
        wr.remote_addr = remote_addr;
        wr.rkey = rkey;
        self.post(&wr.wr)
    }

    /// Compare-and-swap the peer's 8-byte aligned word at `remote_addr`; the old
    /// value lands in the first 8 bytes of `buf`.
    pub fn post_cas(&self, buf: &DmaPage, remote_addr: u64, rkey: u32, compare: u64, swap: u64, wr_id: u64) -> Result {
        if remote_addr % 8 != 0 {
            return Err(EINVAL);
        }
        let mut sge = buf.sge(8)?;
        // SAFETY: All-zero is a valid ib_atomic_wr.
        let mut wr: bindings::ib_atomic_wr = unsafe { core::mem::zeroed() };
        wr.wr = Self::send_wr(wr_id, bindings::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP, Some(&mut sge), true);
        wr.remote_addr = remote_addr;
        wr.rkey = rkey;
        wr.compare_add = compare;
        wr.swap = swap;
        self.post(&wr.wr)
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: The id is live and ours (type invariant); its queue pair goes
        // first, as the core does not destroy it; `rdma_destroy_id` waits for a
        // running handler. Never called from this id's own handler (handlers only
        // record events).
        unsafe {
            if self.has_qp {
                bindings::rdma_destroy_qp(self.ptr());
            }
            bindings::rdma_destroy_id(self.ptr());
        }
    }
}

/// A protection domain on a device.
///
/// # Invariants
///
/// `pd` was allocated by `__ib_alloc_pd`; `Drop` frees it. Owners drop every queue
/// pair and memory region on it first.
pub struct Pd {
    pd: NonNull<bindings::ib_pd>,
}

// SAFETY: Used from one thread at a time; verbs calls are thread-safe.
unsafe impl Send for Pd {}

impl Pd {
    pub fn new(dev: NonNull<bindings::ib_device>) -> Result<Self> {
        // SAFETY: `dev` is a registered device (from a live id); no unsafe flags.
        let pd = unsafe { bindings::__ib_alloc_pd(dev.as_ptr(), 0, CALLER.as_ptr().cast()) };
        Ok(Pd { pd: from_err_ptr(pd)? })
    }

    fn ptr(&self) -> *mut bindings::ib_pd {
        self.pd.as_ptr()
    }

    pub fn device(&self) -> NonNull<bindings::ib_device> {
        // SAFETY: The PD is live; its device is set at allocation.
        unsafe { NonNull::new_unchecked((*self.ptr()).device) }
    }

    /// The key under which local buffers are used in work requests.
    pub fn local_key(&self) -> u32 {
        // SAFETY: The PD is live.
        unsafe { (*self.ptr()).local_dma_lkey }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: The PD is ours and unused (type invariant).
        unsafe { bindings::ib_dealloc_pd_user(self.ptr(), core::ptr::null_mut()) };
    }
}

/// A completion queue polled by its owner.
///
/// # Invariants
///
/// `cq` was allocated by `__ib_alloc_cq` with `IB_POLL_DIRECT`; `Drop` frees it.
/// Owners drop the queue pairs using it first.
pub struct Cq {
    cq: NonNull<bindings::ib_cq>,
}

// SAFETY: As for `Pd`.
unsafe impl Send for Cq {}

/// One completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub wr_id: u64,
    pub ok: bool,
    pub status: u32,
    pub byte_len: u32,
}

impl Cq {
    pub fn new(dev: NonNull<bindings::ib_device>, entries: i32) -> Result<Self> {
        // SAFETY: `dev` is a registered device; no private data; polled directly.
        let cq = unsafe {
            bindings::__ib_alloc_cq(dev.as_ptr(), core::ptr::null_mut(), entries, 0, bindings::ib_poll_context_IB_POLL_DIRECT, CALLER.as_ptr().cast())
        };
        Ok(Cq { cq: from_err_ptr(cq)? })
    }

    fn ptr(&self) -> *mut bindings::ib_cq {
        self.cq.as_ptr()
    }

    /// The next completion, if any.
    pub fn poll(&self) -> Option<Completion> {
        // SAFETY: All-zero is a valid ib_wc to be overwritten.
        let mut wc: bindings::ib_wc = unsafe { core::mem::zeroed() };
        // SAFETY: The CQ is live; `wc` has room for one entry.
        let n = unsafe { bindings::ib_poll_cq(self.ptr(), 1, &mut wc) };
        if n <= 0 {
            return None;
        }
        // SAFETY: Every work request here sets `wr_id`, so that member is the one.
        let wr_id = unsafe { wc.__bindgen_anon_1.wr_id };
        Some(Completion { wr_id, ok: wc.status == bindings::ib_wc_status_IB_WC_SUCCESS, status: wc.status, byte_len: wc.byte_len })
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: The CQ is ours and unused (type invariant).
        unsafe { bindings::ib_free_cq(self.ptr()) };
    }
}

/// One zeroed page of the kernel's direct map.
///
/// # Invariants
///
/// `addr` is the address of a page from `get_zeroed_page`, freed in `Drop`.
pub struct Page {
    addr: usize,
}

// SAFETY: Plain memory.
unsafe impl Send for Page {}
// SAFETY: Shared access is through raw pointers with the owner's own rules.
unsafe impl Sync for Page {}

pub const PAGE: usize = 4096;

impl Page {
    pub fn new() -> Result<Self> {
        // SAFETY: Allocates one zeroed page in process context (`get_zeroed_page`
        // without the allocation-profiling wrapper, a macro Rust cannot call).
        let addr = unsafe { bindings::get_zeroed_page_noprof(bindings::GFP_KERNEL) };
        if addr == 0 {
            return Err(ENOMEM);
        }
        Ok(Page { addr: addr as usize })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Store `v` at byte `at` (8-byte aligned) with one 64-bit store.
    pub fn store_u64(&self, at: usize, v: u64) {
        if at % 8 != 0 || at + 8 > PAGE {
            return;
        }
        // SAFETY: In bounds and aligned (checked); a volatile store is one 64-bit
        // write on 64-bit targets, which a concurrent remote reader may see.
        unsafe { core::ptr::write_volatile(self.as_ptr().add(at) as *mut u64, v) };
    }

    /// Copy `bytes` in at `at` (bounds-checked).
    pub fn write(&self, at: usize, bytes: &[u8]) {
        if at.checked_add(bytes.len()).is_none_or(|end| end > PAGE) {
            return;
        }
        // SAFETY: In bounds (checked); the page is ours; remote readers tolerate
        // concurrent writes by the formats' own checks.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.as_ptr().add(at), bytes.len()) };
    }

    /// Copy `out.len()` bytes out from `at` (bounds-checked; false when out of range).
    pub fn read(&self, at: usize, out: &mut [u8]) -> bool {
        if at.checked_add(out.len()).is_none_or(|end| end > PAGE) {
            return false;
        }
        // SAFETY: In bounds (checked).
        unsafe { core::ptr::copy_nonoverlapping(self.as_ptr().add(at), out.as_mut_ptr(), out.len()) };
        true
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: The page came from `get_zeroed_page` (type invariant), order 0.
        unsafe { bindings::free_pages(self.addr as _, 0) };
    }
}

/// A page mapped for a device's local use in work requests.
///
/// # Invariants
///
/// `dma` is `page` mapped bidirectionally for `dev` with `ib_dma_map_single`; `Drop`
/// unmaps it before the page is freed. `lkey` is the PD's local key.
pub struct DmaPage {
    pub page: Page,
    dev: NonNull<bindings::ib_device>,
    dma: u64,
    lkey: u32,
}

// SAFETY: As for `Page`.
unsafe impl Send for DmaPage {}

impl DmaPage {
    pub fn new(pd: &Pd) -> Result<Self> {
        let page = Page::new()?;
        let dev = pd.device();
        // SAFETY: `page` is direct-map memory of PAGE bytes; `dev` is live.
        let dma = unsafe { bindings::ib_dma_map_single(dev.as_ptr(), page.as_ptr() as *mut c_void, PAGE, bindings::dma_data_direction_DMA_BIDIRECTIONAL) };
        // SAFETY: As above.
        if unsafe { bindings::ib_dma_mapping_error(dev.as_ptr(), dma) } != 0 {
            return Err(ENOMEM);
        }
        Ok(DmaPage { page, dev, dma, lkey: pd.local_key() })
    }

    pub fn len(&self) -> u32 {
        PAGE as u32
    }

    fn sge(&self, len: u32) -> Result<bindings::ib_sge> {
        if len > self.len() {
            return Err(EINVAL);
        }
        Ok(bindings::ib_sge { addr: self.dma, length: len, lkey: self.lkey })
    }
}

impl Drop for DmaPage {
    fn drop(&mut self) {
        // SAFETY: Unmaps the mapping made in `new` (type invariant).
        unsafe { bindings::ib_dma_unmap_single(self.dev.as_ptr(), self.dma, PAGE, bindings::dma_data_direction_DMA_BIDIRECTIONAL) };
    }
}

/// A page registered for remote READ and atomics, by fast registration.
///
/// # Invariants
///
/// `mr` was allocated by `ib_alloc_mr` on a PD and mapped with `ib_map_mr_sg` onto
/// `page` (one page, at I/O virtual address 0 so that no kernel address leaves the
/// node); `Drop` deregisters it before the page is freed. The page stays in the
/// direct map.
pub struct Mr {
    mr: NonNull<bindings::ib_mr>,
    pub page: Page,
}

// SAFETY: As for `Pd`.
unsafe impl Send for Mr {}

impl Mr {
    pub fn new(pd: &Pd, page: Page) -> Result<Self> {
        // SAFETY: `pd` is live; one page at most.
        let mr = unsafe { bindings::ib_alloc_mr(pd.ptr(), bindings::ib_mr_type_IB_MR_TYPE_MEM_REG, 1) };
        let mr = from_err_ptr(mr)?;
        let this = Mr { mr, page };
        // SAFETY: All-zero is a valid scatterlist entry, initialized by `sg_init_one`
        // to the page; on a virtual-DMA device (soft-RoCE) the mapping is the
        // address itself (`ib_dma_virt_map_sg`); the MR maps one entry of one page.
        unsafe {
            let mut sg: bindings::scatterlist = core::mem::zeroed();
            bindings::sg_init_one(&mut sg, this.page.as_ptr() as *const c_void, PAGE as u32);
            let dev = (*pd.ptr()).device;
            if !(*dev).dma_device.is_null() {
                // A hardware device needs a real DMA mapping, which this module
                // does not make yet.
                return Err(super::errno::EOPNOTSUPP());
            }
            if bindings::ib_dma_virt_map_sg(dev, &mut sg, 1) != 1 {
                return Err(ENOMEM);
            }
            if bindings::ib_map_mr_sg(this.ptr(), &mut sg, 1, core::ptr::null_mut(), PAGE as u32) != 1 {
                return Err(EINVAL);
            }
            // Zero-based addresses: the peer reads at offsets, never sees a kernel
            // address.
            (*this.ptr()).iova = 0;
        }
        Ok(this)
    }

    fn ptr(&self) -> *mut bindings::ib_mr {
        self.mr.as_ptr()
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: The MR is live.
        unsafe { (*self.ptr()).rkey }
    }

    /// The address the peer uses for byte 0 of the page.
    pub fn iova(&self) -> u64 {
        // SAFETY: The MR is live.
        unsafe { (*self.ptr()).iova }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: The MR is ours (type invariant); deregistering also ends remote
        // access before the page is freed (the field drops after this).
        unsafe { bindings::ib_dereg_mr_user(self.ptr(), core::ptr::null_mut()) };
    }
}
