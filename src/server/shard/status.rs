//! The status page on the shard: serves `GET /` and `/status`, opens `/status/ws` viewers
//! (without the app: they hold no app state and their messages are ignored), and once a
//! second, only while it has viewers, sends each a sample. With no viewer this costs one
//! branch per loop turn.

use super::*;
use crate::server::stats::Refusal;
use crate::server::status::{StatusFeed, MAX_VIEWERS_PER_SHARD, PAGE};

/// A viewer whose unsent samples pass this is no longer sent any (it is not reading).
const MAX_VIEWER_QUEUE: usize = 64 << 10;

impl<H: Handler> Core<H> {
    /// The page, or 403 without the right `?key=`.
    pub(super) fn status_page(&self, req: &handshake::Request<'_>) -> HttpResponse {
        if !self.cfg.status.allows(req) {
            return HttpResponse::text(403, "the status page needs ?key=KEY (--status KEY)\n");
        }
        let mut r = HttpResponse::text(200, PAGE);
        r.content_type = "text/html; charset=utf-8";
        r.headers.extend([
            ("Cache-Control", "no-store".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:".to_string(),
            ),
        ]);
        r
    }

    /// An upgrade to `/status/ws`: checked against `--status`, then opened as a viewer.
    /// `Err(n)`: refused and answered, `n` bytes consumed.
    pub(super) fn open_viewer(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        req: &handshake::Request<'_>,
        key_ws: &handshake::WebSocketKey<'_>,
        len: usize,
    ) -> Result<(), usize> {
        let refusal = if !self.cfg.status.allows(req) {
            Some((
                Refusal::Forbidden,
                HttpError::new(403, "the status feed needs ?key=KEY"),
            ))
        } else if self.status.viewers.len() >= MAX_VIEWERS_PER_SHARD {
            Some((
                Refusal::Other,
                HttpError::new(503, "too many status viewers"),
            ))
        } else {
            None
        };
        if let Some((why, e)) = refusal {
            self.stats.inc(Counter::HandshakeRejected);
            self.note_refusal(why, e.status, &e.reason, Some(req.path), Some(&conn.sock));
            return Err(self.refuse(key, conn, &e, len));
        }
        handshake::write_accept_response(&mut self.cork, key_ws, None, None);
        self.stats.inc(Counter::HandshakesOk);
        conn.ws.open(self.now);
        self.schedule(key, conn);
        self.status.join(key, conn.gen);
        Ok(())
    }
}

/// Sends a sample to every viewer of this shard if one is due; forgets viewers that are gone
/// or do not read.
pub(super) fn send_samples<H: Handler>(
    feed: &mut StatusFeed,
    handler: &H,
    api: &mut ShardApi<'_, H>,
) {
    let now = Instant::now();
    if !feed.due(now) {
        return;
    }
    let mut app = Vec::new();
    handler.status_counters(&mut app);
    let json = feed.sample(api.all_stats(), &app, now);
    let index = api.index();
    feed.viewers.retain(|&(key, gen)| {
        let id = ConnId {
            shard: index,
            key: key as u32,
            gen,
        };
        api.queued(id).is_some_and(|q| q < MAX_VIEWER_QUEUE) && api.send_text(id, &json)
    });
    feed.sent(now);
}
