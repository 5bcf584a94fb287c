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
