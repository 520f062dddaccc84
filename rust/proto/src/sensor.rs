// SPDX-License-Identifier: GPL-2.0
//! Backdoors' Sensor Box: a page of sensors that a monitor reads remotely (one-sided
//! RDMA READ) without the target's CPU, and the monitor's evaluation of what it read.
//!
//! Each sensor is ⟨ID, class, limit, value⟩:
//! - **progress**: the value must change within `limit` milliseconds (a counter that
//!   stops, such as timer ticks or context switches, means the target is stuck);
//! - **level**: the value must stay at or below `limit` (or at or above it, with
//!   [`flag::AT_LEAST`]), such as the number of tasks or free memory;
//! - **pressure**: the value counts events, which must not grow by more than `limit`
//!   per second (allocation failures, OOM kills).
//!
//! Layout (little-endian, as the target's CPU writes it; the monitor checks the
//! magic to refuse a page of another byte order or format):
//!
//! ```text
//! header   magic u32 "LZSB", version u16, count u16, generation u64
//! sensor   id u32, class u8, flags u8, reserved u16, limit u64, value u64   (24 bytes)
//! ```
//!
//! The target updates a value with one aligned 64-bit store. An RDMA READ is not
//! atomic with the target's stores: a NIC reads a naturally aligned word in one
//! piece in practice, and soft-RoCE copies with `memcpy`, which on x86-64 moves
//! aligned 8-byte words, but neither is promised. A value read while it changed is
//! at worst one implausible sample; the monitor confirms an alarm by reading again
//! before it acts on it. `generation` changes when sensors
//! are added or removed: a reader that sees it change between two reads starts its
//! evaluation of that box afresh.

use super::le::{le16, le32, le64};

/// The header's magic, "LZSB" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LZSB");
/// The layout version.
pub const VERSION: u16 = 1;
/// Header size.
pub const HEADER_LEN: usize = 16;
/// One sensor's size.
pub const SENSOR_LEN: usize = 24;
/// Sensors in one 4 KiB page.
pub const MAX_SENSORS: usize = (4096 - HEADER_LEN) / SENSOR_LEN;

/// Sensor flags.
pub mod flag {
    /// Level sensors: the value must stay at or above the limit, not below it.
    pub const AT_LEAST: u8 = 1;
    /// Every flag this version knows.
    pub const ALL: u8 = AT_LEAST;
}

/// What a sensor's limit means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// The value must change within `limit` ms.
    Progress = 1,
    /// The value must stay on one side of `limit`.
    Level = 2,
    /// The value (an event count) must not grow by more than `limit` per second.
    Pressure = 3,
}

impl Class {
    fn from_u8(v: u8) -> Option<Class> {
        match v {
            1 => Some(Class::Progress),
            2 => Some(Class::Level),
            3 => Some(Class::Pressure),
            _ => None,
        }
    }
}

/// One sensor as read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sensor {
    pub id: u32,
    pub class: Class,
    pub flags: u8,
    pub limit: u64,
    pub value: u64,
}

/// Why a box was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BoxError {
    /// Shorter than its header or than its sensors.
    Truncated,
    /// Not a Sensor Box (or another byte order).
    BadMagic,
    /// A layout version this reader does not know.
    BadVersion,
    /// More sensors than a page holds.
    TooMany,
    /// A sensor of an unknown class, with unknown flags, or reserved bits set.
    BadSensor,
}

/// A validated box borrowed from the bytes read.
#[derive(Clone, Copy, Debug)]
pub struct SensorBox<'a> {
    generation: u64,
    sensors: &'a [u8],
}

impl<'a> SensorBox<'a> {
    /// Check a box read from a target. Every sensor is checked here, so iterating
    /// cannot fail afterwards.
    pub fn parse(b: &'a [u8]) -> Result<Self, BoxError> {
        if b.len() < HEADER_LEN {
            return Err(BoxError::Truncated);
        }
        if le32(b, 0) != MAGIC {
            return Err(BoxError::BadMagic);
        }
        if le16(b, 4) != VERSION {
            return Err(BoxError::BadVersion);
        }
        let count = le16(b, 6) as usize;
        if count > MAX_SENSORS {
            return Err(BoxError::TooMany);
        }
        let end = HEADER_LEN + count * SENSOR_LEN;
        let sensors = b.get(HEADER_LEN..end).ok_or(BoxError::Truncated)?;
        for s in sensors.chunks_exact(SENSOR_LEN) {
            if Class::from_u8(s[4]).is_none() || s[5] & !flag::ALL != 0 || le16(s, 6) != 0 {
                return Err(BoxError::BadSensor);
            }
        }
        Ok(SensorBox { generation: le64(b, 8), sensors })
    }

