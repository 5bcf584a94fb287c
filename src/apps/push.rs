//! The push server: clients subscribe to topics (in the URL or by JSON messages), publishers
//! POST to `/publish/{topic}` (or send `{"op":"publish"}` when allowed), and every subscriber
//! in every shard gets the frame, encoded once per publish and shared by reference. Owns the
//! app protocol; delivery goes through `ShardApi`, topics through `pubsub::Registry`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proto::frame::encode_frame;
use crate::proto::handshake::{HttpError, Request};
use crate::proto::OpCode;
use crate::pubsub::{validate_topic, Registry, Subscriptions};
use crate::server::{
    Accept, ConnId, ConnInfo, Ctx, Delivery, Handler, HttpReply, HttpResponse, Message, ShardApi,
    Token,
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
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            publish_key: None,
            allow_ws_publish: false,
            envelope: false,
            max_topics_per_conn: 64,
        }
    }
}

/// Counters every shard of the app shares (bumped once per publish per shard, not per
/// delivery).
#[derive(Default)]
struct Shared {
    publishes: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_drops: AtomicU64,
    seq: AtomicU64,
    next_publish: AtomicU64,
    slow_by_topic: Mutex<HashMap<String, u64>>,
}

/// Who waits for the count of subscribers a publish was queued for.
#[derive(Debug, Clone, Copy)]
enum ReplyTo {
    Http(ConnId),
    Ws(ConnId),
}

pub enum PushMsg {
    /// Deliver to this shard's subscribers, then tell `origin` how many.
    Publish {
        id: u64,
        origin: u16,
        topic: Arc<str>,
        frame: Arc<[u8]>,
    },
    Count {
        id: u64,
        count: u64,
    },
}

struct Outgoing {
    id: u64,
    reply: ReplyTo,
    topic: Arc<str>,
    frame: Arc<[u8]>,
}

struct Waiting {
    reply: ReplyTo,
    topic: Arc<str>,
    remaining: usize,
    total: u64,
}

pub struct Push {
    cfg: Arc<PushConfig>,
    shared: Arc<Shared>,
    /// This shard's topics (a clone starts empty).
    registry: Registry,
    outgoing: Vec<Outgoing>,
    waiting: HashMap<u64, Waiting>,
    metrics_waiting: Vec<ConnId>,
}

impl Clone for Push {
    /// A clone is another shard's handler: the same settings and shared counters, its own
    /// (empty) topics and pending work.
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            shared: self.shared.clone(),
            registry: Registry::default(),
            outgoing: Vec::new(),
            waiting: HashMap::new(),
            metrics_waiting: Vec::new(),
        }
    }
}

impl Push {
    pub fn new(cfg: PushConfig) -> Self {
        Self {
            cfg: Arc::new(cfg),
            shared: Arc::default(),
            registry: Registry::default(),
            outgoing: Vec::new(),
            waiting: HashMap::new(),
            metrics_waiting: Vec::new(),
        }
    }

    /// Encodes the frame every subscriber gets, once.
    fn encode(&self, topic: &str, payload: &[u8], text: bool) -> Arc<[u8]> {
        let mut frame = Vec::with_capacity(payload.len() + 64);
        if self.cfg.envelope {
            let seq = self.shared.seq.fetch_add(1, Relaxed) + 1;
            let data = if text {
                serde_json::to_string(&String::from_utf8_lossy(payload)).unwrap_or_default()
            } else {
                format!(
                    "\"{}\",\"encoding\":\"base64\"",
                    base64::engine::general_purpose::STANDARD.encode(payload)
                )
            };
            let body = format!(
                "{{\"topic\":{},\"seq\":{seq},\"data\":{data}}}",
                json_str(topic)
            );
            encode_frame(&mut frame, true, OpCode::Text, body.as_bytes(), None);
        } else {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            encode_frame(&mut frame, true, op, payload, None);
        }
        frame.into()
    }

