// SPDX-License-Identifier: GPL-2.0
//! The packet paths of both roles.
//!
//! On the primary:
//! - Ingress (the client-segment device): frames for the service addressed to a
//!   multicast MAC (a multicast-MAC deployment) become this host's, as TCP requires.
//! - PRE_ROUTING: each client segment carrying data or a FIN is kept (a clone) until
//!   the backup's report says its TCP has the bytes ([`super::sync`] releases and
//!   resends them).
//! - LOCAL_OUT: a FIN the backup's program has not produced yet is held, up to
//!   MaxDelayFIN: the segment is consumed and TCP sends it again on its timer (or at
//!   once when the backup reports its FIN). After a step-down (planned switchover)
//!   every segment of the service is withheld.
//! - ARP_OUT: after a step-down, ARP from the service address is withheld.
//!
//! On the backup:
//! - Ingress (the client-segment device): frames for the service that are addressed
//!   to the primary's MAC or to a multicast MAC become this host's, so IP and TCP
//!   accept them; the primary's own segments to clients, when this node sees them
//!   (a hub), are read for their SYN-ACK options, timestamps and acknowledgments.
//! - PRE_ROUTING: client segments are mapped into the backup's spaces (or dropped
//!   while their mapping is unknown, so the backup's TCP never sees the primary's
//!   numbers).
//! - LOCAL_OUT: the backup's own SYN-ACKs are recorded; while the gate is closed all
//!   output from the service address is withheld; after takeover it is mapped into the
//!   primary's spaces.
//! - ARP_OUT: ARP from the service address is withheld while the gate is closed.
//!
//! Rewritten packets are exempted from connection tracking, which would otherwise
//! judge them against the numbers it saw before the rewrite.

use super::lzk::netfilter::{Hook, HookHandler, Verdict};
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::packet::{Ipv4Header, Ipv4Tcp, TcpFlags, TcpOptions};
use super::lzk::proto::progress::{flag, RstVerdict};
use super::lzk::proto::seq::Seq;
use super::lzk::proto::shadow::{ClientSegment, Mapping, Shadow, SynAck};
use super::lzk::skb::SkBuff;
use super::lzk::skbq::SkbQueue;
use super::{bump, now_ms, Conn, Shared};
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::sync::Arc;

/// Hook priorities: before connection tracking, like the core module's redirect.
pub(crate) const PRIO_RAW: i32 = bindings::nf_ip_hook_priorities_NF_IP_PRI_RAW;

/// Client segments held per connection until its offsets are known.
const PENDING_MAX: u32 = 8;

/// Headers copied out at ingress: IPv4 and TCP with all options.
const INGRESS_COPY: usize = 120;

const ETH_P_IP: u16 = bindings::ETH_P_IP as u16;
const PACKET_HOST: u8 = bindings::PACKET_HOST as u8;
const PACKET_OTHERHOST: u8 = bindings::PACKET_OTHERHOST as u8;
const PACKET_MULTICAST: u8 = bindings::PACKET_MULTICAST as u8;

pub(crate) struct Handler {
    pub(crate) shared: Arc<Shared>,
    /// Registered for a backup (it keeps its backup hooks after takeover, to map its
    /// output for the rest of each connection's life).
    pub(crate) backup: bool,
}

fn flags(p: &Ipv4Tcp) -> (bool, bool, bool, bool) {
    let f = p.tcp.flags;
    (f.has(TcpFlags::SYN), f.has(TcpFlags::ACK), f.has(TcpFlags::FIN), f.has(TcpFlags::RST))
}

fn options(head: &[u8], p: &Ipv4Tcp) -> Option<TcpOptions> {
    TcpOptions::parse(head.get(p.tcp_offset() + 20..p.payload_offset())?).ok()
}

impl HookHandler for Handler {
    fn hook(&self, hook: Hook, skb: &mut SkBuff<'_>) -> Verdict {
        let port = self.shared.port.load(Ordering::Acquire) as u16;
        if port == 0 {
            return Verdict::Accept;
        }
        let vip = self.shared.vip.load(Ordering::Relaxed).to_ne_bytes();
        if !self.backup {
            return match hook {
                Hook::Ingress => self.ingress(skb, vip, port),
                Hook::PreRouting => self.keep_for_backup(skb, vip, port),
                Hook::LocalOut if self.silent() => self.silence(skb, vip, port),
                Hook::LocalOut => self.hold_fin(skb, vip, port),
                Hook::ArpOut => self.arp_out(skb, vip),
                _ => Verdict::Accept,
            };
        }
        match hook {
            Hook::Ingress => self.ingress(skb, vip, port),
            Hook::PreRouting => self.from_client(skb, vip, port),
            Hook::LocalOut => self.to_client(skb, vip, port),
            Hook::ArpOut => self.arp_out(skb, vip),
            _ => Verdict::Accept,
        }
    }
}

