//! The push server: clients subscribe to topics (in the URL or by JSON messages), publishers
//! POST to `/publish/{topic}` (or send `{"op":"publish"}` when allowed), and every subscriber
//! in every shard gets the frame, encoded once per publish and shared by reference. Owns the
//! app protocol; delivery goes through `ShardApi`, topics through `pubsub::Registry`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proto::handshake::{HttpError, Request};
use crate::proto::{Message, OpCode};
use crate::pubsub::{
    validate_topic, Ack, BrokerConfig, Done, Framer, HistoryConfig, Hub, HubMsg, NotRecovered,
    Position, PublishError, Reach, Recovered, ShardPort, Subscriptions, RTT_BUCKETS_US,
};
use crate::server::{
    Accept, ConnId, ConnInfo, Ctx, Delivery, Handler, HttpReply, HttpResponse, Remote, ShardApi,
    SharedFrame, Token,
};

#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `Authorization: Bearer KEY` required on `POST /publish/{topic}`. None: publishing over
    /// HTTP is refused (403) — an open publish endpoint is never the default.
    pub publish_key: Option<String>,
    /// Accept `{"op":"publish"}` from WebSocket clients.
    pub allow_ws_publish: bool,
    /// Deliver `{"topic":..,"seq":..,"data":..}` instead of the payload as is.
    pub envelope: bool,
    pub max_topics_per_conn: usize,
    /// Where publishes go: this process, or Redis (shared by several nodes).
    pub broker: BrokerConfig,
    /// Which topics keep a history that subscribers can recover from (needs `envelope`:
    /// deliveries carry their offset in it).
    pub history: HistoryConfig,
    /// The path WebSocket clients upgrade on (`/ws`); an upgrade elsewhere gets 404.
    pub ws_path: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            publish_key: None,
            allow_ws_publish: false,
            envelope: false,
            max_topics_per_conn: 64,
            broker: BrokerConfig::Local,
            history: HistoryConfig::default(),
            ws_path: DEFAULT_WS_PATH.into(),
        }
    }
}

/// Where the push app accepts WebSocket upgrades unless `--ws-path` says otherwise.
pub const DEFAULT_WS_PATH: &str = "/ws";

/// Query parameters of an upgrade besides `topics`: `token` (the JWT, see `server::auth`)
/// and `since.<topic>` (history, read by the subscribe handling).
const SINCE_PREFIX: &str = "since.";

/// Who waits for a publish's outcome.
#[derive(Debug, Clone, Copy)]
enum ReplyTo {
    Http(ConnId),
    Ws(ConnId),
}

pub struct Push {
    cfg: Arc<PushConfig>,
    /// This shard's topics and fan-out (a clone starts empty, sharing the broker).
    hub: Hub<ReplyTo>,
    /// The envelope's sequence numbers, shared by the shards.
    seq: Arc<AtomicU64>,
    metrics_waiting: Vec<ConnId>,
}

impl Clone for Push {
    /// A clone is another shard's handler: the same settings, broker and counters, its own
    /// (empty) topics and pending work.
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            hub: self.hub.clone(),
            seq: self.seq.clone(),
            metrics_waiting: Vec::new(),
        }
    }
}

/// The shard as the hub sees it.
struct Port<'p, 'a>(&'p mut ShardApi<'a, Push>);

impl ShardPort for Port<'_, '_> {
    fn index(&self) -> u16 {
        self.0.index()
    }
    fn shards(&self) -> usize {
        self.0.shards()
    }
    fn deliver(&mut self, id: ConnId, frame: &SharedFrame) -> Delivery {
        self.0.deliver(id, frame)
    }
    fn send_text(&mut self, id: ConnId, text: &str) -> bool {
        self.0.send_text(id, text)
    }
    fn post(&mut self, shard: u16, msg: HubMsg) {
        self.0.post(shard, msg)
    }
    fn wake_posted(&mut self) {
        self.0.wake_posted()
    }
}

impl crate::pubsub::Remote for Remote<HubMsg> {
    fn shards(&self) -> usize {
        Remote::shards(self)
    }
    fn post(&self, shard: u16, msg: HubMsg) -> bool {
        Remote::post(self, shard, msg)
    }
    fn wake(&self, shard: u16) {
        Remote::wake(self, shard)
    }
}