    fn queue_publish(&mut self, reply: ReplyTo, topic: &str, payload: &[u8], text: bool) {
        let frame = self.encode(topic, payload, text);
        self.outgoing.push(Outgoing {
            id: self.shared.next_publish.fetch_add(1, Relaxed),
            reply,
            topic: Arc::from(topic),
            frame,
        });
    }

    /// Queues the frame for this shard's subscribers of `topic`; returns how many.
    fn deliver_local(
        &mut self,
        api: &mut ShardApi<'_, Self>,
        topic: &str,
        frame: &Arc<[u8]>,
    ) -> u64 {
        let mut queued = 0;
        let mut slow = 0;
        for id in self.registry.subscribers(topic) {
            match api.deliver(id, frame) {
                Delivery::Queued => queued += 1,
                Delivery::SlowConsumer => {
                    queued += 1;
                    slow += 1;
                }
                Delivery::Dropped => slow += 1,
                Delivery::Gone => {}
            }
        }
        self.shared.deliveries.fetch_add(queued, Relaxed);
        if slow > 0 {
            self.shared.slow_consumer_drops.fetch_add(slow, Relaxed);
            if let Ok(mut m) = self.shared.slow_by_topic.lock() {
                *m.entry(topic.to_string()).or_default() += slow;
            }
        }
        queued
    }

    fn reply(&mut self, api: &mut ShardApi<'_, Self>, w: Waiting) {
        let body = format!(
            "{{\"topic\":{},\"subscribers\":{}}}",
            json_str(&w.topic),
            w.total
        );
        match w.reply {
            ReplyTo::Http(id) => {
                let mut resp = HttpResponse::text(200, body + "\n");
                resp.content_type = "application/json";
                api.respond(id, resp);
            }
            ReplyTo::Ws(id) => {
                let ack = format!(
                    "{{\"op\":\"published\",\"topic\":{},\"subscribers\":{}}}",
                    json_str(&w.topic),
                    w.total
                );
                api.send_text(id, &ack);
            }
        }
    }

