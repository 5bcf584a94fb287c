//! Per-topic history of one process: the last messages of each topic that has a history policy,
//! numbered by offsets (1, 2, 3, ... with no gaps) within the topic's epoch, a random name that
//! changes whenever the history is lost (a new process, or the topic's log dropped after its
//! TTL or by the byte cap). A message is kept once, as the shared frame every subscriber gets.
//! Bounded by each topic's size and TTL and by a global byte cap, checked when a message is
//! appended. Shared by the shards behind one lock, held for a few pointer copies. No I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::SharedFrame;

/// Bytes counted per entry on top of its frame (the entry, its slot, its global record).
pub const ENTRY_OVERHEAD: usize = 128;

/// How much of a topic's history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Messages kept (at least 1).
    pub size: usize,
    /// Messages older than this are dropped (None: kept until pushed out by size).
    pub ttl: Option<Duration>,
}

/// Which topics keep a history, and the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// For every topic not matched by a prefix (None: no history).
    pub default: Option<HistoryPolicy>,
    /// By topic prefix; the longest matching prefix wins.
    pub prefixes: Vec<(String, HistoryPolicy)>,
    /// All topics' entries together, in bytes; past it the oldest entries (of any topic) go.
    pub max_bytes: usize,
    /// Messages one recovery may replay; a client further behind is told to reload.
    pub max_recovery: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            default: None,
            prefixes: Vec::new(),
            max_bytes: 64 << 20,
            max_recovery: 1000,
        }
    }
}

impl HistoryConfig {
    pub fn enabled(&self) -> bool {
        self.default.is_some() || !self.prefixes.is_empty()
    }

    /// The policy of `topic`, if it keeps a history.
    pub fn policy(&self, topic: &str) -> Option<HistoryPolicy> {
        self.prefixes
            .iter()
            .filter(|(p, _)| topic.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, pol)| *pol)
            .or(self.default)
    }
}

/// A position in a topic: the last offset seen, in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// Why a client's position could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// The topic keeps no history.
    HistoryOff,
    /// The history the position refers to is gone (restart, TTL, byte cap).
    EpochChanged,
    /// Messages after the position were already dropped, or more than `max_recovery`.
    TooFarBehind,
    /// The offset is past the topic's last one.
    Ahead,
    /// The broker holding the history could not be asked.
    Unavailable,
}

impl NotRecovered {
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecovered::HistoryOff => "history off",
            NotRecovered::EpochChanged => "epoch changed",
            NotRecovered::TooFarBehind => "too far behind",
            NotRecovered::Ahead => "offset ahead of the history",
            NotRecovered::Unavailable => "broker unavailable",
        }
    }

    pub const ALL: [NotRecovered; 5] = [
        NotRecovered::HistoryOff,
        NotRecovered::EpochChanged,
        NotRecovered::TooFarBehind,
        NotRecovered::Ahead,
        NotRecovered::Unavailable,
    ];
}

/// May a client at `since` be replayed a topic whose history is `epoch` up to `head`, whose
/// oldest kept message is `first` (`head + 1` when none is kept)?
pub fn verdict(
    since: &Position,
    epoch: &str,
    head: u64,
    first: u64,
    max_recovery: usize,
) -> Result<(), NotRecovered> {
    if *since.epoch != *epoch {
        Err(NotRecovered::EpochChanged)
    } else if since.offset > head {
        Err(NotRecovered::Ahead)
    } else if since.offset + 1 < first || head - since.offset > max_recovery as u64 {
        Err(NotRecovered::TooFarBehind)
    } else {
        Ok(())
    }
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: SharedFrame,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.frame.bytes().len() + ENTRY_OVERHEAD
    }
}

struct TopicLog {
    epoch: Arc<str>,
    /// The offset of the last message appended.
    head: u64,
    policy: HistoryPolicy,
    entries: VecDeque<Entry>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct HistoryStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub topics: AtomicU64,
    /// Entries dropped by the global byte cap (size and TTL drops are expected).
    pub evicted_by_cap: AtomicU64,
    pub recoveries_ok: AtomicU64,
    pub recoveries_failed: [AtomicU64; 5],
    /// Messages replayed by recoveries.
    pub recovered_messages: AtomicU64,
    /// Offsets a shard had to skip because they were gone before it could deliver them.
    pub gaps: AtomicU64,
}

