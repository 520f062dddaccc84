// SPDX-License-Identifier: GPL-2.0
//! Generic netlink families (include/net/genetlink.h, include/net/netlink.h).
//!
//! A family is described by the constants generated from its YAML spec (policy,
//! operations, multicast groups); the module implements [`Family`] to handle requests.
//! Admin operations carry `GENL_ADMIN_PERM`, so the genetlink core refuses callers
//! without CAP_NET_ADMIN in the request's network namespace before the handler runs,
//! and the policy rejects malformed attributes (strict validation: unknown attributes,
//! wrong lengths and out-of-range values) with an extended-ack message.

use super::errno::{ECANCELED, EMSGSIZE, EOPNOTSUPP};
use super::net::Net;
use super::proto::genl::{AttrKind, AttrPolicy, OpSpec};
use core::ffi::{c_int, c_void, CStr};
use core::pin::Pin;
use kernel::bindings;
use kernel::error::to_result;
use kernel::prelude::*;

/// Most operations, policy entries and multicast groups a family can have here.
const MAX_OPS: usize = 24;
const MAX_ATTRS: usize = 48;
const MAX_GROUPS: usize = 4;
/// Size of a reply message buffer; every reply of ours is far smaller.
const REPLY_SIZE: usize = 2048;
/// Length of a netlink attribute header (`NLA_HDRLEN`, a macro in C).
const NLA_HDRLEN: usize = 4;

/// Static description of a family, from the generated `genl_<family>.rs`.
pub struct FamilySpec {
    /// NUL-terminated name.
    pub name: &'static [u8],
    /// Version.
    pub version: u8,
    /// Highest top-level attribute id.
    pub maxattr: u16,
    /// Request attribute policy.
    pub policy: &'static [AttrPolicy],
    /// Operations.
    pub ops: &'static [OpSpec],
    /// Multicast group names.
    pub groups: &'static [&'static str],
}

/// Handlers of a family. Called in process context (may sleep), concurrently:
/// the family is registered with `parallel_ops`, so implementations lock their own state.
pub trait Family: Send + Sync + 'static {
    /// Handle a `do` request. Return `Ok(())` to acknowledge; replies are sent with
    /// [`Request::reply`] before returning.
    fn doit(&self, cmd: u8, req: &Request<'_>) -> Result;

    /// Fill one part of a dump. Called repeatedly until it adds nothing new; keep the
    /// position in [`Dump::cursor`].
    fn dumpit(&self, _cmd: u8, _dump: &mut Dump<'_>) -> Result {
        Err(EOPNOTSUPP())
    }
}

/// The registered family, its tables and its handler, in one pinned allocation.
/// `family` is the first field so that the genetlink core's `family` pointer leads
/// back to the whole (`repr(C)`).
#[repr(C)]
struct Inner<T: Family> {
    family: bindings::genl_family,
    ops: [bindings::genl_ops; MAX_OPS],
    policy: [bindings::nla_policy; MAX_ATTRS],
    groups: [bindings::genl_multicast_group; MAX_GROUPS],
    handler: T,
}

/// A registered generic netlink family.
///
/// # Invariants
///
/// `inner.family` is registered with `genl_register_family` and points to the
/// `ops`, `policy` and `groups` tables in the same pinned allocation, which outlives
/// the registration (`Drop` unregisters first).
pub struct Registration<T: Family> {
    inner: Pin<KBox<Inner<T>>>,
}

// SAFETY: The C tables are only read by the genetlink core after registration; the
// handler is `Send`.
unsafe impl<T: Family> Send for Registration<T> {}
// SAFETY: Shared access reads the tables and calls the `Sync` handler.
unsafe impl<T: Family> Sync for Registration<T> {}