    /// Changes whenever sensors are added or removed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The sensors, in slot order.
    pub fn sensors(&self) -> impl Iterator<Item = Sensor> + 'a {
        self.sensors.chunks_exact(SENSOR_LEN).map(|s| Sensor {
            id: le32(s, 0),
            // Checked by `parse`; Progress never happens.
            class: Class::from_u8(s[4]).unwrap_or(Class::Progress),
            flags: s[5],
            limit: le64(s, 8),
            value: le64(s, 16),
        })
    }
}

/// Write a box with `sensors` into `out`; its length, or `None` when `out` is too
/// small or there are too many sensors.
pub fn write_box(out: &mut [u8], generation: u64, sensors: &[Sensor]) -> Option<usize> {
    if sensors.len() > MAX_SENSORS {
        return None;
    }
    let len = HEADER_LEN + sensors.len() * SENSOR_LEN;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(sensors.len() as u16).to_le_bytes());
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    for (s, o) in sensors.iter().zip(out[HEADER_LEN..].chunks_exact_mut(SENSOR_LEN)) {
        o[0..4].copy_from_slice(&s.id.to_le_bytes());
        o[4] = s.class as u8;
        o[5] = s.flags;
        o[8..16].copy_from_slice(&s.limit.to_le_bytes());
        o[16..24].copy_from_slice(&s.value.to_le_bytes());
    }
    Some(len)
}

/// What the monitor remembers of one sensor between reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Memory {
    /// The value and when it last changed (progress), or was last read (pressure).
    last: Option<(u64, u64)>,
}

/// The verdict on one sensor at one read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Within its limit.
    Ok,
    /// Not enough history yet (a first read).
    Learning,
    /// Out of its limit: the target (or the part the sensor watches) has failed.
    Alarm,
}

/// Judge sensor `s` read at `now_ms`, with what the monitor remembered of it.
pub fn evaluate(s: &Sensor, mem: &mut Memory, now_ms: u64) -> Verdict {
    match s.class {
        Class::Level => {
            let ok = if s.flags & flag::AT_LEAST != 0 { s.value >= s.limit } else { s.value <= s.limit };
            if ok {
                Verdict::Ok
            } else {
                Verdict::Alarm
            }
        }
        Class::Progress => match mem.last {
            Some((v, _)) if v != s.value => {
                mem.last = Some((s.value, now_ms));
                Verdict::Ok
            }
            Some((_, since)) if now_ms.saturating_sub(since) > s.limit => Verdict::Alarm,
            Some(_) => Verdict::Ok,
            None => {
                mem.last = Some((s.value, now_ms));
                Verdict::Learning
            }
        },
        Class::Pressure => {
            let prev = mem.last.replace((s.value, now_ms));
            match prev {
                None => Verdict::Learning,
                // A counter that went back was reset (the target restarted): start again.
                Some((v, _)) if s.value < v => Verdict::Learning,
                Some((v, at)) => {
                    let dt = now_ms.saturating_sub(at).max(1);
                    // Events per second; a difference too large to scale is beyond
                    // any limit anyway.
                    let rate = (s.value - v).checked_mul(1000).map_or(u64::MAX, |e| e / dt);
                    if rate > s.limit {
                        Verdict::Alarm
                    } else {
                        Verdict::Ok
                    }
                }
            }
        }
    }
}

/// The regions a target tells a monitor about once they are registered (sent over
/// the connection, after the registration, so a monitor never reads a region that
/// is not yet readable):
///
/// ```text
/// table    magic u32 "LZRT", version u16, count u16
/// region   kind u16, reserved u16, len u32, addr u64, rkey u32, reserved u32  (24 bytes)
/// ```
pub mod region {
    use super::{le16, le32, le64};

    /// "LZRT" read as a little-endian u32.
    pub const MAGIC: u32 = u32::from_le_bytes(*b"LZRT");
    pub const VERSION: u16 = 1;
    pub const HEADER_LEN: usize = 8;
    pub const ENTRY_LEN: usize = 24;
    /// Regions one table may list.
    pub const MAX: usize = 8;