    fn app_metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE fanout_push_publishes_total counter");
        let _ = writeln!(
            out,
            "fanout_push_publishes_total {}",
            self.shared.publishes.load(Relaxed)
        );
        let _ = writeln!(out, "# TYPE fanout_push_deliveries_total counter");
        let _ = writeln!(
            out,
            "fanout_push_deliveries_total {}",
            self.shared.deliveries.load(Relaxed)
        );
        let _ = writeln!(out, "# TYPE fanout_push_slow_consumer_drops_total counter");
        let _ = writeln!(
            out,
            "fanout_push_slow_consumer_drops_total {}",
            self.shared.slow_consumer_drops.load(Relaxed)
        );
        if let Ok(m) = self.shared.slow_by_topic.lock() {
            for (topic, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "fanout_push_slow_consumer_drops_by_topic{{topic={}}} {n}",
                    json_str(topic)
                );
            }
        }
        out
    }
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
    type Msg = PushMsg;

    fn on_open<'r>(
        &mut self,
        req: &Request<'r>,
        conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, PushConn>, HttpError> {
        let mut state = PushConn::default();
        if let Some(list) = req.query_param("topics") {
            let topics: Vec<&str> = list.split(',').filter(|t| !t.is_empty()).collect();
            if topics.len() > self.cfg.max_topics_per_conn {
                return Err(HttpError::new(400, "too many topics in ?topics="));
            }
            for t in &topics {
                validate_topic(t).map_err(|r| HttpError::new(400, r))?;
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
                let _ = self.registry.subscribe(
                    &mut state.subs,
                    t,
                    conn.id,
                    self.cfg.max_topics_per_conn,
                );
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
                let result = self
                    .registry
                    .subscribe(&mut ctx.state().subs, topic, id, max);
                match result {
                    Ok(_) => ctx.send_text(&format!(
                        "{{\"op\":\"subscribed\",\"topic\":{}}}",
                        json_str(topic)
                    )),
                    Err(e) => ctx.send_text(&error_json(&e.to_string(), Some(topic))),
                }
            }
            "unsubscribe" => {
                if self.registry.unsubscribe(&mut ctx.state().subs, topic) {
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
                self.queue_publish(ReplyTo::Ws(ctx.id()), &topic, payload.as_bytes(), true);
            }
            other => ctx.send_text(&error_json(
                &format!("unknown op `{other}` (use subscribe, unsubscribe or publish)"),
                Some(topic),
            )),
        }
    }

    fn on_close(&mut self, _id: ConnId, state: &mut PushConn, _code: u16, _reason: &str) {
        self.registry.remove_all(&mut state.subs);
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
        if req.method != "POST" {
            let mut r = HttpResponse::text(405, "use POST\n");
            r.headers.push(("Allow", "POST".into()));
            return HttpReply::Respond(r);
        }
        let Some(key) = self.cfg.publish_key.as_deref() else {
            return HttpReply::Respond(json_response(
                403,
                error_json(
                    "publishing over HTTP is disabled: start the server with --publish-key",
                    Some(topic),
                ),
            ));
        };
        let authorized = req
            .authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|k| constant_time_eq(k.trim().as_bytes(), key.as_bytes()));
        if !authorized {
            let mut r = json_response(
                401,
                error_json(
                    "missing or wrong API key (Authorization: Bearer KEY)",
                    Some(topic),
                ),
            );
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            return HttpReply::Respond(r);
        }
        if let Err(reason) = validate_topic(topic) {
            return HttpReply::Respond(json_response(400, error_json(reason, Some(topic))));
        }
        let ct = req.content_type.unwrap_or("").to_ascii_lowercase();
        let text = ct.starts_with("text/") || ct.starts_with("application/json");
        if text && simdutf8::basic::from_utf8(body).is_err() {
            return HttpReply::Respond(json_response(
                400,
                error_json("a text content type needs a UTF-8 body", Some(topic)),
            ));
        }
        let topic = topic.to_string();
        self.queue_publish(ReplyTo::Http(conn.id), &topic, body, text);
        HttpReply::Defer
    }

    fn on_turn(&mut self, api: &mut ShardApi<'_, Self>) {
        for id in std::mem::take(&mut self.metrics_waiting) {
            let text = super::metrics::render(api.all_stats(), &self.app_metrics());
            let mut r = HttpResponse::text(200, text);
            r.content_type = super::metrics::METRICS_CONTENT_TYPE;
            api.respond(id, r);
        }
        // The other shards get every publish of this turn first, woken now, so that they fan
        // out while this one does its own share.
        let outgoing = std::mem::take(&mut self.outgoing);
        for out in &outgoing {
            for s in 0..api.shards() as u16 {
                if s != api.index() {
                    api.post(
                        s,
                        PushMsg::Publish {
                            id: out.id,
                            origin: api.index(),
                            topic: out.topic.clone(),
                            frame: out.frame.clone(),
                        },
                    );
                }
            }
        }
        api.wake_posted();
        let others = api.shards() - 1;
        for out in outgoing {
            self.shared.publishes.fetch_add(1, Relaxed);
            let local = self.deliver_local(api, &out.topic, &out.frame);
            let w = Waiting {
                reply: out.reply,
                topic: out.topic,
                remaining: others,
                total: local,
            };
            if others == 0 {
                self.reply(api, w);
            } else {
                self.waiting.insert(out.id, w);
            }
        }
    }

    fn on_shard_msg(&mut self, api: &mut ShardApi<'_, Self>, msg: PushMsg) {
        match msg {
            PushMsg::Publish {
                id,
                origin,
                topic,
                frame,
            } => {
                let count = self.deliver_local(api, &topic, &frame);
                api.post(origin, PushMsg::Count { id, count });
            }
            PushMsg::Count { id, count } => {
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
                        self.reply(api, w);
                    }
                }
            }
        }
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
}
