//! What both reactors (the server's shards and the client) run on besides `proto`: the timing
//! wheel, the write queue, the process's fd limit and the wall clock. Owns no policy and no
//! sockets; must not import `server` or `client`.

pub mod batch;
pub mod limits;
pub mod timer;
pub mod write_queue;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