    /// What a region holds.
    pub mod kind {
        pub const SENSOR_BOX: u16 = 1;
        /// The process box (`heal`), read when a healing policy acts.
        pub const PROCESS_BOX: u16 = 2;
        /// Where a monitor writes repair requests (`heal`).
        pub const REPAIR: u16 = 3;
    }

    /// One registered region: `len` bytes from the peer's address `addr`, under `rkey`.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
    pub struct Region {
        pub kind: u16,
        pub len: u32,
        pub addr: u64,
        pub rkey: u32,
    }

    /// Write a table; its length, or `None` when `out` is too small or there are
    /// too many regions.
    pub fn write(out: &mut [u8], regions: &[Region]) -> Option<usize> {
        if regions.len() > MAX {
            return None;
        }
        let len = HEADER_LEN + regions.len() * ENTRY_LEN;
        let out = out.get_mut(..len)?;
        out.fill(0);
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&(regions.len() as u16).to_le_bytes());
        for (r, o) in regions.iter().zip(out[HEADER_LEN..].chunks_exact_mut(ENTRY_LEN)) {
            o[0..2].copy_from_slice(&r.kind.to_le_bytes());
            o[4..8].copy_from_slice(&r.len.to_le_bytes());
            o[8..16].copy_from_slice(&r.addr.to_le_bytes());
            o[16..20].copy_from_slice(&r.rkey.to_le_bytes());
        }
        Some(len)
    }

    /// The region of `kind` in a received table, if the table is well-formed and
    /// lists one.
    pub fn find(b: &[u8], want: u16) -> Option<Region> {
        if b.len() < HEADER_LEN || le32(b, 0) != MAGIC || le16(b, 4) != VERSION {
            return None;
        }
        let count = le16(b, 6) as usize;
        if count > MAX {
            return None;
        }
        let body = b.get(HEADER_LEN..HEADER_LEN + count * ENTRY_LEN)?;
        body.chunks_exact(ENTRY_LEN)
            .filter(|e| le16(e, 2) == 0 && le32(e, 20) == 0)
            .map(|e| Region { kind: le16(e, 0), len: le32(e, 4), addr: le64(e, 8), rkey: le32(e, 16) })
            .find(|r| r.kind == want && r.len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sensor(id: u32, class: Class, flags: u8, limit: u64, value: u64) -> Sensor {
        Sensor { id, class, flags, limit, value }
    }

    #[test]
    fn a_box_round_trips() {
        let ss = [sensor(1, Class::Progress, 0, 100, 5), sensor(2, Class::Level, flag::AT_LEAST, 10, 3), sensor(3, Class::Pressure, 0, 2, 9)];
        let mut buf = [0u8; 4096];
        let n = write_box(&mut buf, 7, &ss).unwrap();
        let b = SensorBox::parse(&buf[..n]).unwrap();
        assert_eq!(b.generation(), 7);
        assert_eq!(b.sensors().collect::<Vec<_>>(), ss.to_vec());
        assert_eq!(MAX_SENSORS, 170);
    }

    #[test]
    fn bad_boxes_are_refused() {
        let mut buf = [0u8; 4096];
        let n = write_box(&mut buf, 1, &[sensor(1, Class::Level, 0, 1, 1)]).unwrap();
        assert_eq!(SensorBox::parse(&buf[..n - 1]).unwrap_err(), BoxError::Truncated);
        assert_eq!(SensorBox::parse(&buf[..8]).unwrap_err(), BoxError::Truncated);
        let mut b = buf;
        b[0] ^= 1;
        assert_eq!(SensorBox::parse(&b[..n]).unwrap_err(), BoxError::BadMagic);
        let mut b = buf;
        b[4] = 9;
        assert_eq!(SensorBox::parse(&b[..n]).unwrap_err(), BoxError::BadVersion);
        let mut b = buf;
        b[6..8].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(SensorBox::parse(&b).unwrap_err(), BoxError::TooMany);
        for (at, v) in [(HEADER_LEN + 4, 7u8), (HEADER_LEN + 5, 0x80), (HEADER_LEN + 6, 1)] {
            let mut b = buf;
            b[at] = v;
            assert_eq!(SensorBox::parse(&b[..n]).unwrap_err(), BoxError::BadSensor, "byte {at} = {v}");
        }
    }

    #[test]
    fn progress_must_change_within_its_limit() {
        let mut m = Memory::default();
        let s = |v| sensor(1, Class::Progress, 0, 100, v);
        assert_eq!(evaluate(&s(5), &mut m, 1000), Verdict::Learning);
        assert_eq!(evaluate(&s(5), &mut m, 1100), Verdict::Ok);
        assert_eq!(evaluate(&s(5), &mut m, 1101), Verdict::Alarm);
        assert_eq!(evaluate(&s(6), &mut m, 1150), Verdict::Ok, "moving again clears the alarm");
        assert_eq!(evaluate(&s(6), &mut m, 1250), Verdict::Ok);
    }

    #[test]
    fn level_stays_on_its_side() {
        let mut m = Memory::default();
        assert_eq!(evaluate(&sensor(1, Class::Level, 0, 10, 10), &mut m, 0), Verdict::Ok);
        assert_eq!(evaluate(&sensor(1, Class::Level, 0, 10, 11), &mut m, 0), Verdict::Alarm);
        assert_eq!(evaluate(&sensor(1, Class::Level, flag::AT_LEAST, 10, 9), &mut m, 0), Verdict::Alarm);
        assert_eq!(evaluate(&sensor(1, Class::Level, flag::AT_LEAST, 10, 10), &mut m, 0), Verdict::Ok);
    }

    #[test]
    fn pressure_is_a_rate() {
        let mut m = Memory::default();
        let s = |v| sensor(1, Class::Pressure, 0, 10, v);
        assert_eq!(evaluate(&s(100), &mut m, 0), Verdict::Learning);
        assert_eq!(evaluate(&s(105), &mut m, 500), Verdict::Ok, "10 per second");
        assert_eq!(evaluate(&s(111), &mut m, 1000), Verdict::Alarm, "12 per second");
        assert_eq!(evaluate(&s(3), &mut m, 1100), Verdict::Learning, "a reset counter starts again");
        assert_eq!(evaluate(&s(u64::MAX), &mut m, 1100), Verdict::Alarm, "no overflow");
    }

    #[test]
    fn a_region_table_round_trips_and_bad_ones_find_nothing() {
        use region::*;
        let r = Region { kind: kind::SENSOR_BOX, len: 4096, addr: 0, rkey: 0x1234 };
        let mut buf = [0u8; 64];
        let n = write(&mut buf, &[r]).unwrap();
        assert_eq!(find(&buf[..n], kind::SENSOR_BOX), Some(r));
        assert_eq!(find(&buf[..n], 9), None);
        assert_eq!(find(&buf[..n - 1], kind::SENSOR_BOX), None, "truncated");
        let mut b = buf;
        b[0] ^= 1;
        assert_eq!(find(&b[..n], kind::SENSOR_BOX), None, "magic");
        let mut b = buf;
        b[HEADER_LEN + 2] = 1;
        assert_eq!(find(&b[..n], kind::SENSOR_BOX), None, "reserved bits");
    }

    proptest! {
        /// Whatever a (possibly hostile) target's page holds, parsing returns, and a
        /// box that parses writes back to the same bytes.
        #[test]
        fn fuzz_parse(bytes in proptest::collection::vec(any::<u8>(), 0..512), n in 0usize..8) {
            let mut page = bytes;
            if page.len() >= HEADER_LEN && n > 0 {
                // Often a valid header, so the sensors get exercised too.
                page[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                page[4..6].copy_from_slice(&VERSION.to_le_bytes());
                page[6..8].copy_from_slice(&(n as u16).to_le_bytes());
            }
            if let Ok(b) = SensorBox::parse(&page) {
                let ss: Vec<Sensor> = b.sensors().collect();
                let mut out = [0u8; 4096];
                let k = write_box(&mut out, b.generation(), &ss).unwrap();
                prop_assert_eq!(&out[..k], &page[..k]);
            }
        }

        /// A received table of any bytes is read without panicking.
        #[test]
        fn fuzz_region_table(bytes in proptest::collection::vec(any::<u8>(), 0..300), want in any::<u16>()) {
            let _ = region::find(&bytes, want);
        }

        /// Evaluation never panics, whatever the values and the clock do.
        #[test]
        fn fuzz_evaluate(reads in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), 1u8..=3, 0u8..=1), 1..20)) {
            let mut m = Memory::default();
            for (v, limit, now, class, flags) in reads {
                let class = Class::from_u8(class).unwrap();
                let _ = evaluate(&sensor(1, class, flags, limit, v), &mut m, now);
            }
        }
    }
}
