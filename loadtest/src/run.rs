//! One process's share of a scenario on fanout's client reactor: ramp connections at a rate,
//! hold them (connect) or exchange messages (echo), close them, and count every outcome.

use std::borrow::Cow;
use std::collections::{btree_map::Entry, BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::client::{
    Client, ClientConfig, ClientCtx, ClientError, ClientHandler, ConnectOptions, Stage, WsUrl,
};
use fanout::proto::handshake::ClientHandshakeError;
use fanout::proto::Message;
use hdrhistogram::Histogram;

use crate::report::{encode_hist, new_hist, Partial};

#[derive(Debug, Clone)]
pub enum Scenario {
    Connect,
    /// Subscribers: each counts the publisher's sequence numbers and times their delivery.
    Fanout {
        /// Sent on open to subscribe (already with the topic), when topics are not in the URL.
        subscribe: Option<String>,
        /// Fraction of the subscribers dropped and reconnected each second (0: none), each
        /// coming back with the last position it saw,
        churn: f64,
        /// after staying away this long.
        churn_away: Duration,
    },
    Echo {
        size: usize,
        /// Messages in flight per connection (as fast as possible), or
        pipeline: u32,
        /// messages per second per connection when > 0.
        rate: f64,
        text: bool,
        /// What fills each message after its timestamp and sequence number (cycled; empty:
        /// the byte `x`).
        fill: Arc<[u8]>,
        /// Not zero: poll once per tick and sleep between; round trips end at the kernel's
        /// receive timestamp.
        tick: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub targets: Vec<(SocketAddr, WsUrl)>,
    pub connections: u64,
    /// Connections opened per second (0: as fast as `max_in_flight` allows).
    pub connect_rate: f64,
    /// Hold (connect) or run (echo) time after the ramp.
    pub duration: Duration,
    /// Echo: a silent hold between the ramp and the first message (phase `PHASE_IDLE`).
    pub idle: Duration,
    /// Not 0: the ramp stops at each multiple of this many of this process's connections,
    /// waits for them to open or fail, holds them `step_hold`, then goes on.
    pub ramp_step: u64,
    pub step_hold: Duration,
    pub sources: Vec<IpAddr>,
    pub max_in_flight: u64,
    pub options: ConnectOptions,
    pub client: ClientConfig,
    /// This process's place among `of` processes, to spread targets and sources.
    pub index: u64,
    pub of: u64,
    /// Ends the hold early when set (fanout: the publisher is done); the count of messages
    /// published is then in `published`.
    pub hold_done: Option<Arc<AtomicBool>>,
    pub published: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The refused sequence numbers among them, ascending: not expected, never lost.
    pub refused: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
}

/// Entries kept in `lost_by_seq` (the lowest sequence numbers with losses).
pub const LOST_BY_SEQ_CAP: usize = 10_000;

/// The fanout figures of a process's open subscribers over the publisher's sequence numbers.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// Accepted sequence numbers not seen, summed over subscribers.
    pub lost: u64,
    /// Subscribers that missed any accepted sequence number.
    pub lossy: u64,
    /// Refused sequence numbers seen anyway, summed over subscribers.
    pub delivered_refused: u64,
    /// Sequence number -> subscribers that missed it (accepted ones only, capped).
    pub lost_by_seq: BTreeMap<u64, u64>,
}

impl Tally {
    /// Adds one subscriber: `seen` and `refused` are bitmaps (bit `s % 64` of word `s / 64`)
    /// over sequence numbers, of which those below `published` count.
    pub fn add(&mut self, seen: &[u64], refused: &[u64], published: u64) {
        let mut missed_any = false;
        for w in 0..published.div_ceil(64) {
            let valid = if (w + 1) * 64 <= published {
                u64::MAX
            } else {
                (1u64 << (published % 64)) - 1
            };
            let s = seen.get(w as usize).copied().unwrap_or(0) & valid;
            let r = refused.get(w as usize).copied().unwrap_or(0) & valid;
            self.delivered_refused += u64::from((s & r).count_ones());
            let mut missing = valid & !r & !s;
            if missing == 0 {
                continue;
            }
            missed_any = true;
            self.lost += u64::from(missing.count_ones());
            while missing != 0 {
                let seq = w * 64 + u64::from(missing.trailing_zeros());
                missing &= missing - 1;
                let full = self.lost_by_seq.len() >= LOST_BY_SEQ_CAP;
                match self.lost_by_seq.entry(seq) {
                    Entry::Occupied(mut n) => *n.get_mut() += 1,
                    Entry::Vacant(v) if !full => {
                        v.insert(1);
                    }
                    Entry::Vacant(_) => {}
                }
            }
        }
        self.lossy += u64::from(missed_any);
    }
}

/// A bitmap of sorted sequence numbers, as `Tally::add` reads it.
pub fn bitmap(seqs: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; seqs.last().map_or(0, |&s| s / 64 + 1) as usize];
    for &s in seqs {
        out[(s / 64) as usize] |= 1 << (s % 64);
    }
    out
}

/// Microseconds on CLOCK_MONOTONIC: one clock for every process of the box, so a
/// publisher's timestamp can be compared with a subscriber's in another process.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// A fanout payload starts with `seq:timestamp_us:`.
pub fn parse_fanout(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(48))?).ok()?;
    let mut it = text.splitn(3, ':');
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}

/// Live counters for progress displays.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub phase: u8,
    pub started: u64,
    pub opened: u64,
    pub open_now: u64,
    pub failed: u64,
    pub dropped: u64,
    pub received: u64,
    /// `--ramp-step`: steps this process has opened and held (the parent shows the least).
    #[serde(default)]
    pub steps: u64,
}

pub const PHASE_RAMP: u8 = 0;
/// Echo with `--hold`: every connection open and silent, before the messages start.
pub const PHASE_IDLE: u8 = 1;
pub const PHASE_HOLD: u8 = 2;
pub const PHASE_CLOSE: u8 = 3;
pub const PHASE_DONE: u8 = 4;