fn policy_entry(p: &AttrPolicy) -> Result<bindings::nla_policy> {
    // SAFETY: All-zero is a valid `nla_policy` (type NLA_UNSPEC, no validation).
    let mut e: bindings::nla_policy = unsafe { core::mem::zeroed() };
    e.type_ = match p.kind {
        AttrKind::U8 => bindings::NLA_U8,
        AttrKind::U16 => bindings::NLA_U16,
        AttrKind::U32 => bindings::NLA_U32,
        AttrKind::U64 => bindings::NLA_U64,
        AttrKind::String => bindings::NLA_NUL_STRING,
        AttrKind::Binary => bindings::NLA_BINARY,
        AttrKind::Nest => bindings::NLA_NESTED,
        AttrKind::Flag => bindings::NLA_FLAG,
    } as u8;
    e.len = p.max_len;
    // Inline ranges are s16; larger bounds would need a range pointer, which no
    // spec uses yet, so they are refused rather than silently truncated.
    let fit = |v: i64| i16::try_from(v).map_err(|_| EINVAL);
    let (vt, min, max) = match (p.min, p.max) {
        (None, None) => return Ok(e),
        (Some(lo), None) => (bindings::nla_policy_validation_NLA_VALIDATE_MIN, fit(lo)?, 0),
        (None, Some(hi)) => (bindings::nla_policy_validation_NLA_VALIDATE_MAX, 0, fit(hi)?),
        (Some(lo), Some(hi)) => (bindings::nla_policy_validation_NLA_VALIDATE_RANGE, fit(lo)?, fit(hi)?),
    };
    e.validation_type = vt as u8;
    e.__bindgen_anon_1.__bindgen_anon_1.min = min;
    e.__bindgen_anon_1.__bindgen_anon_1.max = max;
    Ok(e)
}

impl<T: Family> Registration<T> {
    /// Register a family described by `spec`, handled by `handler`.
    pub fn new(spec: &FamilySpec, module: &'static ThisModule, handler: T) -> Result<Self> {
        if spec.ops.len() > MAX_OPS
            || spec.maxattr as usize >= MAX_ATTRS
            || spec.groups.len() > MAX_GROUPS
            || spec.name.len() > 16
            || spec.name.last() != Some(&0)
        {
            return Err(EINVAL);
        }
        let mut inner = KBox::pin(
            Inner {
                // SAFETY: All-zero is the "unset" state of these C structs: null
                // pointers and callbacks, zero counts.
                family: unsafe { core::mem::zeroed() },
                // SAFETY: As above.
                ops: unsafe { core::mem::zeroed() },
                // SAFETY: As above (NLA_UNSPEC entries).
                policy: unsafe { core::mem::zeroed() },
                // SAFETY: As above.
                groups: unsafe { core::mem::zeroed() },
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: We initialize fields in place; nothing moves out of the pin.
        let i = unsafe { inner.as_mut().get_unchecked_mut() };
        for p in spec.policy {
            *i.policy.get_mut(p.id as usize).ok_or(EINVAL)? = policy_entry(p)?;
        }
        for (op, s) in i.ops.iter_mut().zip(spec.ops) {
            op.cmd = s.cmd;
            op.flags = if s.admin { bindings::GENL_ADMIN_PERM as u8 } else { 0 };
            if s.has_do {
                op.doit = Some(doit_trampoline::<T>);
            }
            if s.has_dump {
                op.dumpit = Some(dumpit_trampoline::<T>);
            }
        }
        for (g, name) in i.groups.iter_mut().zip(spec.groups) {
            copy_name(&mut g.name, name.as_bytes())?;
        }
        let f = &mut i.family;
        for (d, s) in f.name.iter_mut().zip(spec.name) {
            *d = *s;
        }
        f.version = spec.version as u32;
        f.maxattr = spec.maxattr as u32;
        f.policy = i.policy.as_ptr();
        f.ops = i.ops.as_ptr();
        f.n_ops = spec.ops.len() as u8;
        f.mcgrps = i.groups.as_ptr();
        f.n_mcgrps = spec.groups.len() as u8;
        f.module = module.as_ptr();
        f.set_netnsok(1);
        f.set_parallel_ops(1);
        // SAFETY: The family and its tables live in pinned memory until `Drop`
        // unregisters the family.
        to_result(unsafe { bindings::genl_register_family(f) })?;
        Ok(Registration { inner })
    }

    /// The handler.
    pub fn handler(&self) -> &T {
        &self.inner.handler
    }

    /// Send a notification to multicast group `group` (its index in the spec) of
    /// namespace `net`. Best effort, see [`multicast`].
    pub fn notify(&self, net: &Net, group: u32, cmd: u8, fill: impl FnOnce(&mut Message) -> Result) -> Result {
        multicast(&self.inner.family, net, group, cmd, fill)
    }
}

/// Build a notification with `fill` and multicast it to `group` of `family` in `net`.
/// Best effort: having no listeners, or a listener whose socket is full, is not an
/// error, because the change being reported has already been made.
fn multicast(
    family: *const bindings::genl_family,
    net: &Net,
    group: u32,
    cmd: u8,
    fill: impl FnOnce(&mut Message) -> Result,
) -> Result {
    let mut msg = Message::new()?;
    msg.start(family, 0, 0, 0, cmd)?;
    fill(&mut msg)?;
    let skb = msg.finish();
    // SAFETY: `skb` is a complete message we own; the call consumes it. `family` is a
    // registered family (callers hold its registration or run inside its handlers)
    // and `net` is live.
    let _ = unsafe { bindings::genlmsg_multicast_netns(family, net.as_ptr(), skb, 0, group, bindings::GFP_KERNEL) };
    Ok(())
}

fn copy_name(dst: &mut [kernel::ffi::c_char], src: &[u8]) -> Result {
    if src.len() >= dst.len() {
        return Err(EINVAL);
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
    Ok(())
}

impl<T: Family> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: The family is registered (type invariant). Unregistering waits for
        // running operations and dumps, so the tables may be freed afterwards.
        unsafe { bindings::genl_unregister_family(&self.inner.family) };
    }
}

/// A netlink message under construction; freed unless it is sent.
///
/// # Invariants
///
/// `skb` is a netlink skb we own exclusively; `hdr`, when non-null, is the genetlink
/// header of the one message started in it.
pub struct Message {
    skb: *mut bindings::sk_buff,
    hdr: *mut c_void,
}

impl Message {
    fn new() -> Result<Self> {
        // SAFETY: Allocates a fresh skb of `REPLY_SIZE` payload bytes.
        let skb = unsafe { bindings::genlmsg_new(REPLY_SIZE, bindings::GFP_KERNEL) };
        if skb.is_null() {
            return Err(ENOMEM);
        }
        Ok(Message { skb, hdr: core::ptr::null_mut() })
    }