/// The frame subscribers get: the payload as is, or with `envelope` the JSON
/// `{"topic","seq"[,"offset","epoch"],"data"}` (binary data in base64), numbered by `seq`.
fn framer(envelope: bool, seq: Arc<AtomicU64>) -> Framer {
    Arc::new(move |topic, pos, op, payload| {
        if !envelope {
            return SharedFrame::new(op, payload);
        }
        let n = seq.fetch_add(1, Relaxed) + 1;
        let data = if op == OpCode::Text {
            serde_json::to_string(&String::from_utf8_lossy(payload)).unwrap_or_default()
        } else {
            format!(
                "\"{}\",\"encoding\":\"base64\"",
                base64::engine::general_purpose::STANDARD.encode(payload)
            )
        };
        let at = pos.map_or(String::new(), |p| {
            format!(",\"offset\":{},\"epoch\":{}", p.offset, json_str(&p.epoch))
        });
        let body = format!(
            "{{\"topic\":{},\"seq\":{n}{at},\"data\":{data}}}",
            json_str(topic)
        );
        SharedFrame::new(OpCode::Text, body.as_bytes())
    })
}

impl Push {
    pub fn new(cfg: PushConfig) -> Self {
        let seq: Arc<AtomicU64> = Arc::default();
        Self {
            hub: Hub::new(
                cfg.broker.clone(),
                cfg.history.clone(),
                framer(cfg.envelope, seq.clone()),
            ),
            cfg: Arc::new(cfg),
            seq,
            metrics_waiting: Vec::new(),
        }
    }

    /// Accepts a publish. The frame subscribers get (the envelope, if on) is made once per
    /// process by `framer`.
    fn publish(&mut self, reply: ReplyTo, topic: &str, payload: &[u8], text: bool) {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.hub.publish(reply, topic, op, payload);
    }

    /// Answers the publishers whose publishes finished.
    fn answer(&mut self, api: &mut ShardApi<'_, Self>) {
        for Done {
            reply,
            topic,
            result,
        } in self.hub.take_done()
        {
            let (status, http, ws) = match result {
                Ok(reach) => {
                    let (k, n) = match reach {
                        Reach::Subscribers(n) => ("subscribers", n),
                        Reach::Nodes(n) => ("nodes", n),
                    };
                    (
                        200,
                        format!("{{\"topic\":{},\"{k}\":{n}}}", json_str(&topic)),
                        format!(
                            "{{\"op\":\"published\",\"topic\":{},\"{k}\":{n}}}",
                            json_str(&topic)
                        ),
                    )
                }
                Err(e) => {
                    let status = match e {
                        PublishError::Refused(_) => 502,
                        PublishError::Unavailable | PublishError::Overloaded => 503,
                    };
                    (
                        status,
                        format!(
                            "{{\"error\":{},\"topic\":{}}}",
                            json_str(&e.to_string()),
                            json_str(&topic)
                        ),
                        error_json(&e.to_string(), Some(&topic)),
                    )
                }
            };
            match reply {
                ReplyTo::Http(id) => {
                    let mut r = json_response(status, http);
                    if status == 503 {
                        r.headers.push(("Retry-After", "1".into()));
                    }
                    api.respond(id, r);
                }
                ReplyTo::Ws(id) => {
                    api.send_text(id, &ws);
                }
            }
        }
    }

