//! `--io uring`: a turn's reads, then its writes, for every ready plaintext connection in one
//! io_uring submission each (`rt::batch`), where the plain path makes one `recv` and one `send`
//! or `writev` per connection. Readiness still comes from epoll; every operation completes
//! during its submission (`MSG_DONTWAIT`), so no buffer is lent past the call.
//!
//! Memory: the reads land in a per-shard arena of `ARENA` bytes shared by the connections read
//! in a batch (a slot each), and the replies they make are moved from the cork into a per-shard output arena until
//! the write submission; both are the shard's, reused every turn. An idle connection still owns
//! no buffer, and a broadcast frame is still one `Arc` shared by every subscriber's queue (the
//! writes gather the queue's chunks as they are). Owns the batching only: what a read means and
//! what follows a write stay in `read.rs` and `write.rs`.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::Once;

use super::read::discards_input;
use super::*;
use crate::rt::batch::{self, Batch, Op, SendMsg};

/// The read arena, split between the connections of a batch: a read that fills its slot is
/// continued with the plain reads into the shard's read buffer (a large message), so a slot
/// needs to hold only the common case (a request head, a few small frames). Fixed, so what a
/// shard touches for it does not grow with the batch: a submission reads at most
/// `READS_PER_SUBMISSION` connections of 512 bytes each, 4 get 16 KiB.
const ARENA: usize = 64 << 10;
const MIN_SLOT: usize = 512;
const MAX_SLOT: usize = 16 << 10;
const READS_PER_SUBMISSION: usize = ARENA / MIN_SLOT;
/// Fewer reads (writes) than this in a turn go out as plain calls. One: a submission of one
/// operation costs about what the plain call does (measured: docs/benchmarks.md), and every
/// connection then takes the same path, which the tests run under `FANOUT_TEST_IO=uring`.
const MIN_READS: usize = 1;
const MIN_WRITES: usize = 1;
/// A connection with more input kept than this (the start of a large message) reads plain.
const MAX_KEPT: usize = MIN_SLOT / 2;
/// The output arena is given back past this size (after a turn of large replies).
const OUT_KEEP: usize = 1 << 20;

/// A connection whose output waits for the turn's write submission: the bytes at
/// `out[start..end]` (its replies, moved from the cork), then its queue.
#[derive(Clone, Copy)]
pub(super) struct PendingWrite {
    key: usize,
    gen: u32,
    start: usize,
    end: usize,
}

pub(super) struct Uring {
    batch: Batch,
    /// Readable connections of this turn (key, gen), read in the batch at its end.
    pub ready: Vec<(usize, u32)>,
    slots: Vec<u8>,
    out: Vec<u8>,
    writes: Vec<PendingWrite>,
    results: Vec<Option<io::Result<usize>>>,
}

static FALLBACK_LOGGED: Once = Once::new();

impl Uring {
    /// The ring of a shard run with `--io uring`; None (logged once per process) where the
    /// kernel refuses io_uring: the shard then makes the plain calls.
    pub fn new(shard: u16) -> Option<Box<Uring>> {
        match Batch::new() {
            Ok(batch) => Some(Box::new(Uring {
                batch,
                ready: Vec::new(),
                slots: Vec::new(),
                out: Vec::new(),
                writes: Vec::new(),
                results: Vec::new(),
            })),
            Err(e) => {
                FALLBACK_LOGGED.call_once(|| {
                    tracing::warn!(
                        shard,
                        "--io uring: io_uring is not available here ({e}); using epoll"
                    )
                });
                None
            }
        }
    }
}

impl<H: Handler> Shard<H> {
    /// Whether a readable connection's read can wait for the turn's read submission: a
    /// plaintext connection not paused, with little kept (an unfinished frame, copied to the
    /// front of its slot), no FIN seen (that one reads to EOF, plain), and input still wanted
    /// (what is thrown away is dropped in the kernel: `read::discard`).
    pub(super) fn batchable_read(&self, key: usize, to_eof: bool) -> bool {
        !to_eof
            && self.core.uring.is_some()
            && self.conns.get(key).is_some_and(|c| {
                c.flags & (TLS | READ_PAUSED) == 0
                    && c.stash.bytes().len() <= MAX_KEPT
                    && !discards_input(c.phase())
            })
    }

