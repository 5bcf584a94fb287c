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

/// The most descriptors `reserve_fd_table` sizes the table for: 8 MiB of kernel memory.
pub const FD_TABLE_RESERVE_MAX: u64 = 1 << 20;

/// Sizes the process's descriptor table for `fds` descriptors (at most the soft
/// RLIMIT_NOFILE and `FD_TABLE_RESERVE_MAX`) now, rather than as sockets are accepted.
///
/// The kernel doubles the table when a new descriptor does not fit, and in a process with
/// several threads each doubling waits for an RCU grace period (`expand_files` ->
/// `synchronize_rcu`) with the table locked: every thread that accepts or closes meanwhile
/// waits too. Measured here: 8-16 ms stalls of both shards at 128, 256, ... descriptors, the
/// first time a flood took the process past each. The table is never shrunk, so this costs
/// about 8 bytes of kernel memory per descriptor reserved, once, and nothing per connection.
/// Returns the table's size after (from `FDSize` in /proc/self/status), if known.
pub fn reserve_fd_table(fds: u64) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let (soft, _) = nofile();
    let top = fds.min(soft).min(FD_TABLE_RESERVE_MAX);
    if top > 1 {
        let null = std::fs::File::open("/dev/null")?;
        // F_DUPFD takes the lowest free descriptor at or above `top - 1`: the table grows to
        // hold it, and stays that size once it is closed.
        // `top` is at most FD_TABLE_RESERVE_MAX, so it fits the c_int fcntl takes.
        let lowest = (top - 1) as libc::c_int;
        // SAFETY: fcntl on a descriptor we own; the duplicate is closed right after.
        let dup = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lowest) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is ours, open, and used nowhere else.
        unsafe { libc::close(dup) };
    }
    Ok(fd_table_size())
}

/// The size of this process's descriptor table (`FDSize` in /proc/self/status).
pub fn fd_table_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("FDSize:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_table_is_sized_up_front() {
        let before = fd_table_size().unwrap();
        let want = (before * 4).min(nofile().0);
        assert!(
            want > before,
            "the soft RLIMIT_NOFILE leaves no room to test"
        );
        let after = reserve_fd_table(want).unwrap().unwrap();
        assert!(after >= want, "FDSize {after} after reserving {want}");
        // Nothing is left open: the next descriptor is a low one.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!((std::os::fd::AsRawFd::as_raw_fd(&f) as u64) < before);
    }

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
