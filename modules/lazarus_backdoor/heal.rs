// SPDX-License-Identifier: GPL-2.0
//! Remote healing, target side: the process box a monitor reads when one of its
//! healing policies acts ([`lzk::proto::heal`]), and the repair requests monitors
//! write, carried out here after the target's own checks.
//!
//! The process box is refreshed every [`PROC_REFRESH_MS`]: the processes grouped by
//! ⟨uid, command⟩ (the largest groups) and the largest resident sets. Kernel threads
//! are left out; init and Lazarus's own programs are marked protected, as is any
//! group that holds one of them, and nothing protected is ever killed.

use super::lzk::process::{self, Process};
use super::lzk::proto::heal::{self as proto, Culprit, Group, Proc, Repair, COMM_LEN, ENTRIES_MAX, REPAIR_HEADER_LEN, CULPRIT_LEN, REPAIR_MAX};
use super::lzk::rdma::{Page, PAGE};
use super::{bump, Shared};
use kernel::prelude::*;

/// How often the process box is rebuilt (a walk over every process).
const PROC_REFRESH_MS: u64 = 250;
/// Groups the walk can hold; past that, new groups are not counted.
const GROUPS_MAX: usize = 128;
/// Largest resident sets the box lists.
const TOP_PROCS: usize = 8;
/// Commands never killed: Lazarus's own programs.
const PROTECTED_COMMS: &[&[u8]] = &[b"lazarusd", b"lzproxy", b"lzctl"];

fn protected(p: &Process<'_>) -> bool {
    p.kthread || p.pid <= 1 || PROTECTED_COMMS.iter().any(|c| p.comm.starts_with(c) && p.comm.get(c.len()) == Some(&0))
}

/// The walk's working memory, allocated once: the walk runs under RCU and must not
/// allocate.
struct Scratch {
    groups: [Group; GROUPS_MAX],
    ngroups: usize,
    top: [Proc; TOP_PROCS],
    ntop: usize,
}

pub(crate) struct Target {
    scratch: KBox<Scratch>,
    next_refresh: u64,
    generation: u64,
    /// The number of the latest repair request carried out (or refused).
    done_seq: u64,
}

impl Target {
    pub(crate) fn new() -> Result<Self> {
        let scratch = KBox::new(
            Scratch { groups: [Group::default(); GROUPS_MAX], ngroups: 0, top: [Proc::default(); TOP_PROCS], ntop: 0 },
            GFP_KERNEL,
        )?;
        Ok(Target { scratch, next_refresh: 0, generation: 0, done_seq: 0 })
    }

    pub(crate) fn tick(&mut self, s: &Shared, procs: &Page, repair: &Page, now: u64) {
        if now >= self.next_refresh {
            self.next_refresh = now + PROC_REFRESH_MS;
            self.generation += 1;
            if let Err(e) = self.export(procs) {
                pr_warn!("target: process box not written: error {}\n", e.to_errno());
            }
        }
        self.carry_out(s, repair);
    }

    /// Walk the processes and write the box.
    fn export(&mut self, page: &Page) -> Result {
        let sc = &mut *self.scratch;
        sc.ngroups = 0;
        sc.ntop = 0;
        process::for_each(|p| {
            if p.kthread {
                return;
            }
            let prot = if protected(p) { proto::flag::PROTECTED } else { 0 };
            let n = sc.ngroups;
            match sc.groups[..n].iter_mut().find(|g| g.uid == p.uid && g.comm == p.comm) {
                Some(g) => {
                    g.members += 1;
                    g.rss_pages += p.rss_pages;
                    g.newest_start_ns = g.newest_start_ns.max(p.start_ns);
                    g.flags |= prot;
                }
                None if n < GROUPS_MAX => {
                    sc.groups[n] = Group { uid: p.uid, members: 1, rss_pages: p.rss_pages, newest_start_ns: p.start_ns, flags: prot, comm: p.comm };
                    sc.ngroups += 1;
                }
                None => {}
            }
            // Keep the largest resident sets, largest first.
            let entry = Proc { pid: p.pid as u32, uid: p.uid, start_ns: p.start_ns, rss_pages: p.rss_pages, flags: prot, comm: p.comm };
            let at = sc.top[..sc.ntop].iter().position(|q| q.rss_pages < entry.rss_pages).unwrap_or(sc.ntop);
            if at < TOP_PROCS {
                let last = sc.ntop.min(TOP_PROCS - 1);
                sc.top.copy_within(at..last, at + 1);
                sc.top[at] = entry;
                sc.ntop = (sc.ntop + 1).min(TOP_PROCS);
            }
        });
        // Largest groups first, as many as fit next to the processes.
        let n = sc.ngroups;
        sc.groups[..n].sort_unstable_by(|a, b| b.members.cmp(&a.members));
        let groups = n.min(ENTRIES_MAX - sc.ntop);
        let mut buf = KVec::from_elem(0u8, PAGE, GFP_KERNEL)?;
        let len = proto::write_procs(&mut buf, self.generation, &sc.groups[..groups], &sc.top[..sc.ntop]).ok_or(EINVAL)?;
        page.write(0, &buf[..len]);
        Ok(())
    }

    /// Carry out a new repair request, if a monitor wrote one.
    fn carry_out(&mut self, s: &Shared, page: &Page) {
        let mut head = [0u8; REPAIR_HEADER_LEN];
        if !page.read(0, &mut head) || head[..4] != proto::REPAIR_MAGIC.to_le_bytes() {
            return;
        }
        // A new request is one whose number differs from the last one carried out
        // (not a larger one: a monitor that restarted counts from its new clock).
        let seq = u64::from_le_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]);
        if seq == self.done_seq {
            return;
        }
        let Ok(mut buf) = KVec::from_elem(0u8, REPAIR_HEADER_LEN + REPAIR_MAX * CULPRIT_LEN, GFP_KERNEL) else { return };
        if !page.read(0, &mut buf) {
            return;
        }
        let r = match Repair::parse(&buf) {
            Ok(r) => r,
            // Torn (the monitor may still be writing it) or malformed: a torn one
            // checks at the next tick; a malformed one never will.
            Err(proto::HealError::BadCheck) => return,
            Err(e) => {
                self.done_seq = seq;
                bump(&s.stats.repairs_refused);
                pr_warn!("target: repair request {} refused: {}\n", seq, e.as_str());
                return;
            }
        };
        self.done_seq = r.seq;
        let mut killed = 0u64;
        let mut refused = 0u64;
        for c in r.culprits() {
            let mut found = false;
            process::for_each(|p| {
                let hit = match c {
                    Culprit::Process { pid, start_ns } => p.pid as u32 == pid && p.start_ns == start_ns,
                    Culprit::Group { uid, comm } => p.uid == uid && p.comm == comm && !p.kthread,
                };
                if !hit {
                    return;
                }
                found = true;
                if protected(p) {
                    refused += 1;
                } else if p.kill().is_ok() {
                    killed += 1;
                }
            });
            if !found {
                refused += 1;
            }
        }
        s.stats.killed.fetch_add(killed, core::sync::atomic::Ordering::Relaxed);
        if killed > 0 {
            bump(&s.stats.repairs_done);
        } else {
            bump(&s.stats.repairs_refused);
        }
        pr_info!("target: repair request {}: {} process(es) killed, {} culprit(s) gone or protected\n", r.seq, killed, refused);
    }
}

/// The command name as the kernel keeps it, for log lines.
pub(crate) fn comm_str(c: &[u8; COMM_LEN]) -> &str {
    let n = c.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    core::str::from_utf8(&c[..n]).unwrap_or("?")
}
