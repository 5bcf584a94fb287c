//! One shard's side of publish/subscribe: its topic registry and the fan-out of publishes.
//! In-process, a publish is encoded once, posted to every shard (all woken at once),
//! delivered to each shard's subscribers and the counts gathered at the origin. With Redis, a
//! publish goes to the broker thread, which PUBLISHes it; what Redis sends back on a topic the
//! node subscribed to is encoded once there and posted to the shards that have subscribers.
//! Reaches connections only through `ShardPort`; must not know about sockets.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::history::{History, HistoryConfig, Position, Replay};
use super::redis::{self, RedisConfig, RedisHandle};
use super::registry::{Registry, SubscribeError, Subscriptions};
use crate::common::{ConnId, Delivery, SharedFrame};
use crate::proto::OpCode;

/// Makes the frame subscribers get from a published message: its topic, its place in the
/// topic's history (if it keeps one), opcode and payload. Called once per message per process
/// (the app's envelope is made here).
pub type Framer = Arc<dyn Fn(&str, Option<&Position>, OpCode, &[u8]) -> SharedFrame + Send + Sync>;

/// What a shard lends the hub for one call: its connections and its links to the others.
pub trait ShardPort {
    fn index(&self) -> u16;
    fn shards(&self) -> usize;
    /// Queues a shared frame on one of this shard's connections.
    fn deliver(&mut self, id: ConnId, frame: &SharedFrame) -> Delivery;
    /// Queues a text message (an app's answer) on one of this shard's connections.
    fn send_text(&mut self, id: ConnId, text: &str) -> bool;
    /// Posts to a shard (woken at the end of the turn, or at `wake_posted`).
    fn post(&mut self, shard: u16, msg: HubMsg);
    /// Wakes the shards posted to so far.
    fn wake_posted(&mut self);
}

/// How a thread outside the shards (the broker's) reaches them.
pub trait Remote: Send + 'static {
    fn shards(&self) -> usize;
    /// Queues without waking; false if the shard is gone.
    fn post(&self, shard: u16, msg: HubMsg) -> bool;
    fn wake(&self, shard: u16);
}

/// What shards (and the broker thread) send a shard's hub.
pub enum HubMsg {
    /// Deliver to this shard's subscribers of `topic`; with `gather`, tell that shard how
    /// many with `Count`.
    Deliver {
        topic: Arc<str>,
        frame: SharedFrame,
        /// Its place in the topic's history, if the topic keeps one.
        pos: Option<Position>,
        gather: Option<(u16, u64)>,
    },
    Count {
        id: u64,
        count: u64,
    },
    /// The broker's answer to publish `id` of this shard.
    Published {
        id: u64,
        result: Result<u64, PublishError>,
    },
    /// The broker read what subscriber `id` missed of `topic` (or, `plain`, only the
    /// topic's position for a subscribe without one).
    Replayed {
        id: ConnId,
        topic: Arc<str>,
        plain: bool,
        result: Replay,
    },
}

/// Where publishes go.
#[derive(Debug, Clone, Default)]
pub enum BrokerConfig {
    /// This process only.
    #[default]
    Local,
    /// Redis pub/sub, shared by every node that uses the same server and channel prefix.
    Redis(RedisConfig),
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The broker is down or did not answer in time: the message was not delivered (or, if
    /// the connection broke after it was sent, maybe delivered; it is not retried).
    Unavailable,
    /// The broker answered with an error.
    Refused(String),
    /// More bytes wait for the broker than its stated limit.
    Overloaded,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Unavailable => f.write_str("broker unavailable"),
            PublishError::Refused(e) => write!(f, "broker refused the publish: {e}"),
            PublishError::Overloaded => f.write_str("broker overloaded"),
        }
    }
}

/// How far an accepted publish reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// In-process: subscribers it was queued for, across every shard.
    Subscribers(u64),
    /// Through Redis: nodes subscribed to the topic when Redis got it.
    Nodes(u64),
}

/// A publish's outcome, for the app to answer its publisher with.
pub struct Done<R> {
    pub reply: R,
    pub topic: Arc<str>,
    pub result: Result<Reach, PublishError>,
}

