// SPDX-License-Identifier: GPL-2.0
//! Backdoors' remote OS locking: a monitor freezes a target's protected kernel
//! paths with RDMA atomics on one lock word, for diagnosis and recovery, and a hung
//! monitor cannot wedge the target.
//!
//! The scheme is the thesis's second variant (a blocking flag and drained entry
//! counters), which needs nothing from the target's CPU while the monitor acquires:
//!
//! 1. The monitor compare-and-swaps the word from free to `Blocking{epoch}`.
//! 2. A protected path on the target counts itself in (its class's counter), then
//!    reads the word: free (or a word the target broke, below), it goes on;
//!    blocking or held, it counts itself out and waits, off-CPU, until the word is
//!    free again ([`Gate::entry`]).
//! 3. The monitor reads the counters until every one is zero: no protected path
//!    runs, none will start. It then swaps `Blocking` for `Held` (same epoch) and
//!    works; the target is quiescent in what the lock protects.
//! 4. The monitor releases with a swap back to free, from the exact word it set:
//!    a stale monitor (one whose hold was broken) cannot release another's hold.
//!
//! Time limits on both sides:
//! - the monitor gives up if the counters do not drain within its drain limit (a
//!   path stuck inside), releasing what it set;
//! - the target breaks a hold older than its hold limit ([`Gate::entry`] returns
//!   [`Entry::Break`]): it stores the word's value in its own *broken* word, counts
//!   the break, and goes on; a lock word equal to the broken word counts as free.
//!   Once the monitor releases, or the limit passes, the target makes progress.
//!
//! Each word has one kind of writer: the lock word only monitors (RDMA atomics),
//! the broken word only the target (plain stores, read by monitors with RDMA READ).
//! An RDMA atomic is atomic only against other RDMA atomics on the same device
//! (soft-RoCE does a load, compare and store under a lock of its own), so a target
//! CPU that compare-and-swapped the lock word itself could lose to a monitor's
//! atomic. A monitor that finds the lock word set reads the broken word; when the two
//! are equal it acquires by compare-and-swap from that value instead of from free.
//!
//! Word layout (u64): bits 0–1 state (0 free, 1 blocking, 2 held), bits 2–17 the
//! holder (a monitor's node id), bits 18–63 the epoch (a monitor's own counter,
//! never 0 for a set word). Free is the word 0.

/// The lock's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Free,
    /// A monitor asked for the lock: no new protected path starts.
    Blocking,
    /// The protected paths drained: the monitor holds the lock.
    Held,
}

/// A decoded lock word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Word {
    pub state: State,
    pub holder: u16,
    pub epoch: u64,
}

/// Largest epoch the word holds.
pub const EPOCH_MAX: u64 = (1 << 46) - 1;

impl Word {
    pub const FREE: u64 = 0;

    /// The word's value.
    pub fn encode(&self) -> u64 {
        match self.state {
            State::Free => Self::FREE,
            s => (self.epoch & EPOCH_MAX) << 18 | (self.holder as u64) << 2 | if s == State::Blocking { 1 } else { 2 },
        }
    }

    /// A word as read; `None` for a value no party writes (state 3, or a set word
    /// with epoch 0, or free with bits set).
    pub fn decode(v: u64) -> Option<Word> {
        let holder = (v >> 2 & 0xffff) as u16;
        let epoch = v >> 18;
        let state = match v & 3 {
            0 if v == 0 => State::Free,
            1 if epoch != 0 => State::Blocking,
            2 if epoch != 0 => State::Held,
            _ => return None,
        };
        Some(Word { state, holder, epoch })
    }
}

/// What a protected path does on entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    /// Go on (it stays counted in until it leaves).
    Proceed,
    /// Count out and wait; ask again later.
    Wait,
    /// The hold is older than the limit, or the word holds a value no monitor
    /// writes: store `word` in the broken word, and go on.
    Break { word: u64 },
}

/// The target's side: when it first saw the current set word, to time holds. One
/// per lock word, shared by the protected paths under a lock of the target's (only
/// paths that found the word set consult it: the free case needs one load).
///
/// # Invariants
///
/// `seen` names the word value and the target's clock when that value was first
/// read; it is replaced whenever a different value is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Gate {
    seen: Option<(u64, u64)>,
}

