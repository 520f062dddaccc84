// SPDX-License-Identifier: GPL-2.0
//! Kernel-side building blocks shared by the Lazarus modules: safe abstractions over
//! the kernel APIs the modules use, in the style of the kernel's own `rust/kernel/`.
//!
//! A module includes this directory with
//! `#[path = "../../rust/lzk/mod.rs"] mod lzk;` and reaches the host-testable protocol
//! logic as `lzk::proto`. Files here refer to each other with `super::`.
//!
//! Every abstraction documents its `# Invariants`; every `unsafe` block says why it is
//! sound in a `// SAFETY:` comment.

#[allow(dead_code)]
#[path = "../proto/src/lib.rs"]
pub mod proto;

pub mod bh;
pub mod dev;
pub mod errno;
pub mod genl;
pub mod kthread;
pub mod net;
pub mod netfilter;
pub mod process;
pub mod rdma;
pub mod route;
pub mod skb;
pub mod skbq;
pub mod sock;
pub mod sysctl;
pub mod tcp;
pub mod vec;
pub mod work;