    /// Leaves a readable connection's read for the turn's read submission.
    pub(super) fn queue_read(&mut self, key: usize) {
        if let (Some(u), Some(c)) = (self.core.uring.as_mut(), self.conns.get(key)) {
            u.ready.push((key, c.gen));
        }
    }

    /// Reads the connections gathered this turn, `READS_PER_SUBMISSION` a submission, processes each
    /// one's bytes, then writes what they answered in one submission.
    pub(super) fn read_batched(&mut self) {
        let Some(mut u) = self.core.uring.take() else {
            return;
        };
        let mut ready = std::mem::take(&mut u.ready);
        // A plain read earlier in the turn ran the app: keep only what is still there.
        ready.retain(|&(key, gen)| self.conns.get(key).is_some_and(|c| c.gen == gen));
        if ready.len() < MIN_READS {
            self.core.uring = Some(u);
            for &(key, _) in &ready {
                self.read(key, false);
            }
        } else {
            for part in ready.chunks(READS_PER_SUBMISSION.min(batch::BATCH)) {
                self.read_part(&mut u, part);
                self.write_pending(&mut u);
            }
            self.core.uring = u.batch.usable().then_some(u).or_else(|| {
                tracing::warn!(shard = self.core.index, "io_uring failed; using epoll");
                None
            });
        }
        ready.clear();
        if let Some(u) = self.core.uring.as_mut() {
            u.ready = ready;
        }
    }

    fn read_part(&mut self, u: &mut Uring, part: &[(usize, u32)]) {
        let slot_len = (ARENA / part.len()).clamp(MIN_SLOT, MAX_SLOT);
        if u.slots.len() < part.len() * slot_len {
            u.slots.resize(part.len() * slot_len, 0);
        }
        // Each slot: what the connection kept (an unfinished frame), then the read.
        let mut kept = Vec::with_capacity(part.len());
        let mut ops: Vec<Op<'_, '_>> = part
            .iter()
            .zip(u.slots.chunks_mut(slot_len))
            .map(|(&(key, _), slot)| {
                let conn = &self.conns[key];
                let k = conn.stash.bytes();
                slot[..k.len()].copy_from_slice(k);
                kept.push(k.len());
                Op::Recv(conn.sock.as_raw_fd(), &mut slot[k.len()..])
            })
            .collect();
        let _ = u.batch.run(&mut ops, &mut u.results);
        drop(ops);
        self.core.count_uring(Counter::UringReads, &u.results);
        for (i, &(key, gen)) in part.iter().enumerate() {
            let Self { conns, core, .. } = self;
            // Processing an earlier connection of the batch may have ended this one.
            let Some(conn) = conns.get_mut(key).filter(|c| c.gen == gen) else {
                continue;
            };
            let n = match u.results.get_mut(i).and_then(Option::take) {
                Some(Ok(0)) => {
                    // The peer may still read (half-close): what its input produced is sent.
                    core.peer_eof(conns, key);
                    continue;
                }
                Some(Ok(n)) => n,
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Some(Err(e)) if e.kind() != io::ErrorKind::Interrupted => {
                    core.fail_io(key, conn, e);
                    core.remove(conns, key);
                    continue;
                }
                // Not run (the ring failed) or interrupted: the plain read.
                _ => {
                    self.read(key, false);
                    continue;
                }
            };
            core.stats.add(Counter::BytesIn, n as u64);
            core.touch(conn);
            let total = kept[i] + n;
            let slot = &mut u.slots[i * slot_len..i * slot_len + total];
            let used = core.process(key, conn, slot);
            let reuse = conn.stash.take();
            conn.stash.keep(&slot[used..], reuse);
            if total == slot_len && conn.flags & READ_PAUSED == 0 {
                // Maybe more: the plain loop goes on from here and writes the cork (in order:
                // nothing of this connection is pending).
                self.read(key, false);
            } else if conn.flags & READ_PAUSED != 0 || core.cork.len() >= CORK_FLUSH_AT {
                if !core.flush_conn(key, conn) {
                    core.remove(conns, key);
                }
            } else if !core.defer_write(key, conn, u) {
                core.remove(conns, key);
            }
        }
    }

