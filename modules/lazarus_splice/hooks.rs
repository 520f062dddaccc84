// SPDX-License-Identifier: GPL-2.0
//! The packet path: PRE_ROUTING, before connection tracking.
//!
//! A segment of a frozen pair that carries data, a SYN or a FIN is held (a clone is
//! queued, the original consumed) until the splice is set up or the freeze undone;
//! pure ACKs and RSTs go on to the proxy's sockets. A segment of a spliced pair is
//! rewritten into a segment of the other connection and sent as this host's own
//! output; it never reaches the proxy's sockets. When the proxy told the module where
//! the response ends, client data after the request (the next request) is held
//! instead, for the proxy to route. A resumable splice's response bytes are digested
//! here as they pass. Everything else passes untouched,
//! after one atomic load when nothing is spliced.

use super::lzk::netfilter::{Hook, HookHandler, Verdict};
use super::lzk::proto::flowtab::FlowKey;
use super::lzk::proto::packet::{TcpFlags, TcpOptions};
use super::lzk::proto::splice::{frozen_verdict, Dir, Endpoint, FrozenVerdict, Phase, Plan};
use super::lzk::skb::SkBuff;
use super::{becomes_ready, bump, now_ms, Shared, State, HOLD_MAX};
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::sync::Arc;

/// Before connection tracking, which would judge rewritten segments by the 4-tuple
/// they arrived with.
pub(crate) const PRIO: i32 = bindings::nf_ip_hook_priorities_NF_IP_PRI_RAW;

pub(crate) struct Handler {
    pub(crate) shared: Arc<Shared>,
}

/// What the table says about a segment, decided under its lock.
enum Action {
    Pass,
    Held,
    Drop,
    Forward(Plan),
    Stale,
}

impl HookHandler for Handler {
    fn hook(&self, _hook: Hook, skb: &mut SkBuff<'_>) -> Verdict {
        let s = &*self.shared;
        if s.count.load(Ordering::Relaxed) == 0 {
            return Verdict::Accept;
        }
        let Ok(p) = skb.ipv4_tcp() else {
            return Verdict::Accept;
        };
        let key = FlowKey { client: p.ip.src, client_port: p.tcp.src_port, service: p.ip.dst, service_port: p.tcp.dst_port };
        // Options are parsed outside the lock; a segment whose options do not parse is
        // only a problem if it belongs to a splice.
        let opts = TcpOptions::parse(p.options(skb.head()));
        let now = now_ms();
        let action = s.with_table(|t| {
            let Some(&h) = t.keys.get(&key) else {
                return Action::Pass;
            };
            let Some(e) = t.entries.get_mut(h) else {
                return Action::Pass;
            };
            let action = match &mut e.state {
                State::Frozen(held) => match frozen_verdict(&p) {
                    FrozenVerdict::Pass => Action::Pass,
                    FrozenVerdict::Hold if held.len() >= HOLD_MAX => {
                        bump(&s.stats.hold_overflows);
                        Action::Drop
                    }
                    FrozenVerdict::Hold => match skb.clone_owned() {
                        Some(c) => {
                            held.push_back(c);
                            bump(&s.stats.held);
                            Action::Held
                        }
                        None => Action::Drop,
                    },
                },
                // A SYN on a spliced 4-tuple: the proxy let go of the sockets (it
                // exited) and its port was used for a new connection. The splice is
                // dead; the new connection is not its business.
                State::Spliced(_) if p.tcp.flags.has(TcpFlags::SYN) => Action::Stale,
                State::Spliced(sp) => {
                    let src = Endpoint { addr: p.ip.src, port: p.tcp.src_port };
                    let dst = Endpoint { addr: p.ip.dst, port: p.tcp.dst_port };
                    let (Some(d), Ok(opts)) = (sp.direction(src, dst), opts) else {
                        bump(&s.stats.rewrite_errors);
                        return Action::Drop;
                    };
                    if sp.holds_next_request(d, &p) {
                        // The proxy routes the next request itself, once the
                        // response is done: hold it for the proxy's socket.
                        sp.note_held(&p);
                        e.last_ms = now;
                        let action = if e.next_request.len() >= HOLD_MAX {
                            bump(&s.stats.hold_overflows);
                            Action::Drop
                        } else {
                            match skb.clone_owned() {
                                Some(c) => {
                                    e.next_request.push_back(c);
                                    bump(&s.stats.held);
                                    Action::Held
                                }
                                None => Action::Drop,
                            }
                        };
                        mark_ready(s, becomes_ready(&mut e.ready, &e.next_request, sp.response_done()));
                        return action;
                    }
                    let plan = sp.plan(d, &p, &opts);
                    if d == Dir::FromClient {
                        // An acknowledgment that completes the response of a
                        // connection whose next request waits.
                        mark_ready(s, becomes_ready(&mut e.ready, &e.next_request, sp.response_done()));
                    }
                    if d == Dir::FromBackend && sp.is_resumable() {
                        // Under the lock, so that the digest takes the bytes in the
                        // order the resume point counts them.
                        let at = p.payload_offset();
                        sp.track_response(&p, |off, buf| skb.copy_out(at + off, buf).is_ok());
                    }
                    e.last_ms = now;
                    if e.closed_ms.is_none() && sp.phase() == Phase::Closed {
                        e.closed_ms = Some(now);
                    }
                    Action::Forward(plan)
                }
            };
            if matches!(action, Action::Stale) {
                t.remove(h);
                bump(&s.stats.expired);
            }
            action
        });
        match action {
            Action::Pass | Action::Stale => Verdict::Accept,
            Action::Held => Verdict::Consume,
            Action::Drop => Verdict::Drop,
            Action::Forward(plan) => {
                let ok = skb.rewriter().is_ok_and(|mut rw| plan.apply(&mut rw).is_ok());
                if !ok {
                    bump(&s.stats.rewrite_errors);
                    return Verdict::Drop;
                }
                skb.set_untracked();
                bump(&s.stats.forwarded_segments);
                s.stats.forwarded_bytes.fetch_add(p.payload_len() as u64, Ordering::Relaxed);
                Verdict::SendLocal
            }
        }
    }

    fn send_failed(&self, err: kernel::error::Error) {
        // A full queue drops forwarded traffic the same way; anything else (no
        // route, say) is worth an operator's attention.
        if err.to_errno() == -(bindings::ENOBUFS as i32) {
            bump(&self.shared.stats.send_dropped);
        } else {
            bump(&self.shared.stats.send_errors);
        }
        self.shared.last_send_errno.store(err.to_errno().unsigned_abs(), Ordering::Relaxed);
    }
}

/// Count a splice that just became ready for the proxy to take back.
fn mark_ready(s: &Shared, became_ready: bool) {
    if became_ready {
        s.next_ready.fetch_add(1, Ordering::Relaxed);
    }
}