/// Counters of the fan-out, shared by every shard's hub (bumped per publish per shard).
#[derive(Default)]
pub struct HubStats {
    /// Publishes accepted by this node.
    pub publishes: AtomicU64,
    /// Publishes refused (broker unavailable, refused, overloaded).
    pub publishes_refused: AtomicU64,
    /// Frames queued on subscribers.
    pub deliveries: AtomicU64,
    /// Deliveries not queued: they did not fit under the subscriber's queue limit (policies
    /// pause and drop-oldest).
    pub dropped: AtomicU64,
    /// Subscribers closed because a delivery did not fit (policy disconnect).
    pub slow_closed: AtomicU64,
}

/// The broker's state, as every thread sees it (the Redis thread writes it).
#[derive(Default)]
pub struct BrokerStatus {
    pub up: AtomicBool,
    pub reconnects: AtomicU64,
    pub publishes_sent: AtomicU64,
    pub publishes_failed: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub subscribed_topics: AtomicU64,
    /// Offsets of topics with history the node could not read back after a gap.
    pub history_gaps: AtomicU64,
    /// Publish round trips (write to reply), by `RTT_BUCKETS_US`.
    pub rtt_buckets: [AtomicU64; RTT_BUCKETS_US.len()],
    pub rtt_count: AtomicU64,
    pub rtt_sum_us: AtomicU64,
    pub last_error: Mutex<String>,
}

/// Upper bounds of the broker round-trip histogram, in microseconds.
pub const RTT_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl BrokerStatus {
    pub fn record_rtt(&self, us: u64) {
        if let Some(i) = RTT_BUCKETS_US.iter().position(|&b| us <= b) {
            self.rtt_buckets[i].fetch_add(1, Relaxed);
        }
        self.rtt_count.fetch_add(1, Relaxed);
        self.rtt_sum_us.fetch_add(us, Relaxed);
    }
}

#[derive(Clone)]
enum Broker {
    Local,
    /// Configured; the thread starts with `Hub::start`.
    RedisPending(RedisConfig),
    Redis(RedisHandle),
}

struct Queued<R> {
    reply: R,
    topic: Arc<str>,
    what: Outbound,
    pos: Option<Position>,
}

/// A topic with history as this shard delivers it: the last offset it delivered, and the
/// subscribers being recovered, who skip offsets up to their replay's end.
struct Stream {
    epoch: Arc<str>,
    last: u64,
    held: Vec<(ConnId, u64)>,
}

/// A subscriber waiting for its replay (done at the turn's end, before any live message
/// reaches it).
struct Recovery {
    id: ConnId,
    topic: Arc<str>,
    since: Position,
}

/// The answer to a subscribe with a position (or, `Subscribed`, without one to a topic whose
/// history is in Redis: its position comes from there).
pub enum Recovered {
    Yes {
        head: Position,
        messages: usize,
    },
    No {
        reason: &'static str,
        head: Option<Position>,
    },
    Subscribed {
        head: Option<Position>,
    },
}

/// When a subscribe is answered.
pub enum Ack {
    /// Now, with the topic's position if it keeps a history.
    Now(Option<Position>),
    /// At the turn's end or when the broker answered (`Recovered`).
    Later,
}

enum Outbound {
    Frame(SharedFrame),
    /// A whole PUBLISH command for the broker thread.
    Command(Vec<u8>),
}

struct Waiting<R> {
    reply: R,
    topic: Arc<str>,
    remaining: usize,
    total: u64,
}

/// One shard's topics and fan-out. `R` is what the app needs to answer a publisher.
pub struct Hub<R> {
    registry: Registry,
    broker: Broker,
    stats: Arc<HubStats>,
    status: Arc<BrokerStatus>,
    queued: Vec<Queued<R>>,
    waiting: HashMap<u64, Waiting<R>>,
    next_id: u64,
    done: Vec<Done<R>>,
    /// This shard's index (learnt from the first subscriber's id).
    shard: u16,
    /// The process's per-topic history (in-process broker only).
    history: Option<Arc<History>>,
    /// The history lives in Redis (the local store stays empty; it keeps the settings and
    /// counters).
    remote_history: bool,
    framer: Framer,
    streams: HashMap<Arc<str>, Stream>,
    /// Scratch for `deliver_to`: the held subscribers an offset skips, sorted.
    skip: Vec<ConnId>,
    recoveries: Vec<Recovery>,
    last_sweep: Option<Instant>,
    /// Interest was sent to the broker this turn: wake it at the turn's end.
    broker_told: bool,
}

