// SPDX-License-Identifier: GPL-2.0
//! The datagram link to the peer node, which carries heartbeats and progress
//! reports. With a cluster key configured every datagram is sealed on the way out
//! and checked on the way in ([`super::lzk::proto::auth`]); without one they pass
//! as they are.
//!
//! Only the heartbeat thread uses a link, so its sequence state needs no lock: it is
//! owned by the thread's loop and passed down by `&mut`.

use super::lzk::errno::EMSGSIZE;
use super::lzk::proto::auth::{Key, Reject, Replay, Sequencer, TRAILER_LEN};
use super::lzk::proto::progress::MAX_LEN;
use super::lzk::sock::{SockAddr, Socket};
use super::{bump, Stats};
use kernel::prelude::*;

/// Largest sealed datagram.
pub(crate) const MAX_DATAGRAM: usize = MAX_LEN + TRAILER_LEN;

/// This node's real-time clock in nanoseconds (sequence numbers and their freshness).
fn real_ns() -> u64 {
    // SAFETY: `ktime_get_with_offset` may be called from any context; TK_OFFS_REAL
    // selects CLOCK_REALTIME.
    let t = unsafe { kernel::bindings::ktime_get_with_offset(kernel::bindings::tk_offsets_TK_OFFS_REAL) };
    t.max(0) as u64
}

pub(crate) struct Link<'a> {
    sock: &'a Socket,
    peer: SockAddr,
    key: Option<Key>,
    /// Configured role codes (`genl_shadow::role`): they do not change at takeover,
    /// so a datagram's tag always names the node that sealed it.
    own_role: u8,
    peer_role: u8,
    sent: Sequencer,
    received: Replay,
}

/// What [`Link::recv`] got.
pub(crate) enum Received {
    /// A message from the peer (authenticated when a key is configured), of this
    /// length at the start of the caller's buffer.
    Peer(usize),
    /// A datagram from another address.
    Stranger,
    /// Refused by the authentication check (already counted).
    Refused,
}

impl<'a> Link<'a> {
    pub(crate) fn new(sock: &'a Socket, peer: SockAddr, key: Option<Key>, own_role: u8, peer_role: u8) -> Self {
        Link { sock, peer, key, own_role, peer_role, sent: Sequencer::default(), received: Replay::default() }
    }

    /// Send the message `msg` to the peer, sealed if a key is configured.
    pub(crate) fn send(&mut self, msg: &[u8]) -> Result {
        let Some(key) = &self.key else {
            return self.sock.send(msg, Some(self.peer)).map(|_| ());
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let out = buf.get_mut(..msg.len()).ok_or_else(EMSGSIZE)?;
        out.copy_from_slice(msg);
        let seq = self.sent.next(real_ns());
        let n = key.seal(&mut buf, msg.len(), self.own_role, seq).ok_or_else(EMSGSIZE)?;
        self.sock.send(&buf[..n], Some(self.peer)).map(|_| ())
    }

    /// Receive one datagram into `buf` (at least [`MAX_DATAGRAM`] + 1 bytes, so that
    /// an oversized one is seen as such) and check it.
    pub(crate) fn recv(&mut self, buf: &mut [u8], stats: &Stats) -> Result<Received> {
        let (n, from) = self.sock.recv(buf)?;
        if !from.is_some_and(|f| f.addr.0 == self.peer.addr.0) {
            return Ok(Received::Stranger);
        }
        let Some(key) = &self.key else {
            return Ok(Received::Peer(n));
        };
        let checked = key
            .open(&buf[..n.min(buf.len())], self.peer_role)
            .and_then(|(msg, seq)| self.received.accept(seq, real_ns()).map(|()| msg.len()));
        match checked {
            Ok(len) => Ok(Received::Peer(len)),
            Err(why) => {
                bump(match why {
                    Reject::Truncated => &stats.auth_truncated,
                    Reject::Forged => &stats.auth_forged,
                    Reject::Replayed => &stats.auth_replayed,
                    Reject::Stale => &stats.auth_stale,
                });
                Ok(Received::Refused)
            }
        }
    }
}
