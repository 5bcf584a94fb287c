//! A connection's outgoing bytes: chunks that are owned or shared (`Arc<[u8]>`, a broadcast
//! frame encoded once for every subscriber), flushed with one `writev`. Owns the bytes and the
//! partial-write offset; must not know about frames or sockets beyond `Write`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Chunks passed to one `writev`.
const MAX_IOVECS: usize = 64;
/// Small owned writes are appended to the last owned chunk up to this size.
const COALESCE_LIMIT: usize = 16 << 10;
/// A drained owned buffer is kept for reuse up to this capacity: enough for a client's
/// messages, small next to a backlogged server queue (which is dropped once drained).
const SPARE_LIMIT: usize = 4 << 10;

#[derive(Debug)]
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Queued output. An empty queue is dropped by its owner, so an idle connection holds none.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_offset: usize,
    /// Bytes still to write.
    len: usize,
    /// The last owned chunk written out, emptied and kept for the next push: a connection that
    /// sends on and on (a client driving load) allocates its buffer once, not once per message.
    spare: Vec<u8>,
}

pub enum Flush {
    /// Everything was written.
    Done,
    /// The socket's buffer is full; wait for WRITABLE.
    Blocked,
}

impl WriteQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends owned bytes, coalescing small writes into the last owned chunk.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.push_bytes_then(bytes, |_| {});
    }

    /// Appends owned bytes, then lets `f` change the appended copy in place (a client masks
    /// its payload so, copying it once).
    pub fn push_bytes_then(&mut self, bytes: &[u8], f: impl FnOnce(&mut [u8])) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let coalesce = matches!(self.chunks.back(),
            Some(Chunk::Owned(last)) if last.len() + bytes.len() <= COALESCE_LIMIT);
        if !coalesce {
            let mut v = std::mem::take(&mut self.spare);
            v.reserve(bytes.len());
            self.chunks.push_back(Chunk::Owned(v));
        }
        let Some(Chunk::Owned(last)) = self.chunks.back_mut() else {
            unreachable!("the back chunk was just made an owned one");
        };
        // The front chunk may be partly written; appending keeps its offset valid.
        let at = last.len();
        last.extend_from_slice(bytes);
        f(&mut last[at..]);
    }

    /// Puts owned bytes before everything queued: bytes that were due before the queue (a
    /// batched write that took only part of them). Nothing of the queue may be written yet.
    pub fn push_front_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        debug_assert_eq!(self.head_offset, 0, "the front chunk is partly written");
        self.len += bytes.len();
        self.chunks.push_front(Chunk::Owned(bytes.to_vec()));
    }

    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Owned(bytes));
    }

    pub fn push_shared(&mut self, frame: Arc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Drops the oldest shared chunks (each a whole broadcast frame) not yet started until at
    /// most `keep` bytes remain queued. Owned chunks are kept: they may hold parts of frames.
    /// Returns the number of frames dropped. (The drop-oldest slow-consumer policy.)
    pub fn drop_oldest_shared(&mut self, keep: usize) -> usize {
        let mut dropped = 0;
        let mut i = usize::from(self.head_offset > 0);
        while self.len > keep && i < self.chunks.len() {
            if matches!(self.chunks[i], Chunk::Shared(_)) {
                if let Some(c) = self.chunks.remove(i) {
                    self.len -= c.bytes().len();
                    dropped += 1;
                }
            } else {
                i += 1;
            }
        }
        dropped
    }

    /// Writes as much as the socket takes, with one `writev` per call of at most 64 chunks,
    /// repeated while the socket keeps taking everything offered.
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<(Flush, usize)> {
        let mut total = 0;
        while self.len > 0 {
            let (result, offered) = if self.chunks.len() == 1 {
                // One chunk: write(2), which the kernel serves more cheaply than writev(2),
                // and no iovec array to fill.
                let bytes = &self.chunks[0].bytes()[self.head_offset..];
                (w.write(bytes), bytes.len())
            } else {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                let mut offered = 0;
                for bytes in self.unwritten() {
                    slices[n] = IoSlice::new(bytes);
                    offered += bytes.len();
                    n += 1;
                }
                (w.write_vectored(&slices[..n]), offered)
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flush::Blocked, total))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.consume(written);
            if written < offered {
                return Ok((Flush::Blocked, total));
            }
        }
        Ok((Flush::Done, total))
    }

    /// The unwritten bytes as slices, at most `MAX_IOVECS` of them (what one `flush` round
    /// offers), appended to `out`; for a caller that writes them itself (batched) and then
    /// `consume`s. Returns the bytes offered.
    pub fn gather<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) -> usize {
        let mut offered = 0;
        for bytes in self.unwritten() {
            offered += bytes.len();
            out.push(IoSlice::new(bytes));
        }
        offered
    }

    /// The unwritten bytes of the first `MAX_IOVECS` chunks, one slice each (the first from
    /// where the last write stopped).
    fn unwritten(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks
            .iter()
            .take(MAX_IOVECS)
            .enumerate()
            .map(|(i, chunk)| {
                let bytes = chunk.bytes();
                if i == 0 {
                    &bytes[self.head_offset..]
                } else {
                    bytes
                }
            })
    }

    /// The bytes still to write when they are one chunk (a client that sends a message and
    /// waits for the answer), for a caller that writes them itself and then `consume`s.
    pub fn single(&self) -> Option<&[u8]> {
        match self.chunks.len() {
            1 => Some(&self.chunks[0].bytes()[self.head_offset..]),
            _ => None,
        }
    }

    /// Marks `n` bytes written (at most `len()`).
    pub fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.len, "consumed {n} of {} queued bytes", self.len);
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_offset;
            if n >= left {
                n -= left;
                self.head_offset = 0;
                if let Some(Chunk::Owned(mut v)) = self.chunks.pop_front() {
                    if v.capacity() <= SPARE_LIMIT && v.capacity() > self.spare.capacity() {
                        v.clear();
                        self.spare = v;
                    }
                }
            } else {
                self.head_offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls: usize,
        block_after: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == self.block_after {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let mut left = self.cap;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_across_owned_and_shared() {
        let mut q = WriteQueue::default();
        let shared: Arc<[u8]> = Arc::from(&b"SHARED"[..]);
        q.push_bytes(b"abc");
        q.push_shared(shared.clone());
        q.push_bytes(b"def");
        q.push_owned(b"ghij".to_vec());
        assert_eq!(q.len(), 16);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 5,
            calls: 0,
            block_after: 2,
        };
        // A short write means the socket is full: stop there.
        assert!(matches!(q.flush(&mut w).unwrap(), (Flush::Blocked, 5)));
        assert_eq!(q.len(), 11);
        w.block_after = usize::MAX;
        let mut rounds = 0;
        while let (Flush::Blocked, _) = q.flush(&mut w).unwrap() {
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(w.out, b"abcSHAREDdefghij");
        assert!(q.is_empty());
    }

    #[test]
    fn drop_oldest_drops_only_whole_shared_frames_not_started() {
        let mut q = WriteQueue::default();
        for i in 0..10u8 {
            q.push_shared(Arc::from(vec![i; 100]));
        }
        q.push_owned(vec![99; 100]);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 50,
            calls: 0,
            block_after: 1,
        };
        q.flush(&mut w).unwrap();
        // 1050 left: the started frame (50), 9 shared frames, one owned chunk.
        let dropped = q.drop_oldest_shared(300);
        assert_eq!(dropped, 8);
        assert_eq!(q.len(), 250);
        w.block_after = usize::MAX;
        w.cap = usize::MAX;
        while let (Flush::Blocked, _) = q.flush(&mut w).unwrap() {}
        assert_eq!(&w.out[..100], &[0u8; 100][..]);
        assert_eq!(&w.out[100..200], &[9u8; 100][..]);
        assert_eq!(&w.out[200..300], &[99u8; 100][..]);
    }

    #[test]
    fn a_drained_buffer_is_reused_and_push_then_changes_only_the_copy() {
        let mut q = WriteQueue::default();
        let mut sink = Vec::new();
        let payload = *b"payload";
        q.push_bytes(b"h");
        q.push_bytes_then(&payload, |b| b.iter_mut().for_each(|x| *x ^= 0x20));
        assert_eq!(q.chunks.len(), 1, "small pushes coalesce");
        let first = q.chunks[0].bytes().as_ptr();
        assert!(matches!(q.flush(&mut sink).unwrap(), (Flush::Done, 8)));
        assert_eq!(sink, b"hPAYLOAD");
        assert_eq!(payload, *b"payload");
        assert!(q.is_empty());
        // The next message goes into the same buffer: no allocation per message.
        q.push_bytes(b"next");
        assert_eq!(q.chunks[0].bytes().as_ptr(), first);
        assert!(matches!(q.flush(&mut sink).unwrap(), (Flush::Done, 4)));
        assert_eq!(sink, b"hPAYLOADnext");
    }
}