impl<R> Clone for Hub<R> {
    /// A clone is another shard's hub: the same broker and counters, its own (empty) topics
    /// and pending work.
    fn clone(&self) -> Self {
        Self {
            registry: Registry::default(),
            broker: self.broker.clone(),
            stats: self.stats.clone(),
            status: self.status.clone(),
            queued: Vec::new(),
            waiting: HashMap::new(),
            next_id: 0,
            done: Vec::new(),
            shard: 0,
            broker_told: false,
            history: self.history.clone(),
            remote_history: self.remote_history,
            framer: self.framer.clone(),
            streams: HashMap::new(),
            skip: Vec::new(),
            recoveries: Vec::new(),
            last_sweep: None,
        }
    }
}

impl<R> Hub<R> {
    pub fn new(broker: BrokerConfig, history: HistoryConfig, framer: Framer) -> Self {
        let status = BrokerStatus::default();
        let remote_history = history.enabled() && matches!(broker, BrokerConfig::Redis(_));
        let broker = match broker {
            BrokerConfig::Redis(mut c) if remote_history => {
                c.history = Some(history.clone());
                BrokerConfig::Redis(c)
            }
            b => b,
        };
        let history = history.enabled().then(|| Arc::new(History::new(history)));
        status
            .up
            .store(matches!(broker, BrokerConfig::Local), Relaxed);
        Self {
            registry: Registry::default(),
            broker: match broker {
                BrokerConfig::Local => Broker::Local,
                BrokerConfig::Redis(c) => Broker::RedisPending(c),
            },
            stats: Arc::default(),
            status: Arc::new(status),
            queued: Vec::new(),
            waiting: HashMap::new(),
            next_id: 0,
            done: Vec::new(),
            shard: 0,
            broker_told: false,
            history,
            remote_history,
            framer,
            streams: HashMap::new(),
            skip: Vec::new(),
            recoveries: Vec::new(),
            last_sweep: None,
        }
    }

    /// The history, when some topics keep one.
    pub fn history(&self) -> Option<&History> {
        self.history.as_deref()
    }

    /// The current position of `topic`, if it keeps a history (epoch "" and offset 0 before
    /// its first message).
    pub fn position(&self, topic: &str) -> Option<Position> {
        if self.remote_history {
            return None; // in Redis: the first delivery says it
        }
        let h = self.history.as_ref()?;
        h.config().policy(topic)?;
        Some(h.head(topic).unwrap_or(Position {
            epoch: "".into(),
            offset: 0,
        }))
    }

