//! One connection's slab entry and its outgoing path. The entry of an idle open connection is
//! the whole of its user-space cost: a socket, a few ticks and flags, and three pointers that
//! stay null until something is pending. Owns per-connection state; the shard drives it.

use std::net::IpAddr;

use mio::net::TcpStream;

use super::auth::Token;
use super::compress::{Recoded, ShardDeflate};
use super::stats::{Counter, ShardStats};
use crate::common::SharedFrame;
use crate::proto::deflate::Packed;
use crate::proto::frame::{encode_header, MAX_HEADER_LEN};
use crate::proto::{Connection, Decoder, OpCode, Phase as WsPhase, Tick, Transmit};
use crate::rt::write_queue::WriteQueue;

/// Where a connection is in its life, as the shard sees it: its `proto::Connection`'s phase
/// with the `HTTP` and `DRAINING` flags (read it with `Conn::phase`; it is not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP request head (deadline: handshake timeout).
    Handshaking,
    /// A plain HTTP request's head is read, counted and let through by the app
    /// (`on_http_head`); waiting for its body (deadline: handshake timeout, from accept).
    HttpBody,
    /// WebSocket open (deadlines: ping interval, pong timeout, idle timeout).
    Open,
    /// We sent a close frame and wait for the peer's (deadline: close timeout).
    Closing,
    /// A plain HTTP request the app answers later (deadline: close timeout, then 504).
    HttpWait,
    /// Our last bytes are queued (close frame or HTTP response); once written, the write side
    /// is shut down (deadline: close timeout).
    Finishing,
    /// Write side shut down; input is read and discarded until EOF (deadline: close timeout),
    /// so the peer gets our last bytes rather than a reset.
    Draining,
}

// Flags.
/// A plain HTTP request, not answered yet (`HttpBody`, `HttpWait`).
pub(crate) const HTTP: u8 = 1 << 0;
pub(crate) const READ_PAUSED: u8 = 1 << 1;
pub(crate) const WANT_WRITABLE: u8 = 1 << 2;
/// Write side shut down; input is discarded until EOF (`Draining`).
pub(crate) const DRAINING: u8 = 1 << 3;
/// The app saw `on_open` and is owed one `on_close`.
pub(crate) const APP_OPEN: u8 = 1 << 4;
/// In the shard's list of connections to flush at the end of the loop turn.
pub(crate) const DIRTY: u8 = 1 << 5;
/// In the shard's list of connections with input left to read.
pub(crate) const PENDING_READ: u8 = 1 << 6;
/// A TLS connection: its state is in the shard's `tls` side table under the same key.
pub(crate) const TLS: u8 = 1 << 7;

/// Input bytes kept between reads: an unfinished request head or frame header, or a control
/// frame cut by the read boundary. Null when there are none.
/// Boxed so the idle case costs one null pointer (8 bytes) rather than an empty `Vec` (24).
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub(crate) struct Stash(Option<Box<Vec<u8>>>);

#[allow(clippy::box_collection)]
impl Stash {
    /// Keeps a buffer as it is (freed when empty).
    pub fn set(&mut self, v: Box<Vec<u8>>) {
        self.0 = if v.is_empty() { None } else { Some(v) };
    }

    /// The bytes kept (none: empty).
    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |v| &v[..])
    }

    pub fn take(&mut self) -> Option<Box<Vec<u8>>> {
        self.0.take()
    }

    /// Keeps `rest` (copied); an empty rest frees the stash.
    pub fn keep(&mut self, rest: &[u8], mut reuse: Option<Box<Vec<u8>>>) {
        if rest.is_empty() {
            self.0 = None;
            return;
        }
        let v = reuse.get_or_insert_with(|| Box::new(Vec::with_capacity(rest.len())));
        v.clear();
        v.extend_from_slice(rest);
        v.shrink_to(rest.len().max(256));
        self.0 = reuse;
    }
}

/// What only some connections carry: a verified token, a count in the per-IP table. Kept in
/// the shard's side table (`Core::exts`, by slab key), which stays empty while authentication
/// and per-IP limits are off: the slab entry does not grow for them.
#[derive(Debug, Default)]
pub(crate) struct ConnExt {
    /// The address this connection is counted under in the per-IP table (released on removal).
    pub counted_ip: Option<IpAddr>,
    /// The tick at which its token expires, when expired tokens close connections.
    pub expires_at: Option<u32>,
    /// The tick at which it has lived `--max-lifetime` (jittered), when that is on.
    pub max_life_at: Option<u32>,
    pub token: Option<Token>,
    /// A deferred plain HTTP request's CORS-allowed `Origin`, echoed in its answer.
    pub cors_origin: Option<Box<str>>,
}

pub(crate) struct Conn<S> {
    pub sock: TcpStream,
    /// The lifecycle (phase, the tick its deadlines count from, an outstanding ping): five
    /// bytes, in what was the phase byte and a tick.
    pub ws: Connection,
    pub flags: u8,
    /// permessage-deflate as negotiated (`Packed::OFF` without it); fits in padding.
    pub ext: Packed,
    pub gen: u32,
    /// The tick of this connection's live timer entry (`timer::NOT_ARMED` when none).
    pub armed_at: u32,
    pub decoder: Decoder,
    pub stash: Stash,
    pub queue: Option<Box<WriteQueue>>,
    /// The app's state, present while the connection is open for the app.
    pub state: Option<S>,
}

