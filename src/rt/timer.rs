//! A hashed timing wheel of connection deadlines, one per shard: O(1) arm, and cancel by
//! forgetting (a fired entry re-checks its connection). Owns only (slab key, generation) pairs
//! and ticks; must not know what a deadline means.

/// A tick is this many milliseconds.
pub const TICK_MS: u64 = 20;
const SLOTS: usize = 2048; // 2048 * 20 ms = 41 s per turn of the wheel

/// No entry is armed.
pub const NOT_ARMED: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub gen: u32,
}

pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    /// The next tick to process.
    next: u32,
    len: usize,
}

impl Default for TimerWheel {
    fn default() -> Self {
        Self::new(0)
    }
}

impl TimerWheel {
    pub fn new(now: u32) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next: now,
            len: 0,
        }
    }

    /// Entries in the wheel, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms an entry for `tick` (clamped to the next tick to process). Returns the tick used,
    /// which the owner keeps to recognise this entry when it fires.
    pub fn arm(&mut self, entry: Entry, tick: u32) -> u32 {
        let tick = tick.max(self.next);
        self.slots[tick as usize % SLOTS].push(entry);
        self.len += 1;
        tick
    }

    /// The next tick the wheel will process.
    pub fn next_tick(&self) -> u32 {
        self.next
    }

    /// Processes every tick up to and including `now`. `fire(entry, tick)` returns what to do
    /// with the entry: `Some(t)` re-arms it for tick `t` (a later turn of the wheel, or a
    /// deadline that moved), `None` drops it.
    pub fn advance(&mut self, now: u32, mut fire: impl FnMut(Entry, u32) -> Option<u32>) {
        // Past a whole turn behind, each slot is visited once: entries re-check their own time.
        if now >= self.next && (now - self.next) as usize >= SLOTS {
            self.next = now - (SLOTS as u32 - 1);
        }
        let mut batch = Vec::new();
        while self.next <= now {
            let tick = self.next;
            let slot = tick as usize % SLOTS;
            std::mem::swap(&mut batch, &mut self.slots[slot]);
            self.len -= batch.len();
            self.next = tick + 1;
            for entry in batch.drain(..) {
                if let Some(t) = fire(entry, tick) {
                    // Re-arming for the tick being processed lands on the next one.
                    let t = t.max(self.next);
                    self.slots[t as usize % SLOTS].push(entry);
                    self.len += 1;
                }
            }
            // Give the slot its allocation back if it is still empty.
            if self.slots[slot].is_empty() {
                std::mem::swap(&mut batch, &mut self.slots[slot]);
            }
        }
    }
}

/// Do two ticks share a slot (so an entry armed for `a` is visited at `b`)?
pub const fn same_slot(a: u32, b: u32) -> bool {
    a as usize % SLOTS == b as usize % SLOTS
}

/// What an owner does with an entry visited at `tick`, given the tick its live entry was armed
/// for (`armed_at`, `NOT_ARMED` when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Its deadline has come: fire it (and forget `armed_at`: no entry is live any more).
    Due,
    /// Its live entry is for a later turn of the wheel: keep it for that tick.
    Later(u32),
    /// A leftover of an entry that was re-armed elsewhere: drop it.
    Stale,
}

/// Decides an entry's fate. Due is `armed_at <= tick`, not `==`: after a stall longer than a
/// turn of the wheel, `advance` visits each slot once at a tick later than the ones its
/// entries were armed for, and those are overdue, not stale.
pub const fn visit(armed_at: u32, tick: u32) -> Visit {
    if armed_at == NOT_ARMED || !same_slot(armed_at, tick) {
        Visit::Stale
    } else if armed_at <= tick {
        Visit::Due
    } else {
        Visit::Later(armed_at)
    }
}