pub trait Observer {
    fn progress(&mut self, p: &Progress);
}

struct ConnSt {
    started: Instant,
    connected: Option<Instant>,
    opened: bool,
    errored: bool,
    seq: u64,
    /// Fanout: the logical subscriber this connection serves (index in `Driver::subs`).
    sub: u32,
    /// A connection that replaces a dropped one (`--churn`): not counted among those opened.
    reconnect: bool,
    /// Dropped by the churn: what still arrives on it is ignored (its subscriber has moved on,
    /// with the position it had when this one was dropped).
    retired: bool,
}

/// The last position a subscriber saw on a topic (from the envelopes' offset and epoch).
#[derive(Debug, Clone)]
struct Position {
    topic: Arc<str>,
    offset: u64,
    epoch: Arc<str>,
}

/// A fanout subscriber across its connections (`--churn` replaces them): what it saw, once.
#[derive(Default)]
struct Subscriber {
    /// The publisher's sequence numbers seen (a bit each), and how many came twice.
    seen: Vec<u64>,
    dups: u32,
    positions: Vec<Position>,
    /// Its current connection (None: its reconnect could not start).
    conn: Option<usize>,
    /// Its current connection is open.
    open: bool,
    /// When the churn dropped its last connection, until the server answered its position
    /// (and replayed what it missed).
    dropped_at: Option<Instant>,
    /// Replayed messages still to come.
    replay_left: u64,
    /// Dropped by the churn and not open again yet.
    away: bool,
}

impl Subscriber {
    /// Can be dropped now: open, not recovering, and knows a position if the server gives
    /// them (`positioned`).
    fn churnable(&self, positioned: bool) -> bool {
        self.open
            && self.dropped_at.is_none()
            && self.replay_left == 0
            && (!positioned || !self.positions.is_empty())
    }

    /// Counted at the end: open, or dropped by the churn and not back yet.
    fn counted(&self) -> bool {
        self.open || self.away || self.dropped_at.is_some() || self.replay_left > 0
    }
}

/// What a push server sends a subscriber: an envelope (`data` with its position), an answer to
/// a subscribe (`op`), or something else. Fields absent in one kind are None.
#[derive(serde::Deserialize, Default)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    encoding: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    replayed: Option<u64>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// A JSON message of the push app, if `bytes` is one.
fn envelope(bytes: &[u8]) -> Option<Envelope<'_>> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// The publisher's payload carried in an envelope's `data` (base64 for binary payloads).
fn envelope_payload<'a>(e: &'a Envelope<'_>) -> Option<Cow<'a, [u8]>> {
    use base64::Engine;
    let data = e.data.as_deref()?;
    if e.encoding.as_deref() == Some("base64") {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()
            .map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(data.as_bytes()))
    }
}

/// `url` with `since.<topic>=OFFSET:EPOCH` for each position.
fn url_with_since(url: &WsUrl, positions: &[Position]) -> WsUrl {
    let mut u = url.clone();
    for p in positions {
        u.path.push(if u.path.contains('?') { '&' } else { '?' });
        u.path
            .push_str(&format!("since.{}={}:{}", p.topic, p.offset, p.epoch));
    }
    u
}

/// The subscribe command `cmd` with the position of its topic as `since`, when one is known.
fn command_with_since(cmd: &str, positions: &[Position]) -> String {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str::<serde_json::Value>(cmd)
    else {
        return cmd.to_string();
    };
    let topic = m.get("topic").and_then(|t| t.as_str()).unwrap_or("");
    match positions.iter().find(|p| &*p.topic == topic) {
        Some(p) => {
            m.insert(
                "since".into(),
                serde_json::json!({ "offset": p.offset, "epoch": &*p.epoch }),
            );
            serde_json::Value::Object(m).to_string()
        }
        None => cmd.to_string(),
    }
}

/// `--churn` figures of one process.
#[derive(Default)]
struct Churn {
    reconnects: u64,
    recovered: u64,
    failed: BTreeMap<String, u64>,
    messages_recovered: u64,
    ignored_after_drop: u64,
    /// Drop to the server's answer, and to the last replayed message (µs).
    answer: Option<Histogram<u64>>,
    done: Option<Histogram<u64>>,
}

struct Driver {
    t0: Instant,
    connect: Histogram<u64>,
    handshake: Histogram<u64>,
    open: Histogram<u64>,
    rtt: Histogram<u64>,
    failed: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    close_errors: BTreeMap<String, u64>,
    opened: u64,
    open_now: u64,
    established: u64,
    resolved: u64,
    closing: bool,
    echo: Option<(usize, u32, bool)>,
    echo_running: bool,
    payload: Vec<u8>,
    fill: Arc<[u8]>,
    open_keys: Vec<usize>,
    sent: u64,
    received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    mismatches: u64,
    fanout: bool,
    subscribe: Option<String>,
    delivery: Histogram<u64>,
    /// Deliveries that were not replays.
    delivery_live: Histogram<u64>,
    other_messages: u64,
    /// Fanout: the logical subscribers, by ramp order.
    subs: Vec<Subscriber>,
    churn: Churn,
    /// A payload arrived (the publish phase began), one with a position.
    delivered_any: bool,
    positioned: bool,
    /// Topic names and epochs, shared by the subscribers' positions.
    names: Vec<Arc<str>>,
    /// Echo stamps are CLOCK_REALTIME microseconds and round trips end at the kernel's
    /// receive timestamp (`--tick`); else microseconds since t0 and the clock at processing.
    kernel_ts: bool,
    /// Echoes that came without a kernel timestamp (timed by the clock at processing).
    rtt_unstamped: u64,
}