    fn start(&mut self, family: *const bindings::genl_family, portid: u32, seq: u32, flags: c_int, cmd: u8) -> Result {
        // SAFETY: `skb` is ours (type invariant); `family` is registered.
        let hdr = unsafe { bindings::genlmsg_put(self.skb, portid, seq, family, flags, cmd) };
        if hdr.is_null() {
            return Err(EMSGSIZE());
        }
        self.hdr = hdr;
        Ok(())
    }

    /// Close the message and give up ownership of the skb.
    fn finish(mut self) -> *mut bindings::sk_buff {
        // SAFETY: `hdr` was returned by `genlmsg_put` on this skb.
        unsafe { bindings::genlmsg_end(self.skb, self.hdr) };
        core::mem::replace(&mut self.skb, core::ptr::null_mut())
    }

    fn put(&mut self, attr: u16, data: &[u8]) -> Result {
        // SAFETY: `skb` is ours; `nla_put` copies `data.len()` bytes from `data` and
        // fails with -EMSGSIZE instead of overrunning the skb.
        to_result(unsafe { bindings::nla_put(self.skb, attr as c_int, data.len() as c_int, data.as_ptr().cast()) })
    }

    /// Add a u8 attribute.
    pub fn put_u8(&mut self, attr: u16, v: u8) -> Result {
        self.put(attr, &[v])
    }

    /// Add a u16 attribute (host order).
    pub fn put_u16(&mut self, attr: u16, v: u16) -> Result {
        self.put(attr, &v.to_ne_bytes())
    }

    /// Add a u32 attribute (host order).
    pub fn put_u32(&mut self, attr: u16, v: u32) -> Result {
        self.put(attr, &v.to_ne_bytes())
    }

