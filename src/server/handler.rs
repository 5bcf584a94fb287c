//! The application API: a `Handler` gets open, message, close and error events, and a `Ctx` to
//! answer on the connection. One handler per shard (cloned), so no locks on the hot path.
//! Owns the contract between the reactor and apps; must not know about sockets' readiness.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;

pub use super::api::{Remote, ShardApi};
pub use super::auth::Token;
use super::conn::Out;
pub use crate::common::{ConnId, Delivery, SharedFrame};
use crate::proto::handshake::{HttpError, Request};
use crate::proto::{Message, OpCode, ProtocolError};

/// The app's yes to an upgrade: the connection's state and an optional subprotocol (one the
/// client offered).
pub struct Accept<'r, S> {
    pub state: S,
    pub protocol: Option<&'r str>,
}

impl<S> Accept<'_, S> {
    pub fn new(state: S) -> Self {
        Self {
            state,
            protocol: None,
        }
    }
}

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnError {
    /// The peer broke RFC 6455; the connection was closed with this code.
    Protocol(ProtocolError),
    /// The socket failed.
    Io(io::Error),
    /// The peer did not read fast enough and its queue passed the cap.
    SlowConsumer,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Protocol(e) => write!(f, "protocol error: {e}"),
            ConnError::Io(e) => write!(f, "i/o error: {e}"),
            ConnError::SlowConsumer => f.write_str("slow consumer"),
        }
    }
}

/// A plain HTTP answer from `Handler::on_http`.
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }
}

/// What the reactor knows about a connection being opened.
pub struct ConnInfo<'a> {
    pub id: ConnId,
    pub(crate) sock: &'a TcpStream,
    pub(crate) token: Option<&'a Token>,
}

impl<'a> ConnInfo<'a> {
    /// The peer's address (asks the kernel; not stored per connection).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }

    /// The verified token of the upgrade request (always there when the server runs with
    /// `--jwt-secret`, never otherwise).
    pub fn token(&self) -> Option<&'a Token> {
        self.token
    }
}

/// How the app answers a plain HTTP request.
pub enum HttpReply {
    /// Answer now.
    Respond(HttpResponse),
    /// Answer later with `ShardApi::respond` (e.g. once other shards replied); the connection
    /// waits up to the close timeout, then gets 504.
    Defer,
    /// Not the app's: 404.
    NotFound,
}

/// An application. Cloned once per shard.
pub trait Handler: Clone + Send + 'static {
    /// Per-connection state, kept in the connection's slab entry: keep it small.
    type State: Send + 'static;

    /// What shards of this app send each other (`ShardApi::post`). `()` when unused.
    type Msg: Send + 'static;

    /// A valid upgrade request arrived: accept (with state and maybe a subprotocol) or refuse
    /// with an HTTP status (401, 403, ...).
    fn on_open<'r>(
        &mut self,
        req: &Request<'r>,
        conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, Self::State>, HttpError>;

    /// A whole message arrived.
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::State>, msg: Message<'_>);

    /// The connection is closed for the app (peer's close code, the code the server failed it
    /// with, or 1006 when it ended without a close handshake). Called once per opened
    /// connection; the state is dropped after it.
    fn on_close(&mut self, _id: ConnId, _state: &mut Self::State, _code: u16, _reason: &str) {}

    /// The connection failed; `on_close` follows.
    fn on_error(&mut self, _id: ConnId, _state: &mut Self::State, _err: &ConnError) {}

    /// Called once, before the shards start and before the handler is cloned for them: the
    /// place to start the app's own threads, which reach the shards through `remote`.
    fn on_start(&mut self, _remote: Remote<Self::Msg>) -> io::Result<()> {
        Ok(())
    }

    /// The answer to `GET /healthz` (200 `ok` unless the app knows better, e.g. degraded
    /// while its broker is unreachable).
    fn healthz(&mut self) -> HttpResponse {
        HttpResponse::text(200, "ok\n")
    }

    /// A plain HTTP request's head (not an upgrade, not `/healthz`) is read, before its body
    /// is: `Some` answers it now and closes the connection without reading or keeping the body
    /// (refuse a request on its method, path or credentials before buffering up to
    /// `--max-http-body` for it); `None` goes on to `on_http` once the body is in. Called once
    /// per request.
    fn on_http_head(&mut self, _req: &Request<'_>) -> Option<HttpResponse> {
        None
    }

    /// A plain HTTP request (not an upgrade) other than `GET /healthz`.
    fn on_http(&mut self, _req: &Request<'_>, _body: &[u8], _conn: &ConnInfo<'_>) -> HttpReply {
        HttpReply::NotFound
    }

    /// Once per loop turn, after the turn's events: the place to act on other connections
    /// (deliver broadcasts, answer deferred requests, post to other shards).
    fn on_turn(&mut self, _api: &mut ShardApi<'_, Self>) {}

    /// The app's own counters for the status page (e.g. publishes, deliveries), as totals
    /// across shards; the page shows them per second. Called once a second, and only while
    /// someone watches the page.
    fn status_counters(&self, _out: &mut Vec<(&'static str, u64)>) {}

    /// A message another shard posted to this one.
    fn on_shard_msg(&mut self, _api: &mut ShardApi<'_, Self>, _msg: Self::Msg) {}
}

/// The context of an event on one open connection.
pub struct Ctx<'a, S> {
    pub(crate) id: ConnId,
    pub(crate) state: &'a mut S,
    pub(crate) sock: &'a TcpStream,
    pub(crate) token: Option<&'a Token>,
    pub(crate) out: Out<'a>,
}

impl<S> Ctx<'_, S> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn state(&mut self) -> &mut S {
        self.state
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }

    /// The connection's verified token (see `ConnInfo::token`).
    pub fn token(&self) -> Option<&Token> {
        self.token
    }

    /// Bytes queued for this connection and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.queued()
    }

    pub fn send_text(&mut self, text: &str) {
        self.out.frame(OpCode::Text, text.as_bytes());
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.out.frame(OpCode::Binary, bytes);
    }

    /// Queues a frame encoded once and shared (a broadcast).
    pub fn send_shared(&mut self, frame: &SharedFrame) {
        self.out.shared(frame);
    }

    pub fn ping(&mut self, payload: &[u8]) {
        let n = payload.len().min(125);
        self.out.frame(OpCode::Ping, &payload[..n]);
    }

    /// Starts the closing handshake with `code` (1000, or 3000-4999 for apps).
    pub fn close(&mut self, code: u16, reason: &str) {
        self.out.close(code, reason);
    }
}