/// `v` as 16 lowercase hex digits (as `format!("{v:016x}")`, without the String).
fn hex16(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().take(16).enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn us_since(t: Instant) -> u64 {
    t.elapsed().as_micros().max(1) as u64
}

/// Microseconds since the Unix epoch: the clock of the kernel's receive timestamps.
fn real_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// A reason name for a failure, stable across runs (the JSON keys).
pub fn reason(err: &ClientError) -> String {
    let os = |e: &std::io::Error| match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".to_string(),
        Some(libc::ECONNRESET) => "reset".to_string(),
        Some(libc::ETIMEDOUT) => "timeout".to_string(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".to_string(),
        Some(libc::EMFILE | libc::ENFILE) => "fd_limit".to_string(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable".to_string(),
        Some(libc::EPIPE) => "broken_pipe".to_string(),
        _ => format!("io_{:?}", e.kind()).to_lowercase(),
    };
    match err {
        ClientError::Connect(e) | ClientError::Io(e) => os(e),
        ClientError::Timeout(Stage::Connect) => "timeout_connect".into(),
        ClientError::Timeout(Stage::Handshake) => "timeout_handshake".into(),
        ClientError::Timeout(Stage::Close) => "timeout_close".into(),
        ClientError::Handshake(ClientHandshakeError::Status(s)) => format!("http_{s}"),
        ClientError::Handshake(_) => "bad_handshake".into(),
        ClientError::Protocol(e) => format!("protocol_{}", e.code),
        ClientError::ClosedDuringHandshake => "closed_during_handshake".into(),
    }
}

impl Driver {
    /// Writes the timestamp (`ts`, microseconds since t0) and sequence number into the
    /// payload; the filler after them is written once.
    fn fill_payload(&mut self, ts: u64, seq: u64) {
        let Some((size, _, text)) = self.echo else {
            return;
        };
        // Text: the two numbers in hex (32 bytes); binary: little-endian (16 bytes).
        let head = if text { 32 } else { 16 };
        let size = size.max(head);
        if self.payload.len() != size {
            self.payload.clear();
            self.payload.resize(head, 0);
            while self.payload.len() < size {
                let n = (size - self.payload.len()).min(self.fill.len());
                self.payload.extend_from_slice(&self.fill[..n]);
            }
        }
        if text {
            hex16(ts, &mut self.payload[..16]);
            hex16(seq, &mut self.payload[16..32]);
        } else {
            self.payload[..8].copy_from_slice(&ts.to_le_bytes());
            self.payload[8..16].copy_from_slice(&seq.to_le_bytes());
        }
    }

    fn send_one(&mut self, ctx: &mut ClientCtx<'_, ConnSt>, ts: u64) {
        let seq = ctx.state().seq;
        ctx.state().seq += 1;
        self.fill_payload(ts, seq);
        match self.echo {
            Some((_, _, true)) => {
                // The payload is ASCII by construction.
                let text = std::str::from_utf8(&self.payload).unwrap_or("");
                ctx.send_text(text);
            }
            _ => ctx.send_binary(&self.payload),
        }
        self.sent += 1;
        self.bytes_sent += self.payload.len() as u64;
    }

    /// The clock reading a new message is stamped with.
    fn stamp_now(&self) -> u64 {
        if self.kernel_ts {
            real_us()
        } else {
            us_since(self.t0)
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.iter().find(|a| &***a == s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.names.push(a.clone());
        a
    }

    /// Sets subscriber `sub`'s position on `topic`.
    fn set_position(&mut self, sub: usize, topic: &str, offset: u64, epoch: &str) {
        if epoch.is_empty() {
            return; // nothing published yet: no position to come back with
        }
        let s = &mut self.subs[sub];
        if let Some(p) = s.positions.iter_mut().find(|p| &*p.topic == topic) {
            p.offset = offset;
            if &*p.epoch != epoch {
                let e = self.intern(epoch);
                if let Some(p) = self.subs[sub]
                    .positions
                    .iter_mut()
                    .find(|p| &*p.topic == topic)
                {
                    p.epoch = e;
                }
            }
            return;
        }
        let (topic, epoch) = (self.intern(topic), self.intern(epoch));
        self.subs[sub].positions.push(Position {
            topic,
            offset,
            epoch,
        });
    }

    /// A fanout subscriber's message: a payload (raw, or in an envelope), a subscribe answer
    /// (with recovery figures after a churn drop), or something else.
    fn on_fanout_message(&mut self, sub: usize, bytes: &[u8]) {
        let env = envelope(bytes);
        let payload = match &env {
            Some(e) if e.data.is_some() => envelope_payload(e),
            Some(e) => {
                self.other_messages += 1;
                if e.op.as_deref() == Some("subscribed") {
                    self.on_subscribed(sub, e);
                }
                return;
            }
            None => Some(Cow::Borrowed(bytes)),
        };
        let Some((seq, ts)) = payload.as_deref().and_then(parse_fanout) else {
            self.other_messages += 1;
            return;
        };
        let latency = mono_us().saturating_sub(ts).max(1);
        let _ = self.delivery.record(latency);
        self.delivered_any = true;
        let s = &mut self.subs[sub];
        if s.replay_left > 0 {
            s.replay_left -= 1;
            if s.replay_left == 0 {
                if let (Some(t), Some(h)) = (s.dropped_at.take(), self.churn.done.as_mut()) {
                    let _ = h.record(us_since(t));
                }
            }
        } else {
            let _ = self.delivery_live.record(latency);
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if s.seen.len() <= w {
            s.seen.resize(w + 1, 0);
        }
        if s.seen[w] & (1 << b) != 0 {
            s.dups += 1;
        }
        s.seen[w] |= 1 << b;
        if let Some(e) = &env {
            if let (Some(topic), Some(offset), Some(epoch)) = (&e.topic, e.offset, &e.epoch) {
                self.positioned = true;
                self.set_position(sub, topic, offset, epoch);
            }
        }
    }

    /// `{"op":"subscribed",..}`: a plain subscribe gives the topic's position; after a churn
    /// drop, the answer to the position it came back with.
    fn on_subscribed(&mut self, sub: usize, e: &Envelope<'_>) {
        let topic = e.topic.as_deref().unwrap_or("");
        let head = match (e.offset, e.epoch.as_deref()) {
            (Some(o), Some(ep)) => Some((o, ep)),
            _ => None,
        };
        let s = &mut self.subs[sub];
        match (e.recovered, s.dropped_at) {
            (Some(recovered), Some(t)) => {
                if let Some(h) = self.churn.answer.as_mut() {
                    let _ = h.record(us_since(t));
                }
                if recovered {
                    let n = e.replayed.unwrap_or(0);
                    self.churn.recovered += 1;
                    self.churn.messages_recovered += n;
                    s.replay_left = n;
                    if n == 0 {
                        s.dropped_at = None;
                        if let Some(h) = self.churn.done.as_mut() {
                            let _ = h.record(us_since(t));
                        }
                    }
                    // The position moves with the replayed messages themselves.
                    return;
                }
                s.dropped_at = None;
                let reason = e.reason.as_deref().unwrap_or("unknown").to_string();
                *self.churn.failed.entry(reason).or_default() += 1;
                // Not recovered: continue from the position given.
                if let Some((o, ep)) = head {
                    self.set_position(sub, topic, o, ep);
                }
            }
            _ => {
                let known = s.positions.iter().any(|p| &*p.topic == topic);
                if let (false, Some((o, ep))) = (known, head) {
                    self.set_position(sub, topic, o, ep);
                }
            }
        }
    }

    fn sent_at(&self, msg: &[u8], text: bool) -> Option<u64> {
        if text {
            let hex = std::str::from_utf8(msg.get(..16)?).ok()?;
            u64::from_str_radix(hex, 16).ok()
        } else {
            Some(u64::from_le_bytes(msg.get(..8)?.try_into().ok()?))
        }
    }
}

impl ClientHandler for Driver {
    type State = ConnSt;

    fn on_connected(&mut self, _key: usize, st: &mut ConnSt) {
        st.connected = Some(Instant::now());
        if !st.reconnect {
            // Like the open and handshake times: the ramp's connections only.
            let _ = self.connect.record(us_since(st.started));
        }
    }

    fn on_open(&mut self, ctx: &mut ClientCtx<'_, ConnSt>, _protocol: Option<&str>) {
        let st = ctx.state();
        st.opened = true;
        let (sub, reconnect) = (st.sub as usize, st.reconnect);
        if !reconnect {
            let _ = self.open.record(us_since(st.started));
            if let Some(c) = st.connected {
                let _ = self.handshake.record(us_since(c));
            }
            self.opened += 1;
            self.resolved += 1;
            self.open_keys.push(ctx.key());
        }
        self.open_now += 1;
        self.established = self.established.max(self.open_now);
        if let Some(s) = self.subs.get_mut(sub) {
            s.open = true;
            s.away = false;
        }
        if let Some(cmd) = &self.subscribe {
            match self.subs.get(sub) {
                Some(s) if reconnect => ctx.send_text(&command_with_since(cmd, &s.positions)),
                _ => ctx.send_text(cmd),
            }
        }
    }

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, ConnSt>, msg: Message<'_>) {
        self.received += 1;
        let (bytes, text) = match msg {
            Message::Text(t) => (t.as_bytes(), true),
            Message::Binary(b) => (b, false),
        };
        self.bytes_received += bytes.len() as u64;
        if self.fanout {
            let st = ctx.state();
            if st.retired {
                self.churn.ignored_after_drop += 1;
            } else {
                self.on_fanout_message(st.sub as usize, bytes);
            }
            return;
        }
        // One clock reading stamps the next message, and times this echo unless the kernel
        // said when it arrived.
        let now = self.stamp_now();
        let arrived = match (self.kernel_ts, ctx.received_at_ns()) {
            (true, Some(ns)) => ns / 1000,
            (true, None) => {
                self.rtt_unstamped += 1;
                now
            }
            (false, _) => now,
        };
        match (self.echo, self.sent_at(bytes, text)) {
            (Some((size, _, _)), Some(ts))
                if bytes.len() == size.max(if text { 32 } else { 16 }) =>
            {
                let _ = self.rtt.record(arrived.saturating_sub(ts).max(1));
            }
            _ => self.mismatches += 1,
        }
        if let Some((_, pipeline, _)) = self.echo {
            if pipeline > 0 && self.echo_running && !self.closing {
                self.send_one(ctx, now);
            }
        }
    }

    fn on_error(&mut self, _key: usize, st: &mut ConnSt, err: &ClientError) {
        st.errored = true;
        if st.retired {
            return; // dropped on purpose; how its close went does not matter
        }
        let r = reason(err);
        if st.opened && self.closing {
            *self.close_errors.entry(r).or_default() += 1;
        } else if st.opened {
            *self.dropped.entry(r).or_default() += 1;
        } else if st.reconnect {
            *self.failed.entry(format!("reconnect_{r}")).or_default() += 1;
            if let Some(s) = self.subs.get_mut(st.sub as usize) {
                s.conn = None;
            }
        } else {
            *self.failed.entry(r).or_default() += 1;
            self.resolved += 1;
        }
    }

    fn on_close(&mut self, _key: usize, st: ConnSt, code: u16, _reason: &str) {
        if !st.retired {
            if let Some(s) = self.subs.get_mut(st.sub as usize) {
                s.open = false;
            }
        }
        if st.opened {
            self.open_now -= 1;
            if !self.closing && !st.errored && !st.retired {
                // Closed by the server while it should have stayed open (failures were
                // counted with their cause by on_error).
                *self.dropped.entry(format!("close_{code}")).or_default() += 1;
            }
        }
    }
}

/// `--tick`: one turn reads everything that arrived (polling again while the event buffer
/// comes back full), then sleeps to the next tick boundary, no later than the run's end, and
/// in short steps so that Ctrl-C is seen. A turn that overran its tick starts the next at once.
struct Ticker<'a> {
    len: Duration,
    next: Instant,
    stop: &'a AtomicBool,
}

impl Ticker<'_> {
    fn turn(&mut self, client: &mut Client<Driver>, end: Instant) -> Result<(), String> {
        while client
            .poll(Some(Duration::ZERO))
            .map_err(|e| e.to_string())?
            >= 1024
        {}
        let now = Instant::now();
        self.next += self.len;
        if self.next <= now {
            self.next = now;
            return Ok(());
        }
        let until = self.next.min(end);
        while !self.stop.load(Relaxed) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
        Ok(())
    }
}

/// Runs the plan; `stop` ends it early (Ctrl-C), still closing and reporting.
pub fn run(plan: &Plan, stop: &Arc<AtomicBool>, obs: &mut dyn Observer) -> Result<Partial, String> {
    let t0 = Instant::now();
    let (echo, rate, tick_len) = match plan.scenario {
        Scenario::Connect => (None, 0.0, Duration::ZERO),
        Scenario::Echo {
            size,
            pipeline,
            rate,
            text,
            tick,
            ..
        } => (
            Some((
                size.max(16),
                if rate > 0.0 { 0 } else { pipeline.max(1) },
                text,
            )),
            rate,
            tick,
        ),
        Scenario::Fanout { .. } => (None, 0.0, Duration::ZERO),
    };
    let ticking = !tick_len.is_zero();
    let (churn_rate, churn_away) = match plan.scenario {
        Scenario::Fanout {
            churn, churn_away, ..
        } => (churn, churn_away),
        _ => (0.0, Duration::ZERO),
    };
    let hold_done = |stop: &AtomicBool| {
        stop.load(Relaxed) || plan.hold_done.as_ref().is_some_and(|f| f.load(Relaxed))
    };
    let driver = Driver {
        t0,
        connect: new_hist(),
        handshake: new_hist(),
        open: new_hist(),
        rtt: new_hist(),
        failed: BTreeMap::new(),
        dropped: BTreeMap::new(),
        close_errors: BTreeMap::new(),
        opened: 0,
        open_now: 0,
        established: 0,
        resolved: 0,
        closing: false,
        echo,
        echo_running: false,
        payload: Vec::new(),
        fill: match &plan.scenario {
            Scenario::Echo { fill, .. } if !fill.is_empty() => fill.clone(),
            _ => Arc::from(&b"x"[..]),
        },
        open_keys: Vec::new(),
        sent: 0,
        received: 0,
        bytes_sent: 0,
        bytes_received: 0,
        mismatches: 0,
        fanout: matches!(plan.scenario, Scenario::Fanout { .. }),
        subscribe: match &plan.scenario {
            Scenario::Fanout { subscribe, .. } => subscribe.clone(),
            _ => None,
        },
        delivery: new_hist(),
        delivery_live: new_hist(),
        other_messages: 0,
        subs: Vec::new(),
        churn: Churn {
            answer: (churn_rate > 0.0).then(new_hist),
            done: (churn_rate > 0.0).then(new_hist),
            ..Churn::default()
        },
        names: Vec::new(),
        delivered_any: false,
        positioned: false,
        kernel_ts: ticking,
        rtt_unstamped: 0,
    };
    let cfg = ClientConfig {
        rx_timestamps: plan.client.rx_timestamps || ticking,
        ..plan.client.clone()
    };
    let mut client = Client::new(cfg, driver).map_err(|e| format!("client: {e}"))?;
    let mut started = 0u64;
    let mut last_progress = Instant::now();
    let cpu0 = crate::procinfo::self_cpu_seconds();
    // Every 200 ms, less often when many processes report to one parent (a second at 40+).
    let progress_every = Duration::from_millis((200 * plan.of.div_ceil(8)).min(1000));
    let steps = std::cell::Cell::new(0u64);
    let progress = |client: &mut Client<Driver>, phase: u8, started: u64| {
        let d = client.handler();
        Progress {
            phase,
            started,
            opened: d.opened,
            open_now: d.open_now,
            failed: d.failed.values().sum(),
            dropped: d.dropped.values().sum(),
            received: d.received,
            steps: steps.get(),
        }
    };
    let mut tick =
        |client: &mut Client<Driver>, phase: u8, started: u64, obs: &mut dyn Observer| {
            if last_progress.elapsed() >= progress_every {
                last_progress = Instant::now();
                obs.progress(&progress(client, phase, started));
            }
        };

    // Ramp.
    let ramp_start = Instant::now();
    let mut next_step = if plan.ramp_step > 0 {
        plan.ramp_step
    } else {
        u64::MAX
    };
    while started < plan.connections && !stop.load(Relaxed) {
        if started >= next_step && client.handler().resolved >= started {
            // A step is open (or failed): hold it, then go on.
            let held = Instant::now();
            while held.elapsed() < plan.step_hold && !stop.load(Relaxed) {
                client
                    .poll(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
                tick(&mut client, PHASE_RAMP, started, obs);
            }
            steps.set(steps.get() + 1);
            next_step = next_step.saturating_add(plan.ramp_step);
        }
        let due = if plan.connect_rate > 0.0 {
            ((ramp_start.elapsed().as_secs_f64() * plan.connect_rate) as u64 + 1)
                .min(plan.connections)
        } else {
            plan.connections
        }
        .min(next_step);
        while started < due && started - client.handler().resolved < plan.max_in_flight {
            let (addr, url, opts) = target_of(plan, started);
            let st = ConnSt {
                started: Instant::now(),
                connected: None,
                opened: false,
                errored: false,
                seq: 0,
                sub: started as u32,
                reconnect: false,
                retired: false,
            };
            started += 1;
            let conn = client.connect(addr, url, &opts, st);
            if client.handler().fanout {
                client.handler().subs.push(Subscriber {
                    conn: conn.as_ref().ok().copied(),
                    ..Subscriber::default()
                });
            }
            if let Err(e) = conn {
                let d = client.handler();
                *d.failed.entry(reason(&e)).or_default() += 1;
                d.resolved += 1;
                if matches!(&e, ClientError::Connect(io) if io.raw_os_error() == Some(libc::EMFILE))
                {
                    return Err(format!(
                        "this process ran out of file descriptors after {} connections (RLIMIT_NOFILE {}): use --processes auto, or raise the limit (ulimit -n; scripts/tune-limits.sh)",
                        client.len(),
                        crate::procinfo::raise_nofile().0
                    ));
                }
            }
        }
        // Sleep until an event when nothing else can start (the window is full, or all are
        // due at once): with 50 processes on 2 cores, waking every millisecond for nothing
        // costs more than the connections.
        let window_full = started - client.handler().resolved >= plan.max_in_flight;
        let wait = if window_full || plan.connect_rate <= 0.0 {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(1)
        };
        client.poll(Some(wait)).map_err(|e| e.to_string())?;
        tick(&mut client, PHASE_RAMP, started, obs);
    }
    // Wait for the last connections to open or fail.
    let settle =
        plan.client.connect_timeout + plan.client.handshake_timeout + Duration::from_secs(1);
    let settle_start = Instant::now();
    while client.handler().resolved < started
        && settle_start.elapsed() < settle
        && !stop.load(Relaxed)
    {
        client
            .poll(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        tick(&mut client, PHASE_RAMP, started, obs);
    }
    let ramp_seconds = ramp_start.elapsed().as_secs_f64();
    if plan.ramp_step > 0 && !stop.load(Relaxed) {
        steps.set(steps.get() + 1); // the last, partial step
    }
    if echo.is_some() && !plan.idle.is_zero() {
        obs.progress(&progress(&mut client, PHASE_IDLE, started));
        let idle_start = Instant::now();
        while idle_start.elapsed() < plan.idle && !stop.load(Relaxed) {
            client
                .poll(Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            tick(&mut client, PHASE_IDLE, started, obs);
        }
    }
    obs.progress(&progress(&mut client, PHASE_HOLD, started));

    // Hold / run.
    let run_start = Instant::now();
    let mut ticker = Ticker {
        len: tick_len,
        next: run_start,
        stop,
    };
    let cpu_run0 = crate::procinfo::self_cpu_seconds();
    let received0 = client.handler().received;
    if echo.is_some() && !stop.load(Relaxed) {
        client.handler().echo_running = true;
        let keys = client.handler().open_keys.clone();
        if rate > 0.0 {
            // Every connection sends at `rate`, their sends spread over one period.
            let period = Duration::from_secs_f64(1.0 / rate);
            let n = keys.len().max(1) as u32;
            let mut schedule: VecDeque<(Instant, usize)> = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (run_start + period * i as u32 / n, k))
                .collect();
            while run_start.elapsed() < plan.duration && !stop.load(Relaxed) {
                let now = Instant::now();
                while let Some(&(due, key)) = schedule.front() {
                    if due > now {
                        break;
                    }
                    schedule.pop_front();
                    if client.with_conn_and_handler(key, |d, ctx| d.send_one(ctx, d.stamp_now())) {
                        schedule.push_back((due + period, key));
                    }
                }
                if ticking {
                    ticker.turn(&mut client, run_start + plan.duration)?;
                } else {
                    let wait = schedule
                        .front()
                        .map_or(Duration::from_millis(10), |(d, _)| {
                            d.saturating_duration_since(Instant::now())
                        })
                        .min(Duration::from_millis(10));
                    client.poll(Some(wait)).map_err(|e| e.to_string())?;
                }
                tick(&mut client, PHASE_HOLD, started, obs);
            }
        } else {
            for key in keys {
                for _ in 0..echo.map_or(1, |e| e.1) {
                    client.with_conn_and_handler(key, |d, ctx| d.send_one(ctx, d.stamp_now()));
                }
            }
            while run_start.elapsed() < plan.duration && !stop.load(Relaxed) {
                if ticking {
                    ticker.turn(&mut client, run_start + plan.duration)?;
                } else {
                    client
                        .poll(Some(Duration::from_millis(10)))
                        .map_err(|e| e.to_string())?;
                }
                tick(&mut client, PHASE_HOLD, started, obs);
            }
        }
        client.handler().echo_running = false;
        // Let the answers in flight arrive.
        let grace = Instant::now();
        while client.handler().received - received0 < client.handler().sent
            && grace.elapsed() < Duration::from_secs(2)
        {
            client
                .poll(Some(Duration::from_millis(5)))
                .map_err(|e| e.to_string())?;
        }
    } else {
        // --churn: `churn_rate` x subscribers drops a second, spread evenly, round robin,
        // from the first delivery on (the publish phase).
        let per_second = churn_rate * client.handler().subs.len() as f64;
        let (mut churned, mut cursor) = (0u64, 0usize);
        let mut churn_start = None;
        // Dropped subscribers by the time they come back.
        let mut away: VecDeque<(Instant, usize)> = VecDeque::new();
        let come_back = |client: &mut Client<Driver>, away: &mut VecDeque<_>, all: bool| {
            while let Some(&(at, i)) = away.front() {
                if !all && at > Instant::now() {
                    return Some(at);
                }
                away.pop_front();
                reconnect(client, plan, i);
            }
            None
        };
        while run_start.elapsed() < plan.duration && !hold_done(stop) {
            let mut wait = Duration::from_millis(20);
            if per_second > 0.0 && churn_start.is_none() && client.handler().delivered_any {
                churn_start = Some(Instant::now());
            }
            if let Some(t0) = churn_start {
                let due = (t0.elapsed().as_secs_f64() * per_second) as u64;
                while churned < due {
                    churned += 1;
                    let d = client.handler();
                    let n = d.subs.len();
                    let next = (0..n)
                        .map(|i| (cursor + i) % n)
                        .find(|&i| d.subs[i].churnable(d.positioned));
                    if let Some(i) = next {
                        cursor = i + 1;
                        if drop_one(&mut client, i, churned % 2 == 0) {
                            away.push_back((Instant::now() + churn_away, i));
                        }
                    }
                }
                let next_at = Duration::from_secs_f64((churned + 1) as f64 / per_second);
                wait = wait.min(next_at.saturating_sub(t0.elapsed()));
                if let Some(at) = come_back(&mut client, &mut away, false) {
                    wait = wait.min(at.saturating_duration_since(Instant::now()));
                }
            }
            client.poll(Some(wait)).map_err(|e| e.to_string())?;
            tick(&mut client, PHASE_HOLD, started, obs);
        }
        // Let the last ones dropped come back and get what they missed (bounded).
        come_back(&mut client, &mut away, true);
        let settle = Instant::now();
        let recovering = |d: &mut Driver| {
            d.subs.iter().any(|s| {
                s.conn.is_some() && (s.away || s.dropped_at.is_some() || s.replay_left > 0)
            })
        };
        while per_second > 0.0
            && recovering(client.handler())
            && settle.elapsed() < Duration::from_secs(5)
            && !stop.load(Relaxed)
        {
            client
                .poll(Some(Duration::from_millis(5)))
                .map_err(|e| e.to_string())?;
            tick(&mut client, PHASE_HOLD, started, obs);
        }
    }
    let run_seconds = run_start.elapsed().as_secs_f64();
    let cpu_run = crate::procinfo::self_cpu_seconds() - cpu_run0;
    // The run's end, for the server's sampler too (before the fanout count below, whose work
    // is the generator's alone; the connections are still open).
    obs.progress(&progress(&mut client, PHASE_CLOSE, started));
    let open_at_end = client.handler().open_now;
    // Fanout: every subscriber still open (or dropped by the churn and not back yet) should
    // have seen every accepted sequence number once, across its connections.
    let mut tally = Tally::default();
    let mut duplicated = 0u64;
    let mut subscribers = 0u64;
    if client.handler().fanout {
        let published = plan.published.as_ref().map_or(0, |p| p.load(Relaxed));
        let refused = plan
            .refused
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| bitmap(&r)))
            .unwrap_or_default();
        let d = client.handler();
        for s in d.subs.iter().filter(|s| s.counted()) {
            subscribers += 1;
            tally.add(&s.seen, &refused, published);
            duplicated += s.dups as u64;
        }
        let unanswered = d
            .subs
            .iter()
            .filter(|s| s.dropped_at.is_some() && s.replay_left == 0)
            .count() as u64;
        if unanswered > 0 {
            *d.churn.failed.entry("no_answer".into()).or_default() += unanswered;
        }
    }

    // Close.
    client.handler().closing = true;
    for key in client.keys() {
        client.close(key, 1000, "");
    }
    let close_start = Instant::now();
    while !client.is_empty() && close_start.elapsed() < Duration::from_secs(10) {
        client
            .poll(Some(Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
    }
    obs.progress(&progress(&mut client, PHASE_DONE, started));

    let cpu = crate::procinfo::self_cpu_seconds() - cpu0;
    // A ring that failed during the run still batched until then.
    let batching = client.batching() || client.batched_ops() != (0, 0);
    let (batched_reads, batched_writes) = client.batched_ops();
    let d = client.handler();
    let mut hists = BTreeMap::new();
    hists.insert("connect".to_string(), encode_hist(&d.connect));
    hists.insert("handshake".to_string(), encode_hist(&d.handshake));
    hists.insert("open".to_string(), encode_hist(&d.open));
    if echo.is_some() {
        hists.insert("rtt".to_string(), encode_hist(&d.rtt));
    }
    if d.fanout {
        hists.insert("delivery".to_string(), encode_hist(&d.delivery));
    }
    if let (Some(a), Some(b)) = (&d.churn.answer, &d.churn.done) {
        hists.insert("delivery_live".to_string(), encode_hist(&d.delivery_live));
        hists.insert("recovery".to_string(), encode_hist(a));
        hists.insert("recovery_done".to_string(), encode_hist(b));
    }
    Ok(Partial {
        requested: plan.connections,
        started,
        opened: d.opened,
        established: d.established,
        open_at_end,
        failed: d.failed.clone(),
        dropped: d.dropped.clone(),
        close_errors: d.close_errors.clone(),
        messages_sent: d.sent,
        messages_received: d.received,
        bytes_sent: d.bytes_sent,
        bytes_received: d.bytes_received,
        echo_mismatches: d.mismatches,
        ramp_seconds,
        run_seconds,
        cpu_seconds: cpu,
        interrupted: stop.load(Relaxed),
        hists,
        fanout_subscribers: subscribers,
        fanout_lost: tally.lost,
        fanout_duplicated: duplicated,
        fanout_lossy_subscribers: tally.lossy,
        fanout_delivered_refused: tally.delivered_refused,
        fanout_lost_by_seq: tally.lost_by_seq,
        fanout_other_messages: d.other_messages,
        cpu_seconds_run: cpu_run,
        batching_processes: u64::from(batching),
        batched_reads,
        batched_writes,
        rtt_unstamped: d.rtt_unstamped,
        churn_reconnects: d.churn.reconnects,
        churn_recovered: d.churn.recovered,
        churn_recovery_failed: d.churn.failed.clone(),
        churn_messages_recovered: d.churn.messages_recovered,
        churn_ignored_after_drop: d.churn.ignored_after_drop,
    })
}

/// Where connection `i` of this process goes: its target and source address.
fn target_of(plan: &Plan, i: u64) -> (SocketAddr, &WsUrl, ConnectOptions) {
    let global = plan.index + i * plan.of;
    let (addr, url) = &plan.targets[(global % plan.targets.len() as u64) as usize];
    let mut opts = plan.options.clone();
    if !plan.sources.is_empty() {
        opts.source = Some(
            plan.sources
                [((global / plan.targets.len() as u64) % plan.sources.len() as u64) as usize],
        );
    }
    (*addr, url, opts)
}

/// Drops subscriber `i`'s connection, with a close handshake (1000) or a reset; false when it
/// had none.
fn drop_one(client: &mut Client<Driver>, i: usize, clean: bool) -> bool {
    let Some(key) = client.handler().subs[i].conn else {
        return false;
    };
    client.with_conn(key, |ctx| ctx.state().retired = true);
    if clean {
        client.close(key, 1000, "");
    } else {
        client.abort(key);
    }
    let d = client.handler();
    d.churn.reconnects += 1;
    let s = &mut d.subs[i];
    s.open = false;
    s.away = true;
    s.conn = None;
    if s.positions.is_empty() {
        // The server gives no positions (no history): nothing to recover with.
        *d.churn.failed.entry("no_position".into()).or_default() += 1;
    } else {
        s.dropped_at = Some(Instant::now());
    }
    true
}

/// Opens another connection for subscriber `i` to the same URL with the last position it saw
/// (`since.<topic>=OFFSET:EPOCH` in the URL, or `"since"` in its subscribe command).
fn reconnect(client: &mut Client<Driver>, plan: &Plan, i: usize) {
    let d = client.handler();
    let positions = d.subs[i].positions.clone();
    let subscribe_by_message = d.subscribe.is_some();
    let (addr, url, opts) = target_of(plan, i as u64);
    let url = if subscribe_by_message {
        url.clone()
    } else {
        url_with_since(url, &positions)
    };
    let st = ConnSt {
        started: Instant::now(),
        connected: None,
        opened: false,
        errored: false,
        seq: 0,
        sub: i as u32,
        reconnect: true,
        retired: false,
    };
    match client.connect(addr, &url, &opts, st) {
        Ok(k) => client.handler().subs[i].conn = Some(k),
        Err(e) => {
            let d = client.handler();
            d.subs[i].conn = None;
            *d.failed
                .entry(format!("reconnect_{}", reason(&e)))
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        bitmap, command_with_since, envelope, envelope_payload, hex16, parse_fanout,
        url_with_since, Position, Tally,
    };
    use fanout::client::WsUrl;

    #[test]
    fn envelopes_carry_the_payload_and_its_position() {
        let e = envelope(
            br#"{"topic":"bench","seq":7,"offset":17,"epoch":"9f2c61d0aa3e","data":"3:1234:xx"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.offset, e.epoch.as_deref()),
            (Some(17), Some("9f2c61d0aa3e"))
        );
        assert_eq!(
            parse_fanout(&envelope_payload(&e).unwrap()),
            Some((3, 1234))
        );
        // Binary payloads come in base64 ("4:99:" here).
        let e =
            envelope(br#"{"topic":"t","seq":1,"data":"NDo5OTo=","encoding":"base64"}"#).unwrap();
        assert_eq!(parse_fanout(&envelope_payload(&e).unwrap()), Some((4, 99)));
        let a = envelope(br#"{"op":"subscribed","topic":"bench","recovered":false,"reason":"epoch changed","epoch":"ab","offset":3}"#).unwrap();
        assert!(a.data.is_none());
        assert_eq!(a.recovered, Some(false));
        assert_eq!(a.reason.as_deref(), Some("epoch changed"));
        // A raw payload is not an envelope.
        assert!(envelope(b"3:1234:xx").is_none());
    }

    #[test]
    fn positions_go_in_the_url_or_the_subscribe_command() {
        let p = [Position {
            topic: "bench".into(),
            offset: 17,
            epoch: "9f2c".into(),
        }];
        let u = WsUrl::parse("ws://h:1/ws?topics=bench").unwrap();
        assert_eq!(
            url_with_since(&u, &p).path,
            "/ws?topics=bench&since.bench=17:9f2c"
        );
        let u = WsUrl::parse("ws://h:1/ws").unwrap();
        assert_eq!(url_with_since(&u, &p).path, "/ws?since.bench=17:9f2c");
        let cmd = command_with_since(r#"{"op":"subscribe","topic":"bench"}"#, &p);
        let v: serde_json::Value = serde_json::from_str(&cmd).unwrap();
        assert_eq!(
            v["since"],
            serde_json::json!({"offset": 17, "epoch": "9f2c"})
        );
        let other = r#"{"op":"subscribe","topic":"other"}"#;
        assert_eq!(command_with_since(other, &p), other);
    }

    #[test]
    fn tally_counts_accepted_losses_and_refused_deliveries_apart() {
        // 130 publishes; 3, 64 and 129 refused.
        let refused = bitmap(&[3, 64, 129]);
        let mut t = Tally::default();
        // Saw everything: refused ones count as delivered anyway.
        t.add(&bitmap(&(0..130).collect::<Vec<_>>()), &refused, 130);
        assert_eq!((t.lost, t.lossy, t.delivered_refused), (0, 0, 3));
        // Saw nothing but the refused 64: lost every accepted one.
        t.add(&bitmap(&[64]), &refused, 130);
        assert_eq!((t.lost, t.lossy, t.delivered_refused), (127, 1, 4));
        // Missed 0 and 128, and the refused ones.
        let seen: Vec<u64> = (1..128).filter(|s| *s != 3 && *s != 64).collect();
        t.add(&bitmap(&seen), &refused, 130);
        assert_eq!((t.lost, t.lossy, t.delivered_refused), (129, 2, 4));
        assert_eq!(t.lost_by_seq[&0], 2);
        assert_eq!(t.lost_by_seq[&128], 2);
        assert_eq!(t.lost_by_seq[&1], 1);
        assert!(!t.lost_by_seq.contains_key(&3) && !t.lost_by_seq.contains_key(&129));
        // Beyond `published` nothing counts.
        let mut t = Tally::default();
        t.add(&[], &[], 0);
        t.add(&bitmap(&[0, 1]), &[], 2);
        assert_eq!(t, Tally::default());
    }

    #[test]
    fn hex16_is_the_016x_format() {
        for v in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef, 1 << 63] {
            let mut out = [0u8; 16];
            hex16(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
    }
}
