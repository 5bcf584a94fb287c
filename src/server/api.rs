//! What an app may do to its shard outside one connection's event: deliver a shared frame to
//! any local connection, answer a deferred HTTP request, post to other shards. Owns no state;
//! lends the shard's connections for the length of one hook call.

use std::sync::{mpsc, Arc};

use slab::Slab;

use super::compress::{Recoded, ShardDeflate};
use super::config::SlowConsumerPolicy;
use super::conn::{Conn, ConnExt, Phase, DIRTY};
use super::handler::{ConnId, Delivery, Handler, HttpResponse, SharedFrame};
use super::stats::{Counter, ShardStats};
use crate::proto::frame::encode_frame;
use crate::proto::handshake;
use crate::proto::OpCode;
use crate::rt::write_queue::WriteQueue;

/// A shard's inbox, as the other shards see it.
pub(crate) struct ShardLink<M> {
    pub tx: mpsc::Sender<M>,
    pub waker: Arc<mio::Waker>,
}

/// Posts messages to the shards from a thread of the app's own (a broker's), outside any
/// shard. Cheap to clone.
pub struct Remote<M> {
    pub(crate) links: Arc<[ShardLink<M>]>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self {
            links: self.links.clone(),
        }
    }
}

impl<M: Send> Remote<M> {
    /// How many shards the server runs.
    pub fn shards(&self) -> usize {
        self.links.len()
    }

    /// Queues `msg` for `shard` (`Handler::on_shard_msg`) without waking it: wake it once
    /// after a batch. False if the shard is gone.
    pub fn post(&self, shard: u16, msg: M) -> bool {
        self.links
            .get(shard as usize)
            .is_some_and(|l| l.tx.send(msg).is_ok())
    }

    /// Wakes `shard` to handle what was posted to it.
    pub fn wake(&self, shard: u16) {
        if let Some(l) = self.links.get(shard as usize) {
            let _ = l.waker.wake();
        }
    }
}

pub struct ShardApi<'a, H: Handler> {
    pub(crate) index: u16,
    pub(crate) conns: &'a mut Slab<Conn<H::State>>,
    pub(crate) dirty: &'a mut Vec<(usize, u32)>,
    pub(crate) stats: &'a ShardStats,
    pub(crate) all_stats: &'a [Arc<ShardStats>],
    pub(crate) write_queue_limit: usize,
    pub(crate) policy: SlowConsumerPolicy,
    /// Connections a delivery found full under `disconnect`: closed at this turn's flush.
    pub(crate) slow: &'a mut Vec<(usize, u32)>,
    pub(crate) links: &'a [ShardLink<H::Msg>],
    pub(crate) wake: &'a mut [bool],
    pub(crate) now: u32,
    pub(crate) deflate: &'a mut ShardDeflate,
    /// Per-connection extensions (a deferred request's CORS origin).
    pub(crate) exts: &'a [Option<Box<ConnExt>>],
}