impl HistoryStats {
    /// Counts a recovery's outcome.
    pub fn count(&self, r: &Replay) {
        match r {
            Replay::Frames(f, _) => {
                self.recoveries_ok.fetch_add(1, Relaxed);
                self.recovered_messages.fetch_add(f.len() as u64, Relaxed);
            }
            Replay::Not(why, _) => {
                let i = NotRecovered::ALL.iter().position(|w| w == why).unwrap_or(0);
                self.recoveries_failed[i].fetch_add(1, Relaxed);
            }
        }
    }
}

/// The history of every topic of this process.
pub struct History {
    cfg: HistoryConfig,
    inner: Mutex<Inner>,
    pub stats: HistoryStats,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<Arc<str>, TopicLog>,
    /// Every entry appended, in order, for the global byte cap: (topic, offset). Records of
    /// entries already dropped by size or TTL are skipped when met, and compacted away.
    order: VecDeque<(Arc<str>, u64)>,
    entries: usize,
    bytes: usize,
}

/// Everything needed to replay a topic from a position.
pub enum Replay {
    /// The messages after the position, in order (maybe none), and the head.
    Frames(Vec<(u64, SharedFrame)>, Position),
    /// Not recoverable; the topic's current position (None when it has no history yet).
    Not(NotRecovered, Option<Position>),
}

impl History {
    pub fn new(cfg: HistoryConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::default(),
            stats: HistoryStats::default(),
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves consistent data (no invariant spans two fields
        // that a panic could split), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a message to `topic` (which must have a policy) and returns its position;
    /// `make` builds the frame knowing it (an envelope carries the offset).
    pub fn append(
        &self,
        topic: &str,
        now: Instant,
        make: impl FnOnce(&Position) -> SharedFrame,
    ) -> Option<(Position, SharedFrame)> {
        let policy = self.cfg.policy(topic)?;
        let mut g = self.lock();
        let inner = &mut *g;
        let key: Arc<str> = match inner.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(topic);
                inner.topics.insert(
                    k.clone(),
                    TopicLog {
                        epoch: new_epoch(),
                        head: 0,
                        policy,
                        entries: VecDeque::new(),
                    },
                );
                k
            }
        };
        let log = inner.topics.get_mut(topic)?;
        let pos = Position {
            epoch: log.epoch.clone(),
            offset: log.head + 1,
        };
        let frame = make(&pos);
        let entry = Entry {
            offset: pos.offset,
            at: now,
            frame: frame.clone(),
        };
        let add = entry.bytes();
        log.head = pos.offset;
        log.entries.push_back(entry);
        inner.entries += 1;
        inner.bytes += add;
        inner.order.push_back((key.clone(), pos.offset));
        // Bounds: the topic's size and TTL, then the global cap.
        let (mut n, mut b) = (0, 0);
        while log.entries.len() > policy.size.max(1) {
            if let Some(e) = log.entries.pop_front() {
                n += 1;
                b += e.bytes();
            }
        }
        expire(log, now, &mut n, &mut b);
        inner.entries -= n;
        inner.bytes -= b;
        self.enforce_cap(inner);
        self.publish_stats(inner);
        Some((pos, frame))
    }

    fn enforce_cap(&self, inner: &mut Inner) {
        while inner.bytes > self.cfg.max_bytes {
            let Some((topic, offset)) = inner.order.pop_front() else {
                break;
            };
            let Some(log) = inner.topics.get_mut(&topic) else {
                continue;
            };
            if log.entries.front().is_some_and(|e| e.offset == offset) {
                if let Some(e) = log.entries.pop_front() {
                    inner.entries -= 1;
                    inner.bytes -= e.bytes();
                    self.stats.evicted_by_cap.fetch_add(1, Relaxed);
                }
            }
            if log.entries.is_empty() {
                // Its history is gone: the next publish starts a new epoch.
                inner.topics.remove(&topic);
            }
        }
        // Records of entries dropped by size or TTL: compact when they outnumber the live.
        if inner.order.len() > 2 * inner.entries + 1024 {
            let topics = &inner.topics;
            inner.order.retain(|(t, o)| {
                topics
                    .get(t)
                    .and_then(|l| l.entries.front())
                    .is_some_and(|e| e.offset <= *o)
            });
        }
    }

    fn publish_stats(&self, inner: &Inner) {
        self.stats.entries.store(inner.entries as u64, Relaxed);
        self.stats.bytes.store(inner.bytes as u64, Relaxed);
        self.stats.topics.store(inner.topics.len() as u64, Relaxed);
    }