    fn app_metrics(&self) -> String {
        let mut out = String::new();
        let st = self.hub.stats();
        for (name, help, v) in [
            (
                "fanout_push_publishes_total",
                "publishes accepted (in-process: fanned out; with a broker: answered by it)",
                &st.publishes,
            ),
            (
                "fanout_push_publishes_refused_total",
                "publishes answered 502/503 because the broker was unavailable, refused them or was overloaded",
                &st.publishes_refused,
            ),
            (
                "fanout_push_deliveries_total",
                "frames queued on subscribers",
                &st.deliveries,
            ),
            (
                "fanout_push_deliveries_dropped_total",
                "deliveries not queued because they did not fit under --write-queue-limit (pause, drop-oldest)",
                &st.dropped,
            ),
            (
                "fanout_push_slow_consumers_closed_total",
                "subscribers closed (1008) because a delivery did not fit under --write-queue-limit (disconnect)",
                &st.slow_closed,
            ),
        ] {
            metric(&mut out, name, "counter", help, v.load(Relaxed));
        }
        if let Some(h) = self.hub.history() {
            let st = &h.stats;
            for (name, kind, help, v) in [
                (
                    "fanout_history_entries",
                    "gauge",
                    "messages kept in this process's history",
                    &st.entries,
                ),
                (
                    "fanout_history_bytes",
                    "gauge",
                    "bytes of the messages kept, with their overhead",
                    &st.bytes,
                ),
                (
                    "fanout_history_topics",
                    "gauge",
                    "topics with a history in this process",
                    &st.topics,
                ),
                (
                    "fanout_history_evicted_by_cap_total",
                    "counter",
                    "messages evicted before their time by --history-max-bytes",
                    &st.evicted_by_cap,
                ),
                (
                    "fanout_history_gaps_total",
                    "counter",
                    "offsets a shard could not deliver in order (neither live nor in the history)",
                    &st.gaps,
                ),
                (
                    "fanout_recovered_messages_total",
                    "counter",
                    "messages replayed to subscribers that came back with a position",
                    &st.recovered_messages,
                ),
            ] {
                metric(&mut out, name, kind, help, v.load(Relaxed));
            }
            head(
                &mut out,
                "fanout_recoveries_total",
                "counter",
                "subscribes with a position, by result (recovered, or why not)",
            );
            let _ = writeln!(
                out,
                "fanout_recoveries_total{{result=\"recovered\"}} {}",
                st.recoveries_ok.load(Relaxed)
            );
            for (i, why) in NotRecovered::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "fanout_recoveries_total{{result=\"{}\"}} {}",
                    why.as_str().replace(' ', "_"),
                    st.recoveries_failed[i].load(Relaxed)
                );
            }
        }
        if let Some(b) = self.hub.broker_status() {
            for (name, kind, help, v) in [
                (
                    "fanout_broker_up",
                    "gauge",
                    "1 while the broker (Redis) is connected",
                    u64::from(b.up.load(Relaxed)),
                ),
                (
                    "fanout_broker_subscribed_topics",
                    "gauge",
                    "topics this node is subscribed to in the broker",
                    b.subscribed_topics.load(Relaxed),
                ),
                (
                    "fanout_broker_reconnects_total",
                    "counter",
                    "connections to the broker made again after one was lost",
                    b.reconnects.load(Relaxed),
                ),
                (
                    "fanout_broker_publishes_sent_total",
                    "counter",
                    "publishes written to the broker",
                    b.publishes_sent.load(Relaxed),
                ),
                (
                    "fanout_broker_publishes_failed_total",
                    "counter",
                    "publishes the broker refused or that were lost with its connection",
                    b.publishes_failed.load(Relaxed),
                ),
                (
                    "fanout_broker_messages_received_total",
                    "counter",
                    "messages received from the broker for this node's subscribers",
                    b.messages_received.load(Relaxed),
                ),
                (
                    "fanout_broker_messages_dropped_total",
                    "counter",
                    "messages from the broker dropped as malformed",
                    b.messages_dropped.load(Relaxed),
                ),
            ] {
                metric(&mut out, name, kind, help, v);
            }
            head(
                &mut out,
                "fanout_broker_rtt_seconds",
                "histogram",
                "PUBLISH round trip to the broker",
            );
            let mut cum = 0;
            for (i, le) in RTT_BUCKETS_US.iter().enumerate() {
                cum += b.rtt_buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "fanout_broker_rtt_seconds_bucket{{le=\"{}\"}} {cum}",
                    *le as f64 / 1e6
                );
            }
            let count = b.rtt_count.load(Relaxed);
            let _ = writeln!(
                out,
                "fanout_broker_rtt_seconds_bucket{{le=\"+Inf\"}} {count}\nfanout_broker_rtt_seconds_sum {}\nfanout_broker_rtt_seconds_count {count}",
                b.rtt_sum_us.load(Relaxed) as f64 / 1e6
            );
        }
        out
    }
}

