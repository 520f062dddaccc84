// SPDX-License-Identifier: GPL-2.0
//! Rate limiting for log lines that the network or a peer can trigger at will (a
//! flapping link, many connections lagging at once): a burst per window, then
//! silence, and the next line printed says how many were left out.

use core::fmt;

/// One kind of log line's budget.
///
/// # Invariants
///
/// `count <= burst` within the window that began at `start`; `suppressed` counts the
/// lines refused since the last one printed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogLimit {
    window_ms: u64,
    burst: u32,
    start: Option<u64>,
    count: u32,
    suppressed: u32,
}

/// What to do with one line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gate {
    /// Print it, noting the lines left out before it.
    Print(Suppressed),
    /// Leave it out (it is counted).
    Suppress,
}

/// Lines left out before the one printed; displays as nothing when none, else as
/// " (N similar lines suppressed)".
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Suppressed(pub u32);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

impl LogLimit {
    /// At most `burst` lines per `window_ms`.
    pub const fn new(window_ms: u64, burst: u32) -> Self {
        LogLimit { window_ms, burst, start: None, count: 0, suppressed: 0 }
    }

    /// A line is due at `now_ms` (any monotonic clock).
    pub fn check(&mut self, now_ms: u64) -> Gate {
        match self.start {
            Some(s) if now_ms.saturating_sub(s) < self.window_ms => {}
            _ => {
                self.start = Some(now_ms);
                self.count = 0;
            }
        }
        if self.count < self.burst {
            self.count += 1;
            let s = Suppressed(self.suppressed);
            self.suppressed = 0;
            Gate::Print(s)
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Gate::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn burst_then_silence_then_a_count() {
        let mut l = LogLimit::new(1000, 2);
        assert_eq!(l.check(0), Gate::Print(Suppressed(0)));
        assert_eq!(l.check(10), Gate::Print(Suppressed(0)));
        assert_eq!(l.check(20), Gate::Suppress);
        assert_eq!(l.check(999), Gate::Suppress);
        // A new window: the first line says what was left out.
        assert_eq!(l.check(1000), Gate::Print(Suppressed(2)));
        assert_eq!(l.check(1001), Gate::Print(Suppressed(0)));
        assert_eq!(l.check(1002), Gate::Suppress);
    }

    #[test]
    fn a_clock_going_backwards_stays_in_the_window() {
        let mut l = LogLimit::new(1000, 1);
        assert_eq!(l.check(5000), Gate::Print(Suppressed(0)));
        assert_eq!(l.check(5001), Gate::Suppress);
        // saturating_sub makes an earlier time look like the same window: still limited.
        assert_eq!(l.check(4000), Gate::Suppress);
        assert_eq!(l.check(6000), Gate::Print(Suppressed(2)));
    }

    #[test]
    fn suppressed_displays_only_when_some() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(3).to_string(), " (3 similar lines suppressed)");
    }

    #[test]
    fn a_zero_burst_prints_nothing() {
        let mut l = LogLimit::new(10, 0);
        assert_eq!(l.check(0), Gate::Suppress);
        assert_eq!(l.check(100), Gate::Suppress);
    }
}