impl Gate {
    /// A protected path read the lock word `word` at `now_ms` (after counting
    /// itself in); `broken` is the target's broken word. `hold_limit_ms` bounds how
    /// long one value of the lock word may keep paths waiting.
    pub fn entry(&mut self, word: u64, broken: u64, now_ms: u64, hold_limit_ms: u64) -> Entry {
        if word == Word::FREE || word == broken {
            self.seen = None;
            return Entry::Proceed;
        }
        if Word::decode(word).is_none() {
            return Entry::Break { word };
        }
        let since = match self.seen {
            Some((v, t)) if v == word => t,
            _ => {
                self.seen = Some((word, now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= hold_limit_ms {
            Entry::Break { word }
        } else {
            Entry::Wait
        }
    }
}

/// The monitor's side of one acquisition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Monitor {
    Idle,
    /// The compare-and-swap `from` → blocking was posted.
    Requesting { from: u64, word: u64, since_ms: u64 },
    /// Blocking is set: waiting for the counters to drain.
    Draining { word: u64, since_ms: u64 },
    /// The compare-and-swap blocking → held was posted.
    Taking { word: u64 },
    Held { word: u64 },
    /// The compare-and-swap back to free was posted.
    Releasing { word: u64 },
}

/// What the monitor posts next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Compare-and-swap the lock word.
    Cas { compare: u64, swap: u64 },
    /// Read the entry counters.
    ReadCounters,
    Nothing,
}

/// How an acquisition ended, when it did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The lock is held.
    Acquired,
    /// The lock word holds `word` (another monitor holds or asks for the lock,
    /// or the target broke a hold: compare `word` with the broken word).
    Busy { holder: u16, word: u64 },
    /// A protected path did not leave within the drain limit; the request was
    /// withdrawn.
    DrainTimeout,
    /// Another monitor took the lock after the target broke this one's hold (it
    /// took longer than the target's hold limit).
    Broken,
    /// Released.
    Released,
}

impl Monitor {
    /// Start acquiring as `holder` with a fresh `epoch` (1 ..= [`EPOCH_MAX`]), from
    /// the lock word's value `from`: free, or the target's broken word when the lock
    /// word was found equal to it.
    pub fn acquire(holder: u16, epoch: u64, from: u64, now_ms: u64) -> (Monitor, Op) {
        let word = Word { state: State::Blocking, holder, epoch: epoch.clamp(1, EPOCH_MAX) }.encode();
        (Monitor::Requesting { from, word, since_ms: now_ms }, Op::Cas { compare: from, swap: word })
    }

    /// A compare-and-swap completed; `old` is the value the word had.
    pub fn on_cas(self, old: u64, now_ms: u64) -> (Monitor, Op, Option<Outcome>) {
        match self {
            Monitor::Requesting { from, word, .. } if old == from => (Monitor::Draining { word, since_ms: now_ms }, Op::ReadCounters, None),
            Monitor::Requesting { .. } => {
                let holder = Word::decode(old).map_or(0, |w| w.holder);
                (Monitor::Idle, Op::Nothing, Some(Outcome::Busy { holder, word: old }))
            }
            Monitor::Taking { word } if old == word => {
                let held = held_of(word);
                (Monitor::Held { word: held }, Op::Nothing, Some(Outcome::Acquired))
            }
            Monitor::Taking { .. } => (Monitor::Idle, Op::Nothing, Some(Outcome::Broken)),
            Monitor::Releasing { word } if old == word => (Monitor::Idle, Op::Nothing, Some(Outcome::Released)),
            Monitor::Releasing { .. } => (Monitor::Idle, Op::Nothing, Some(Outcome::Broken)),
            other => (other, Op::Nothing, None),
        }
    }

    /// The counters were read: `busy` protected paths are inside.
    pub fn on_counters(self, busy: u64, now_ms: u64, drain_limit_ms: u64) -> (Monitor, Op, Option<Outcome>) {
        match self {
            Monitor::Draining { word, .. } if busy == 0 => (Monitor::Taking { word }, Op::Cas { compare: word, swap: held_of(word) }, None),
            Monitor::Draining { word, since_ms } if now_ms.saturating_sub(since_ms) >= drain_limit_ms => {
                (Monitor::Releasing { word }, Op::Cas { compare: word, swap: Word::FREE }, Some(Outcome::DrainTimeout))
            }
            Monitor::Draining { .. } => (self, Op::ReadCounters, None),
            other => (other, Op::Nothing, None),
        }
    }