    /// Drops entries past their TTL, and the logs left empty (their epoch ends). Called
    /// about once a second.
    pub fn sweep(&self, now: Instant) {
        let mut g = self.lock();
        let inner = &mut *g;
        let (mut n, mut b) = (0, 0);
        inner.topics.retain(|_, log| {
            expire(log, now, &mut n, &mut b);
            !log.entries.is_empty()
        });
        inner.entries -= n;
        inner.bytes -= b;
        self.publish_stats(inner);
    }

    /// The topic's current position (None: no history yet, or history off).
    pub fn head(&self, topic: &str) -> Option<Position> {
        let g = self.lock();
        g.topics.get(topic).map(|l| Position {
            epoch: l.epoch.clone(),
            offset: l.head,
        })
    }

    /// The messages after `since` up to the head, if they are all still there and at most
    /// `max_recovery`.
    pub fn replay(&self, topic: &str, since: &Position, now: Instant) -> Replay {
        let r = self.replay_inner(topic, since, now);
        self.stats.count(&r);
        r
    }

    fn replay_inner(&self, topic: &str, since: &Position, now: Instant) -> Replay {
        if self.cfg.policy(topic).is_none() {
            return Replay::Not(NotRecovered::HistoryOff, None);
        }
        let mut g = self.lock();
        let Some(log) = g.topics.get_mut(topic) else {
            // No history yet: a client that saw nothing ("" at 0) missed nothing.
            return if since.epoch.is_empty() && since.offset == 0 {
                Replay::Frames(
                    Vec::new(),
                    Position {
                        epoch: "".into(),
                        offset: 0,
                    },
                )
            } else {
                Replay::Not(NotRecovered::EpochChanged, None)
            };
        };
        let (mut n, mut b) = (0, 0);
        expire(log, now, &mut n, &mut b);
        let head = Position {
            epoch: log.epoch.clone(),
            offset: log.head,
        };
        let first = log.entries.front().map_or(log.head + 1, |e| e.offset);
        let verdict =
            verdict(since, &log.epoch, log.head, first, self.cfg.max_recovery).map(|()| {
                log.entries
                    .iter()
                    .filter(|e| e.offset > since.offset)
                    .map(|e| (e.offset, e.frame.clone()))
                    .collect()
            });
        g.entries -= n;
        g.bytes -= b;
        match verdict {
            Ok(frames) => Replay::Frames(frames, head),
            Err(why) => Replay::Not(why, Some(head)),
        }
    }