    /// Writes the queues of the dirty connections (deliveries, app sends) in submissions of
    /// `BATCH`; a TLS connection, and any when there are only a few, the plain way.
    pub(super) fn flush_dirty_batched(&mut self, dirty: &[(usize, u32)]) {
        let Some(mut u) = self.core.uring.take() else {
            return;
        };
        debug_assert!(u.writes.is_empty() && self.core.cork.is_empty());
        for &(key, gen) in dirty {
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen => {
                    c.flags &= !DIRTY;
                    if c.flags & TLS == 0 && c.queued() > 0 {
                        u.writes.push(PendingWrite {
                            key,
                            gen,
                            start: 0,
                            end: 0,
                        });
                        continue;
                    }
                }
                _ => continue,
            }
            self.flush(key);
        }
        if u.writes.len() < MIN_WRITES {
            for w in std::mem::take(&mut u.writes) {
                self.flush(w.key);
            }
        } else {
            self.write_pending(&mut u);
        }
        self.core.uring = u.batch.usable().then_some(u);
    }

    /// Runs the pending writes, `BATCH` at a time, then what follows each write.
    fn write_pending(&mut self, u: &mut Uring) {
        let writes = std::mem::take(&mut u.writes);
        for part in writes.chunks(batch::BATCH) {
            self.write_part(u, part);
        }
        let mut writes = writes;
        writes.clear();
        u.writes = writes;
        u.out.clear();
        if u.out.capacity() > OUT_KEEP {
            u.out = Vec::new();
        }
    }

    fn write_part(&mut self, u: &mut Uring, part: &[PendingWrite]) {
        // Each connection's slices: its replies in the output arena, then its queue's chunks.
        let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(part.len() * 2);
        // (fd, first slice, end of slices, bytes offered); no slices: nothing to run.
        let mut spans = Vec::with_capacity(part.len());
        for w in part {
            let first = iovs.len();
            let Some(conn) = self.conns.get(w.key).filter(|c| c.gen == w.gen) else {
                spans.push((-1, first, first, 0));
                continue;
            };
            let mut offered = w.end - w.start;
            if offered > 0 {
                iovs.push(IoSlice::new(&u.out[w.start..w.end]));
            }
            if let Some(q) = conn.queue.as_deref() {
                offered += q.gather(&mut iovs);
            }
            spans.push((conn.sock.as_raw_fd(), first, iovs.len(), offered));
        }
        let mut msgs: Vec<SendMsg<'_>> = spans
            .iter()
            .filter(|s| s.2 - s.1 > 1)
            .map(|s| SendMsg::new(&iovs[s.1..s.2]))
            .collect();
        let mut msgs_iter = msgs.iter_mut();
        // The operation index of each pending write, or none.
        let mut op_of = Vec::with_capacity(part.len());
        let mut ops: Vec<Op<'_, '_>> = Vec::with_capacity(part.len());
        for &(fd, first, end, _) in &spans {
            match end - first {
                0 => op_of.push(None),
                1 => {
                    op_of.push(Some(ops.len()));
                    ops.push(Op::Send(fd, &iovs[first]));
                }
                _ => {
                    op_of.push(Some(ops.len()));
                    if let Some(m) = msgs_iter.next() {
                        ops.push(Op::SendMsg(fd, m));
                    }
                }
            }
        }
        let _ = u.batch.run(&mut ops, &mut u.results);
        drop(ops);
        drop(msgs);
        self.core.count_uring(Counter::UringWrites, &u.results);
        let offered: Vec<usize> = spans.iter().map(|s| s.3).collect();
        drop(iovs);
        for (i, w) in part.iter().enumerate() {
            let Self { conns, core, .. } = self;
            let Some(conn) = conns.get_mut(w.key).filter(|c| c.gen == w.gen) else {
                continue;
            };
            let result = op_of[i].and_then(|o| u.results.get_mut(o).and_then(Option::take));
            let replies = &u.out[w.start..w.end];
            let ok = match result {
                Some(Ok(0)) if offered[i] > 0 => {
                    core.fail_io(w.key, conn, io::ErrorKind::WriteZero.into());
                    false
                }
                Some(Ok(n)) => {
                    let from_replies = n.min(replies.len());
                    keep_unwritten(conn, &replies[from_replies..]);
                    if let Some(q) = conn.queue.as_mut() {
                        q.consume(n - from_replies);
                    }
                    core.stats.add(Counter::BytesOut, n as u64);
                    // A paused connection's liveness is its output (as in `flush_conn`).
                    if n > 0 && conn.flags & READ_PAUSED != 0 && conn.phase() == Phase::Open {
                        conn.ws.on_input(core.now);
                    }
                    if n == offered[i] && conn.queued() > 0 {
                        // A queue of more chunks than one write gathers: the plain flush.
                        core.flush_conn(w.key, conn)
                    } else {
                        core.after_write(w.key, conn)
                    }
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    keep_unwritten(conn, replies);
                    core.after_write(w.key, conn)
                }
                Some(Err(e)) if e.kind() != io::ErrorKind::Interrupted => {
                    core.fail_io(w.key, conn, e);
                    false
                }
                // Not run (the ring failed), interrupted, or nothing to write: the plain path.
                _ => {
                    keep_unwritten(conn, replies);
                    core.flush_conn(w.key, conn)
                }
            };
            if !ok {
                core.remove(conns, w.key);
            }
        }
    }
}