    /// Add a u64 attribute (host order; not padded to 8-byte alignment, which
    /// readers handle by copying).
    pub fn put_u64(&mut self, attr: u16, v: u64) -> Result {
        self.put(attr, &v.to_ne_bytes())
    }

    /// Add a NUL-terminated string attribute.
    pub fn put_str(&mut self, attr: u16, s: &CStr) -> Result {
        self.put(attr, s.to_bytes_with_nul())
    }

    /// Add a nested attribute filled by `fill`; on failure the nest is removed.
    pub fn nest(&mut self, attr: u16, fill: impl FnOnce(&mut Message) -> Result) -> Result {
        // SAFETY: `skb` is ours; returns null when there is no room.
        let start = unsafe { bindings::nla_nest_start(self.skb, attr as c_int) };
        if start.is_null() {
            return Err(EMSGSIZE());
        }
        match fill(self) {
            Ok(()) => {
                // SAFETY: `start` was returned by `nla_nest_start` on this skb.
                unsafe { bindings::nla_nest_end(self.skb, start) };
                Ok(())
            }
            Err(e) => {
                // SAFETY: As above; trims the skb back to `start`.
                unsafe { bindings::nla_nest_cancel(self.skb, start) };
                Err(e)
            }
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if !self.skb.is_null() {
            // SAFETY: We still own the skb (it was not sent).
            unsafe { bindings::nlmsg_free(self.skb) };
        }
    }
}

/// A `do` request.
///
/// # Invariants
///
/// `info` is the valid `genl_info` of the request being handled, whose `attrs` array
/// has `maxattr + 1` entries that passed the family policy.
pub struct Request<'a> {
    info: &'a bindings::genl_info,
    maxattr: u16,
}

impl<'a> Request<'a> {
    /// The attribute's payload, if present.
    pub fn attr(&self, id: u16) -> Option<&'a [u8]> {
        if id > self.maxattr {
            return None;
        }
        // SAFETY: `attrs` has `maxattr + 1` entries (type invariant) and `id` is in
        // range; entries are null or point to attributes inside the request skb,
        // which outlives `'a`.
        let a = unsafe { *self.info.attrs.add(id as usize) };
        if a.is_null() {
            return None;
        }
        // SAFETY: `a` is a validated attribute: its header is readable and `nla_len`
        // bytes from it lie inside the message.
        unsafe {
            let len = ((*a).nla_len as usize).checked_sub(NLA_HDRLEN)?;
            Some(core::slice::from_raw_parts((a as *const u8).add(NLA_HDRLEN), len))
        }
    }

    /// A u8 attribute.
    pub fn u8(&self, id: u16) -> Option<u8> {
        self.attr(id).and_then(|b| b.first().copied())
    }

