//! What both reactors (the server's shards and the client) run on besides `proto`: the timing
//! wheel, the write queue, the process's fd limit and the wall clock. Owns no policy and no
//! sockets; must not import `server` or `client`.

pub mod batch;
pub mod limits;
pub mod timer;
pub mod write_queue;

use std::io;
use std::os::fd::RawFd;
use std::time::{SystemTime, UNIX_EPOCH};

/// `setsockopt` of an int option (TCP_DEFER_ACCEPT, IP_BIND_ADDRESS_NO_PORT, SO_TIMESTAMPNS:
/// the ones `socket2` does not name).
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain setsockopt with a c_int that lives through the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