impl<H: Handler> ShardApi<'_, H> {
    /// This shard's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// How many shards the server runs.
    pub fn shards(&self) -> usize {
        self.links.len()
    }

    /// Every shard's counters (for metrics).
    pub fn all_stats(&self) -> &[Arc<ShardStats>] {
        self.all_stats
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        self.stats
    }

    fn mark_dirty(dirty: &mut Vec<(usize, u32)>, key: usize, conn: &mut Conn<H::State>) {
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            dirty.push((key, conn.gen));
        }
    }

    /// Queues a frame encoded once and shared by reference (`Arc`) on an open connection of
    /// this shard. Written at the end of the turn, with the connection's other output.
    ///
    /// A delivery never takes a queue past `--write-queue-limit` (an empty queue takes one
    /// frame of any size): a frame that does not fit is not queued. Under `pause` and
    /// `drop-oldest` it is dropped (`Delivery::Dropped`; drop-oldest first drops older
    /// broadcast frames to make room); under `disconnect` the connection is closed (1008) at
    /// this turn's flush (`Delivery::SlowConsumer`). Pausing cannot throttle a broadcast:
    /// only the peer's own input can be paused.
    pub fn deliver(&mut self, id: ConnId, frame: &SharedFrame) -> Delivery {
        let limit = self.write_queue_limit;
        let key = id.key as usize;
        let Some(conn) = open_conn(self.conns, self.index, id) else {
            return Delivery::Gone;
        };
        if !conn.ws.may_send() {
            return Delivery::Gone;
        }
        // Checked on the frame as given, before any per-connection copy (a recompressed frame
        // is no larger in practice, and an owned one would be memory taken).
        let queued = conn.queued();
        if queued > 0 && queued.saturating_add(frame.bytes().len()) > limit {
            match self.policy {
                SlowConsumerPolicy::Disconnect => {
                    // Nothing may follow (its 1008 goes out at the flush): later deliveries
                    // this turn see it gone.
                    conn.ws.close_sent(self.now);
                    self.slow.push((key, conn.gen));
                    return Delivery::SlowConsumer;
                }
                SlowConsumerPolicy::DropOldest => {
                    let keep = limit.saturating_sub(frame.bytes().len());
                    if let Some(q) = conn.queue.as_mut() {
                        let n = q.drop_oldest_shared(keep);
                        self.stats.add(Counter::SlowConsumerDropped, n as u64);
                    }
                    let queued = conn.queued();
                    if queued > 0 && queued.saturating_add(frame.bytes().len()) > limit {
                        self.stats.inc(Counter::SlowConsumerDropped);
                        return Delivery::Dropped;
                    }
                }
                SlowConsumerPolicy::Pause => {
                    self.stats.inc(Counter::SlowConsumerDropped);
                    return Delivery::Dropped;
                }
            }
        }
        let q = conn.queue.get_or_insert_with(Box::<WriteQueue>::default);
        if conn.ext.on() {
            match self.deflate.recode(key, conn.ext, frame, self.stats) {
                Recoded::Same => q.push_shared(frame.bytes().clone()),
                Recoded::Shared(z) => q.push_shared(z),
                Recoded::Owned(v) => q.push_owned(v),
            }
        } else {
            q.push_shared(frame.bytes().clone());
        }
        self.stats.inc(Counter::MessagesOut);
        Self::mark_dirty(self.dirty, key, conn);
        Delivery::Queued
    }

    /// Bytes queued for an open connection of this shard and not yet written (None when it is
    /// gone).
    pub fn queued(&mut self, id: ConnId) -> Option<usize> {
        open_conn(self.conns, self.index, id).map(|c| c.queued())
    }

    /// Sends a text message (owned copy) to an open connection of this shard.
    pub fn send_text(&mut self, id: ConnId, text: &str) -> bool {
        let key = id.key as usize;
        let Some(conn) = open_conn(self.conns, self.index, id) else {
            return false;
        };
        if !conn.ws.may_send() {
            return false;
        }
        let mut frame = Vec::with_capacity(text.len() + 10);
        if self.deflate.wants(conn.ext, OpCode::Text, text.len()) {
            let (head, n, body) =
                self.deflate
                    .compress(key, conn.ext, OpCode::Text, text.as_bytes(), self.stats);
            frame.extend_from_slice(&head[..n]);
            frame.extend_from_slice(&body);
            self.deflate.give_back(body);
        } else {
            encode_frame(&mut frame, true, OpCode::Text, text.as_bytes(), None);
        }
        conn.queue
            .get_or_insert_with(Box::<WriteQueue>::default)
            .push_owned(frame);
        self.stats.inc(Counter::MessagesOut);
        Self::mark_dirty(self.dirty, key, conn);
        true
    }

    /// Answers a request the app deferred (`HttpReply::Defer`). False if it is gone or was
    /// already answered (e.g. timed out with 504).
    pub fn respond(&mut self, id: ConnId, resp: HttpResponse) -> bool {
        let key = id.key as usize;
        let now = self.now;
        let Some(conn) = open_conn(self.conns, self.index, id) else {
            return false;
        };
        if conn.phase() != Phase::HttpWait {
            return false;
        }
        let mut headers: Vec<(&str, &str)> =
            resp.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let cors = self
            .exts
            .get(key)
            .and_then(|e| e.as_ref()?.cors_origin.as_deref());
        if let Some(origin) = cors {
            headers.extend(handshake::cors_headers(origin));
        }
        let mut out = Vec::with_capacity(128 + resp.body.len());
        handshake::write_response(
            &mut out,
            resp.status,
            &headers,
            resp.content_type,
            &resp.body,
        );
        conn.queue
            .get_or_insert_with(Box::<WriteQueue>::default)
            .push_owned(out);
        if resp.status >= 400 {
            self.stats.http_status(resp.status);
        }
        conn.finish(now);
        Self::mark_dirty(self.dirty, key, conn);
        true
    }

    /// Posts a message to a shard (this one included); it is handled there by
    /// `Handler::on_shard_msg`. Shards are woken once per turn, not per message (or at
    /// `wake_posted`).
    pub fn post(&mut self, shard: u16, msg: H::Msg) {
        if let Some(link) = self.links.get(shard as usize) {
            if link.tx.send(msg).is_ok() {
                self.wake[shard as usize] = true;
            }
        }
    }

    /// Wakes now the shards posted to so far, rather than at the end of the turn: for a
    /// message they should start on while this shard goes on working (a publish fanned out
    /// by every shard at once).
    pub fn wake_posted(&mut self) {
        wake_marked(self.wake, self.links);
    }
}

/// Wakes each shard marked in `wake` (posted to) and clears its mark.
pub(crate) fn wake_marked<M>(wake: &mut [bool], links: &[ShardLink<M>]) {
    for (w, link) in wake.iter_mut().zip(links) {
        if std::mem::take(w) {
            let _ = link.waker.wake();
        }
    }
}

fn open_conn<S>(conns: &mut Slab<Conn<S>>, index: u16, id: ConnId) -> Option<&mut Conn<S>> {
    if id.shard != index {
        return None;
    }
    let conn = conns.get_mut(id.key as usize)?;
    (conn.gen == id.gen).then_some(conn)
}