impl Handler {
    fn gate_open(&self) -> bool {
        self.shared.gate_open.load(Ordering::Acquire)
    }

    /// A primary that stepped down (planned switchover).
    fn silent(&self) -> bool {
        self.shared.silent.load(Ordering::Acquire)
    }

    /// Primary, stepped down: nothing of the service leaves, neither data, ACKs nor
    /// the RSTs of its own connections once the backup serves them.
    fn silence(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        match skb.ipv4_tcp() {
            Ok(p) if p.ip.src == vip && p.tcp.src_port == port => self.swallow(),
            _ => Verdict::Accept,
        }
    }

    /// Frames for the service that were not sent to this host's MAC become this
    /// host's, so that IP and TCP accept them: on the backup, frames to the primary's
    /// MAC (a hub or a mirrored port); on both nodes, frames to a multicast MAC that
    /// the service address resolves to (TCP takes only `PACKET_HOST`). On the backup
    /// the primary's own segments to clients are read too.
    ///
    /// Read-only: the frame may still be shared with packet taps here, so headers are
    /// copied out rather than pulled.
    fn ingress(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        let kind = skb.pkt_type();
        let theirs = self.backup && kind == PACKET_OTHERHOST;
        if skb.protocol() != ETH_P_IP || !(theirs || kind == PACKET_MULTICAST) {
            return Verdict::Accept;
        }
        let mut buf = [0u8; INGRESS_COPY];
        let n = skb.len().min(INGRESS_COPY);
        if skb.copy_out(0, &mut buf[..n]).is_err() {
            return Verdict::Accept;
        }
        let Ok(p) = Ipv4Tcp::parse_headers(&buf[..n], skb.len()) else {
            return Verdict::Accept;
        };
        if p.ip.dst == vip && p.tcp.dst_port == port {
            skb.set_pkt_type(PACKET_HOST);
        } else if theirs && p.ip.src == vip && p.tcp.src_port == port && !self.gate_open() {
            self.observe_primary(&buf[..n], &p, port);
        }
        Verdict::Accept
    }

    /// Primary: keep a clone of a client segment with data or a FIN until the backup
    /// has it.
    fn keep_for_backup(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        if p.ip.dst != vip || p.tcp.dst_port != port {
            return Verdict::Accept;
        }
        let s = &*self.shared;
        bump(&s.stats.client_segments);
        let (syn, ack, _, rst) = flags(&p);
        let key = FlowKey { client: p.ip.src, client_port: p.tcp.src_port, service: vip, service_port: port };
        let now = now_ms();
        let mac = skb.link_source();
        if syn && !ack {
            // A new connection (or a SYN again on the tuple of an old one).
            let fresh = s.retaining();
            let inserted = s.with_table(|t| {
                if t.get(&key).is_some_and(|c| c.finished()) {
                    if let Some(old) = t.remove(&key) {
                        s.unaccount_retained(old.kept.bytes());
                    }
                }
                t.get_or_insert_with(key, Conn::default).map(|c| {
                    c.last_ms = now;
                    c.client_mac = mac;
                    // A connection that begins while the backup is away stays
                    // unprotected: the backup never sees its beginning.
                    c.retention.unprotected = !fresh;
                })
            });
            if let Some(Err(_)) = inserted {
                bump(&s.stats.table_full);
            }
            return Verdict::Accept;
        }
        let seq = p.tcp.seq;
        let end = seq.add(p.seq_len());
        if rst || end == seq || !s.retaining() {
            return Verdict::Accept;
        }
        let limit = s.retain_limit.load(Ordering::Relaxed);
        let kept = s.with_table(|t| {
            let c = t.get_mut(&key)?;
            c.last_ms = now;
            if mac.is_some() {
                c.client_mac = mac;
            }
            if !c.retention.keep(seq, end) {
                return None;
            }
            let Some(mut clone) = skb.clone_owned() else {
                // Out of memory: the backup may miss this segment for good.
                c.retention.unprotected = true;
                c.kept.clear();
                bump(&s.stats.unprotected_conns);
                return None;
            };
            clone.set_tag(seq.0, end.0);
            let len = clone.len() as u64;
            c.kept.push_back(clone);
            c.retention.on_kept(now);
            Some(s.retained_bytes.fetch_add(len, Ordering::Relaxed) + len)
        });
        if let Some(Some(total)) = kept {
            bump(&s.stats.retained_segments);
            if total > limit && !s.overflowed.swap(true, Ordering::Relaxed) {
                // The heartbeat thread frees everything and reports it.
                bump(&s.stats.retention_overflows);
                s.urgent.store(true, Ordering::Relaxed);
            }
        }
        Verdict::Accept
    }

