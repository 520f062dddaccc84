// SPDX-License-Identifier: GPL-2.0
//! Node-to-node channel messages. For now the channel carries a liveness probe that
//! measures the round trip between two nodes' kernels over UDP or TCP; heartbeats and
//! log records will share its framing.
//!
//! Frame (big-endian, 16 bytes):
//!
//! ```text
//! 0      4    5     6         8              16
//! | "LZCH" | ver | kind | reserved | nonce (u64) |
//! ```

/// Magic at the start of every frame.
pub const MAGIC: [u8; 4] = *b"LZCH";
/// Frame format version.
pub const VERSION: u8 = 1;
/// Size of a probe frame.
pub const PROBE_LEN: usize = 16;
/// Default UDP and TCP port of the channel.
pub const DEFAULT_PORT: u16 = 7400;

/// Kind of a probe frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Asks the peer to answer.
    Request,
    /// The peer's answer, echoing the nonce.
    Reply,
}

/// A probe frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Request or reply.
    pub kind: ProbeKind,
    /// Chosen by the requester, echoed by the replier.
    pub nonce: u64,
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter or longer than a probe.
    BadLength,
    /// Wrong magic.
    BadMagic,
    /// Unsupported version.
    BadVersion,
    /// Unknown kind or non-zero reserved bytes.
    BadKind,
}

impl Probe {
    /// Encode into a fixed-size frame.
    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut b = [0u8; PROBE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = match self.kind {
            ProbeKind::Request => 1,
            ProbeKind::Reply => 2,
        };
        b[8..16].copy_from_slice(&self.nonce.to_be_bytes());
        b
    }

    /// Decode a frame; anything but an exact, well-formed probe is rejected.
    pub fn decode(b: &[u8]) -> Result<Probe, FrameError> {
        if b.len() != PROBE_LEN {
            return Err(FrameError::BadLength);
        }
        if b[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if b[4] != VERSION {
            return Err(FrameError::BadVersion);
        }
        let kind = match (b[5], b[6], b[7]) {
            (1, 0, 0) => ProbeKind::Request,
            (2, 0, 0) => ProbeKind::Reply,
            _ => return Err(FrameError::BadKind),
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[8..16]);
        Ok(Probe { kind, nonce: u64::from_be_bytes(n) })
    }

    /// The reply to this request.
    pub fn reply(&self) -> Probe {
        Probe { kind: ProbeKind::Reply, nonce: self.nonce }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_each_defect() {
        let good = Probe { kind: ProbeKind::Request, nonce: 42 }.encode();
        assert_eq!(Probe::decode(&good[..15]), Err(FrameError::BadLength));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Probe::decode(&b), Err(FrameError::BadMagic));
        let mut b = good;
        b[4] = 9;
        assert_eq!(Probe::decode(&b), Err(FrameError::BadVersion));
        let mut b = good;
        b[5] = 3;
        assert_eq!(Probe::decode(&b), Err(FrameError::BadKind));
        let mut b = good;
        b[7] = 1;
        assert_eq!(Probe::decode(&b), Err(FrameError::BadKind));
    }

    proptest! {
        #[test]
        fn roundtrip(nonce: u64, req: bool) {
            let p = Probe { kind: if req { ProbeKind::Request } else { ProbeKind::Reply }, nonce };
            prop_assert_eq!(Probe::decode(&p.encode()), Ok(p));
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Probe::decode(&data) {
                prop_assert_eq!(&p.encode()[..], &data[..]);
            }
        }
    }
}
