// SPDX-License-Identifier: GPL-2.0
//! Lazarus protocol logic: sequence arithmetic, Internet checksums, IPv4/TCP header
//! parsing and rewriting, node-to-node channel frames, the generic netlink families'
//! constants and text parsers for configuration values.
//!
//! This crate is `no_std` and never allocates, so the kernel modules include it
//! verbatim (through `#[path]` modules) and the userspace tools depend on it as a crate:
//! every format exists once. Inside the crate, sibling modules are reached with
//! `super::`, never `crate::`, because in a kernel module this crate is not the crate
//! root.

// In a kernel module (`--cfg MODULE`) this file is a plain module, where `no_std` does not apply.
#![cfg_attr(not(any(test, MODULE)), no_std)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod beat;
pub mod cbox;
pub mod channel;
pub mod csum;
pub mod flowtab;
pub mod ftlog;
pub mod genl;
pub mod genl_bdoor;
pub mod genl_core;
pub mod genl_shadow;
pub mod genl_splice;
pub mod heal;
pub mod http;
mod le;
pub mod packet;
pub mod ports;
pub mod progress;
pub mod proxypeer;
pub mod ratelimit;
pub mod rlock;
pub mod sensor;
pub mod seq;
pub mod sha256;
pub mod shadow;
pub mod slab;
pub mod splice;
pub mod sysctl_core;