    /// Primary: hold a FIN or RST its backup's program has not produced (MaxDelayFIN).
    fn hold_fin(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        let s = &*self.shared;
        let max_delay = s.max_delay_fin_ms.load(Ordering::Relaxed) as u64;
        if max_delay == 0 || !s.fault_tolerant() {
            return Verdict::Accept;
        }
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        if p.ip.src != vip || p.tcp.src_port != port {
            return Verdict::Accept;
        }
        let key = FlowKey { client: p.ip.dst, client_port: p.tcp.dst_port, service: vip, service_port: port };
        let now = now_ms();
        if p.tcp.flags.has(TcpFlags::RST) {
            return self.hold_rst(skb, &key, now, max_delay);
        }
        if !p.tcp.flags.has(TcpFlags::FIN) {
            return Verdict::Accept;
        }
        let hold = s.with_table(|t| {
            let c = t.get_mut(&key)?;
            // A connection the backup follows (it began while the backup was alive):
            // hold until its report says its program closed too. A short connection
            // may close before the backup's first report on it; that is held as well.
            let backup_fin = c.peer.is_some_and(|p| p.has(flag::FIN_OUT) || p.has(flag::CLOSED) || p.has(flag::RST));
            Some(!c.retention.unprotected && c.fin.hold(now, backup_fin, max_delay))
        });
        if hold == Some(Some(true)) {
            bump(&s.stats.fins_held);
            return Verdict::Consume;
        }
        Verdict::Accept
    }

    /// Primary: an RST its backup has not produced is kept (TCP never sends an RST
    /// again) and sent by the heartbeat thread when the backup agrees or MaxDelayFIN
    /// is up; see `Beater::release_rsts`.
    fn hold_rst(&self, skb: &mut SkBuff<'_>, key: &FlowKey, now: u64, max_delay: u64) -> Verdict {
        let s = &*self.shared;
        let verdict = s.with_table(|t| {
            let c = t.get_mut(key)?;
            // Without the client's link address the RST could not be sent later.
            if c.retention.unprotected || c.client_mac.is_none() {
                return None;
            }
            let backup_rst = c.peer.is_some_and(|p| p.has(flag::RST) || p.has(flag::CLOSED));
            match c.rst.on_rst(now, backup_rst, max_delay) {
                RstVerdict::Pass => None,
                RstVerdict::Duplicate => Some(()),
                RstVerdict::Hold => {
                    let Some(mut clone) = skb.clone_owned() else {
                        // Out of memory: it goes now rather than never.
                        c.rst = Default::default();
                        return None;
                    };
                    clone.drop_route();
                    c.held_rst = Some(clone);
                    s.rsts_holding.fetch_add(1, Ordering::Relaxed);
                    bump(&s.stats.rsts_held);
                    Some(())
                }
            }
        });
        match verdict {
            Some(Some(())) => Verdict::Consume,
            _ => Verdict::Accept,
        }
    }

    /// A segment from the primary to a client, seen on the wire.
    fn observe_primary(&self, head: &[u8], p: &Ipv4Tcp, port: u16) {
        let key = FlowKey { client: p.ip.dst, client_port: p.tcp.dst_port, service: p.ip.src, service_port: port };
        let opts = options(head, p).unwrap_or_default();
        let (syn, ack, fin, rst) = flags(p);
        let now = now_ms();
        let pending = self.shared.with_table(|t| {
            if syn && ack {
                // Receive batching runs this hook for a whole batch of frames before
                // PRE_ROUTING sees any of them, so the primary's SYN-ACK can come
                // before the client's SYN has made an entry: make it here (the
                // SYN-ACK acknowledges the client's ISN + 1).
                let fresh = || Conn { shadow: Shadow::new(p.tcp.ack.sub(1)), last_ms: now, ..Conn::default() };
                if t.get(&key).is_some_and(|c| c.shadow.finished()) {
                    t.remove(&key);
                }
                if let Ok(c) = t.get_or_insert_with(key, fresh) {
                    c.shadow.on_primary_synack(SynAck::new(p.tcp.seq, &opts));
                    return core::mem::take(&mut c.pending);
                }
            } else if let Some(c) = t.get_mut(&key) {
                c.shadow.on_primary_segment(opts.timestamp.map(|t| t.0), ack.then_some(p.tcp.ack), fin, rst);
            }
            SkbQueue::default()
        });
        if let Some(q) = pending {
            reinject(q);
        }
    }

