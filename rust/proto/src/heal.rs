// SPDX-License-Identifier: GPL-2.0
//! Backdoors' remote healing: healing policies on the monitor, bound to sensors,
//! decide from what the target publishes which processes to kill, and post the
//! decision as a repair request the target's module carries out.
//!
//! The target publishes a **process box** next to its Sensor Box, refreshed on a
//! timer, with two tables:
//! - **groups**: the processes grouped by ⟨uid, command name⟩, the largest groups
//!   first, each with its size, resident pages and newest start time. A classic
//!   fork bomb's processes are orphaned at once and re-parented, so a tree does not
//!   hold them; they share a command and a user.
//! - **processes**: the largest resident sets, each ⟨pid, start time, uid, resident
//!   pages, command⟩.
//!
//! Policies, run when their sensor raises an alarm:
//! - **fork bomb** (bound to the task count or the fork rate): the largest
//!   unprotected group, if it has more than a limit of members;
//! - **memory hog** (bound to free memory): the unprotected process with the
//!   largest resident set above a limit.
//!
//! Entries the target marks protected (init, kernel threads, Lazarus's daemons, any
//! the operator lists, and root's groups unless allowed) are never chosen.
//!
//! The **repair request** is written into the target's repair region with one-sided
//! RDMA WRITE: a sequence number, a check, and up to [`REPAIR_MAX`] culprits, each a
//! process ⟨pid, start time⟩ (a pid reused since the read does not match) or a group
//! ⟨uid, command⟩ (every member at the time the target acts, including those forked
//! after the read). The target checks each again on its side ([`check_process`],
//! [`Group::protected_uid`]) before it signals anything.
//!
//! Layouts (little-endian):
//!
//! ```text
//! process box  magic u32 "LZPB", version u16, reserved u16, generation u64,
//!              groups u16, procs u16, reserved u32                      (24 bytes)
//! group        uid u32, members u32, rss_pages u64, newest_start_ns u64,
//!              flags u32, reserved u32, comm [16]                       (48 bytes)
//! process      pid u32, uid u32, start_ns u64, rss_pages u64,
//!              flags u32, reserved u32, comm [16]                       (48 bytes)
//! repair       magic u32 "LZRP", version u16, count u16, seq u64, check u64
//! culprit      kind u8 (1 process, 2 group), reserved [3], id u32 (pid or uid),
//!              start_ns u64, comm [16]                                  (32 bytes)
//! ```

use super::le::{fnv64 as check64, le16, le32, le64};

/// "LZPB" read as a little-endian u32.
pub const PROC_MAGIC: u32 = u32::from_le_bytes(*b"LZPB");
/// "LZRP" read as a little-endian u32.
pub const REPAIR_MAGIC: u32 = u32::from_le_bytes(*b"LZRP");
pub const VERSION: u16 = 1;
pub const PROC_HEADER_LEN: usize = 24;
pub const ENTRY_LEN: usize = 48;
/// Entries (groups and processes together) in one 4 KiB page.
pub const ENTRIES_MAX: usize = (4096 - PROC_HEADER_LEN) / ENTRY_LEN;
pub const REPAIR_HEADER_LEN: usize = 24;
pub const CULPRIT_LEN: usize = 32;
/// Culprits one repair request may name.
pub const REPAIR_MAX: usize = 32;
/// A command name's length (the kernel's TASK_COMM_LEN), NUL-padded.
pub const COMM_LEN: usize = 16;

/// Entry flags.
pub mod flag {
    /// Never to be killed.
    pub const PROTECTED: u32 = 1;
    pub const ALL: u32 = PROTECTED;
}

/// A group of processes sharing a user and a command name.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Group {
    pub uid: u32,
    pub members: u32,
    pub rss_pages: u64,
    pub newest_start_ns: u64,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
}

impl Group {
    /// The target's own rule for a group kill: never root's or a system user's
    /// (below `first_user_uid`) unless the operator allowed it.
    pub fn protected_uid(uid: u32, first_user_uid: u32, allow_system: bool) -> bool {
        !allow_system && uid < first_user_uid
    }
}

/// One process.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Proc {
    pub pid: u32,
    pub uid: u32,
    /// Boot-relative start time: with the pid, names one process.
    pub start_ns: u64,
    pub rss_pages: u64,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
}

