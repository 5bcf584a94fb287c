//! Process limits: raising RLIMIT_NOFILE to its hard limit and turning it into a socket
//! capacity. Owns these syscalls; must not decide policy.

/// File descriptors a process needs besides its sockets (std streams, epoll, listeners, logs).
pub const RESERVED_FDS: u64 = 64;

/// (soft, hard) RLIMIT_NOFILE.
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    (r.rlim_cur as u64, r.rlim_max as u64)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns the resulting (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let (soft, hard) = nofile();
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: a valid rlimit; failure leaves the old limit, which we then report.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
    nofile()
}

/// How many sockets this process can hold with its current soft limit.
pub fn socket_capacity() -> usize {
    let (soft, _) = nofile();
    soft.saturating_sub(RESERVED_FDS) as usize
}

/// File descriptors one process needs to hold `connections` sockets.
pub fn fds_needed(connections: u64) -> u64 {
    connections.saturating_add(RESERVED_FDS)
}

/// How many processes hold `connections` sockets when each may open `hard` fds (its hard
/// RLIMIT_NOFILE): ceil(connections / (hard - RESERVED_FDS)). `None` if `hard` leaves no
/// room for a socket.
pub fn processes_needed(connections: u64, hard: u64) -> Option<u64> {
    let per_process = hard.checked_sub(RESERVED_FDS).filter(|&n| n > 0)?;
    Some(connections.div_ceil(per_process).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_and_processes() {
        assert_eq!(fds_needed(50_000), 50_064);
        // The project's VM: hard 20,000 without CAP_SYS_RESOURCE.
        assert_eq!(processes_needed(50_000, 20_000), Some(3));
        assert_eq!(processes_needed(1_000_000, 20_000), Some(51));
        assert_eq!(processes_needed(19_936, 20_000), Some(1));
        assert_eq!(processes_needed(19_937, 20_000), Some(2));
        assert_eq!(processes_needed(1, 64), None);
        assert_eq!(processes_needed(1, 10), None);
    }
}
