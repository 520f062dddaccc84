// SPDX-License-Identifier: GPL-2.0
//! Types that describe a generic netlink family. Each family's constants, policy and
//! operation table are generated from its YAML spec into `genl_<family>.rs`.

/// Attribute payload types, as in the kernel's `NLA_*` policy types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// 8-bit integer.
    U8,
    /// 16-bit integer (host order unless the spec says big-endian).
    U16,
    /// 32-bit integer.
    U32,
    /// 64-bit integer.
    U64,
    /// NUL-terminated string.
    String,
    /// Opaque bytes.
    Binary,
    /// Nested attributes.
    Nest,
    /// Presence-only flag.
    Flag,
}

/// Validation of one request attribute. The kernel enforces it before a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrPolicy {
    /// Attribute id.
    pub id: u16,
    /// Payload type.
    pub kind: AttrKind,
    /// Smallest accepted integer value.
    pub min: Option<i64>,
    /// Largest accepted integer value.
    pub max: Option<i64>,
    /// Longest accepted string or binary payload (0: no limit beyond the type's).
    pub max_len: u16,
}

/// One operation of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpec {
    /// Command number.
    pub cmd: u8,
    /// Name in the spec.
    pub name: &'static str,
    /// Requires CAP_NET_ADMIN in the caller's network namespace.
    pub admin: bool,
    /// Has a `do` handler.
    pub has_do: bool,
    /// Has a `dump` handler.
    pub has_dump: bool,
}