/// A command name as the kernel keeps it: at most 15 bytes and a NUL.
pub fn comm(name: &[u8]) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    let n = name.len().min(COMM_LEN - 1);
    c[..n].copy_from_slice(&name[..n]);
    c
}

/// Why a box or a request was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HealError {
    Truncated,
    BadMagic,
    BadVersion,
    TooMany,
    /// Unknown flags or kinds, reserved bits set, or a pid of 0.
    BadEntry,
    /// The request's check does not match (torn or corrupt).
    BadCheck,
}

impl HealError {
    pub const fn as_str(self) -> &'static str {
        match self {
            HealError::Truncated => "shorter than its layout",
            HealError::BadMagic => "bad magic",
            HealError::BadVersion => "a layout version this reader does not know",
            HealError::TooMany => "more entries than the layout allows",
            HealError::BadEntry => "an entry with unknown flags, reserved bits or pid 0",
            HealError::BadCheck => "the check does not match (torn or corrupt)",
        }
    }
}

fn comm_at(b: &[u8], at: usize) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c.copy_from_slice(&b[at..at + COMM_LEN]);
    c
}

/// Write a process box; its length, or `None` when `out` is too small or there are
/// too many entries.
pub fn write_procs(out: &mut [u8], generation: u64, groups: &[Group], procs: &[Proc]) -> Option<usize> {
    if groups.len() + procs.len() > ENTRIES_MAX {
        return None;
    }
    let len = PROC_HEADER_LEN + (groups.len() + procs.len()) * ENTRY_LEN;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0..4].copy_from_slice(&PROC_MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    out[16..18].copy_from_slice(&(groups.len() as u16).to_le_bytes());
    out[18..20].copy_from_slice(&(procs.len() as u16).to_le_bytes());
    let mut entries = out[PROC_HEADER_LEN..].chunks_exact_mut(ENTRY_LEN);
    for (g, o) in groups.iter().zip(&mut entries) {
        o[0..4].copy_from_slice(&g.uid.to_le_bytes());
        o[4..8].copy_from_slice(&g.members.to_le_bytes());
        o[8..16].copy_from_slice(&g.rss_pages.to_le_bytes());
        o[16..24].copy_from_slice(&g.newest_start_ns.to_le_bytes());
        o[24..28].copy_from_slice(&g.flags.to_le_bytes());
        o[32..48].copy_from_slice(&g.comm);
    }
    for (p, o) in procs.iter().zip(entries) {
        o[0..4].copy_from_slice(&p.pid.to_le_bytes());
        o[4..8].copy_from_slice(&p.uid.to_le_bytes());
        o[8..16].copy_from_slice(&p.start_ns.to_le_bytes());
        o[16..24].copy_from_slice(&p.rss_pages.to_le_bytes());
        o[24..28].copy_from_slice(&p.flags.to_le_bytes());
        o[32..48].copy_from_slice(&p.comm);
    }
    Some(len)
}

/// A validated process box.
#[derive(Clone, Copy, Debug)]
pub struct ProcBox<'a> {
    generation: u64,
    groups: &'a [u8],
    procs: &'a [u8],
}

impl<'a> ProcBox<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, HealError> {
        if b.len() < PROC_HEADER_LEN {
            return Err(HealError::Truncated);
        }
        if le32(b, 0) != PROC_MAGIC {
            return Err(HealError::BadMagic);
        }
        if le16(b, 4) != VERSION {
            return Err(HealError::BadVersion);
        }
        let (ng, np) = (le16(b, 16) as usize, le16(b, 18) as usize);
        if le16(b, 6) != 0 || le32(b, 20) != 0 {
            return Err(HealError::BadEntry);
        }
        if ng + np > ENTRIES_MAX {
            return Err(HealError::TooMany);
        }
        let body = b.get(PROC_HEADER_LEN..PROC_HEADER_LEN + (ng + np) * ENTRY_LEN).ok_or(HealError::Truncated)?;
        let (groups, procs) = body.split_at(ng * ENTRY_LEN);
        let bad_flags = body.chunks_exact(ENTRY_LEN).any(|e| le32(e, 24) & !flag::ALL != 0 || le32(e, 28) != 0);
        if bad_flags || procs.chunks_exact(ENTRY_LEN).any(|e| le32(e, 0) == 0) {
            return Err(HealError::BadEntry);
        }
        Ok(ProcBox { generation: le64(b, 8), groups, procs })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn groups(&self) -> impl Iterator<Item = Group> + 'a {
        self.groups.chunks_exact(ENTRY_LEN).map(|e| Group {
            uid: le32(e, 0),
            members: le32(e, 4),
            rss_pages: le64(e, 8),
            newest_start_ns: le64(e, 16),
            flags: le32(e, 24),
            comm: comm_at(e, 32),
        })
    }

    pub fn procs(&self) -> impl Iterator<Item = Proc> + 'a {
        self.procs.chunks_exact(ENTRY_LEN).map(|e| Proc {
            pid: le32(e, 0),
            uid: le32(e, 4),
            start_ns: le64(e, 8),
            rss_pages: le64(e, 16),
            flags: le32(e, 24),
            comm: comm_at(e, 32),
        })
    }
}

