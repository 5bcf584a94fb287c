//! The Redis broker: one thread with its own mio poll and two connections to Redis, one that
//! SUBSCRIBEs (the node's topics, each while some shard has a subscriber to it, batched) and
//! one that PUBLISHes (pipelined, answered in order). Messages Redis pushes are encoded into a
//! frame once and posted to the shards that have subscribers. When Redis is lost every waiting
//! publish is refused, both connections are retried with backoff and jitter, and every topic
//! is subscribed again. Owns those sockets and nothing of the shards'.
//!
//! On the wire a message is `PUBLISH <prefix><topic> <tag><payload>`, the tag `t` for a
//! text frame and `b` for a binary one. A topic with history is published by a script that
//! numbers it and appends it to the stream `<prefix>h:<topic>` (the epoch and head offset in
//! the hash `<prefix>m:<topic>`) and publishes `h<epoch>:<offset>:<tag><payload>`, all at once.
//! The node delivers a topic's offsets in order: after a gap, a resubscription or while a
//! client's replay is read, it holds the topic's live messages and reads the stream first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::history::{self, HistoryConfig, NotRecovered, Position, Replay};
use super::hub::{BrokerStatus, Framer, HubMsg, PublishError, Remote};
use super::resp::{self, Value};
use crate::common::{ConnId, SharedFrame};
use crate::proto::OpCode;

const WAKER: Token = Token(0);
const SUB: Token = Token(1);
const PUB: Token = Token(2);

/// Bytes of publishes accepted by the shards and not yet answered by Redis; past it a
/// publish is refused (503) rather than queued.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// The longest message accepted from Redis (a bulk string); longer ones end the connection.
const MAX_REPLY_BULK: usize = 64 << 20;
/// Redis must answer a command (or confirm a subscription) within this, else it is lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A PING on each connection this often while idle, so a dead peer is noticed.
const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// While Redis stays unreachable, the outage is logged again this often.
const LOG_DOWN_EVERY: Duration = Duration::from_secs(30);

/// Where Redis is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Channels are this prefix followed by the topic, so that several fanout clusters (or
    /// other programs) can share one Redis.
    pub prefix: String,
    /// Topics with a history keep it in Redis Streams.
    pub history: Option<HistoryConfig>,
    /// `rediss://`: TLS to Redis, trusting these roots.
    pub tls: Option<crate::client::Trust>,
}

/// Numbers a message of a topic with history, appends it to the topic's stream and publishes
/// it, atomically. KEYS: stream, meta. ARGV: channel, tag+payload, maxlen, ttl ms (0: none),
/// an epoch for a topic without history yet.
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local off = redis.call('HINCRBY', KEYS[2], 'head', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], off .. '-0', 'd', ARGV[2])
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local n = redis.call('PUBLISH', ARGV[1], 'h' .. epoch .. ':' .. off .. ':' .. ARGV[2])
return {n, epoch, off}
";

/// A topic's epoch, head and the entries from an offset on. KEYS: stream, meta. ARGV: first
/// offset wanted, most entries, the epoch that offset belongs to ("" for any): in another
/// epoch (the history was lost and begun again) the entries are read from the first.
const RANGE_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then return {'', 0, {}} end
local head = tonumber(redis.call('HGET', KEYS[2], 'head'))
local from = ARGV[1]
if ARGV[3] ~= '' and ARGV[3] ~= epoch then from = '1' end
return {epoch, head, redis.call('XRANGE', KEYS[1], from .. '-0', '+', 'COUNT', ARGV[2])}
";

/// Entries one catch-up reads (a node behind by more loses the rest, counted).
const MAX_CATCH_UP: usize = 100_000;