impl<S> Conn<S> {
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    pub fn phase(&self) -> Phase {
        match self.ws.phase() {
            WsPhase::Handshaking if self.flags & HTTP != 0 => Phase::HttpBody,
            WsPhase::Handshaking => Phase::Handshaking,
            WsPhase::Open => Phase::Open,
            WsPhase::CloseSent => Phase::Closing,
            _ if self.flags & DRAINING != 0 => Phase::Draining,
            _ if self.flags & HTTP != 0 => Phase::HttpWait,
            WsPhase::CloseReceived | WsPhase::Closed => Phase::Finishing,
        }
    }

    /// Our last bytes are queued (a close frame, an HTTP answer): once written, the write side
    /// is shut down (`Finishing`).
    pub fn finish(&mut self, now: Tick) {
        self.flags &= !HTTP;
        self.ws.finish(now);
    }
}

/// The outgoing side of one connection during an event. While the shard's cork buffer belongs
/// to this connection and its queue is empty, frames are encoded straight into the cork and
/// written with one syscall when the event is done; otherwise they go to the queue.
pub(crate) struct Out<'a> {
    pub queue: &'a mut Option<Box<WriteQueue>>,
    /// The shard's cork buffer, when it belongs to this connection.
    pub cork: Option<&'a mut Vec<u8>>,
    /// Its lifecycle: nothing is sent once its close frame is.
    pub ws: &'a mut Connection,
    pub now: Tick,
    pub stats: &'a ShardStats,
    /// The shard's deflate contexts, for a connection that negotiated permessage-deflate.
    pub deflate: Option<OutDeflate<'a>>,
}

pub(crate) struct OutDeflate<'a> {
    pub ctx: &'a mut ShardDeflate,
    pub key: usize,
    pub ext: Packed,
}

impl<'a> Out<'a> {
    /// Control frames into a connection's queue, outside its read (no cork, no deflate: a
    /// deadline's ping or close, a close the server starts).
    pub fn to_queue<S>(conn: &'a mut Conn<S>, now: Tick, stats: &'a ShardStats) -> Self {
        Out {
            queue: &mut conn.queue,
            cork: None,
            ws: &mut conn.ws,
            now,
            stats,
            deflate: None,
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len()) + self.cork.as_ref().map_or(0, |c| c.len())
    }

    fn queue_is_empty(&self) -> bool {
        self.queue.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Runs `f` on the connection's lifecycle, which transmits through this output. (It is
    /// five bytes and `Copy`: taken out meanwhile, put back after.)
    pub fn lifecycle<R>(&mut self, f: impl FnOnce(&mut Connection, &mut Self) -> R) -> R {
        let mut ws = *self.ws;
        let r = f(&mut ws, self);
        *self.ws = ws;
        r
    }

    /// Encodes and queues one unmasked frame.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        if !self.ws.may_send() {
            return; // Nothing may follow a close frame.
        }
        if !opcode.is_control() {
            self.stats.inc(Counter::MessagesOut);
        }
        if let Some(d) = self.deflate.as_mut() {
            if d.ctx.wants(d.ext, opcode, payload.len()) {
                let (head, n, body) = d.ctx.compress(d.key, d.ext, opcode, payload, self.stats);
                self.raw(&head[..n], &body);
                if let Some(d) = self.deflate.as_mut() {
                    d.ctx.give_back(body);
                }
                return;
            }
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, payload.len() as u64, None);
        self.raw(&header[..n], payload);
    }

    /// Queues bytes that are already a frame (or an HTTP response).
    pub fn raw(&mut self, head: &[u8], body: &[u8]) {
        if self.queue_is_empty() {
            if let Some(cork) = self.cork.as_deref_mut() {
                cork.extend_from_slice(head);
                cork.extend_from_slice(body);
                return;
            }
        }
        let q = self.queue.get_or_insert_with(Default::default);
        q.push_bytes(head);
        q.push_bytes(body);
    }

    /// Queues a shared, already encoded frame.
    pub fn shared(&mut self, frame: &SharedFrame) {
        if !self.ws.may_send() {
            return;
        }
        self.stats.inc(Counter::MessagesOut);
        let frame = match self.deflate.as_mut() {
            Some(d) => match d.ctx.recode(d.key, d.ext, frame, self.stats) {
                Recoded::Same => frame.bytes().clone(),
                Recoded::Shared(z) => z,
                Recoded::Owned(v) => {
                    self.raw(&v, &[]);
                    return;
                }
            },
            None => frame.bytes().clone(),
        };
        let q = self.queue.get_or_insert_with(Default::default);
        // Keep order: whatever is corked goes first.
        if let Some(cork) = self.cork.as_deref_mut() {
            if !cork.is_empty() {
                q.push_bytes(cork);
                cork.clear();
            }
        }
        q.push_shared(frame);
    }

    /// Starts the close handshake: queues a close frame, after which nothing is sent.
    pub fn close(&mut self, code: u16, reason: &str) {
        let now = self.now;
        self.lifecycle(|ws, out| ws.close(code, reason, now, out));
    }
}

/// The lifecycle's own frames (pong, ping, close) go out as they are, unmasked, uncompressed.
impl Transmit for Out<'_> {
    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, payload.len() as u64, None);
        self.raw(&header[..n], payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_entry_stays_small() {
        // A socket, 3 null-when-idle pointers (decoder, stash, queue), 3 ticks (one is the
        // lifecycle's, whose phase byte is the fourth of these), and phase, flags, deflate
        // params and the app state's tag in 4 bytes: the deflate byte lives in what was padding. 48 bytes in release builds (mio's socket is 4 bytes there, more
        // with debug assertions). Anything else per connection (TLS, a token) goes to a side
        // table, so a plaintext connection does not pay for it.
        let socket = std::mem::size_of::<TcpStream>();
        assert_eq!(
            std::mem::size_of::<Conn<()>>(),
            (socket + 3 * 8 + 3 * 4 + 4).next_multiple_of(8)
        );
    }
}