/// What a repair kills.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Culprit {
    /// One process, named so that a reused pid does not match.
    Process { pid: u32, start_ns: u64 },
    /// Every process of a user with a command name.
    Group { uid: u32, comm: [u8; COMM_LEN] },
}

/// Fork bomb: the largest unprotected group, if it has more than `limit` members
/// (ties: the one whose newest member is newest, the one still forking).
pub fn fork_bomb(b: &ProcBox<'_>, limit: u32) -> Option<Culprit> {
    b.groups()
        .filter(|g| g.flags & flag::PROTECTED == 0 && g.members > limit)
        .max_by_key(|g| (g.members, g.newest_start_ns))
        .map(|g| Culprit::Group { uid: g.uid, comm: g.comm })
}

/// Memory hog: the unprotected process with the largest resident set, if above
/// `limit_pages` (ties: the lower pid).
pub fn memory_hog(b: &ProcBox<'_>, limit_pages: u64) -> Option<Culprit> {
    b.procs()
        .filter(|p| p.flags & flag::PROTECTED == 0 && p.rss_pages > limit_pages)
        .max_by_key(|p| (p.rss_pages, core::cmp::Reverse(p.pid)))
        .map(|p| Culprit::Process { pid: p.pid, start_ns: p.start_ns })
}

/// Write a repair request; its length, or `None` when `out` is too small or there
/// are too many culprits.
pub fn write_repair(out: &mut [u8], seq: u64, culprits: &[Culprit]) -> Option<usize> {
    if culprits.len() > REPAIR_MAX {
        return None;
    }
    let len = REPAIR_HEADER_LEN + culprits.len() * CULPRIT_LEN;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0..4].copy_from_slice(&REPAIR_MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(culprits.len() as u16).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    for (t, o) in culprits.iter().zip(out[REPAIR_HEADER_LEN..].chunks_exact_mut(CULPRIT_LEN)) {
        match *t {
            Culprit::Process { pid, start_ns } => {
                o[0] = 1;
                o[4..8].copy_from_slice(&pid.to_le_bytes());
                o[8..16].copy_from_slice(&start_ns.to_le_bytes());
            }
            Culprit::Group { uid, comm } => {
                o[0] = 2;
                o[4..8].copy_from_slice(&uid.to_le_bytes());
                o[16..32].copy_from_slice(&comm);
            }
        }
    }
    let check = check64(&[&seq.to_le_bytes(), &out[REPAIR_HEADER_LEN..]]);
    out[16..24].copy_from_slice(&check.to_le_bytes());
    Some(len)
}

/// A validated repair request.
#[derive(Clone, Copy, Debug)]
pub struct Repair<'a> {
    pub seq: u64,
    body: &'a [u8],
}

impl<'a> Repair<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, HealError> {
        if b.len() < REPAIR_HEADER_LEN {
            return Err(HealError::Truncated);
        }
        if le32(b, 0) != REPAIR_MAGIC {
            return Err(HealError::BadMagic);
        }
        if le16(b, 4) != VERSION {
            return Err(HealError::BadVersion);
        }
        let count = le16(b, 6) as usize;
        if count > REPAIR_MAX {
            return Err(HealError::TooMany);
        }
        let body = b.get(REPAIR_HEADER_LEN..REPAIR_HEADER_LEN + count * CULPRIT_LEN).ok_or(HealError::Truncated)?;
        let seq = le64(b, 8);
        if le64(b, 16) != check64(&[&seq.to_le_bytes(), body]) {
            return Err(HealError::BadCheck);
        }
        let valid = |t: &[u8]| match t[0] {
            1 => t[1..4] == [0; 3] && le32(t, 4) != 0 && t[16..32] == [0; 16],
            2 => t[1..4] == [0; 3] && t[8..16] == [0; 8] && t[16] != 0,
            _ => false,
        };
        if !body.chunks_exact(CULPRIT_LEN).all(valid) {
            return Err(HealError::BadEntry);
        }
        Ok(Repair { seq, body })
    }

    pub fn culprits(&self) -> impl Iterator<Item = Culprit> + 'a {
        self.body.chunks_exact(CULPRIT_LEN).map(|t| {
            if t[0] == 1 {
                Culprit::Process { pid: le32(t, 4), start_ns: le64(t, 8) }
            } else {
                Culprit::Group { uid: le32(t, 4), comm: comm_at(t, 16) }
            }
        })
    }
}