/// The HELP and TYPE lines of a series.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A series without labels: its HELP, TYPE and value.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    head(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// `"epoch":..,"offset":..` of a position (nulls without one).
fn position_json(p: Option<&Position>) -> String {
    match p {
        Some(p) => format!("\"epoch\":{},\"offset\":{}", json_str(&p.epoch), p.offset),
        None => "\"epoch\":null,\"offset\":null".into(),
    }
}

/// The answer to a subscribe that carried a position.
fn recovered_json(topic: &str, r: &Recovered) -> String {
    match r {
        Recovered::Yes { head, messages } => format!(
            "{{\"op\":\"subscribed\",\"topic\":{},\"recovered\":true,\"replayed\":{messages},{}}}",
            json_str(topic),
            position_json(Some(head))
        ),
        Recovered::Subscribed { head } => match head {
            Some(p) => format!(
                "{{\"op\":\"subscribed\",\"topic\":{},{}}}",
                json_str(topic),
                position_json(Some(p))
            ),
            None => format!("{{\"op\":\"subscribed\",\"topic\":{}}}", json_str(topic)),
        },
        Recovered::No { reason, head } => format!(
            "{{\"op\":\"subscribed\",\"topic\":{},\"recovered\":false,\"reason\":{},{}}}",
            json_str(topic),
            json_str(reason),
            position_json(head.as_ref())
        ),
    }
}

/// Parses a URL position, `OFFSET:EPOCH` (epoch may be empty: nothing seen yet).
fn parse_since(v: &str) -> Option<Position> {
    let (offset, epoch) = v.split_once(':')?;
    Some(Position {
        offset: offset.parse().ok()?,
        epoch: epoch.into(),
    })
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn error_json(reason: &str, topic: Option<&str>) -> String {
    match topic {
        Some(t) => format!(
            "{{\"op\":\"error\",\"topic\":{},\"reason\":{}}}",
            json_str(t),
            json_str(reason)
        ),
        None => format!("{{\"op\":\"error\",\"reason\":{}}}", json_str(reason)),
    }
}

/// A command from a subscriber.
#[derive(Deserialize)]
struct Command<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// The last position the client saw, to recover what it missed.
    #[serde(borrow, default)]
    since: Option<Since<'a>>,
}

#[derive(Deserialize)]
struct Since<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

/// The topic claims of a verified token: `sub_topics` and `pub_topics`, lists of topic
/// patterns. A pattern is a topic (`news`), or a prefix ending in `*` that matches every longer
/// topic starting with it (`news.*` matches `news.uk` and `news.uk.london`, not `news`; `*`
/// matches every topic). An absent claim does not restrict; an empty list allows nothing.
#[derive(Deserialize, Default)]
struct TopicClaims<'a> {
    #[serde(borrow, default)]
    sub_topics: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub_topics: Option<Vec<Cow<'a, str>>>,
}

const BAD_TOPIC_CLAIMS: &str = "the token's sub_topics and pub_topics must be arrays of strings";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Subscribe,
    Publish,
}

/// Does `pattern` (a topic, or a prefix ending in `*`) match `topic`?
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.len() > prefix.len() && topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// May a connection holding `token` do `grant` on `topic`? Without a token (no
/// `--jwt-secret`), yes; otherwise its claims decide. `Err` is the reason for the client.
fn token_allows(token: Option<&Token>, grant: Grant, topic: &str) -> Result<(), &'static str> {
    let Some(token) = token else {
        return Ok(());
    };
    let claims: TopicClaims<'_> =
        serde_json::from_str(token.claims_json()).map_err(|_| BAD_TOPIC_CLAIMS)?;
    let list = match grant {
        Grant::Subscribe => claims.sub_topics,
        Grant::Publish => claims.pub_topics,
    };
    match list {
        None => Ok(()),
        Some(l) if l.iter().any(|p| topic_matches(p, topic)) => Ok(()),
        Some(_) => Err(match grant {
            Grant::Subscribe => "the token does not allow subscribing to this topic",
            Grant::Publish => "the token does not allow publishing to this topic",
        }),
    }
}