    /// A u16 attribute (host order).
    pub fn u16(&self, id: u16) -> Option<u16> {
        self.attr(id).and_then(|b| Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?)))
    }

    /// A u32 attribute (host order).
    pub fn u32(&self, id: u16) -> Option<u32> {
        self.attr(id).and_then(|b| Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)))
    }

    /// A u64 attribute (host order; the policy checked its length).
    pub fn u64(&self, id: u16) -> Option<u64> {
        self.attr(id).and_then(|b| Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?)))
    }

    /// Every instance of a repeated (multi-attr) attribute, in order: `attrs` keeps
    /// only the last one, so this walks the message itself. Stops at the first
    /// malformed header (the policy validated every attribute already).
    pub fn each(&self, id: u16, mut f: impl FnMut(&'a [u8])) {
        const NLMSG_HDRLEN: usize = 16;
        const GENL_HDRLEN: usize = 4;
        const NLA_TYPE_MASK: u16 = !(3 << 14);
        // SAFETY: `nlhdr` is the request's valid netlink header; `nlmsg_len` bytes
        // from it are the message, which outlives `'a` (type invariant).
        let msg = unsafe {
            let nlh = self.info.nlhdr;
            core::slice::from_raw_parts(nlh as *const u8, (*nlh).nlmsg_len as usize)
        };
        let mut rest = msg.get(NLMSG_HDRLEN + GENL_HDRLEN..).unwrap_or(&[]);
        while rest.len() >= NLA_HDRLEN {
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
            if len < NLA_HDRLEN || len > rest.len() {
                return;
            }
            if ty == id {
                f(&rest[NLA_HDRLEN..len]);
            }
            rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }

    /// A u32 attribute carried in network order.
    pub fn be32(&self, id: u16) -> Option<u32> {
        self.attr(id).and_then(|b| Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?)))
    }

    /// Fail with `EINVAL` and `msg`, which names the missing attribute.
    pub fn missing(&self, msg: &'static CStr) -> Error {
        self.set_message(msg);
        EINVAL
    }

    /// Attach an extended-ack message to the reply (shown by `lzctl`).
    pub fn set_message(&self, msg: &'static CStr) {
        // SAFETY: `info` is valid (type invariant); `msg` is static, as extack requires.
        unsafe { bindings::lz_genl_set_err_msg(self.info as *const _ as *mut _, msg.as_ptr().cast()) };
    }

    /// The request's network namespace.
    pub fn net(&self) -> &'a Net {
        // SAFETY: The namespace of a request is held by the requesting socket for the
        // duration of the request.
        unsafe { Net::from_raw(bindings::genl_info_net(self.info)) }
    }

    /// Send a notification to multicast group `group` of this request's family, in
    /// the request's namespace. Best effort, see [`multicast`].
    pub fn notify_group(&self, group: u32, cmd: u8, fill: impl FnOnce(&mut Message) -> Result) -> Result {
        multicast(self.info.family, self.net(), group, cmd, fill)
    }

    /// A handle that sends notifications of this family in this request's namespace
    /// later, from another context (for example a kernel thread the request starts).
    ///
    /// # Safety
    ///
    /// The caller must stop using the notifier before the family is unregistered
    /// (typically: whatever owns it is torn down before the module drops its
    /// [`Registration`]).
    pub unsafe fn notifier(&self) -> Notifier {
        Notifier { family: self.info.family, net: self.net().get() }
    }

    /// Build and send a reply: `fill` adds the attributes.
    pub fn reply(&self, cmd: u8, fill: impl FnOnce(&mut Message) -> Result) -> Result {
        let mut msg = Message::new()?;
        msg.start(self.info.family, self.info.snd_portid, self.info.snd_seq, 0, cmd)?;
        fill(&mut msg)?;
        let skb = msg.finish();
        // SAFETY: `skb` is a complete message we own; `genlmsg_reply` consumes it.
        to_result(unsafe { bindings::genlmsg_reply(skb, self.info as *const _ as *mut _) })
    }
}

/// Sends notifications of a family from outside its handlers.
///
/// # Invariants
///
/// `family` is a registered family, and stays registered while the notifier is in
/// use (the contract of [`Request::notifier`]); `net` holds a namespace reference.
pub struct Notifier {
    family: *const bindings::genl_family,
    net: super::net::NetRef,
}

// SAFETY: The family pointer is only passed to the genetlink core, which may be called
// from any thread; the namespace reference is `Send`.
unsafe impl Send for Notifier {}
// SAFETY: As above; sending needs no exclusive access.
unsafe impl Sync for Notifier {}

impl Notifier {
    /// Multicast a notification to `group`. Process context. Best effort, see
    /// [`multicast`].
    pub fn notify(&self, group: u32, cmd: u8, fill: impl FnOnce(&mut Message) -> Result) -> Result {
        multicast(self.family, &self.net, group, cmd, fill)
    }
}

/// One call of a dump.
///
/// # Invariants
///
/// `skb` is the dump's output skb and `cb` its valid callback, whose `data` is the
/// genetlink core's `genl_dumpit_info`.
pub struct Dump<'a> {
    skb: *mut bindings::sk_buff,
    cb: &'a mut bindings::netlink_callback,
    info: &'a bindings::genl_info,
}