/// Why the target refuses to kill a named process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// No such process (it exited, or the pid names another process now).
    Gone,
    /// Init, a kernel thread, or a process protected by configuration.
    Protected,
}

/// The target's own check of a process culprit against what it finds under the pid
/// (`found`: its start time and whether it is protected), before it signals.
pub fn check_process(pid: u32, start_ns: u64, found: Option<(u64, bool)>) -> Result<(), Refusal> {
    match found {
        None => Err(Refusal::Gone),
        Some((start, _)) if start != start_ns => Err(Refusal::Gone),
        Some((_, true)) => Err(Refusal::Protected),
        Some(_) if pid <= 1 => Err(Refusal::Protected),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group(uid: u32, name: &[u8], members: u32, newest: u64, flags: u32) -> Group {
        Group { uid, members, rss_pages: members as u64 * 100, newest_start_ns: newest, flags, comm: comm(name) }
    }

    fn proc(pid: u32, rss: u64, flags: u32) -> Proc {
        Proc { pid, uid: 1000, start_ns: pid as u64 * 1000, rss_pages: rss, flags, comm: comm(b"worker") }
    }

    fn boxed(groups: &[Group], procs: &[Proc]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let n = write_procs(&mut b, 1, groups, procs).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn a_fork_bomb_is_the_largest_unprotected_group_over_the_limit() {
        let b = boxed(
            &[
                group(0, b"kworker/0:1", 900, 5, flag::PROTECTED),
                group(1000, b"lzbomb", 400, 90, 0),
                group(1000, b"bash", 400, 10, 0),
                group(1001, b"sshd", 3, 1, 0),
            ],
            &[],
        );
        let pb = ProcBox::parse(&b).unwrap();
        assert_eq!(pb.groups().count(), 4);
        assert_eq!(fork_bomb(&pb, 100), Some(Culprit::Group { uid: 1000, comm: comm(b"lzbomb") }), "the tie goes to the newest");
        assert_eq!(fork_bomb(&pb, 400), None, "at the limit is not over it");
    }

    #[test]
    fn the_memory_hog_is_the_largest_unprotected_process_over_the_limit() {
        let b = boxed(&[], &[proc(5, 90_000, flag::PROTECTED), proc(10, 50_000, 0), proc(11, 70_000, 0), proc(12, 70_000, 0)]);
        let pb = ProcBox::parse(&b).unwrap();
        assert_eq!(memory_hog(&pb, 60_000), Some(Culprit::Process { pid: 11, start_ns: 11_000 }), "ties go to the lower pid");
        assert_eq!(memory_hog(&pb, 80_000), None);
    }

    #[test]
    fn bad_boxes_are_refused() {
        let b = boxed(&[group(1, b"a", 1, 1, 0)], &[proc(3, 1, 0)]);
        assert_eq!(ProcBox::parse(&b[..b.len() - 1]).unwrap_err(), HealError::Truncated);
        for (at, bit, want) in [
            (0, 1, HealError::BadMagic),
            (4, 2, HealError::BadVersion),
            (6, 1, HealError::BadEntry),
            (PROC_HEADER_LEN + 24, 2, HealError::BadEntry),
            (PROC_HEADER_LEN + ENTRY_LEN + 28, 1, HealError::BadEntry),
            (17, 1, HealError::TooMany),
        ] {
            let mut x = b.clone();
            x[at] ^= bit;
            assert_eq!(ProcBox::parse(&x).unwrap_err(), want, "byte {at}");
        }
        let zero_pid = boxed(&[], &[proc(0, 1, 0)]);
        assert_eq!(ProcBox::parse(&zero_pid).unwrap_err(), HealError::BadEntry);
    }

    #[test]
    fn repair_requests_round_trip_and_bad_ones_are_refused() {
        let ts = [Culprit::Process { pid: 42, start_ns: 7 }, Culprit::Group { uid: 1000, comm: comm(b"lzbomb") }];
        let mut buf = [0u8; 256];
        let n = write_repair(&mut buf, 9, &ts).unwrap();
        let r = Repair::parse(&buf[..n]).unwrap();
        assert_eq!((r.seq, r.culprits().collect::<Vec<_>>()), (9, ts.to_vec()));
        assert_eq!(Repair::parse(&buf[..n - 1]).unwrap_err(), HealError::Truncated);
        let mut torn = buf;
        torn[REPAIR_HEADER_LEN + 4] ^= 1;
        assert_eq!(Repair::parse(&torn[..n]).unwrap_err(), HealError::BadCheck, "a pid changed under the check");
        let mut b = buf;
        b[6] = 200;
        assert_eq!(Repair::parse(&b).unwrap_err(), HealError::TooMany);
        // Well checked but malformed: an unknown kind, a group without a name.
        for bad in [[3u8; CULPRIT_LEN], [0u8; CULPRIT_LEN]] {
            let mut raw = [0u8; REPAIR_HEADER_LEN + CULPRIT_LEN];
            let n = write_repair(&mut raw, 1, &[Culprit::Process { pid: 1, start_ns: 0 }]).unwrap();
            raw[REPAIR_HEADER_LEN..n].copy_from_slice(&bad);
            let check = check64(&[&1u64.to_le_bytes(), &raw[REPAIR_HEADER_LEN..n]]);
            raw[16..24].copy_from_slice(&check.to_le_bytes());
            assert_eq!(Repair::parse(&raw[..n]).unwrap_err(), HealError::BadEntry);
        }
        let mut raw = [0u8; 256];
        let n = write_repair(&mut raw, 1, &[Culprit::Group { uid: 5, comm: [0; COMM_LEN] }]).unwrap();
        assert_eq!(Repair::parse(&raw[..n]).unwrap_err(), HealError::BadEntry, "a group needs a name");
    }

    #[test]
    fn the_target_checks_each_process_again() {
        assert_eq!(check_process(42, 7, Some((7, false))), Ok(()));
        assert_eq!(check_process(42, 7, Some((8, false))), Err(Refusal::Gone), "the pid was reused");
        assert_eq!(check_process(42, 7, None), Err(Refusal::Gone));
        assert_eq!(check_process(42, 7, Some((7, true))), Err(Refusal::Protected));
        assert_eq!(check_process(1, 0, Some((0, false))), Err(Refusal::Protected));
        assert!(Group::protected_uid(0, 1000, false) && !Group::protected_uid(0, 1000, true) && !Group::protected_uid(1000, 1000, false));
        assert_eq!(comm(b"a-name-longer-than-fifteen"), *b"a-name-longer-t\0");
    }

    proptest! {
        /// Whatever a box or a request holds, reading returns, and the policies never
        /// name a protected entry.
        #[test]
        fn fuzz(groups in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>(), any::<bool>()), 0..20),
                procs in proptest::collection::vec((1u32..1000, any::<u64>(), any::<bool>()), 0..20),
                limit in any::<u32>(), bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let gs: Vec<Group> = groups.iter().map(|&(uid, m, t, p)| group(uid, b"g", m, t, if p { flag::PROTECTED } else { 0 })).collect();
            let ps: Vec<Proc> = procs.iter().map(|&(pid, rss, p)| proc(pid, rss, if p { flag::PROTECTED } else { 0 })).collect();
            let b = boxed(&gs, &ps);
            let pb = ProcBox::parse(&b).unwrap();
            if let Some(Culprit::Group { uid, .. }) = fork_bomb(&pb, limit) {
                prop_assert!(gs.iter().any(|g| g.uid == uid && g.flags == 0 && g.members > limit));
            }
            if let Some(Culprit::Process { pid, .. }) = memory_hog(&pb, limit as u64) {
                prop_assert!(ps.iter().any(|p| p.pid == pid && p.flags == 0));
            }
            let _ = ProcBox::parse(&bytes).map(|p| (fork_bomb(&p, limit), memory_hog(&p, 0)));
            let _ = Repair::parse(&bytes).map(|r| r.culprits().count());
        }
    }
}