    fn from_client(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        if p.ip.dst != vip || p.tcp.dst_port != port {
            return Verdict::Accept;
        }
        bump(&self.shared.stats.client_segments);
        let Some(opts) = options(skb.head(), &p) else {
            bump(&self.shared.stats.parse_errors);
            return Verdict::Drop;
        };
        let (syn, ack, fin, rst) = flags(&p);
        let key = FlowKey { client: p.ip.src, client_port: p.tcp.src_port, service: vip, service_port: port };
        let seg = ClientSegment {
            seq: p.tcp.seq,
            seq_len: p.seq_len(),
            ack: ack.then_some(p.tcp.ack),
            tsecr: opts.timestamp.map(|t| t.1),
            fin,
            rst,
        };
        let gate_open = self.gate_open();
        let now = now_ms();
        // Decide under the lock; rewrite after releasing it.
        let decision = self.shared.with_table(|t| {
            if syn && !ack {
                let fresh = || Conn {
                    shadow: if gate_open { Shadow::native(p.tcp.seq) } else { Shadow::new(p.tcp.seq) },
                    last_ms: now,
                    ..Conn::default()
                };
                // A SYN on the tuple of a finished connection starts a new one.
                if t.get(&key).is_some_and(|c| c.shadow.finished()) {
                    t.remove(&key);
                }
                return match t.get_or_insert_with(key, fresh) {
                    Ok(c) => {
                        c.last_ms = now;
                        Ok(None)
                    }
                    Err(_) => Err(Refusal::Full),
                };
            }
            let Some(c) = t.get_mut(&key) else {
                return Err(Refusal::Unknown);
            };
            c.last_ms = now;
            let Some(m) = c.shadow.on_client_segment(&seg) else {
                if !gate_open && c.pending.len() < PENDING_MAX {
                    if let Some(clone) = skb.clone_owned() {
                        c.pending.push_back(clone);
                        return Err(Refusal::Held);
                    }
                }
                return Err(Refusal::Unknown);
            };
            let (ack, clamped) = c.shadow.inbound_ack(p.tcp.ack);
            Ok(Some(Inbound { map: m, ack, clamped, ts: opts.timestamp.map(|(v, e)| (v, c.shadow.inbound_tsecr(e))) }))
        });
        let s = &self.shared.stats;
        match decision {
            None => Verdict::Accept,
            Some(Ok(None)) => {
                skb.set_untracked();
                Verdict::Accept
            }
            Some(Ok(Some(i))) => {
                if i.clamped {
                    bump(&s.acks_clamped);
                }
                if (i.map != Mapping::IDENTITY || i.clamped) && rewrite_in(skb, &i).is_err() {
                    bump(&s.parse_errors);
                    return Verdict::Drop;
                }
                bump(&s.translated_in);
                skb.set_untracked();
                Verdict::Accept
            }
            Some(Err(Refusal::Full)) => {
                bump(&s.table_full);
                Verdict::Accept
            }
            Some(Err(Refusal::Held)) => Verdict::Drop,
            Some(Err(Refusal::Unknown)) => {
                // Not shadowed (it began before this node shadowed the service, its
                // SYN was missed, or its offsets are not known yet). The backup's TCP
                // must not see the primary's numbers; after takeover the client's
                // segment reaches our TCP, which resets a connection it never had.
                if gate_open {
                    return Verdict::Accept;
                }
                bump(&s.unmapped);
                Verdict::Drop
            }
        }
    }

