//! TLS, the layer between a connection's socket and its WebSocket: records read by the one
//! read path (`read.rs`) are decrypted in the read buffer and their plaintext goes through the
//! same handshake and frame code as a plaintext connection's; on the way out the cork and the
//! write queue are sealed into records. Plaintext connections never enter this file.

use super::*;

/// The TLS sessions of a shard's connections and the scratch they share.
#[derive(Default)]
pub(super) struct TlsConns {
    /// By slab key, for the connections with the TLS flag (empty on a plaintext server, so a
    /// plaintext connection pays nothing for TLS).
    pub(super) conns: Vec<Option<Box<TlsConn>>>,
    /// Decrypted input, sealed output, and a writev's slices gathered for sealing.
    pub(super) plain: Vec<u8>,
    pub(super) sealed: Vec<u8>,
    pub(super) gather: Vec<u8>,
}

/// Unconsumed plaintext from this size on is grown in place rather than re-copied per read.
const BIG_PLAIN: usize = 16 << 10;

impl<H: Handler> Core<H> {
    /// The TLS state of connection `key` (None for plaintext ones).
    pub(super) fn tls_of(&mut self, key: usize) -> Option<&mut TlsConn> {
        self.tls.conns.get_mut(key)?.as_deref_mut()
    }

    /// Records sealed for connection `key` and not yet written.
    pub(super) fn tls_pending(&self, key: usize) -> usize {
        self.tls
            .conns
            .get(key)
            .and_then(|t| t.as_ref())
            .map_or(0, |t| t.pending())
    }

    /// A TLS error on input: counted, the app told (1006), the alert (if any) sent, then shut
    /// down and drained. Nothing more can be sealed: the queue is dropped so the shutdown is
    /// not held up by it.
    pub(super) fn tls_failed(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        e: &dyn std::fmt::Display,
    ) {
        self.stats.inc(Counter::TlsErrors);
        tracing::debug!(shard = self.index, "TLS error: {e}");
        if matches!(conn.phase(), Phase::Open | Phase::Closing) {
            self.stats.inc(Counter::ClosedAbnormal);
        }
        self.notify_close(key, conn, close_code::ABNORMAL, "TLS error");
        self.cork.clear();
        conn.queue = None;
        self.finish(key, conn);
    }

    #[allow(clippy::box_collection)]
    pub(super) fn keep_incoming(&mut self, key: usize, bytes: &[u8], reuse: Option<Box<Vec<u8>>>) {
        if let Some(t) = self.tls_of(key) {
            t.incoming.keep(bytes, reuse);
        }
    }

    /// Decrypts the records in `data` (unfinished bytes are kept in the stash) and processes
    /// the plaintext after what was left of it last time.
    #[allow(clippy::box_collection)]
    pub(super) fn decrypt_and_process(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        data: &mut [u8],
        reuse: Option<Box<Vec<u8>>>,
    ) -> TlsInput {
        // Out of the side table while the plaintext is processed (which never writes).
        let Some(mut tls) = self.tls.conns.get_mut(key).and_then(Option::take) else {
            return TlsInput::More;
        };
        let input = self.decrypt_with(key, conn, &mut tls, data, reuse);
        self.tls.conns[key] = Some(tls);
        input
    }

    #[allow(clippy::box_collection)]
    fn decrypt_with(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        tls: &mut TlsConn,
        data: &mut [u8],
        reuse: Option<Box<Vec<u8>>>,
    ) -> TlsInput {
        let mut prev = tls.plain.take();
        if let Some(mut big) = prev.take_if(|p| p.len() >= BIG_PLAIN) {
            // A large unfinished request (an HTTP body): grow it in place, as the plaintext
            // path does, rather than copying all of it through the scratch on every read.
            let (used, input) = tls.read(data, &mut big);
            tls.incoming.keep(&data[used..], reuse);
            let len = big.len();
            let consumed = self.process(key, conn, &mut big[..len]);
            big.drain(..consumed.min(len));
            tls.plain.set(big);
            return input;
        }
        let mut plain = std::mem::take(&mut self.tls.plain);
        plain.clear();
        if let Some(p) = &prev {
            plain.extend_from_slice(p);
        }
        let (used, input) = tls.read(data, &mut plain);
        tls.incoming.keep(&data[used..], reuse);
        if !plain.is_empty() {
            let consumed = self.process(key, conn, &mut plain);
            tls.plain.keep(&plain[consumed..], prev);
        }
        if plain.capacity() > 4 * TLS_MIN_READ_BUFFER {
            plain = Vec::new(); // after a large HTTP body
        }
        self.tls.plain = plain;
        input
    }