    /// Let go of a held lock.
    pub fn release(self) -> (Monitor, Op) {
        match self {
            Monitor::Held { word } => (Monitor::Releasing { word }, Op::Cas { compare: word, swap: Word::FREE }),
            other => (other, Op::Nothing),
        }
    }
}

fn held_of(blocking: u64) -> u64 {
    Word::decode(blocking).map_or(Word::FREE, |w| Word { state: State::Held, ..w }.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_round_trip_and_odd_values_are_refused() {
        for w in [
            Word { state: State::Blocking, holder: 7, epoch: 1 },
            Word { state: State::Held, holder: u16::MAX, epoch: EPOCH_MAX },
        ] {
            assert_eq!(Word::decode(w.encode()), Some(w));
        }
        assert_eq!(Word::decode(0).map(|w| w.state), Some(State::Free));
        for bad in [3u64, 1, 2, 4, 0xff << 2] {
            assert_eq!(Word::decode(bad), None, "{bad:#x}");
        }
    }

    /// A target simulated with the lock word (written by monitors only), its
    /// broken word and its counters; one step at a time.
    struct Target {
        word: u64,
        broken: u64,
        inside: u64,
        gate: Gate,
        breaks: u32,
    }

    impl Target {
        fn new(inside: u64) -> Self {
            Target { word: 0, broken: 0, inside, gate: Gate::default(), breaks: 0 }
        }

        /// The NIC's compare-and-swap.
        fn cas(&mut self, compare: u64, swap: u64) -> u64 {
            let old = self.word;
            if old == compare {
                self.word = swap;
            }
            old
        }

        /// A protected path tries to enter: true when it got in.
        fn enter(&mut self, now: u64, limit: u64) -> bool {
            self.inside += 1;
            match self.gate.entry(self.word, self.broken, now, limit) {
                Entry::Proceed => true,
                Entry::Wait => {
                    self.inside -= 1;
                    false
                }
                Entry::Break { word } => {
                    self.breaks += 1;
                    self.broken = word;
                    true
                }
            }
        }
    }

    fn run(m: Monitor, op: Op, t: &mut Target, now: u64, drain_limit: u64) -> (Monitor, Option<Outcome>) {
        let (mut m, mut op, mut out) = (m, op, None);
        for _ in 0..4 {
            let (n, next, o) = match op {
                Op::Cas { compare, swap } => {
                    let old = t.cas(compare, swap);
                    m.on_cas(old, now)
                }
                Op::ReadCounters => m.on_counters(t.inside, now, drain_limit),
                Op::Nothing => break,
            };
            // Keep the first outcome: a drain timeout is followed by its release.
            out = out.or(o);
            m = n;
            op = next;
            if matches!(op, Op::ReadCounters) && t.inside > 0 {
                break;
            }
        }
        (m, out)
    }

    /// A monitor's whole acquisition as `holder`: from free, or from the broken word
    /// when the lock word equals it.
    fn acquire(t: &mut Target, holder: u16, epoch: u64, now: u64) -> (Monitor, Option<Outcome>) {
        let (m, op) = Monitor::acquire(holder, epoch, Word::FREE, now);
        match run(m, op, t, now, 500) {
            (_, Some(Outcome::Busy { word, .. })) if word == t.broken => {
                let (m, op) = Monitor::acquire(holder, epoch, word, now);
                run(m, op, t, now, 500)
            }
            other => other,
        }
    }

    #[test]
    fn the_monitor_waits_for_paths_inside_and_new_ones_wait_for_it() {
        let mut t = Target::new(1);
        let (m, out) = acquire(&mut t, 3, 10, 0);
        assert!(matches!(m, Monitor::Draining { .. }) && out.is_none(), "one path inside");
        assert!(!t.enter(1, 1000), "a new path waits");
        t.inside -= 1; // the one inside leaves
        let (m, out) = run(m, Op::ReadCounters, &mut t, 2, 500);
        assert_eq!(out, Some(Outcome::Acquired));
        assert_eq!(Word::decode(t.word).map(|w| (w.state, w.holder, w.epoch)), Some((State::Held, 3, 10)));
        assert!(!t.enter(3, 1000), "paths wait while it is held");
        // A second monitor is told who has it.
        let (_, out) = acquire(&mut t, 4, 1, 3);
        assert!(matches!(out, Some(Outcome::Busy { holder: 3, .. })), "{out:?}");
        let (m, op) = m.release();
        assert_eq!(run(m, op, &mut t, 4, 500).1, Some(Outcome::Released));
        assert!(t.enter(5, 1000), "the target goes on once released");
        assert_eq!(t.breaks, 0);
    }

    #[test]
    fn a_path_stuck_inside_makes_the_monitor_give_up_and_withdraw() {
        let mut t = Target::new(1);
        let (m, _) = acquire(&mut t, 3, 10, 0);
        let (m, out) = run(m, Op::ReadCounters, &mut t, 499, 500);
        assert!(out.is_none());
        let (m, out) = run(m, Op::ReadCounters, &mut t, 500, 500);
        assert_eq!((m, out), (Monitor::Idle, Some(Outcome::DrainTimeout)));
        assert_eq!(t.word, Word::FREE, "the request was withdrawn");
    }

    #[test]
    fn a_hung_monitor_cannot_wedge_the_target_and_cannot_release_a_later_hold() {
        let mut t = Target::new(0);
        let (stale, out) = acquire(&mut t, 3, 10, 0);
        assert_eq!(out, Some(Outcome::Acquired));
        // The monitor hangs. Paths wait up to the hold limit, then break the hold;
        // the target never writes the lock word.
        assert!(!t.enter(10, 1000));
        assert!(!t.enter(1009, 1000));
        let held = t.word;
        assert!(t.enter(1010, 1000));
        assert_eq!((t.breaks, t.broken, t.word), (1, held, held));
        t.inside -= 1; // and leaves
        assert!(t.enter(1011, 1000), "a broken word counts as free");
        t.inside -= 1;
        // Another monitor finds the word equal to the broken one and takes it from there.
        let (_, out) = acquire(&mut t, 4, 1, 2000);
        assert_eq!(out, Some(Outcome::Acquired));
        assert!(!t.enter(2001, 1000), "the new hold stands on the target");
        // The stale monitor's release fails and says so.
        let (stale, op) = stale.release();
        assert_eq!(run(stale, op, &mut t, 2001, 500).1, Some(Outcome::Broken));
        assert_eq!(Word::decode(t.word).map(|w| w.holder), Some(4), "the second hold stands");
    }

    #[test]
    fn a_word_no_monitor_writes_is_taken_for_broken() {
        let mut t = Target { word: 3, ..Target::new(0) };
        assert!(t.enter(0, 1000));
        assert_eq!((t.broken, t.breaks), (3, 1));
        t.inside -= 1;
        let (_, out) = acquire(&mut t, 4, 1, 1);
        assert_eq!(out, Some(Outcome::Acquired), "a monitor takes it from there");
    }

    proptest! {
        /// Whatever the word holds and the clock does, a path is never kept out
        /// longer than the hold limit of one value of the word, and never gets in
        /// while a well-formed word is set, not broken and younger than the limit.
        #[test]
        fn the_gate_is_bounded(steps in proptest::collection::vec((any::<u64>(), 0u64..50, any::<bool>()), 1..40)) {
            let mut g = Gate::default();
            let mut now = 0u64;
            let mut word = 0u64;
            let mut broken = 0u64;
            let mut set_at = 0u64;
            for (v, dt, change) in steps {
                now += dt;
                if change && v != word {
                    word = v;
                    set_at = now;
                }
                match g.entry(word, broken, now, 100) {
                    Entry::Proceed => prop_assert!(word == 0 || word == broken),
                    Entry::Wait => prop_assert!(now - set_at < 100 && Word::decode(word).is_some()),
                    Entry::Break { word: w } => {
                        prop_assert_eq!(w, word);
                        prop_assert!(now - set_at >= 100 || Word::decode(word).is_none());
                        broken = w;
                    }
                }
            }
        }
    }
}