impl RedisConfig {
    /// Parses `redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; `rediss://` is TLS, trusting
    /// the system's CA bundle until `trust` says otherwise.
    pub fn parse(url: &str) -> Result<RedisConfig, String> {
        let (rest, tls) = match url.strip_prefix("rediss://") {
            Some(r) => (r, Some(crate::client::Trust::System)),
            None => (
                url.strip_prefix("redis://").ok_or_else(|| {
                    format!("{url}: expected redis://HOST[:PORT][/DB] or rediss:// (TLS)")
                })?,
                None,
            ),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse::<u32>()
                    .map_err(|_| format!("{url}: the database must be a number, not {d:?}"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [::1]:6379
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed [ in the host"))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let port = if port.is_empty() {
            6379
        } else {
            port.parse()
                .map_err(|_| format!("{url}: bad port {port:?}"))?
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
        };
        if username.is_some() && password.is_none() {
            return Err(format!(
                "{url}: a user needs a password (redis://USER:PASSWORD@HOST)"
            ));
        }
        Ok(RedisConfig {
            host,
            port,
            db,
            username,
            password,
            prefix: "fanout:".into(),
            history: None,
            tls,
        })
    }

    /// The rustls settings of a `rediss://` connection (no ALPN: Redis speaks RESP), or an
    /// error naming what is wrong with the trust (a CA file that does not load).
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let Some(trust) = &self.tls else {
            return Ok(None);
        };
        let cfg = crate::client::tls_client_config(trust)?;
        let mut cfg = (*cfg).clone();
        cfg.alpn_protocols.clear();
        Ok(Some(Arc::new(cfg)))
    }

    /// The address without the password, for logs.
    pub fn display(&self) -> String {
        let auth = if self.password.is_some() {
            format!("{}:***@", self.username.as_deref().unwrap_or(""))
        } else {
            String::new()
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{auth}{host}:{}/{}", self.port, self.db)
    }
}

enum ToBroker {
    Interest {
        shard: u16,
        changes: Vec<(Arc<str>, bool)>,
    },
    Publish {
        shard: u16,
        id: u64,
        cmd: Vec<u8>,
    },
    /// Read what a subscriber missed since `since` (None: only the topic's position, for a
    /// plain subscribe); answered with `HubMsg::Replayed`.
    Replay {
        shard: u16,
        id: ConnId,
        topic: Arc<str>,
        since: Option<Position>,
    },
}

/// The shards' side of the broker thread. Cheap to clone.
#[derive(Clone)]
pub struct RedisHandle {
    tx: mpsc::Sender<ToBroker>,
    waker: Arc<Waker>,
    prefix: Arc<[u8]>,
    url: Arc<str>,
    pending: Arc<AtomicUsize>,
    history: Option<Arc<HistoryConfig>>,
}

impl RedisHandle {
    /// The PUBLISH command for a message, built once by the shard that accepted it.
    pub fn publish_command(&self, topic: &str, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let tag: &[u8] = if opcode == OpCode::Text { b"t" } else { b"b" };
        let mut cmd = Vec::with_capacity(payload.len() + topic.len() + self.prefix.len() + 48);
        if let Some(policy) = self.history.as_ref().and_then(|h| h.policy(topic)) {
            let ttl = policy.ttl.map_or(0, |t| t.as_millis().max(1));
            resp::header(&mut cmd, b'*', 10);
            resp::bulk(&mut cmd, b"EVAL");
            resp::bulk(&mut cmd, PUBLISH_SCRIPT.as_bytes());
            resp::bulk(&mut cmd, b"2");
            resp::bulk2(&mut cmd, &self.prefix, &[b"h:", topic.as_bytes()].concat());
            resp::bulk2(&mut cmd, &self.prefix, &[b"m:", topic.as_bytes()].concat());
            resp::bulk2(&mut cmd, &self.prefix, topic.as_bytes());
            resp::bulk2(&mut cmd, tag, payload);
            resp::bulk(&mut cmd, policy.size.max(1).to_string().as_bytes());
            resp::bulk(&mut cmd, ttl.to_string().as_bytes());
            resp::bulk(&mut cmd, history::new_epoch().as_bytes());
            return cmd;
        }
        resp::header(&mut cmd, b'*', 3);
        resp::bulk(&mut cmd, b"PUBLISH");
        resp::bulk2(&mut cmd, &self.prefix, topic.as_bytes());
        resp::bulk2(&mut cmd, tag, payload);
        cmd
    }

    /// Hands a publish to the broker thread (woken by `wake`); its answer comes back to
    /// `shard` as `HubMsg::Published { id }`.
    pub fn publish(&self, shard: u16, id: u64, cmd: Vec<u8>) -> Result<(), PublishError> {
        let n = cmd.len();
        if self.pending.fetch_add(n, Relaxed) + n > MAX_PENDING_BYTES {
            self.pending.fetch_sub(n, Relaxed);
            return Err(PublishError::Overloaded);
        }
        self.tx
            .send(ToBroker::Publish { shard, id, cmd })
            .map_err(|_| {
                self.pending.fetch_sub(n, Relaxed);
                PublishError::Unavailable
            })
    }

    /// Topics that gained their first (true) or lost their last (false) subscriber on
    /// `shard`, in order.
    pub fn interest(&self, shard: u16, changes: Vec<(Arc<str>, bool)>) {
        let _ = self.tx.send(ToBroker::Interest { shard, changes });
    }

    /// Asks for what `id` missed of `topic` since `since` (answered to `shard` as
    /// `HubMsg::Replayed`).
    pub fn replay(&self, shard: u16, id: ConnId, topic: Arc<str>, since: Option<Position>) {
        let _ = self.tx.send(ToBroker::Replay {
            shard,
            id,
            topic,
            since,
        });
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    pub fn url(&self) -> String {
        self.url.to_string()
    }
}

/// Starts the broker thread. It connects in the background: a Redis that is down at start
/// is retried like one lost later.
pub(crate) fn spawn(
    cfg: RedisConfig,
    remote: Box<dyn Remote>,
    status: Arc<BrokerStatus>,
    framer: Framer,
) -> io::Result<RedisHandle> {
    let tls = cfg.tls_config().map_err(io::Error::other)?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let handle = RedisHandle {
        tx,
        waker,
        prefix: cfg.prefix.as_bytes().into(),
        url: cfg.display().into(),
        pending: pending.clone(),
        history: cfg.history.clone().map(Arc::new),
    };
    let shards = remote.shards();
    let thread = BrokerThread {
        framer,
        tls,
        poll,
        inbox: rx,
        remote,
        status,
        pending,
        cfg,
        sub: None,
        publ: None,
        up: false,
        ever_up: false,
        attempt: 0,
        retry_at: Some(Instant::now()),
        down_since: Some(Instant::now()),
        down_logged_at: None,
        interest: HashMap::new(),
        subscribed: HashSet::new(),
        changed: HashSet::new(),
        confirms_pending: 0,
        confirms_since: None,
        held: VecDeque::new(),
        streams: HashMap::new(),
        held_live_bytes: 0,
        requests: VecDeque::new(),
        wake: vec![false; shards],
        scratch: vec![0; 64 << 10].into_boxed_slice(),
    };
    std::thread::Builder::new()
        .name("fanout-broker".into())
        .spawn(move || thread.run())?;
    Ok(handle)
}

enum Expect {
    Handshake,
    Publish {
        shard: u16,
        id: u64,
        sent: Instant,
        bytes: usize,
    },
    Ping,
    /// A client's replay.
    Replay {
        shard: u16,
        id: ConnId,
        topic: Arc<str>,
        since: Option<Position>,
    },
    /// The node catching a topic up after a gap or a resubscription.
    CatchUp {
        topic: Arc<str>,
    },
}

/// A read of a topic's stream waiting for the subscriptions to be confirmed.
enum Request {
    Replay {
        shard: u16,
        id: ConnId,
        topic: Arc<str>,
        since: Option<Position>,
    },
    CatchUp {
        topic: Arc<str>,
    },
}

/// A topic with history as this node delivers it.
#[derive(Default)]
struct NodeStream {
    /// The epoch and offset last posted to the shards (None: nothing seen yet).
    last: Option<(Arc<str>, u64)>,
    /// Reads of the stream in flight: live messages wait in `pending` meanwhile.
    blocked: usize,
    pending: Vec<(Position, SharedFrame)>,
}

struct Link {
    sock: TcpStream,
    /// `rediss://`: the TLS session the bytes go through (`inbuf` and `out` stay plaintext).
    tls: Option<Box<rustls::ClientConnection>>,
    started: Instant,
    connected: bool,
    inbuf: Vec<u8>,
    /// Where the first unfinished reply in `inbuf` is scanned to, so a large one arriving in
    /// many reads is parsed once.
    scan: resp::Scanner,
    out: Vec<u8>,
    /// Replies owed by Redis, in order, and when the oldest was asked for.
    expect: VecDeque<(Expect, Instant)>,
    last_ping: Instant,
}

impl Link {
    fn ready(&self) -> bool {
        self.connected && !matches!(self.expect.front(), Some((Expect::Handshake, _)))
    }

    /// Reads what the socket has into `inbuf` (decrypted first with TLS). `Ok(true)`: Redis
    /// closed the connection. Fails once `inbuf` would pass `limit`.
    fn read_in(&mut self, scratch: &mut [u8], limit: usize) -> Result<bool, String> {
        loop {
            let n = match &mut self.tls {
                None => match self.sock.read(scratch) {
                    Ok(0) => return Ok(true),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read: {e}")),
                },
                Some(tls) => match tls.reader().read(scratch) {
                    // close_notify
                    Ok(0) => return Ok(true),
                    Ok(n) => n,
                    // No plaintext left: decrypt the next records, if the socket has any.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match tls.read_tls(&mut self.sock) {
                            Ok(0) => return Ok(true),
                            Ok(_) => {
                                tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
                                continue;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(format!("read: {e}")),
                        }
                    }
                    Err(e) => return Err(format!("TLS read: {e}")),
                },
            };
            if self.inbuf.len() + n > limit {
                return Err("a reply from Redis passed the size limit".into());
            }
            self.inbuf.extend_from_slice(&scratch[..n]);
        }
    }

    /// Writes `out` (through TLS when on: its handshake too) until the socket would block.
    fn write_out(&mut self) -> Result<(), String> {
        let mut written = 0;
        let r = match &mut self.tls {
            None => loop {
                if written == self.out.len() {
                    break Ok(());
                }
                match self.sock.write(&self.out[written..]) {
                    Ok(0) => break Err("write: wrote nothing".to_string()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(format!("write: {e}")),
                }
            },
            // rustls takes plaintext up to its buffer limit (64 KiB by default, so the
            // records waiting in it stay bounded) and holds it until the handshake is done.
            Some(tls) => loop {
                let mut progress = false;
                if written < self.out.len() {
                    match tls.writer().write(&self.out[written..]) {
                        Ok(n) => {
                            written += n;
                            progress |= n > 0;
                        }
                        Err(e) => break Err(format!("TLS write: {e}")),
                    }
                }
                if tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(0) => break Err("write: wrote nothing".to_string()),
                        Ok(_) => progress = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break Err(format!("write: {e}")),
                    }
                }
                if !progress {
                    break Ok(());
                }
            },
        };
        self.out.drain(..written);
        if self.out.capacity() > (1 << 20) && self.out.len() < (64 << 10) {
            self.out.shrink_to(64 << 10);
        }
        r
    }

    /// Something to write: commands, or TLS records (the handshake's included).
    fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

struct Held {
    shard: u16,
    id: u64,
    cmd: Vec<u8>,
}

struct BrokerThread {
    /// Makes the frame subscribers get (the app's envelope) once per message on this node.
    framer: Framer,
    /// `rediss://`: each link is a TLS client of these settings.
    tls: Option<Arc<rustls::ClientConfig>>,
    poll: Poll,
    inbox: mpsc::Receiver<ToBroker>,
    remote: Box<dyn Remote>,
    status: Arc<BrokerStatus>,
    pending: Arc<AtomicUsize>,
    cfg: RedisConfig,
    sub: Option<Link>,
    publ: Option<Link>,
    up: bool,
    ever_up: bool,
    attempt: u32,
    retry_at: Option<Instant>,
    down_since: Option<Instant>,
    down_logged_at: Option<Instant>,
    /// Topic -> the shards with subscribers to it.
    interest: HashMap<Arc<str>, Vec<u16>>,
    /// Topics SUBSCRIBEd on the current connection.
    subscribed: HashSet<Arc<str>>,
    /// Topics whose interest changed since the last sync.
    changed: HashSet<Arc<str>>,
    confirms_pending: usize,
    confirms_since: Option<Instant>,
    /// Publishes waiting for subscriptions to be confirmed (so a publish the node accepted
    /// after a subscribe reaches it), in order.
    held: VecDeque<Held>,
    /// Topics with history: what was delivered, and reads in flight.
    streams: HashMap<Arc<str>, NodeStream>,
    /// Bytes of the live messages held in every stream's `pending` (bounded by
    /// `MAX_PENDING_BYTES`).
    held_live_bytes: usize,
    /// Stream reads held until the subscriptions are confirmed (so nothing published between
    /// the read and the subscription is missed).
    requests: VecDeque<Request>,
    /// Shards posted to this turn.
    wake: Vec<bool>,
    scratch: Box<[u8]>,
}

enum Which {
    Sub,
    Pub,
}

impl BrokerThread {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.next_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("broker: poll failed: {e}");
                    return;
                }
            }
            // The shards' messages first: an interest sent before a subscriber was told
            // "subscribed" is known before anything read from Redis after it.
            loop {
                match self.inbox.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SUB => self.on_event(Which::Sub),
                    PUB => self.on_event(Which::Pub),
                    _ => {}
                }
            }
            self.timers(Instant::now());
            if self.up {
                self.sync_subscriptions();
                self.release_held();
            }
            self.flush(Which::Sub);
            self.flush(Which::Pub);
            for (s, w) in self.wake.iter_mut().enumerate() {
                if std::mem::take(w) {
                    self.remote.wake(s as u16);
                }
            }
        }
    }

    fn next_timeout(&self, now: Instant) -> Duration {
        let mut t = Duration::from_millis(250);
        if let Some(at) = self.retry_at {
            t = t.min(at.saturating_duration_since(now));
        }
        t
    }

    fn handle(&mut self, m: ToBroker) {
        match m {
            ToBroker::Interest { shard, changes } => {
                for (topic, on) in changes {
                    let shards = self.interest.entry(topic.clone()).or_default();
                    if on {
                        if !shards.contains(&shard) {
                            shards.push(shard);
                        }
                    } else {
                        shards.retain(|&s| s != shard);
                        if shards.is_empty() {
                            self.interest.remove(&topic);
                            if self.streams.get(&topic).is_some_and(|n| n.blocked == 0) {
                                self.streams.remove(&topic);
                            }
                        }
                    }
                    if self.up {
                        self.changed.insert(topic);
                    }
                }
            }
            ToBroker::Publish { shard, id, cmd } => {
                if !self.up {
                    self.answer(shard, id, cmd.len(), Err(PublishError::Unavailable));
                } else if self.confirms_pending > 0 || !self.held.is_empty() {
                    self.held.push_back(Held { shard, id, cmd });
                } else {
                    self.send_publish(shard, id, cmd);
                }
            }
            ToBroker::Replay {
                shard,
                id,
                topic,
                since,
            } => {
                if !self.up {
                    let plain = since.is_none();
                    self.replayed(
                        shard,
                        id,
                        topic,
                        plain,
                        Replay::Not(NotRecovered::Unavailable, None),
                    );
                    return;
                }
                self.streams.entry(topic.clone()).or_default().blocked += 1;
                self.requests.push_back(Request::Replay {
                    shard,
                    id,
                    topic,
                    since,
                });
            }
        }
    }

    fn replayed(&mut self, shard: u16, id: ConnId, topic: Arc<str>, plain: bool, result: Replay) {
        let msg = HubMsg::Replayed {
            id,
            topic,
            plain,
            result,
        };
        if self.remote.post(shard, msg) {
            if let Some(w) = self.wake.get_mut(shard as usize) {
                *w = true;
            }
        }
    }

    /// Sends a read of `topic`'s stream from offset `from` on.
    fn send_range(&mut self, topic: &str, from: u64, epoch: &str, count: usize, expect: Expect) {
        let Some(l) = self.publ.as_mut() else { return };
        let prefix = self.cfg.prefix.as_bytes();
        resp::header(&mut l.out, b'*', 8);
        resp::bulk(&mut l.out, b"EVAL");
        resp::bulk(&mut l.out, RANGE_SCRIPT.as_bytes());
        resp::bulk(&mut l.out, b"2");
        resp::bulk2(&mut l.out, prefix, &[b"h:", topic.as_bytes()].concat());
        resp::bulk2(&mut l.out, prefix, &[b"m:", topic.as_bytes()].concat());
        resp::bulk(&mut l.out, from.to_string().as_bytes());
        resp::bulk(&mut l.out, count.to_string().as_bytes());
        resp::bulk(&mut l.out, epoch.as_bytes());
        l.expect.push_back((expect, Instant::now()));
    }

    /// Takes `n` more bytes of live messages held while a stream is read; past
    /// `MAX_PENDING_BYTES` the connection is given up instead (what was held is read from the
    /// stream again after reconnecting). False: not held.
    fn hold(&mut self, n: usize) -> bool {
        if self.held_live_bytes + n > MAX_PENDING_BYTES {
            self.fail(format!(
                "over {MAX_PENDING_BYTES} bytes of live messages held while reading a stream"
            ));
            return false;
        }
        self.held_live_bytes += n;
        true
    }

    /// Posts a message of a topic with history to its shards, in offset order: a gap makes
    /// the node read the stream first (the message waits).
    fn on_positioned(&mut self, topic: &Arc<str>, pos: Position, frame: SharedFrame) {
        let ns = self.streams.entry(topic.clone()).or_default();
        if ns.blocked > 0 {
            if !self.hold(frame.bytes().len()) {
                return;
            }
            if let Some(ns) = self.streams.get_mut(topic) {
                ns.pending.push((pos, frame));
            }
            return;
        }
        let (same_epoch, last) = match &ns.last {
            Some((e, l)) => (**e == *pos.epoch, *l),
            None => (false, 0),
        };
        if same_epoch && pos.offset <= last {
            return; // already posted (read from the stream)
        }
        // Missing before this one: a gap in this epoch, or the start of a new epoch (the
        // history was lost and begun again) that this node did not see. A topic seen for the
        // first time starts here.
        let missing_from = if same_epoch {
            (pos.offset > last + 1).then_some(last + 1)
        } else {
            (ns.last.is_some() && pos.offset > 1).then_some(1)
        };
        if let Some(from) = missing_from {
            ns.blocked += 1;
            let epoch = pos.epoch.clone();
            if !self.hold(frame.bytes().len()) {
                return;
            }
            if let Some(ns) = self.streams.get_mut(topic) {
                ns.pending.push((pos, frame));
            }
            let t = topic.clone();
            self.send_range(
                &t,
                from,
                &epoch,
                MAX_CATCH_UP,
                Expect::CatchUp { topic: t.clone() },
            );
            return;
        }
        ns.last = Some((pos.epoch.clone(), pos.offset));
        self.post_deliver(topic, Some(pos), frame);
    }

    fn post_deliver(&mut self, topic: &Arc<str>, pos: Option<Position>, frame: SharedFrame) {
        let Some(shards) = self.interest.get(topic) else {
            return; // unsubscribed meanwhile
        };
        for &s in shards {
            let msg = HubMsg::Deliver {
                topic: topic.clone(),
                frame: frame.clone(),
                pos: pos.clone(),
                gather: None,
            };
            if self.remote.post(s, msg) {
                if let Some(w) = self.wake.get_mut(s as usize) {
                    *w = true;
                }
            }
        }
    }

    /// A read of the stream is answered: the node's live messages of that topic go on.
    fn unblock(&mut self, topic: &Arc<str>) {
        let Some(ns) = self.streams.get_mut(topic) else {
            return;
        };
        ns.blocked = ns.blocked.saturating_sub(1);
        if ns.blocked > 0 {
            return;
        }
        if !self.interest.contains_key(topic) {
            // Nobody here wants it any more.
            if let Some(ns) = self.streams.remove(topic) {
                self.held_live_bytes -= held_bytes(&ns.pending);
            }
            return;
        }
        let pending = std::mem::take(&mut ns.pending);
        self.held_live_bytes -= held_bytes(&pending);
        for (pos, frame) in pending {
            self.on_positioned(topic, pos, frame);
        }
    }

    fn send_publish(&mut self, shard: u16, id: u64, cmd: Vec<u8>) {
        let Some(l) = self.publ.as_mut() else {
            self.answer(shard, id, cmd.len(), Err(PublishError::Unavailable));
            return;
        };
        let now = Instant::now();
        l.out.extend_from_slice(&cmd);
        l.expect.push_back((
            Expect::Publish {
                shard,
                id,
                sent: now,
                bytes: cmd.len(),
            },
            now,
        ));
        self.status.publishes_sent.fetch_add(1, Relaxed);
    }

    fn release_held(&mut self) {
        if self.confirms_pending > 0 {
            return;
        }
        while let Some(h) = self.held.pop_front() {
            self.send_publish(h.shard, h.id, h.cmd);
        }
        let max_recovery = self.cfg.history.as_ref().map_or(0, |h| h.max_recovery);
        while let Some(r) = self.requests.pop_front() {
            match r {
                Request::Replay {
                    shard,
                    id,
                    topic,
                    since,
                } => {
                    // One more than the cap, to tell "too far behind"; only the position for a
                    // plain subscribe (no entry has the largest id).
                    let from = since.as_ref().map_or(u64::MAX, |s| s.offset + 1);
                    let expect = Expect::Replay {
                        shard,
                        id,
                        topic: topic.clone(),
                        since,
                    };
                    self.send_range(&topic, from, "", max_recovery + 1, expect);
                }
                Request::CatchUp { topic } => {
                    let (from, epoch) = self
                        .streams
                        .get(&topic)
                        .and_then(|n| n.last.as_ref())
                        .map_or((1, "".into()), |(e, o)| (o + 1, e.clone()));
                    let t = topic.clone();
                    self.send_range(&t, from, &epoch, MAX_CATCH_UP, Expect::CatchUp { topic });
                }
            }
        }
    }

    fn answer(&mut self, shard: u16, id: u64, bytes: usize, result: Result<u64, PublishError>) {
        self.pending.fetch_sub(bytes, Relaxed);
        if result.is_err() {
            self.status.publishes_failed.fetch_add(1, Relaxed);
        }
        if self.remote.post(shard, HubMsg::Published { id, result }) {
            if let Some(w) = self.wake.get_mut(shard as usize) {
                *w = true;
            }
        }
    }

    /// SUBSCRIBE the topics that gained interest and UNSUBSCRIBE those that lost it, a few
    /// commands for any number of them.
    fn sync_subscriptions(&mut self) {
        if self.changed.is_empty() {
            return;
        }
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for t in self.changed.drain() {
            match (self.interest.contains_key(&t), self.subscribed.contains(&t)) {
                (true, false) => on.push(t),
                (false, true) => off.push(t),
                _ => {}
            }
        }
        let Some(l) = self.sub.as_mut() else { return };
        let prefix = self.cfg.prefix.as_bytes();
        for (verb, list) in [(&b"SUBSCRIBE"[..], &on), (&b"UNSUBSCRIBE"[..], &off)] {
            for chunk in list.chunks(CHANNELS_PER_COMMAND) {
                resp::header(&mut l.out, b'*', chunk.len() + 1);
                resp::bulk(&mut l.out, verb);
                for t in chunk {
                    resp::bulk2(&mut l.out, prefix, t.as_bytes());
                }
            }
        }
        if !on.is_empty() {
            if self.confirms_pending == 0 {
                self.confirms_since = Some(Instant::now());
            }
            self.confirms_pending += on.len();
        }
        for t in off {
            self.subscribed.remove(&t);
        }
        self.subscribed.extend(on);
        self.status
            .subscribed_topics
            .store(self.subscribed.len() as u64, Relaxed);
    }

    fn timers(&mut self, now: Instant) {
        if self.sub.is_none() && self.publ.is_none() {
            if self.retry_at.is_some_and(|at| now >= at) {
                self.connect(now);
            }
            return;
        }
        for which in [Which::Sub, Which::Pub] {
            let Some(l) = self.link(&which) else { continue };
            if !l.connected && now.duration_since(l.started) > CONNECT_TIMEOUT {
                return self.fail("connecting timed out".into());
            }
            if let Some((_, at)) = l.expect.front() {
                if now.duration_since(*at) > REPLY_TIMEOUT {
                    return self.fail(format!("no reply within {REPLY_TIMEOUT:?}"));
                }
            }
        }
        if self
            .confirms_since
            .is_some_and(|at| now.duration_since(at) > REPLY_TIMEOUT)
        {
            return self.fail(format!(
                "subscriptions not confirmed within {REPLY_TIMEOUT:?}"
            ));
        }
        if self.up {
            for which in [Which::Sub, Which::Pub] {
                let Some(l) = self.link_mut(&which) else {
                    continue;
                };
                if l.expect.is_empty() && now.duration_since(l.last_ping) >= PING_EVERY {
                    resp::command(&mut l.out, &[b"PING"]);
                    l.expect.push_back((Expect::Ping, now));
                    l.last_ping = now;
                }
            }
        }
    }

    fn link(&self, which: &Which) -> Option<&Link> {
        match which {
            Which::Sub => self.sub.as_ref(),
            Which::Pub => self.publ.as_ref(),
        }
    }

    fn link_mut(&mut self, which: &Which) -> Option<&mut Link> {
        match which {
            Which::Sub => self.sub.as_mut(),
            Which::Pub => self.publ.as_mut(),
        }
    }

    fn connect(&mut self, now: Instant) {
        self.retry_at = None;
        let addr = match (self.cfg.host.as_str(), self.cfg.port).to_socket_addrs() {
            Ok(mut a) => match a.next() {
                Some(a) => a,
                None => return self.fail(format!("{} resolves to no address", self.cfg.host)),
            },
            Err(e) => return self.fail(format!("cannot resolve {}: {e}", self.cfg.host)),
        };
        for which in [Which::Sub, Which::Pub] {
            match self.open_link(addr, &which, now) {
                Ok(l) => match which {
                    Which::Sub => self.sub = Some(l),
                    Which::Pub => self.publ = Some(l),
                },
                Err(e) => return self.fail(format!("connect: {e}")),
            }
        }
    }

    fn open_link(&self, addr: SocketAddr, which: &Which, now: Instant) -> io::Result<Link> {
        let mut sock = TcpStream::connect(addr)?;
        let token = match which {
            Which::Sub => SUB,
            Which::Pub => PUB,
        };
        self.poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let tls = match &self.tls {
            None => None,
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.cfg.host.clone())
                    .map_err(|e| io::Error::other(format!("TLS: {}: {e}", self.cfg.host)))?;
                Some(Box::new(
                    rustls::ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?,
                ))
            }
        };
        let mut l = Link {
            sock,
            tls,
            started: now,
            connected: false,
            inbuf: Vec::new(),
            scan: resp::Scanner::default(),
            out: Vec::new(),
            expect: VecDeque::new(),
            last_ping: now,
        };
        let ask = |l: &mut Link, args: &[&[u8]]| {
            resp::command(&mut l.out, args);
            l.expect.push_back((Expect::Handshake, now));
        };
        match (&self.cfg.username, &self.cfg.password) {
            (Some(u), Some(p)) => ask(&mut l, &[b"AUTH", u.as_bytes(), p.as_bytes()]),
            (None, Some(p)) => ask(&mut l, &[b"AUTH", p.as_bytes()]),
            _ => {}
        }
        if self.cfg.db != 0 {
            ask(&mut l, &[b"SELECT", self.cfg.db.to_string().as_bytes()]);
        }
        let name = format!(
            "fanout-{}-{}",
            std::process::id(),
            match which {
                Which::Sub => "sub",
                Which::Pub => "pub",
            }
        );
        ask(&mut l, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
        ask(&mut l, &[b"PING"]);
        Ok(l)
    }

    fn on_event(&mut self, which: Which) {
        let Some(l) = self.link_mut(&which) else {
            return; // a socket of a connection already given up
        };
        if !l.connected {
            match l.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(format!("connect: {e}")),
            }
            match l.sock.peer_addr() {
                Ok(_) => l.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(format!("connect: {e}")),
            }
        }
        // Read what there is.
        let l = match which {
            Which::Sub => self.sub.as_mut(),
            Which::Pub => self.publ.as_mut(),
        };
        let Some(l) = l else { return };
        let eof = match l.read_in(&mut self.scratch, MAX_REPLY_BULK + (64 << 10)) {
            Ok(eof) => eof,
            Err(e) => return self.fail(e),
        };
        self.parse(&which);
        if eof && self.link(&which).is_some() {
            self.fail("Redis closed the connection".into());
        }
    }

    fn parse(&mut self, which: &Which) {
        let Some(l) = self.link_mut(which) else {
            return;
        };
        let buf = std::mem::take(&mut l.inbuf);
        let mut scan = std::mem::take(&mut l.scan);
        let mut at = 0;
        let mut error = None;
        while at < buf.len() {
            let whole = match scan.complete(&buf[at..], MAX_REPLY_BULK) {
                Ok(Some(n)) => &buf[at..at + n],
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            match resp::parse(whole, MAX_REPLY_BULK) {
                Ok(Some((v, n))) => {
                    at += n;
                    let r = match which {
                        Which::Sub => self.on_sub_value(v),
                        Which::Pub => self.on_pub_value(v),
                    };
                    if let Err(e) = r {
                        error = Some(e);
                        break;
                    }
                }
                // The scanner accepts exactly what the parser does (resp.rs' tests and fuzz
                // target): a whole value that does not parse whole is a bug, not Redis'.
                Ok(None) => {
                    error = Some("reply scanned whole but incomplete to the parser".into());
                    break;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = error {
            return self.fail(e);
        }
        if let Some(l) = self.link_mut(which) {
            let mut buf = buf;
            // The scanner's place is relative to the unfinished reply, which now starts at 0.
            buf.drain(..at);
            l.inbuf = buf;
            l.scan = scan;
        }
        self.check_up();
    }

    fn on_pub_value(&mut self, v: Value<'_>) -> Result<(), String> {
        let Some(l) = self.publ.as_mut() else {
            return Ok(());
        };
        let Some((expect, _)) = l.expect.pop_front() else {
            return Err("a reply from Redis that nothing asked for".into());
        };
        match (expect, v) {
            (Expect::Handshake, Value::Error(e)) => {
                Err(format!("Redis refused: {}", String::from_utf8_lossy(e)))
            }
            (Expect::Handshake | Expect::Ping, _) => Ok(()),
            (
                Expect::Publish {
                    shard,
                    id,
                    sent,
                    bytes,
                },
                v,
            ) => {
                let result = match v {
                    // PUBLISH, or the history script's {receivers, epoch, offset}.
                    Value::Int(n) => {
                        self.status
                            .record_rtt(sent.elapsed().as_micros().max(1) as u64);
                        Ok(n.max(0) as u64)
                    }
                    Value::Array(Some(items)) if matches!(items.first(), Some(Value::Int(_))) => {
                        self.status
                            .record_rtt(sent.elapsed().as_micros().max(1) as u64);
                        let Some(Value::Int(n)) = items.first() else {
                            unreachable!()
                        };
                        Ok((*n).max(0) as u64)
                    }
                    Value::Error(e) => Err(PublishError::Refused(
                        String::from_utf8_lossy(e).into_owned(),
                    )),
                    _ => Err(PublishError::Refused("unexpected reply to PUBLISH".into())),
                };
                self.answer(shard, id, bytes, result);
                Ok(())
            }
            (
                Expect::Replay {
                    shard,
                    id,
                    topic,
                    since,
                },
                v,
            ) => {
                let max_recovery = self.cfg.history.as_ref().map_or(0, |h| h.max_recovery);
                let plain = since.is_none();
                let since = since.unwrap_or(Position {
                    epoch: "".into(),
                    offset: 0,
                });
                let result = match parse_range(&v, &topic, &self.framer) {
                    Ok((epoch, head, _)) if plain => Replay::Frames(
                        Vec::new(),
                        Position {
                            epoch: epoch.into(),
                            offset: head,
                        },
                    ),
                    Ok((epoch, head, entries)) if epoch.is_empty() => {
                        // No history yet: only "nothing seen" is up to date.
                        let _ = (head, entries);
                        if since.epoch.is_empty() && since.offset == 0 {
                            Replay::Frames(Vec::new(), since.clone())
                        } else {
                            Replay::Not(NotRecovered::EpochChanged, None)
                        }
                    }
                    Ok((epoch, head, entries)) => {
                        let first = entries.first().map_or(head + 1, |(o, _)| *o);
                        let first = if first > since.offset + 1 && entries.is_empty() {
                            head + 1
                        } else {
                            first
                        };
                        let pos = Position {
                            epoch: epoch.into(),
                            offset: head,
                        };
                        match history::verdict(&since, &pos.epoch, head, first, max_recovery) {
                            Ok(()) => Replay::Frames(
                                entries
                                    .into_iter()
                                    .filter(|(o, _)| *o > since.offset)
                                    .collect(),
                                pos,
                            ),
                            Err(why) => Replay::Not(why, Some(pos)),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("broker: reading the history of {topic}: {e}");
                        Replay::Not(NotRecovered::Unavailable, None)
                    }
                };
                self.replayed(shard, id, topic.clone(), plain, result);
                self.unblock(&topic);
                Ok(())
            }
            (Expect::CatchUp { topic }, v) => {
                match parse_range(&v, &topic, &self.framer) {
                    Ok((epoch, _head, entries)) if !epoch.is_empty() => {
                        let epoch: Arc<str> = epoch.into();
                        let last = self.streams.get(&topic).and_then(|n| n.last.clone());
                        let mut at = match last {
                            Some((e, o)) if e == epoch => o,
                            _ => 0, // a new history: all of it
                        };
                        for (o, frame) in entries {
                            if o <= at {
                                continue;
                            }
                            if o > at + 1 {
                                self.status.history_gaps.fetch_add(o - at - 1, Relaxed);
                            }
                            at = o;
                            let pos = Position {
                                epoch: epoch.clone(),
                                offset: o,
                            };
                            self.post_deliver(&topic, Some(pos), frame);
                        }
                        if let Some(ns) = self.streams.get_mut(&topic) {
                            ns.last = Some((epoch, at));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("broker: catching up {topic}: {e}"),
                }
                self.unblock(&topic);
                Ok(())
            }
        }
    }

    fn on_sub_value(&mut self, v: Value<'_>) -> Result<(), String> {
        let items = match v {
            Value::Array(Some(items)) => items,
            Value::Error(e) => {
                return Err(format!("Redis refused: {}", String::from_utf8_lossy(e)));
            }
            // +OK / +PONG: a handshake step, or a ping before any subscription.
            _ => return self.sub_reply(),
        };
        let kind = items.first().and_then(Value::bytes).unwrap_or(b"");
        match kind {
            b"message" => {
                let (Some(ch), Some(payload)) = (
                    items.get(1).and_then(Value::bytes),
                    items.get(2).and_then(Value::bytes),
                ) else {
                    return Err("a malformed message push from Redis".into());
                };
                self.on_message(ch, payload);
                Ok(())
            }
            b"subscribe" => {
                self.confirms_pending = self.confirms_pending.saturating_sub(1);
                if self.confirms_pending == 0 {
                    self.confirms_since = None;
                }
                Ok(())
            }
            b"unsubscribe" => Ok(()),
            b"pong" => self.sub_reply(),
            _ => Ok(()),
        }
    }

    /// A reply on the subscribing connection that answers a request of ours, in order.
    fn sub_reply(&mut self) -> Result<(), String> {
        if let Some(l) = self.sub.as_mut() {
            l.expect.pop_front();
        }
        Ok(())
    }

    /// A message Redis pushed on one of our channels: encode it once, post it to the shards
    /// with subscribers.
    fn on_message(&mut self, ch: &[u8], payload: &[u8]) {
        self.status.messages_received.fetch_add(1, Relaxed);
        let topic = ch
            .strip_prefix(self.cfg.prefix.as_bytes())
            .and_then(|t| std::str::from_utf8(t).ok());
        let (pos, payload) = match payload.strip_prefix(b"h") {
            Some(rest) => match parse_position(rest) {
                Some((pos, rest)) => (Some(pos), rest),
                None => (None, &b""[..]),
            },
            None => (None, payload),
        };
        let Some((opcode, body)) = split_tag(payload) else {
            self.status.messages_dropped.fetch_add(1, Relaxed);
            return;
        };
        let Some(topic) = topic
            .and_then(|t| self.interest.get_key_value(t))
            .map(|(t, _)| t.clone())
        else {
            return; // unsubscribed meanwhile
        };
        let frame = (self.framer)(&topic, pos.as_ref(), opcode, body);
        match pos {
            Some(pos) => self.on_positioned(&topic, pos, frame),
            None => self.post_deliver(&topic, None, frame),
        }
    }

    /// Both connections through their handshake: Redis is up.
    fn check_up(&mut self) {
        if self.up {
            return;
        }
        let ready = self.sub.as_ref().is_some_and(Link::ready)
            && self.publ.as_ref().is_some_and(Link::ready);
        if !ready {
            return;
        }
        self.up = true;
        self.attempt = 0;
        self.subscribed.clear();
        self.changed = self.interest.keys().cloned().collect();
        if self.ever_up {
            self.status.reconnects.fetch_add(1, Relaxed);
        }
        let down_for = self.down_since.take().map(|t| t.elapsed());
        if self.ever_up {
            tracing::info!(
                "broker {} is back after {:.1?}; subscribing again to {} topic(s)",
                self.cfg.display(),
                down_for.unwrap_or_default(),
                self.changed.len()
            );
        } else {
            tracing::info!("broker {} connected", self.cfg.display());
        }
        self.ever_up = true;
        self.down_logged_at = None;
        self.status.up.store(true, Relaxed);
        // What was published while the node was away: read once the topics are subscribed.
        let topics: Vec<Arc<str>> = self
            .streams
            .iter()
            .filter(|(t, n)| n.last.is_some() && self.interest.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in topics {
            if let Some(ns) = self.streams.get_mut(&topic) {
                ns.blocked += 1;
            }
            self.requests.push_back(Request::CatchUp { topic });
        }
    }

    /// Redis is lost (or never came): refuse what waits, drop both connections, retry later.
    fn fail(&mut self, reason: String) {
        let was_up = self.up;
        self.up = false;
        self.status.up.store(false, Relaxed);
        if let Ok(mut e) = self.status.last_error.lock() {
            e.clone_from(&reason);
        }
        let mut refused = Vec::new();
        let mut replays = Vec::new();
        for l in [self.sub.take(), self.publ.take()].into_iter().flatten() {
            let mut sock = l.sock;
            let _ = self.poll.registry().deregister(&mut sock);
            for (e, _) in l.expect {
                match e {
                    Expect::Publish {
                        shard, id, bytes, ..
                    } => refused.push((shard, id, bytes)),
                    Expect::Replay {
                        shard,
                        id,
                        topic,
                        since,
                    } => replays.push((shard, id, topic, since.is_none())),
                    _ => {}
                }
            }
        }
        for r in std::mem::take(&mut self.requests) {
            if let Request::Replay {
                shard,
                id,
                topic,
                since,
            } = r
            {
                replays.push((shard, id, topic, since.is_none()));
            }
        }
        for (shard, id, topic, plain) in replays {
            self.replayed(
                shard,
                id,
                topic,
                plain,
                Replay::Not(NotRecovered::Unavailable, None),
            );
        }
        // Live messages held for reads that will not come back are read again after the
        // reconnection, from the last offset posted.
        for ns in self.streams.values_mut() {
            ns.blocked = 0;
            ns.pending.clear();
        }
        self.held_live_bytes = 0;
        for h in std::mem::take(&mut self.held) {
            refused.push((h.shard, h.id, h.cmd.len()));
        }
        for (shard, id, bytes) in refused {
            self.answer(shard, id, bytes, Err(PublishError::Unavailable));
        }
        self.subscribed.clear();
        self.changed.clear();
        self.confirms_pending = 0;
        self.confirms_since = None;
        self.status.subscribed_topics.store(0, Relaxed);
        let now = Instant::now();
        if was_up || self.down_since.is_none() {
            self.down_since = Some(now);
        }
        let backoff = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Some(now + backoff);
        if was_up {
            tracing::warn!(
                "broker {} lost: {reason}; publishes answer 503 until it is back (retrying)",
                self.cfg.display()
            );
            self.down_logged_at = Some(now);
        } else if self
            .down_logged_at
            .is_none_or(|t| now.duration_since(t) >= LOG_DOWN_EVERY)
        {
            tracing::warn!(
                "broker {} unavailable: {reason}; publishes answer 503 and /healthz says degraded until it is reachable (retrying every {:?} at most)",
                self.cfg.display(),
                BACKOFF_MAX
            );
            self.down_logged_at = Some(now);
        } else {
            tracing::debug!(
                "broker {}: {reason}; retry in {backoff:?}",
                self.cfg.display()
            );
        }
    }

    fn flush(&mut self, which: Which) {
        let Some(l) = self.link_mut(&which) else {
            return;
        };
        if !l.connected || !l.wants_write() {
            return;
        }
        if let Err(e) = l.write_out() {
            self.fail(e);
        }
    }
}

/// Bytes of live messages a stream holds (what `BrokerThread::hold` counted for them).
fn held_bytes(pending: &[(Position, SharedFrame)]) -> usize {
    pending.iter().map(|(_, f)| f.bytes().len()).sum()
}

/// `<epoch>:<offset>:` at the start of a positioned message, and the rest.
fn parse_position(b: &[u8]) -> Option<(Position, &[u8])> {
    let i = b.iter().position(|&c| c == b':')?;
    let epoch = std::str::from_utf8(&b[..i]).ok()?;
    let rest = &b[i + 1..];
    let j = rest.iter().position(|&c| c == b':')?;
    let offset = std::str::from_utf8(&rest[..j]).ok()?.parse().ok()?;
    Some((
        Position {
            epoch: epoch.into(),
            offset,
        },
        &rest[j + 1..],
    ))
}

/// The opcode and payload of `<tag><payload>` (None if malformed).
fn split_tag(payload: &[u8]) -> Option<(OpCode, &[u8])> {
    match payload.split_first() {
        Some((b't', body)) if simdutf8::basic::from_utf8(body).is_ok() => {
            Some((OpCode::Text, body))
        }
        Some((b'b', body)) => Some((OpCode::Binary, body)),
        _ => None,
    }
}

/// The range script's reply: epoch ("" without history), head, and the entries as frames.
type Range = (String, u64, Vec<(u64, SharedFrame)>);

fn parse_range(v: &Value<'_>, topic: &str, framer: &Framer) -> Result<Range, String> {
    let bad = |w: &str| format!("unexpected reply to the history read ({w})");
    let Value::Array(Some(items)) = v else {
        return Err(match v {
            Value::Error(e) => String::from_utf8_lossy(e).into_owned(),
            _ => bad("not an array"),
        });
    };
    let epoch = items
        .first()
        .and_then(Value::bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| bad("epoch"))?
        .to_string();
    let head = match items.get(1) {
        Some(Value::Int(n)) => (*n).max(0) as u64,
        _ => return Err(bad("head")),
    };
    let mut out = Vec::new();
    if let Some(Value::Array(Some(entries))) = items.get(2) {
        for e in entries {
            let Value::Array(Some(kv)) = e else {
                return Err(bad("entry"));
            };
            let id = kv.first().and_then(Value::bytes).ok_or_else(|| bad("id"))?;
            let offset = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("id"))?;
            let Some(Value::Array(Some(fields))) = kv.get(1) else {
                return Err(bad("fields"));
            };
            let payload = fields
                .get(1)
                .and_then(Value::bytes)
                .ok_or_else(|| bad("data"))?;
            let (op, body) = split_tag(payload).ok_or_else(|| bad("payload"))?;
            let pos = Position {
                epoch: epoch.as_str().into(),
                offset,
            };
            out.push((offset, framer(topic, Some(&pos), op, body)));
        }
    }
    Ok((epoch, head, out))
}

/// 50 ms doubling to 1 s, each scaled by a random factor in [0.5, 1) so that nodes that lost
/// Redis together do not come back in step.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(10))
        .min(BACKOFF_MAX);
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    let f = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
    base.mul_f64(f.min(0.999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = RedisConfig::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("127.0.0.1", 6380, 2));
        assert_eq!(c.password, None);
        let c = RedisConfig::parse("redis://localhost").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("localhost", 6379, 0));
        let c = RedisConfig::parse("redis://:s3cret@[::1]:7000/").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (None, Some("s3cret"))
        );
        assert_eq!(c.display(), "redis://:***@[::1]:7000/0");
        let c = RedisConfig::parse("redis://ann:pw@h:1").unwrap();
        assert_eq!(c.username.as_deref(), Some("ann"));
        for bad in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "redis://ann@h",
            "rediss://",
            "rediss://h:port",
        ] {
            assert!(RedisConfig::parse(bad).is_err(), "{bad}");
        }
        let c = RedisConfig::parse("rediss://:pw@cache.example:6380").unwrap();
        assert_eq!(c.tls, Some(crate::client::Trust::System));
        assert_eq!(c.display(), "rediss://:***@cache.example:6380/0");
        assert_eq!(RedisConfig::parse("redis://h").unwrap().tls, None);
        let c = RedisConfig {
            tls: Some(crate::client::Trust::CaFile("/nonexistent/ca.pem".into())),
            ..c
        };
        assert!(c.tls_config().unwrap_err().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 0..20 {
            let b = backoff(attempt);
            let base = BACKOFF_FIRST
                .saturating_mul(1 << attempt.min(10))
                .min(BACKOFF_MAX);
            assert!(b >= base / 2 && b < base, "{attempt}: {b:?} of {base:?}");
        }
    }
}