    fn to_client(&self, skb: &mut SkBuff<'_>, vip: [u8; 4], port: u16) -> Verdict {
        if skb.pull(20).is_err() {
            return Verdict::Accept;
        }
        let Ok(ip) = Ipv4Header::parse_headers(skb.head(), skb.len()) else {
            return Verdict::Accept;
        };
        if ip.src != vip {
            return Verdict::Accept;
        }
        let gate_open = self.gate_open();
        let p = match skb.ipv4_tcp() {
            Ok(p) if p.tcp.src_port == port => p,
            // Not the service: nothing from the service address leaves a backup.
            _ => return if gate_open { Verdict::Accept } else { self.swallow() },
        };
        let opts = options(skb.head(), &p).unwrap_or_default();
        let (syn, ack, fin, rst) = flags(&p);
        let key = FlowKey { client: p.ip.dst, client_port: p.tcp.dst_port, service: vip, service_port: port };
        let mut pending = SkbQueue::default();
        let out = self.shared.with_table(|t| {
            let c = t.get_mut(&key)?;
            c.own_rst |= rst;
            if syn && ack {
                c.shadow.on_backup_synack(SynAck::new(p.tcp.seq, &opts));
                pending = core::mem::take(&mut c.pending);
            } else {
                c.shadow.on_backup_segment(p.tcp.seq, p.seq_len());
            }
            if !gate_open {
                return None;
            }
            c.shadow.on_backup_close(fin, rst);
            let m = c.shadow.mapping()?;
            let ts = opts.timestamp.map(|(v, e)| (c.shadow.outbound_tsval(v), e));
            Some((m, ts, c.shadow.outbound_window(p.tcp.window)))
        });
        reinject(pending);
        if !gate_open {
            if fin || rst {
                // The primary may be holding its FIN or RST for ours: report it soon.
                self.shared.urgent.store(true, Ordering::Relaxed);
            }
            return self.swallow();
        }
        if let Some(Some((m, ts, window))) = out {
            if rewrite_out(skb, m, ts, window, p.tcp.window).is_err() {
                bump(&self.shared.stats.parse_errors);
                return Verdict::Drop;
            }
            bump(&self.shared.stats.translated_out);
            skb.set_untracked();
        }
        Verdict::Accept
    }

    fn swallow(&self) -> Verdict {
        bump(&self.shared.stats.swallowed);
        Verdict::Consume
    }

    /// ARP from the service address (answers and announcements) stays in while the
    /// gate is closed, so clients keep resolving the address to the primary; and on a
    /// primary that stepped down, so that they resolve it to the backup.
    fn arp_out(&self, skb: &mut SkBuff<'_>, vip: [u8; 4]) -> Verdict {
        if self.gate_open() && !self.silent() {
            return Verdict::Accept;
        }
        // Ethernet/IPv4 ARP: hardware length 6, protocol length 4, sender IP at 14.
        // The link-layer header is already pushed here, so start at the ARP header.
        let mut h = [0u8; 18];
        if skb.copy_out(skb.network_offset(), &mut h).is_err() || h[4] != 6 || h[5] != 4 {
            return Verdict::Accept;
        }
        if h[14..18] == vip {
            bump(&self.shared.stats.arp_withheld);
            return Verdict::Drop;
        }
        Verdict::Accept
    }
}

/// Send held client segments through the stack again (outside the table lock: they
/// come back to PRE_ROUTING, which takes it).
fn reinject(mut q: SkbQueue) {
    while let Some(skb) = q.pop_front() {
        let _ = skb.reinject();
    }
}

/// How to rewrite a client segment for the backup's TCP.
struct Inbound {
    map: Mapping,
    /// Acknowledgment number in the backup's space (clamped to its send edge).
    ack: Seq,
    clamped: bool,
    /// TSval and mapped TSecr, when the segment carries timestamps.
    ts: Option<(u32, u32)>,
}

/// Why a client segment is not mapped.
enum Refusal {
    /// No shadow, or its offsets are not known yet.
    Unknown,
    /// Offsets not known yet; a copy is held to go through again once they are.
    Held,
    /// The table had no room for a new connection.
    Full,
}

/// Client → backup: acknowledgment and SACK blocks into the backup's sequence space,
/// TSecr into its clock.
fn rewrite_in(skb: &mut SkBuff<'_>, i: &Inbound) -> Result<(), ()> {
    let mut rw = skb.rewriter().map_err(drop)?;
    let p = *rw.parsed();
    if p.tcp.flags.has(TcpFlags::ACK) {
        rw.set_ack(i.ack);
    }
    let m = i.map;
    rw.map_sack(|s: Seq| m.seq.unapply(s)).map_err(drop)?;
    if let Some((tsval, tsecr)) = i.ts {
        rw.set_timestamp(tsval, tsecr).map_err(drop)?;
    }
    Ok(())
}

/// Backup → client after takeover: sequence number into the primary's space, TSval
/// into its clock, window rescaled if the two sides' shifts differ.
fn rewrite_out(skb: &mut SkBuff<'_>, m: Mapping, ts: Option<(u32, u32)>, window: u16, old_window: u16) -> Result<(), ()> {
    let mut rw = skb.rewriter().map_err(drop)?;
    let p = *rw.parsed();
    rw.set_seq(m.seq.apply(p.tcp.seq));
    if let Some((tsval, tsecr)) = ts {
        rw.set_timestamp(tsval, tsecr).map_err(drop)?;
    }
    if window != old_window {
        rw.set_window(window);
    }
    Ok(())
}