    /// The entries `from..=to` of `topic` in `epoch` that are still there (a shard filling
    /// a gap in what reached it).
    pub fn range(&self, topic: &str, epoch: &str, from: u64, to: u64) -> Vec<(u64, SharedFrame)> {
        let g = self.lock();
        match g.topics.get(topic) {
            Some(log) if *log.epoch == *epoch => log
                .entries
                .iter()
                .filter(|e| e.offset >= from && e.offset <= to)
                .map(|e| (e.offset, e.frame.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn expire(log: &mut TopicLog, now: Instant, n: &mut usize, b: &mut usize) {
    if let Some(ttl) = log.policy.ttl {
        while log
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > ttl)
        {
            if let Some(e) = log.entries.pop_front() {
                *n += 1;
                *b += e.bytes();
            }
        }
    }
}

/// 12 random hex digits.
pub(crate) fn new_epoch() -> Arc<str> {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    r.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OpCode;

    fn cfg(size: usize, ttl: Option<Duration>) -> HistoryConfig {
        HistoryConfig {
            default: Some(HistoryPolicy { size, ttl }),
            ..HistoryConfig::default()
        }
    }

    fn put(h: &History, topic: &str, now: Instant) -> Position {
        h.append(topic, now, |p| {
            SharedFrame::new(OpCode::Text, format!("m{}", p.offset).as_bytes())
        })
        .unwrap()
        .0
    }

    fn offsets(r: &Replay) -> Vec<u64> {
        match r {
            Replay::Frames(f, _) => f.iter().map(|(o, _)| *o).collect(),
            Replay::Not(..) => panic!("not recovered"),
        }
    }

    #[test]
    fn offsets_have_no_gaps_and_replay_is_exact() {
        let h = History::new(cfg(10, None));
        let t0 = Instant::now();
        let p1 = put(&h, "a", t0);
        assert_eq!(p1.offset, 1);
        for _ in 0..4 {
            put(&h, "a", t0);
        }
        put(&h, "b", t0);
        let at3 = Position {
            epoch: p1.epoch.clone(),
            offset: 3,
        };
        let r = h.replay("a", &at3, t0);
        assert_eq!(offsets(&r), vec![4, 5]);
        if let Replay::Frames(f, head) = &r {
            assert_eq!(f[0].1.payload(), b"m4");
            assert_eq!(head.offset, 5);
        }
        let at5 = Position { offset: 5, ..at3 };
        assert!(offsets(&h.replay("a", &at5, t0)).is_empty(), "up to date");
        assert_eq!(h.head("b").unwrap().offset, 1, "offsets are per topic");
        assert_ne!(h.head("b").unwrap().epoch, p1.epoch);
    }

    #[test]
    fn size_ttl_epoch_and_position_errors() {
        let h = History::new(cfg(3, Some(Duration::from_secs(60))));
        let t0 = Instant::now();
        let p = put(&h, "a", t0);
        for _ in 0..5 {
            put(&h, "a", t0);
        }
        let at = |offset| Position {
            epoch: p.epoch.clone(),
            offset,
        };
        // Size 3: 4, 5, 6 are left.
        assert_eq!(offsets(&h.replay("a", &at(3), t0)), vec![4, 5, 6]);
        assert!(matches!(
            h.replay("a", &at(2), t0),
            Replay::Not(NotRecovered::TooFarBehind, Some(_))
        ));
        assert!(matches!(
            h.replay("a", &at(7), t0),
            Replay::Not(NotRecovered::Ahead, _)
        ));
        let other = Position {
            epoch: "elsewhere".into(),
            offset: 5,
        };
        assert!(matches!(
            h.replay("a", &other, t0),
            Replay::Not(NotRecovered::EpochChanged, _)
        ));
        // TTL: a minute later every entry is gone; the sweep drops the log, and the next
        // publish starts a new epoch at offset 1.
        let later = t0 + Duration::from_secs(61);
        assert!(matches!(
            h.replay("a", &at(5), later),
            Replay::Not(NotRecovered::TooFarBehind, _)
        ));
        h.sweep(later);
        assert_eq!(h.stats.entries.load(Relaxed), 0);
        assert!(h.head("a").is_none());
        let q = put(&h, "a", later);
        assert_eq!(q.offset, 1);
        assert_ne!(q.epoch, p.epoch);
        assert!(matches!(
            h.replay("a", &at(6), later),
            Replay::Not(NotRecovered::EpochChanged, _)
        ));
    }

    #[test]
    fn recovery_is_capped() {
        let h = History::new(HistoryConfig {
            max_recovery: 2,
            ..cfg(10, None)
        });
        let t0 = Instant::now();
        let p = put(&h, "a", t0);
        put(&h, "a", t0);
        put(&h, "a", t0);
        let at = |offset| Position {
            epoch: p.epoch.clone(),
            offset,
        };
        assert_eq!(offsets(&h.replay("a", &at(1), t0)), vec![2, 3]);
        assert!(matches!(
            h.replay("a", &at(0), t0),
            Replay::Not(NotRecovered::TooFarBehind, _)
        ));
    }

    #[test]
    fn the_byte_cap_drops_the_oldest_of_any_topic_and_counts_it() {
        // Frames of 2 + 100 bytes: each entry counts 102 + overhead.
        let per = 102 + ENTRY_OVERHEAD;
        let h = History::new(HistoryConfig {
            max_bytes: per * 5,
            ..cfg(100, None)
        });
        let t0 = Instant::now();
        let payload = vec![b'x'; 100];
        for i in 0..8 {
            let topic = if i % 2 == 0 { "a" } else { "b" };
            h.append(topic, t0, |_| SharedFrame::new(OpCode::Binary, &payload));
        }
        assert_eq!(h.stats.entries.load(Relaxed), 5);
        assert_eq!(h.stats.bytes.load(Relaxed) as usize, per * 5);
        assert_eq!(h.stats.evicted_by_cap.load(Relaxed), 3);
        // a had 1,3,5,7 (offsets 1..4), b 2,4,6,8: the three oldest went (a1, b1, a2).
        assert_eq!(h.range("a", &h.head("a").unwrap().epoch, 1, 9).len(), 2);
        assert_eq!(h.range("b", &h.head("b").unwrap().epoch, 1, 9).len(), 3);
    }

    #[test]
    fn prefixes_pick_the_longest() {
        let mut c = cfg(5, None);
        let p = |size| HistoryPolicy { size, ttl: None };
        c.prefixes = vec![("chat.".into(), p(100)), ("chat.vip.".into(), p(1000))];
        assert_eq!(c.policy("chat.vip.x").unwrap().size, 1000);
        assert_eq!(c.policy("chat.x").unwrap().size, 100);
        assert_eq!(c.policy("news").unwrap().size, 5);
        c.default = None;
        assert!(c.policy("news").is_none());
    }
}