impl Dump<'_> {
    /// The position saved by the previous call (0 on the first).
    pub fn cursor(&self) -> usize {
        // SAFETY: `args` is the plain-integer view of the callback's scratch union,
        // which the core zeroes before the first call.
        unsafe { self.cb.__bindgen_anon_1.args[0] as usize }
    }

    /// Save the position for the next call.
    pub fn set_cursor(&mut self, v: usize) {
        // SAFETY: As in `cursor`; writing an integer to the union is always valid.
        unsafe { self.cb.__bindgen_anon_1.args[0] = v as kernel::ffi::c_long };
    }

    /// Append one message filled by `fill`. Returns `Ok(false)` when the skb is full
    /// (the message is removed; the next call continues from the cursor).
    pub fn add(&mut self, cmd: u8, fill: impl FnOnce(&mut Message) -> Result) -> Result<bool> {
        // SAFETY: `skb` is the dump skb (type invariant).
        let hdr = unsafe {
            bindings::genlmsg_put(
                self.skb,
                self.info.snd_portid,
                self.info.snd_seq,
                self.info.family,
                bindings::NLM_F_MULTI as c_int,
                cmd,
            )
        };
        if hdr.is_null() {
            return Ok(false);
        }
        // A message view over the shared dump skb; it must not free it.
        let mut msg = Message { skb: self.skb, hdr };
        let res = fill(&mut msg);
        msg.skb = core::ptr::null_mut();
        match res {
            Ok(()) => {
                // SAFETY: `hdr` was just put on this skb.
                unsafe { bindings::genlmsg_end(self.skb, hdr) };
                Ok(true)
            }
            Err(e) if e == EMSGSIZE() => {
                // SAFETY: As above; trims the partial message.
                unsafe { bindings::genlmsg_cancel(self.skb, hdr) };
                Ok(false)
            }
            Err(e) => {
                // SAFETY: As above.
                unsafe { bindings::genlmsg_cancel(self.skb, hdr) };
                Err(e)
            }
        }
    }
}

fn family_of<T: Family>(family: *const bindings::genl_family) -> &'static Inner<T> {
    // SAFETY: Only families registered by `Registration<T>` have these trampolines,
    // and their `genl_family` is the first field of a `repr(C)` `Inner<T>` that lives
    // until the family is unregistered, which waits for running callbacks.
    unsafe { &*(family as *const Inner<T>) }
}

unsafe extern "C" fn doit_trampoline<T: Family>(_skb: *mut bindings::sk_buff, info: *mut bindings::genl_info) -> c_int {
    // SAFETY: The core passes a valid `info` for the duration of the call.
    let info = unsafe { &*info };
    let inner = family_of::<T>(info.family);
    // SAFETY: `genlhdr` points to the validated genetlink header of the request.
    let cmd = unsafe { (*info.genlhdr).cmd };
    let req = Request { info, maxattr: inner.family.maxattr as u16 };
    match inner.handler.doit(cmd, &req) {
        Ok(()) => 0,
        Err(e) if interrupted(e) => {
            // netlink_rcv_skb() sends no ack for -EINTR (it asks for a replay), so the
            // caller would wait forever; and -ERESTART* must never reach userspace.
            req.set_message(c"interrupted by a signal; nothing was done or the result is unknown");
            ECANCELED().to_errno()
        }
        Err(e) => e.to_errno(),
    }
}

/// True for the errors a blocking call returns when a signal interrupts it.
fn interrupted(e: Error) -> bool {
    e == EINTR || e == ERESTARTSYS || e == ERESTARTNOINTR || e == ERESTARTNOHAND
}

unsafe extern "C" fn dumpit_trampoline<T: Family>(skb: *mut bindings::sk_buff, cb: *mut bindings::netlink_callback) -> c_int {
    // SAFETY: The core passes a valid callback whose `data` is the
    // `genl_dumpit_info` set up by `genl_start`, valid for the whole dump.
    let cb = unsafe { &mut *cb };
    // SAFETY: As above.
    let dinfo = unsafe { &*(cb.data as *const bindings::genl_dumpit_info) };
    let info = &dinfo.info;
    let inner = family_of::<T>(info.family);
    let cmd = dinfo.op.cmd;
    let mut dump = Dump { skb, cb, info };
    match inner.handler.dumpit(cmd, &mut dump) {
        // SAFETY: `skb` is valid; its length tells the core whether to call again.
        Ok(()) => unsafe { (*skb).len as c_int },
        Err(e) => e.to_errno(),
    }
}