/// Checks an upgrade's query string (percent-decoded, as `URLSearchParams` writes it) and
/// returns its `topics` (several `topics=` are joined). An unknown parameter (`topic=` for
/// `topics=`) or an empty `topics=` is a 400 naming it rather than a connection that
/// silently subscribes to nothing.
fn upgrade_topics(req: &Request<'_>) -> Result<Option<String>, HttpError> {
    let mut topics: Option<String> = None;
    for (name, value) in req.query_pairs() {
        match name.as_ref() {
            "topics" => {
                if value.split(',').all(str::is_empty) {
                    return Err(HttpError::new(
                        400,
                        "?topics= is empty: give a comma-separated list (topics=news,sport)",
                    ));
                }
                let list = topics.get_or_insert_with(String::new);
                if !list.is_empty() {
                    list.push(',');
                }
                list.push_str(&value);
            }
            "token" => {}
            n if n.starts_with(SINCE_PREFIX) => {}
            other => {
                return Err(HttpError::owned(
                    400,
                    format!(
                        "unknown query parameter {} (known: topics, token, since.<topic>)",
                        shown(other)
                    ),
                ))
            }
        }
    }
    Ok(topics)
}

/// A peer's value as quoted in an answer or a log line: escaped, at most 64 characters.
fn shown(value: &str) -> String {
    let mut out: String = format!("{:?}", value.chars().take(64).collect::<String>());
    if value.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// A connection's state: its subscriptions.
#[derive(Default)]
pub struct PushConn {
    subs: Subscriptions,
}

fn json_response(status: u16, body: String) -> HttpResponse {
    let mut r = HttpResponse::text(status, body + "\n");
    r.content_type = "application/json";
    r
}

impl Handler for Push {
    type State = PushConn;
    type Msg = HubMsg;

    fn on_open<'r>(
        &mut self,
        req: &Request<'r>,
        conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, PushConn>, HttpError> {
        let mut state = PushConn::default();
        if req.path != self.cfg.ws_path {
            return Err(HttpError::owned(
                404,
                format!(
                    "no WebSocket endpoint at {}: connect to {}",
                    shown(req.path),
                    self.cfg.ws_path
                ),
            ));
        }
        let topics = upgrade_topics(req)?;
        if let Some(list) = topics {
            let topics: Vec<&str> = list.split(',').filter(|t| !t.is_empty()).collect();
            if topics.len() > self.cfg.max_topics_per_conn {
                return Err(HttpError::new(400, "too many topics in ?topics="));
            }
            for t in &topics {
                validate_topic(t)
                    .map_err(|r| HttpError::owned(400, format!("topic {}: {r}", shown(t))))?;
            }
            for t in &topics {
                token_allows(conn.token(), Grant::Subscribe, t).map_err(|r| {
                    HttpError::new(
                        403,
                        if r == BAD_TOPIC_CLAIMS {
                            r
                        } else {
                            "the token does not allow a topic of ?topics="
                        },
                    )
                })?;
            }
            for t in topics {
                // Validated above; the limit was checked too.
                // Decoded as the topics were (a browser writes `since.news%2Fuk`).
                let since =
                    match req
                        .query_pairs()
                        .find(|(k, _)| k.strip_prefix(SINCE_PREFIX) == Some(t))
                    {
                        Some((_, v)) => Some(parse_since(&v).ok_or_else(|| {
                            HttpError::new(400, "since.TOPIC must be OFFSET:EPOCH")
                        })?),
                        None => None,
                    };
                let max = self.cfg.max_topics_per_conn;
                let _ = match since {
                    Some(p) => self
                        .hub
                        .subscribe_since(&mut state.subs, t, conn.id, max, p),
                    None => self.hub.subscribe(&mut state.subs, t, conn.id, max),
                };
            }
        }
        Ok(Accept::new(state))
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, PushConn>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            ctx.send_text(&error_json(
                "binary messages are not understood; send JSON text",
                None,
            ));
            return;
        };
        let cmd: Command<'_> = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                ctx.send_text(&error_json(&format!("invalid JSON command: {e}"), None));
                return;
            }
        };
        let topic = cmd.topic.as_deref();
        let Some(topic) = topic else {
            ctx.send_text(&error_json(
                &format!("`{}` needs a \"topic\"", cmd.op),
                None,
            ));
            return;
        };
        match cmd.op.as_ref() {
            "subscribe" => {
                if let Err(r) = token_allows(ctx.token(), Grant::Subscribe, topic) {
                    ctx.send_text(&error_json(r, Some(topic)));
                    return;
                }
                let id = ctx.id();
                let max = self.cfg.max_topics_per_conn;
                let subs = &mut ctx.state().subs;
                let result = match cmd.since {
                    // Answered at the turn's end, with the messages it missed.
                    Some(since) => {
                        let since = Position {
                            offset: since.offset,
                            epoch: since.epoch.as_ref().into(),
                        };
                        match self.hub.subscribe_since(subs, topic, id, max, since) {
                            Ok(true) => return,
                            Ok(false) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                    None => match self.hub.subscribe_acked(subs, topic, id, max) {
                        Ok(Ack::Later) => return,
                        Ok(Ack::Now(pos)) => Ok(pos),
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(pos) => match pos.or_else(|| self.hub.position(topic)) {
                        Some(p) => ctx.send_text(&format!(
                            "{{\"op\":\"subscribed\",\"topic\":{},{}}}",
                            json_str(topic),
                            position_json(Some(&p))
                        )),
                        None => ctx.send_text(&format!(
                            "{{\"op\":\"subscribed\",\"topic\":{}}}",
                            json_str(topic)
                        )),
                    },
                    Err(e) => ctx.send_text(&error_json(&e.to_string(), Some(topic))),
                }
            }
            "unsubscribe" => {
                if self.hub.unsubscribe(&mut ctx.state().subs, topic) {
                    ctx.send_text(&format!(
                        "{{\"op\":\"unsubscribed\",\"topic\":{}}}",
                        json_str(topic)
                    ));
                } else {
                    ctx.send_text(&error_json("not subscribed", Some(topic)));
                }
            }
            "publish" => {
                if !self.cfg.allow_ws_publish {
                    ctx.send_text(&error_json(
                        "publishing over WebSocket is not allowed on this server",
                        Some(topic),
                    ));
                    return;
                }
                if let Err(r) = validate_topic(topic) {
                    ctx.send_text(&error_json(r, Some(topic)));
                    return;
                }
                if let Err(r) = token_allows(ctx.token(), Grant::Publish, topic) {
                    ctx.send_text(&error_json(r, Some(topic)));
                    return;
                }
                let Some(data) = cmd.data else {
                    ctx.send_text(&error_json("`publish` needs \"data\"", Some(topic)));
                    return;
                };
                // A JSON string is sent as its text; any other JSON value as its JSON text.
                let payload: Cow<'_, str> = match serde_json::from_str::<Cow<'_, str>>(data.get()) {
                    Ok(s) => s,
                    Err(_) => Cow::Borrowed(data.get()),
                };
                let topic = topic.to_string();
                self.publish(ReplyTo::Ws(ctx.id()), &topic, payload.as_bytes(), true);
            }
            other => ctx.send_text(&error_json(
                &format!("unknown op `{other}` (use subscribe, unsubscribe or publish)"),
                Some(topic),
            )),
        }
    }

    fn on_close(&mut self, _id: ConnId, state: &mut PushConn, _code: u16, _reason: &str) {
        self.hub.remove_all(&mut state.subs);
    }

    fn on_http_head(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        refuse_publish_head(&self.cfg, req)
    }

    fn on_http(&mut self, req: &Request<'_>, body: &[u8], conn: &ConnInfo<'_>) -> HttpReply {
        if req.path == "/metrics" {
            if req.method != "GET" {
                return HttpReply::Respond(HttpResponse::text(405, "use GET\n"));
            }
            self.metrics_waiting.push(conn.id);
            return HttpReply::Defer;
        }
        let Some(topic) = req.path.strip_prefix("/publish/") else {
            return HttpReply::NotFound;
        };
        // Checked on the head already; again here for a body that came with it.
        if let Some(r) = refuse_publish_head(&self.cfg, req) {
            return HttpReply::Respond(r);
        }
        let text = is_text_type(req.content_type.unwrap_or(""));
        if text && simdutf8::basic::from_utf8(body).is_err() {
            return HttpReply::Respond(json_response(
                400,
                error_json("a text content type needs a UTF-8 body", Some(topic)),
            ));
        }
        let topic = topic.to_string();
        self.publish(ReplyTo::Http(conn.id), &topic, body, text);
        HttpReply::Defer
    }

    fn on_start(&mut self, remote: Remote<HubMsg>) -> std::io::Result<()> {
        self.hub.start(Box::new(remote))
    }

    fn healthz(&mut self) -> HttpResponse {
        match self.hub.broker_status() {
            Some(b) if !b.up.load(Relaxed) => {
                let why = b.last_error.lock().map(|e| e.clone()).unwrap_or_default();
                HttpResponse::text(
                    200,
                    format!(
                        "degraded: broker {} unavailable ({why}); publishes answer 503\n",
                        self.hub.broker_url().unwrap_or_default()
                    ),
                )
            }
            _ => HttpResponse::text(200, "ok\n"),
        }
    }

    fn on_turn(&mut self, api: &mut ShardApi<'_, Self>) {
        for id in std::mem::take(&mut self.metrics_waiting) {
            let text = super::metrics::render(api.all_stats(), &self.app_metrics());
            let mut r = HttpResponse::text(200, text);
            r.content_type = super::metrics::METRICS_CONTENT_TYPE;
            api.respond(id, r);
        }
        self.hub.on_turn(&mut Port(api), &recovered_json);
        self.answer(api);
    }

    fn status_counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let st = self.hub.stats();
        out.push(("publishes", st.publishes.load(Relaxed)));
        out.push(("deliveries", st.deliveries.load(Relaxed)));
    }

    fn on_shard_msg(&mut self, api: &mut ShardApi<'_, Self>, msg: HubMsg) {
        self.hub.on_msg(&mut Port(api), msg, &recovered_json);
        self.answer(api);
    }
}

