// SPDX-License-Identifier: GPL-2.0
//! Heartbeats between the primary and the backup of a shadowed service.
//!
//! A heartbeat is one UDP datagram each way per interval. It says who sent it, in
//! which role, whether its output gate is open, how many connections it shadows, and a
//! per-sender counter, so the receiver can tell a fresh beat from a duplicate or a
//! delayed one. Three intervals without a fresh beat mean the peer has failed.
//!
//! Layout (big-endian), 24 bytes:
//!
//! ```text
//!  0  magic "LZHB"
//!  4  version (1)
//!  5  role: 1 primary, 2 backup
//!  6  flags: bit 0 gate open (serving clients), bit 1 fault-tolerant,
//!     bit 2 stepping down (a silenced primary asking its backup to take over)
//!  7  reserved (0)
//!  8  service address (IPv4)
//! 12  service port
//! 14  reserved (0)
//! 16  beat counter
//! 20  connections shadowed or served
//! ```

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"LZHB";
/// Format version.
pub const VERSION: u8 = 1;
/// Encoded size.
pub const BEAT_LEN: usize = 24;
/// Default UDP port of the heartbeat channel.
pub const DEFAULT_PORT: u16 = 7401;
/// Heartbeats missed before the peer is declared failed.
pub const MISSED_LIMIT: u32 = 3;

/// A node's role for one service.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Serves the clients; its output reaches them.
    Primary,
    /// Shadows every connection silently.
    Backup,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Backup => 2,
        }
    }

    fn from_code(c: u8) -> Option<Role> {
        match c {
            1 => Some(Role::Primary),
            2 => Some(Role::Backup),
            _ => None,
        }
    }
}

/// One heartbeat.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Beat {
    /// Sender's role.
    pub role: Role,
    /// Sender's output gate is open.
    pub gate_open: bool,
    /// Sender is fault-tolerant (it has a live peer).
    pub protected: bool,
    /// Sender is a primary stepping down: its output is withheld and it asks the
    /// backup to take over (a planned switchover).
    pub stepping_down: bool,
    /// The service this beat is about.
    pub service: [u8; 4],
    /// Its port.
    pub service_port: u16,
    /// Sender's beat counter.
    pub counter: u32,
    /// Connections the sender holds.
    pub conns: u32,
}

/// Why a datagram is not a heartbeat.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BeatError {
    /// Not `BEAT_LEN` bytes.
    Length,
    /// Wrong magic.
    Magic,
    /// Unknown version.
    Version,
    /// Unknown role or nonzero reserved bits.
    Field,
}

impl core::fmt::Display for BeatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BeatError::Length => "wrong heartbeat length",
            BeatError::Magic => "not a heartbeat",
            BeatError::Version => "unknown heartbeat version",
            BeatError::Field => "invalid heartbeat field",
        })
    }
}

impl Beat {
    /// Encode.
    pub fn encode(&self) -> [u8; BEAT_LEN] {
        let mut b = [0u8; BEAT_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.role.code();
        b[6] = self.gate_open as u8 | (self.protected as u8) << 1 | (self.stepping_down as u8) << 2;
        b[8..12].copy_from_slice(&self.service);
        b[12..14].copy_from_slice(&self.service_port.to_be_bytes());
        b[16..20].copy_from_slice(&self.counter.to_be_bytes());
        b[20..24].copy_from_slice(&self.conns.to_be_bytes());
        b
    }

    /// Decode and validate.
    pub fn decode(b: &[u8]) -> Result<Beat, BeatError> {
        if b.len() != BEAT_LEN {
            return Err(BeatError::Length);
        }
        if b[0..4] != MAGIC {
            return Err(BeatError::Magic);
        }
        if b[4] != VERSION {
            return Err(BeatError::Version);
        }
        let role = Role::from_code(b[5]).ok_or(BeatError::Field)?;
        if b[6] & !7 != 0 || b[7] != 0 || b[14] != 0 || b[15] != 0 {
            return Err(BeatError::Field);
        }
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Ok(Beat {
            role,
            gate_open: b[6] & 1 != 0,
            protected: b[6] & 2 != 0,
            stepping_down: b[6] & 4 != 0,
            service: [b[8], b[9], b[10], b[11]],
            service_port: u16::from_be_bytes([b[12], b[13]]),
            counter: word(16),
            conns: word(20),
        })
    }
}

/// Failure detection from heartbeat arrival times (milliseconds, any monotonic clock).
///
/// # Invariants
///
/// `last_counter` is the counter of the newest beat accepted; beats whose counter is
/// not newer (wrapping order) are duplicates or late and do not count as life.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Detector {
    last_rx_ms: Option<u64>,
    last_counter: Option<u32>,
    failed: bool,
}