    /// `flush_conn`'s write for a TLS connection: records left from last time, then the cork
    /// and the queue sealed into records (up to a budget per round), then close_notify once a
    /// finishing connection has written everything. False: the connection failed.
    pub(super) fn write_tls(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        let Some(mut tls) = self.tls.conns.get_mut(key).and_then(Option::take) else {
            return true;
        };
        let error = self.seal_and_write(conn, &mut tls);
        self.tls.conns[key] = Some(tls);
        if let Some(e) = error {
            self.fail_io(key, conn, e);
            return false;
        }
        true
    }

    fn seal_and_write(
        &mut self,
        conn: &mut Conn<H::State>,
        tls: &mut TlsConn,
    ) -> Option<io::Error> {
        let finishing = conn.phase() == Phase::Finishing;
        let Conn { sock, queue, .. } = conn;
        // Records are sealed into the connection's own buffer while it has a backlog, else into
        // the shard's scratch (so an idle connection holds no buffer).
        let mut out = if tls.out.is_empty() {
            std::mem::take(&mut self.tls.sealed)
        } else {
            std::mem::take(&mut tls.out)
        };
        let mut error: Option<io::Error> = None;
        if !self.cork.is_empty() {
            if !tls.failed && !tls.notify_sent {
                if let Err(e) = tls.seal_data(&self.cork, &mut out) {
                    error = Some(io::Error::other(format!("TLS: {e}")));
                }
            }
            self.cork.clear();
            if self.cork.capacity() > CORK_FLUSH_AT * 2 {
                self.cork = Vec::with_capacity(CORK_CAPACITY);
            }
        }
        let mut pos = 0;
        'rounds: while error.is_none() {
            while pos < out.len() {
                match sock.write(&out[pos..]) {
                    Ok(0) => {
                        error = Some(io::ErrorKind::WriteZero.into());
                        break 'rounds;
                    }
                    Ok(n) => {
                        pos += n;
                        self.stats.add(Counter::BytesOut, n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 'rounds,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = Some(e);
                        break 'rounds;
                    }
                }
            }
            out.clear();
            pos = 0;
            if tls.failed || tls.notify_sent {
                break;
            }
            match queue.as_mut() {
                Some(q) if !q.is_empty() => {
                    let mut sealer = Sealer {
                        tls,
                        out: &mut out,
                        gather: &mut self.tls.gather,
                        error: None,
                    };
                    if q.flush(&mut sealer).is_err() {
                        let e = sealer.error.take();
                        error = Some(io::Error::other(format!("TLS: {e:?}")));
                    }
                }
                _ if finishing => {
                    if tls.seal_close_notify(&mut out).is_err() {
                        break;
                    }
                }
                _ => break,
            }
            if out.is_empty() {
                break;
            }
        }
        out.drain(..pos);
        if out.is_empty() {
            if out.capacity() <= CORK_FLUSH_AT * 2 {
                self.tls.sealed = out;
            }
        } else if out.capacity() > 2 * out.len().max(crate::server::tls::SEAL_BUDGET) {
            // A blocked connection keeps a copy of its few records, not the shard's large
            // scratch (think of many slow subscribers).
            tls.out = out.clone();
            out.clear();
            if out.capacity() <= CORK_FLUSH_AT * 2 {
                self.tls.sealed = out;
            }
        } else {
            tls.out = out;
        }
        if self.tls.gather.capacity() > CORK_FLUSH_AT * 2 {
            self.tls.gather = Vec::new();
        }
        error
    }
}