    /// Starts the broker's thread, if it has one. Call once, before the hub is cloned for
    /// the shards.
    pub fn start(&mut self, remote: Box<dyn Remote>) -> io::Result<()> {
        if let Broker::RedisPending(cfg) = &self.broker {
            let handle = redis::spawn(
                cfg.clone(),
                remote,
                self.status.clone(),
                self.framer.clone(),
            )?;
            self.broker = Broker::Redis(handle);
        }
        Ok(())
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// None in-process; the Redis broker's state otherwise.
    pub fn broker_status(&self) -> Option<&BrokerStatus> {
        match self.broker {
            Broker::Local => None,
            _ => Some(&self.status),
        }
    }

    /// The broker's address, for logs and errors (None in-process).
    pub fn broker_url(&self) -> Option<String> {
        match &self.broker {
            Broker::Local => None,
            Broker::RedisPending(c) => Some(c.display()),
            Broker::Redis(h) => Some(h.url()),
        }
    }

    /// Subscribes connection `id` to `topic`; `Ok(false)` if it already was.
    pub fn subscribe(
        &mut self,
        subs: &mut Subscriptions,
        topic: &str,
        id: ConnId,
        max_per_conn: usize,
    ) -> Result<bool, SubscribeError> {
        self.shard = id.shard;
        let r = self.registry.subscribe(subs, topic, id, max_per_conn);
        self.tell_broker();
        r
    }

    /// Subscribes `id` to `topic` and replays what it missed since `since` at the turn's end
    /// (`take_recovered` then says how it went); until then no live message reaches it, so
    /// the replay and the live stream meet with no gap and no duplicate. `Ok(false)`: it was
    /// already subscribed, and nothing is replayed.
    pub fn subscribe_since(
        &mut self,
        subs: &mut Subscriptions,
        topic: &str,
        id: ConnId,
        max_per_conn: usize,
        since: Position,
    ) -> Result<bool, SubscribeError> {
        let new = self.subscribe(subs, topic, id, max_per_conn)?;
        if new {
            match (self.hold_for_replay(topic, id), &self.broker) {
                (Some(t), Broker::Redis(h)) => {
                    h.replay(id.shard, id, t, Some(since));
                    self.broker_told = true;
                }
                // In-process, or no history for this topic (answered "history off"): at the
                // turn's end, in order.
                (t, _) => self.recoveries.push(Recovery {
                    id,
                    topic: t.unwrap_or_else(|| Arc::from(topic)),
                    since,
                }),
            }
        }
        Ok(new)
    }

    /// Subscribes `id` to `topic` without a position. With the history in Redis, the topic's
    /// position is read from there and the answer comes later (no live message reaches the
    /// subscriber before it); otherwise now.
    pub fn subscribe_acked(
        &mut self,
        subs: &mut Subscriptions,
        topic: &str,
        id: ConnId,
        max_per_conn: usize,
    ) -> Result<Ack, SubscribeError> {
        let new = self.subscribe(subs, topic, id, max_per_conn)?;
        if new && self.remote_history {
            if let Some(t) = self.hold_for_replay(topic, id) {
                if let Broker::Redis(h) = &self.broker {
                    h.replay(id.shard, id, t, None);
                    self.broker_told = true;
                    return Ok(Ack::Later);
                }
            }
        }
        Ok(Ack::Now(self.position(topic)))
    }

    /// Keeps live messages of `topic` (one with history) from subscriber `id` until its
    /// replay is queued; the topic's shared name, or None if it keeps no history.
    fn hold_for_replay(&mut self, topic: &str, id: ConnId) -> Option<Arc<str>> {
        let t = self.streams.get_key_value(topic)?.0.clone();
        self.streams.get_mut(topic)?.held.push((id, u64::MAX));
        Some(t)
    }

    /// False if it was not subscribed.
    pub fn unsubscribe(&mut self, subs: &mut Subscriptions, topic: &str) -> bool {
        let r = self.registry.unsubscribe(subs, topic);
        self.tell_broker();
        r
    }

    /// A connection left: drop all its subscriptions.
    pub fn remove_all(&mut self, subs: &mut Subscriptions) {
        self.registry.remove_all(subs);
        self.tell_broker();
    }

    /// Hands the broker the topics this shard gained or lost, at once: a subscriber is told
    /// "subscribed" after this, so the broker learns of it before any publish the subscriber
    /// could cause. The broker is woken at the turn's end.
    fn tell_broker(&mut self) {
        let changes = self.registry.take_changes();
        if changes.is_empty() {
            return;
        }
        if let Some(h) = &self.history {
            for (topic, on) in &changes {
                if !on {
                    self.streams.remove(topic);
                } else if h.config().policy(topic).is_some() {
                    // Deliveries start after the history's head as of now.
                    let head = h.head(topic);
                    self.streams.insert(
                        topic.clone(),
                        Stream {
                            epoch: head.as_ref().map_or_else(|| "".into(), |p| p.epoch.clone()),
                            last: head.map_or(0, |p| p.offset),
                            held: Vec::new(),
                        },
                    );
                }
            }
        }
        if let Broker::Redis(h) = &self.broker {
            h.interest(self.shard, changes);
            self.broker_told = true;
        }
    }

    /// Subscribers of `topic` on this shard.
    pub fn local_subscribers(&self, topic: &str) -> usize {
        self.registry.count(topic)
    }

    /// Accepts a publish; it starts at this turn's end (`on_turn`) and its outcome comes
    /// back through `take_done` with `reply`. Text payloads must be UTF-8. The frame is made
    /// by the framer, in-process here, with Redis once on every node that receives it.
    pub fn publish(&mut self, reply: R, topic: &str, opcode: OpCode, payload: &[u8]) {
        let framer = &self.framer;
        let (what, pos) = match (&self.broker, &self.history) {
            (Broker::Redis(h), _) => (
                Outbound::Command(h.publish_command(topic, opcode, payload)),
                None,
            ),
            (_, Some(hist)) if hist.config().policy(topic).is_some() => {
                let appended = hist.append(topic, Instant::now(), |pos| {
                    framer(topic, Some(pos), opcode, payload)
                });
                match appended {
                    Some((pos, frame)) => (Outbound::Frame(frame), Some(pos)),
                    None => return,
                }
            }
            _ => (Outbound::Frame(framer(topic, None, opcode, payload)), None),
        };
        self.queued.push(Queued {
            reply,
            topic: Arc::from(topic),
            what,
            pos,
        });
    }

    /// Outcomes of publishes since the last call.
    pub fn take_done(&mut self) -> Vec<Done<R>> {
        std::mem::take(&mut self.done)
    }

    /// End of a shard's turn: wakes the broker if told of new interest, and starts the
    /// turn's publishes. The other shards get every in-process publish first,
    /// woken at once, so they fan out while this one does its share.
    pub fn on_turn(&mut self, port: &mut dyn ShardPort, ack: &dyn Fn(&str, &Recovered) -> String) {
        if !self.recoveries.is_empty() {
            self.recover(port, ack);
        }
        if let Some(h) = &self.history {
            let now = Instant::now();
            if self
                .last_sweep
                .is_none_or(|t| now.duration_since(t).as_secs() >= 1)
            {
                self.last_sweep = Some(now);
                if port.index() == 0 {
                    h.sweep(now);
                }
            }
        }
        if let Broker::Redis(h) = &self.broker {
            if std::mem::take(&mut self.broker_told) && self.queued.is_empty() {
                h.wake();
            }
        }
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        match &self.broker {
            Broker::Redis(h) => {
                let h = h.clone();
                for q in queued {
                    let Outbound::Command(cmd) = q.what else {
                        continue;
                    };
                    if !self.status.up.load(Relaxed) {
                        self.refuse(q.reply, q.topic, PublishError::Unavailable);
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    if let Err(e) = h.publish(port.index(), id, cmd) {
                        self.refuse(q.reply, q.topic, e);
                        continue;
                    }
                    self.waiting.insert(
                        id,
                        Waiting {
                            reply: q.reply,
                            topic: q.topic,
                            remaining: 1,
                            total: 0,
                        },
                    );
                }
                h.wake();
            }
            Broker::Local | Broker::RedisPending(_) => {
                let me = port.index();
                let first = self.next_id;
                for (i, q) in queued.iter().enumerate() {
                    let Outbound::Frame(frame) = &q.what else {
                        continue;
                    };
                    for s in (0..port.shards() as u16).filter(|&s| s != me) {
                        port.post(
                            s,
                            HubMsg::Deliver {
                                topic: q.topic.clone(),
                                frame: frame.clone(),
                                pos: q.pos.clone(),
                                gather: Some((me, first + i as u64)),
                            },
                        );
                    }
                }
                port.wake_posted();
                let others = port.shards() - 1;
                for q in queued {
                    let id = self.next_id;
                    self.next_id += 1;
                    let Outbound::Frame(frame) = q.what else {
                        continue;
                    };
                    self.stats.publishes.fetch_add(1, Relaxed);
                    let local = self.deliver_local(port, &q.topic, &frame, q.pos.as_ref());
                    let w = Waiting {
                        reply: q.reply,
                        topic: q.topic,
                        remaining: others,
                        total: local,
                    };
                    if others == 0 {
                        self.finish(w);
                    } else {
                        self.waiting.insert(id, w);
                    }
                }
            }
        }
    }

    /// A message from another shard or the broker thread.
    pub fn on_msg(
        &mut self,
        port: &mut dyn ShardPort,
        msg: HubMsg,
        ack: &dyn Fn(&str, &Recovered) -> String,
    ) {
        match msg {
            HubMsg::Replayed {
                id,
                topic,
                plain,
                result,
            } => {
                if let Some(h) = &self.history {
                    if !plain {
                        h.stats.count(&result);
                    }
                }
                self.finish_recovery(port, id, &topic, result, plain, ack);
            }
            HubMsg::Deliver {
                topic,
                frame,
                pos,
                gather,
            } => {
                let count = self.deliver_local(port, &topic, &frame, pos.as_ref());
                if let Some((origin, id)) = gather {
                    port.post(origin, HubMsg::Count { id, count });
                }
            }
            HubMsg::Count { id, count } => {
                let done = match self.waiting.get_mut(&id) {
                    Some(w) => {
                        w.total += count;
                        w.remaining -= 1;
                        w.remaining == 0
                    }
                    None => false,
                };
                if done {
                    if let Some(w) = self.waiting.remove(&id) {
                        self.finish(w);
                    }
                }
            }
            HubMsg::Published { id, result } => {
                if let Some(mut w) = self.waiting.remove(&id) {
                    match result {
                        Ok(nodes) => {
                            self.stats.publishes.fetch_add(1, Relaxed);
                            w.total = nodes;
                            self.finish(w);
                        }
                        Err(e) => self.refuse(w.reply, w.topic, e),
                    }
                }
            }
        }
    }

    fn finish(&mut self, w: Waiting<R>) {
        let reach = match self.broker {
            Broker::Redis(_) => Reach::Nodes(w.total),
            _ => Reach::Subscribers(w.total),
        };
        self.done.push(Done {
            reply: w.reply,
            topic: w.topic,
            result: Ok(reach),
        });
    }

    fn refuse(&mut self, reply: R, topic: Arc<str>, e: PublishError) {
        self.stats.publishes_refused.fetch_add(1, Relaxed);
        self.done.push(Done {
            reply,
            topic,
            result: Err(e),
        });
    }

    /// Queues the frame for this shard's subscribers of `topic`; returns how many. A frame
    /// with a position is delivered once, in offset order: one already delivered is skipped,
    /// and the offsets before it that have not reached this shard yet (published by another
    /// shard, still in flight) are taken from the history and delivered first.
    fn deliver_local(
        &mut self,
        port: &mut dyn ShardPort,
        topic: &str,
        frame: &SharedFrame,
        pos: Option<&Position>,
    ) -> u64 {
        let Some(pos) = pos else {
            return self.deliver_to(port, topic, frame, None);
        };
        let Some(st) = self.streams.get_mut(topic) else {
            return 0; // no subscriber here
        };
        if st.epoch != pos.epoch {
            // A new history (the first message, or the old one was lost): start it over; from
            // Redis the node already put the topic's messages in order.
            st.epoch = pos.epoch.clone();
            st.last = if self.remote_history {
                pos.offset - 1
            } else {
                0
            };
            st.held.retain(|&(_, w)| w == u64::MAX);
        }
        if pos.offset <= st.last {
            return 0;
        }
        let from = st.last + 1;
        let mut n = 0;
        if pos.offset > from && !self.remote_history {
            let missing = self
                .history
                .as_ref()
                .map(|h| h.range(topic, &pos.epoch, from, pos.offset - 1))
                .unwrap_or_default();
            let gaps = (pos.offset - from) - missing.len() as u64;
            if gaps > 0 {
                if let Some(h) = &self.history {
                    h.stats.gaps.fetch_add(gaps, Relaxed);
                }
            }
            for (o, f) in missing {
                n += self.deliver_to(port, topic, &f, Some(o));
            }
        }
        n += self.deliver_to(port, topic, frame, Some(pos.offset));
        if let Some(st) = self.streams.get_mut(topic) {
            st.last = pos.offset;
            let last = st.last;
            st.held.retain(|&(_, w)| w > last);
        }
        n
    }

    /// Queues the frame on every subscriber of `topic` here, but those being recovered past
    /// `offset`.
    fn deliver_to(
        &mut self,
        port: &mut dyn ShardPort,
        topic: &str,
        frame: &SharedFrame,
        offset: Option<u64>,
    ) -> u64 {
        // The subscribers being recovered whose replay covers this offset, sorted: with a
        // few hundred recoveries in flight (a reconnect wave) a linear look-up per subscriber
        // cost subscribers x recoveries per delivery.
        let skip = &mut self.skip;
        skip.clear();
        if let (Some(o), Some(st)) = (offset, self.streams.get(topic)) {
            skip.extend(st.held.iter().filter(|&&(_, w)| o <= w).map(|&(c, _)| c));
            skip.sort_unstable();
        }
        let (mut queued, mut dropped, mut closed) = (0, 0, 0);
        for id in self.registry.subscribers(topic) {
            if !skip.is_empty() && skip.binary_search(&id).is_ok() {
                continue;
            }
            match port.deliver(id, frame) {
                Delivery::Queued => queued += 1,
                Delivery::Dropped => dropped += 1,
                Delivery::SlowConsumer => closed += 1,
                Delivery::Gone => {}
            }
        }
        self.stats.deliveries.fetch_add(queued, Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Relaxed);
        }
        if closed > 0 {
            self.stats.slow_closed.fetch_add(closed, Relaxed);
        }
        queued
    }

    /// Replays what the turn's recovering subscribers missed, each after its answer (built by
    /// `ack` from the outcome), then lets the live stream reach them.
    fn recover(&mut self, port: &mut dyn ShardPort, ack: &dyn Fn(&str, &Recovered) -> String) {
        let now = Instant::now();
        for r in std::mem::take(&mut self.recoveries) {
            let replay = match &self.history {
                Some(h) => h.replay(&r.topic, &r.since, now),
                None => Replay::Not(super::history::NotRecovered::HistoryOff, None),
            };
            self.finish_recovery(port, r.id, &r.topic, replay, false, ack);
        }
    }

    /// Answers a recovering subscriber, queues its replay, and lets the live stream reach it
    /// past the replay's end.
    fn finish_recovery(
        &mut self,
        port: &mut dyn ShardPort,
        id: ConnId,
        topic: &str,
        replay: Replay,
        plain: bool,
        ack: &dyn Fn(&str, &Recovered) -> String,
    ) {
        match replay {
            Replay::Frames(frames, head) => {
                let outcome = if plain {
                    Recovered::Subscribed {
                        head: Some(head.clone()),
                    }
                } else {
                    Recovered::Yes {
                        head: head.clone(),
                        messages: frames.len(),
                    }
                };
                port.send_text(id, &ack(topic, &outcome));
                for (_, f) in &frames {
                    match port.deliver(id, f) {
                        Delivery::Queued => {
                            self.stats.deliveries.fetch_add(1, Relaxed);
                        }
                        Delivery::Dropped => {
                            self.stats.dropped.fetch_add(1, Relaxed);
                        }
                        Delivery::SlowConsumer => {
                            self.stats.slow_closed.fetch_add(1, Relaxed);
                            break;
                        }
                        Delivery::Gone => break,
                    }
                }
                if let Some(st) = self.streams.get_mut(topic) {
                    let w = if st.epoch == head.epoch || st.epoch.is_empty() {
                        head.offset
                    } else {
                        0
                    };
                    for h in st.held.iter_mut().filter(|(c, _)| *c == id) {
                        h.1 = w;
                    }
                    let last = st.last;
                    st.held.retain(|&(_, w)| w > last);
                }
            }
            Replay::Not(_, head) if plain => {
                // Redis could not be asked: subscribed all the same, without a position.
                port.send_text(id, &ack(topic, &Recovered::Subscribed { head }));
                if let Some(st) = self.streams.get_mut(topic) {
                    st.held.retain(|&(c, _)| c != id);
                }
            }
            Replay::Not(why, head) => {
                let outcome = Recovered::No {
                    reason: why.as_str(),
                    head,
                };
                port.send_text(id, &ack(topic, &outcome));
                if let Some(st) = self.streams.get_mut(topic) {
                    st.held.retain(|&(c, _)| c != id);
                }
            }
        }
    }
}
