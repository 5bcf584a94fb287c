//! Accepting: drain the listener up to the per-turn batch, 503 past max-connections, and a
//! short back-off on EMFILE/ENFILE that keeps open connections served.

use super::*;

impl<H: Handler> Shard<H> {
    // ----- accepting -----

    pub(super) fn accept(&mut self) {
        let c = &mut self.core;
        c.accept_more = false;
        if c.accept_paused_until.is_some() || c.draining_until.is_some() {
            return;
        }
        let max = c.global.max_connections;
        for _ in 0..c.cfg.accept_batch {
            let Some(listener) = c.listener.as_ref() else {
                return;
            };
            let (mut sock, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    c.accept_failed_emfile(&e);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one client; keep accepting.
                    c.stats.inc(Counter::AcceptErrors);
                    tracing::debug!(shard = c.index, "accept: {e}");
                    continue;
                }
            };
            c.stats.inc(Counter::Accepted);
            if c.global.open.fetch_add(1, SeqCst) >= max {
                c.global.open.fetch_sub(1, SeqCst);
                c.stats.inc(Counter::Rejected503);
                c.note_refusal(
                    crate::server::stats::Refusal::MaxConnections,
                    503,
                    "server at its connection limit",
                    None,
                    Some(&sock),
                );
                let mut resp = Vec::new();
                handshake::write_error_response(
                    &mut resp,
                    &HttpError::new(503, "server at its connection limit"),
                );
                // A fresh socket's buffer is empty: the answer fits or the client is gone.
                // (A TLS client cannot read plaintext: it just sees the connection close.)
                if c.cfg.tls.is_none() {
                    let _ = sock.write(&resp);
                }
                let _ = sock.shutdown(Shutdown::Write);
                continue;
            }
            let tls = match &c.cfg.tls {
                None => None,
                Some(cfg) => match TlsConn::new(cfg) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        c.global.open.fetch_sub(1, SeqCst);
                        c.stats.inc(Counter::TlsErrors);
                        tracing::warn!(shard = c.index, "TLS session: {e}");
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = c
                .poll
                .registry()
                .register(&mut sock, Token(key), Interest::READABLE)
            {
                c.global.open.fetch_sub(1, SeqCst);
                c.stats.inc(Counter::AcceptErrors);
                tracing::warn!(shard = c.index, "register: {e}");
                continue;
            }
            c.next_gen = c.next_gen.wrapping_add(1);
            let conn = entry.insert(Conn {
                sock,
                phase: Phase::Handshaking,
                flags: if tls.is_some() { TLS } else { 0 },
                ext: Packed::OFF,
                gen: c.next_gen,
                since: c.now,
                armed_at: NOT_ARMED,
                decoder: Default::default(),
                stash: Default::default(),
                queue: None,
                state: None,
            });
            if let Some(t) = tls {
                if c.tls.len() <= key {
                    c.tls.resize_with(key + 1, || None);
                }
                c.tls[key] = Some(t);
            }
            c.stats.open.fetch_add(1, Relaxed);
            c.schedule(key, conn);
        }
        // The batch cap was hit: more may be waiting, and the edge will not fire again.
        c.accept_more = true;
    }
}

impl<H: Handler> Core<H> {
    pub(super) fn accept_failed_emfile(&mut self, e: &io::Error) {
        self.stats.inc(Counter::AcceptEmfile);
        self.emfile_since_log += 1;
        self.accept_paused_until = Some(self.now + ms_to_ticks(ACCEPT_BACKOFF_MS));
        let due = self
            .emfile_logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                shard = self.index,
                count = self.emfile_since_log,
                "accept: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms (open connections keep being served)"
            );
            self.emfile_since_log = 0;
            self.emfile_logged_at = Some(Instant::now());
        }
    }
}