/// The checks of `POST /publish/{topic}` that need only the head (method, publish key, topic
/// name), with `on_http`'s answers: a request refused here is answered before its body is read.
fn refuse_publish_head(cfg: &PushConfig, req: &Request<'_>) -> Option<HttpResponse> {
    let topic = req.path.strip_prefix("/publish/")?;
    if req.method != "POST" {
        let mut r = HttpResponse::text(405, "use POST\n");
        r.headers.push(("Allow", "POST".into()));
        return Some(r);
    }
    let Some(key) = cfg.publish_key.as_deref() else {
        let reason = "publishing over HTTP is disabled: start the server with --publish-key";
        return Some(json_response(403, error_json(reason, Some(topic))));
    };
    let authorized = req
        .authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|k| constant_time_eq(k.trim().as_bytes(), key.as_bytes()));
    if !authorized {
        let reason = "missing or wrong API key (Authorization: Bearer KEY)";
        let mut r = json_response(401, error_json(reason, Some(topic)));
        r.headers.push(("WWW-Authenticate", "Bearer".into()));
        return Some(r);
    }
    validate_topic(topic)
        .err()
        .map(|reason| json_response(400, error_json(reason, Some(topic))))
}

/// Does a publish with this `Content-Type` go out as a text frame? `text/*`,
/// `application/json` (and `+json`) and `application/x-www-form-urlencoded` (curl's `--data`
/// default; the body is sent as is, not decoded) do; anything else, or none, is binary.
fn is_text_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let media = media.to_ascii_lowercase();
    media.starts_with("text/")
        || media == "application/json"
        || media.ends_with("+json")
        || media == "application/x-www-form-urlencoded"
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("news", "news"));
        assert!(!topic_matches("news", "news.uk"));
        assert!(topic_matches("news.*", "news.uk"));
        assert!(topic_matches("news.*", "news.uk.london"));
        assert!(!topic_matches("news.*", "news."));
        assert!(!topic_matches("news.*", "news"));
        assert!(!topic_matches("news.*", "newsroom"));
        assert!(topic_matches("*", "anything"));
    }

    #[test]
    fn text_content_types() {
        for ct in [
            "text/plain",
            "Text/Plain; charset=utf-8",
            "application/json",
            "application/ld+json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(is_text_type(ct), "{ct}");
        }
        for ct in [
            "",
            "application/octet-stream",
            "image/png",
            "multipart/form-data",
        ] {
            assert!(!is_text_type(ct), "{ct}");
        }
    }
}