/// Converts milliseconds to whole ticks, rounding up.
pub const fn ms_to_ticks(ms: u64) -> u32 {
    ms.div_ceil(TICK_MS) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_its_tick_and_across_turns() {
        let mut w = TimerWheel::new(0);
        let a = Entry { key: 1, gen: 0 };
        let b = Entry { key: 2, gen: 0 };
        w.arm(a, 5);
        w.arm(b, 5 + SLOTS as u32);
        let mut fired = Vec::new();
        w.advance(4, |e, t| {
            fired.push((e.key, t));
            None
        });
        assert!(fired.is_empty());
        // Owner logic: an entry whose deadline is in a later turn is re-armed.
        let deadline = |e: Entry| if e.key == 1 { 5 } else { 5 + SLOTS as u32 };
        w.advance(5, |e, t| {
            if deadline(e) > t {
                Some(deadline(e))
            } else {
                fired.push((e.key, t));
                None
            }
        });
        assert_eq!(fired, vec![(1, 5)]);
        w.advance(5 + SLOTS as u32, |e, t| {
            if deadline(e) > t {
                Some(deadline(e))
            } else {
                fired.push((e.key, t));
                None
            }
        });
        assert_eq!(fired, vec![(1, 5), (2, 5 + SLOTS as u32)]);
        assert!(w.is_empty());
    }

    #[test]
    fn arming_in_the_past_fires_next() {
        let mut w = TimerWheel::new(10);
        w.advance(20, |_, _| None);
        let t = w.arm(Entry { key: 7, gen: 1 }, 3);
        assert_eq!(t, 21);
        let mut n = 0;
        w.advance(21, |_, _| {
            n += 1;
            None
        });
        assert_eq!(n, 1);
    }

    /// An owner of connections as the shard is: each keeps the tick of its live entry and
    /// re-arms (only) when it has none or the new deadline is earlier.
    struct Owner {
        armed_at: Vec<u32>,
        fired: Vec<(u32, u32)>,
    }

    impl Owner {
        fn arm(&mut self, w: &mut TimerWheel, key: u32, due: u32) {
            let a = &mut self.armed_at[key as usize];
            if *a == NOT_ARMED || due < *a {
                *a = w.arm(Entry { key, gen: 0 }, due);
            }
        }

        fn advance(&mut self, w: &mut TimerWheel, now: u32) {
            let mut due = Vec::new();
            w.advance(now, |e, tick| {
                let a = &mut self.armed_at[e.key as usize];
                match visit(*a, tick) {
                    Visit::Due => {
                        *a = NOT_ARMED;
                        due.push(e.key);
                        None
                    }
                    Visit::Later(t) => Some(t),
                    Visit::Stale => None,
                }
            });
            for k in due {
                self.fired.push((k, now));
            }
        }
    }

    #[test]
    fn deadlines_survive_a_stall_longer_than_a_turn() {
        // Deadlines spread over the wheel, then the loop stalls for 2.5 turns (a 100 s pause
        // of the process): every one fires once when it wakes, and can be armed again.
        let mut w = TimerWheel::new(0);
        let n = 300u32;
        let mut o = Owner {
            armed_at: vec![NOT_ARMED; n as usize],
            fired: Vec::new(),
        };
        for k in 0..n {
            o.arm(&mut w, k, 1 + k * 13);
        }
        // One far in the future, past the stall: it must not fire early.
        let far = 6 * SLOTS as u32;
        o.armed_at.push(NOT_ARMED);
        o.arm(&mut w, n, far);
        o.advance(&mut w, 10);
        let early = o.fired.len();
        assert_eq!(
            early, 1,
            "only the deadline at tick 1 (0 * 13 + 1) by tick 10"
        );
        let wake = 5 * SLOTS as u32 / 2;
        o.advance(&mut w, wake);
        assert_eq!(o.fired.len(), n as usize, "every overdue deadline fired");
        assert!(o.fired[early..].iter().all(|&(_, t)| t == wake));
        assert!(o.armed_at[..n as usize].iter().all(|&a| a == NOT_ARMED));
        assert_eq!(w.len(), 1, "the far one is still armed");
        // They are armed again and fire again.
        for k in 0..n {
            o.arm(&mut w, k, wake + 50);
        }
        o.advance(&mut w, wake + 50);
        assert_eq!(o.fired.len(), 2 * n as usize);
        o.advance(&mut w, far - 1);
        assert_eq!(o.fired.len(), 2 * n as usize);
        o.advance(&mut w, far);
        assert_eq!(o.fired.last(), Some(&(n, far)));
        assert!(w.is_empty());
    }

    #[test]
    fn a_stale_entry_is_dropped_and_a_later_turn_kept() {
        assert_eq!(visit(NOT_ARMED, 5), Visit::Stale);
        assert_eq!(visit(7, 5), Visit::Stale);
        assert_eq!(visit(5, 5), Visit::Due);
        assert_eq!(visit(5, 5 + SLOTS as u32), Visit::Due);
        assert_eq!(visit(5 + SLOTS as u32, 5), Visit::Later(5 + SLOTS as u32));
    }

    #[test]
    fn far_behind_visits_every_slot_once() {
        let mut w = TimerWheel::new(0);
        for k in 0..100 {
            w.arm(Entry { key: k, gen: 0 }, k * 37);
        }
        let mut n = 0;
        w.advance(1_000_000, |_, _| {
            n += 1;
            None
        });
        assert_eq!(n, 100);
        assert!(w.is_empty());
    }
}