/// What a detector tick concluded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerState {
    /// No beat seen yet.
    Unknown,
    /// Beats arrive.
    Alive,
    /// `MISSED_LIMIT` intervals without a fresh beat: reported once.
    JustFailed,
    /// Still failed.
    Failed,
}

impl Detector {
    /// A fresh detector: the peer is unknown until its first beat.
    pub const fn new() -> Self {
        Detector { last_rx_ms: None, last_counter: None, failed: false }
    }

    /// A beat with `counter` arrived at `now_ms`. Returns whether it was fresh.
    pub fn on_beat(&mut self, counter: u32, now_ms: u64) -> bool {
        if let Some(last) = self.last_counter {
            if (counter.wrapping_sub(last) as i32) <= 0 {
                return false;
            }
        }
        self.last_counter = Some(counter);
        self.last_rx_ms = Some(now_ms);
        self.failed = false;
        true
    }

    /// Evaluate at `now_ms` with heartbeat interval `interval_ms`.
    pub fn tick(&mut self, now_ms: u64, interval_ms: u32) -> PeerState {
        let Some(last) = self.last_rx_ms else {
            return PeerState::Unknown;
        };
        if now_ms.saturating_sub(last) <= MISSED_LIMIT as u64 * interval_ms as u64 {
            return PeerState::Alive;
        }
        if self.failed {
            PeerState::Failed
        } else {
            self.failed = true;
            PeerState::JustFailed
        }
    }

    /// Milliseconds since the last fresh beat.
    pub fn silence_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_rx_ms.map(|l| now_ms.saturating_sub(l))
    }

    /// Forget the peer (for example when it is reconfigured).
    pub fn reset(&mut self) {
        *self = Detector::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn beat() -> Beat {
        Beat {
            role: Role::Primary,
            gate_open: true,
            protected: true,
            stepping_down: false,
            service: [10, 77, 0, 100],
            service_port: 8080,
            counter: 7,
            conns: 1000,
        }
    }

    #[test]
    fn round_trip_and_rejects() {
        let b = beat();
        assert_eq!(Beat::decode(&b.encode()), Ok(b));
        let mut e = b.encode();
        e[0] = b'X';
        assert_eq!(Beat::decode(&e), Err(BeatError::Magic));
        let mut e = b.encode();
        e[4] = 2;
        assert_eq!(Beat::decode(&e), Err(BeatError::Version));
        let mut e = b.encode();
        e[5] = 9;
        assert_eq!(Beat::decode(&e), Err(BeatError::Field));
        let mut e = b.encode();
        e[6] = 0x80;
        assert_eq!(Beat::decode(&e), Err(BeatError::Field));
        let mut e = b.encode();
        e[6] = 0x08;
        assert_eq!(Beat::decode(&e), Err(BeatError::Field));
        // Each flag is its own bit.
        let down = Beat { gate_open: false, protected: false, stepping_down: true, ..b };
        assert_eq!(down.encode()[6], 4);
        assert_eq!(Beat::decode(&down.encode()), Ok(down));
        assert_eq!(Beat::decode(&b.encode()[..20]), Err(BeatError::Length));
    }

    #[test]
    fn detector_fails_after_three_intervals_once() {
        let mut d = Detector::new();
        assert_eq!(d.tick(1000, 50), PeerState::Unknown);
        assert!(d.on_beat(1, 1000));
        assert_eq!(d.tick(1150, 50), PeerState::Alive);
        // A replayed or late beat is not life.
        assert!(!d.on_beat(1, 1140));
        assert_eq!(d.tick(1151, 50), PeerState::JustFailed);
        assert_eq!(d.tick(1200, 50), PeerState::Failed);
        assert!(d.on_beat(2, 1210));
        assert_eq!(d.tick(1220, 50), PeerState::Alive);
        // Counters wrap.
        let mut d = Detector::new();
        assert!(d.on_beat(u32::MAX, 0));
        assert!(d.on_beat(0, 1));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Beat::decode(&bytes);
        }

        #[test]
        fn decode_accepts_only_what_encode_makes(mut bytes in proptest::collection::vec(any::<u8>(), BEAT_LEN..=BEAT_LEN)) {
            bytes[0..4].copy_from_slice(&MAGIC);
            bytes[4] = VERSION;
            if let Ok(b) = Beat::decode(&bytes) {
                prop_assert_eq!(b.encode().to_vec(), bytes);
            }
        }
    }
}
