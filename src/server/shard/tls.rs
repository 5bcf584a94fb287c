//! The shard's TLS paths: read records into the read buffer and decrypt them there, run the
//! plaintext through the same handshake and frame code as plaintext connections, and seal
//! the cork and the write queue into records on the way out. Plaintext connections never
//! enter this file.

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

impl<H: Handler> Shard<H> {
    /// `read` for a TLS connection: the same loop, with records decrypted before `process`.
    pub(super) fn read_tls(&mut self, key: usize, to_eof: bool) {
        let Self { conns, rbuf, core } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        for round in 0.. {
            if round == MAX_READS_PER_EVENT {
                conn.flags |= PENDING_READ;
                core.pending_read.push((key, conn.gen));
                break;
            }
            // The unconsumed ciphertext lives in the TLS state: rustls may refer to it.
            let stash = core.tls_of(key).and_then(|t| t.incoming.take());
            let kept = stash.as_ref().map_or(0, |s| s.len());
            if kept + TLS_MIN_READ > rbuf.len() {
                // Unfinished records larger than any handshake message rustls accepts.
                core.stats.inc(Counter::TlsErrors);
                tracing::debug!(shard = core.index, kept, "TLS: unfinished input too large");
                core.abort(conns, key);
                return;
            }
            if let Some(s) = &stash {
                rbuf[..kept].copy_from_slice(s);
            }
            let space = rbuf.len() - kept;
            let n = match conn.sock.read(&mut rbuf[kept..]) {
                Ok(0) => {
                    core.peer_eof(conns, key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    core.keep_incoming(key, &rbuf[..kept], stash);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    core.keep_incoming(key, &rbuf[..kept], stash);
                    continue;
                }
                Err(e) => {
                    core.fail_io(key, conn, e);
                    core.remove(conns, key);
                    return;
                }
            };
            core.stats.add(Counter::BytesIn, n as u64);
            core.touch(conn);
            let total = kept + n;
            // Records are decrypted in every phase, so rustls' state stays whole; after the
            // last answer the plaintext is discarded (`process`), as for plaintext connections.
            let input = core.decrypt_and_process(key, conn, &mut rbuf[..total], stash);
            match input {
                TlsInput::More => {}
                TlsInput::PeerClosed => {
                    core.peer_eof(conns, key);
                    return;
                }
                TlsInput::Failed(e) => {
                    core.stats.inc(Counter::TlsErrors);
                    tracing::debug!(shard = core.index, "TLS error: {e}");
                    if matches!(conn.phase(), Phase::Open | Phase::Closing) {
                        core.stats.inc(Counter::ClosedAbnormal);
                    }
                    core.notify_close(key, conn, close_code::ABNORMAL, "TLS error");
                    // Send the alert, if any, then shut down and drain. Nothing more can be
                    // sealed: the queue is dropped so the shutdown is not held up by it.
                    core.cork.clear();
                    conn.queue = None;
                    core.finish(key, conn);
                    break;
                }
            }
            if core.cork.len() >= CORK_FLUSH_AT && !core.flush_conn(key, conn) {
                core.remove(conns, key);
                return;
            }
            if conn.flags & READ_PAUSED != 0 || (n < space && !to_eof) {
                break;
            }
        }
        if !core.flush_conn(key, conn) {
            core.remove(conns, key);
        }
    }
}

/// Unconsumed plaintext from this size on is grown in place rather than re-copied per read.
const BIG_PLAIN: usize = 16 << 10;

/// Room a TLS read needs past the unfinished records it keeps.
const TLS_MIN_READ: usize = 4096;

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

    #[allow(clippy::box_collection)]
    fn keep_incoming(&mut self, key: usize, bytes: &[u8], reuse: Option<Box<Vec<u8>>>) {
        if let Some(t) = self.tls_of(key) {
            t.incoming.keep(bytes, reuse);
        }
    }

    /// Decrypts the records in `data` (unfinished bytes are kept in the stash) and processes
    /// the plaintext after what was left of it last time.
    #[allow(clippy::box_collection)]
    fn decrypt_and_process(
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