/// Puts replies the socket did not take in front of the connection's queue (nothing of the
/// queue was written after them).
fn keep_unwritten<S>(conn: &mut Conn<S>, rest: &[u8]) {
    if !rest.is_empty() {
        conn.queue
            .get_or_insert_with(Default::default)
            .push_front_bytes(rest);
    }
}

impl<H: Handler> Core<H> {
    fn count_uring(&self, what: Counter, results: &[Option<io::Result<usize>>]) {
        let ran = results.iter().filter(|r| r.is_some()).count() as u64;
        if ran > 0 {
            self.stats.add(what, ran);
            self.stats.inc(Counter::UringSubmissions);
        }
    }

    /// Instead of writing the cork now, moves it to the output arena for the turn's write
    /// submission (or, behind queued bytes, to the queue, as `write_plain` would); with
    /// nothing to write, does what follows a write at once. False: the connection must be
    /// dropped (the caller removes it).
    pub(super) fn defer_write(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        u: &mut Uring,
    ) -> bool {
        let queue_empty = conn.queued() == 0;
        if self.cork.is_empty() && queue_empty {
            return self.flush_conn(key, conn);
        }
        let (start, end) = if queue_empty {
            let start = u.out.len();
            u.out.extend_from_slice(&self.cork);
            (start, u.out.len())
        } else {
            if !self.cork.is_empty() {
                let q = conn.queue.get_or_insert_with(Default::default);
                q.push_bytes(&self.cork);
            }
            (0, 0)
        };
        self.cork.clear();
        if self.cork.capacity() > CORK_FLUSH_AT * 2 {
            self.cork = Vec::with_capacity(CORK_CAPACITY);
        }
        u.writes.push(PendingWrite {
            key,
            gen: conn.gen,
            start,
            end,
        });
        true
    }
}
