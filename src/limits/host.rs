//! What `fanout limits` reads from the box (sysctls, memory, RLIMIT_NOFILE, capabilities) and
//! the sysctl writes of `apply` and `revert`. Every path hangs off one `/proc` root, so tests
//! read sysctls from a directory they wrote.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::rt::limits as rlimits;

/// Stands in for an unlimited RLIMIT_NOFILE in arithmetic (the kernel's own fs.nr_open ceiling).
pub const UNLIMITED_FDS: u64 = 1_073_741_816;

/// Every sysctl the rules read.
pub const SYSCTLS: &[&str] = &[
    "fs.file-max",
    "fs.file-nr",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
];

/// Where the box's state is read and sysctls written: `/proc`, or a test directory.
#[derive(Debug, Clone)]
pub struct Host {
    proc: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self::at("/proc")
    }
}

impl Host {
    /// A host whose `/proc` is `proc` (`PROC/sys/net/core/somaxconn`, `PROC/meminfo`, ...).
    pub fn at(proc: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into() }
    }

    /// The file of a sysctl: `net.core.somaxconn` -> `/proc/sys/net/core/somaxconn`.
    pub fn sysctl_path(&self, name: &str) -> PathBuf {
        self.proc.join("sys").join(name.replace('.', "/"))
    }

    /// The raw value of a sysctl (tabs kept, trailing newlines dropped); `None` if it does not
    /// exist here or cannot be read.
    pub fn sysctl(&self, name: &str) -> Option<String> {
        let s = std::fs::read_to_string(self.sysctl_path(name)).ok()?;
        Some(s.trim_end_matches('\n').to_string())
    }

    /// Writes a sysctl (as `sysctl -w` does: the words, space separated) and reads it back:
    /// an error unless the kernel now holds those words.
    pub fn set_sysctl(&self, name: &str, value: &str) -> io::Result<()> {
        let want = words(value);
        std::fs::write(self.sysctl_path(name), format!("{want}\n"))?;
        let now = self.sysctl(name).map(|v| words(&v));
        if now.as_deref() == Some(want.as_str()) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{name} reads back as {:?}",
                now.unwrap_or_default()
            )))
        }
    }

    /// Does this process hold CAP_SYS_RESOURCE (bit 24 of CapEff in /proc/self/status)?
    fn cap_sys_resource(&self) -> bool {
        let Ok(status) = std::fs::read_to_string(self.proc.join("self/status")) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| (caps >> 24) & 1 == 1)
    }

    /// Everything the rules look at, read once.
    pub fn read(&self) -> Inputs {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|&n| Some((n.to_string(), self.sysctl(n)?)))
            .collect();
        let meminfo = std::fs::read_to_string(self.proc.join("meminfo")).unwrap_or_default();
        let (soft, hard) = rlimits::nofile();
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        let infinity = libc::RLIM_INFINITY as u64;
        let unlimited = |v: u64| {
            if v >= infinity {
                UNLIMITED_FDS
            } else {
                v
            }
        };
        Inputs {
            nofile_soft: unlimited(soft),
            nofile_hard: unlimited(hard),
            cap_sys_resource: self.cap_sys_resource(),
            sysctls,
            page_size: page_size(),
            mem_available: meminfo_bytes(&meminfo, "MemAvailable"),
            mem_total: meminfo_bytes(&meminfo, "MemTotal"),
        }
    }
}

/// The box as the rules see it. Plain data: tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// RLIMIT_NOFILE of this process (unlimited as [`UNLIMITED_FDS`]).
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub cap_sys_resource: bool,
    /// Raw values of the sysctls that exist here, by name.
    pub sysctls: BTreeMap<String, String>,
    pub page_size: u64,
    pub mem_available: u64,
    pub mem_total: u64,
}

impl Inputs {
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.sysctls.get(name).map(String::as_str)
    }

    /// The whitespace-separated numbers of a sysctl; `None` if absent or not all numbers.
    pub fn numbers(&self, name: &str) -> Option<Vec<u64>> {
        self.raw(name)?
            .split_whitespace()
            .map(|w| w.parse::<u64>().ok())
            .collect()
    }

    /// The first number of a sysctl.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.numbers(name)?.first().copied()
    }
}

/// A field of `/proc/meminfo` in bytes (`MemAvailable`, `MemTotal`), 0 if absent.
fn meminfo_bytes(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// "a\tb  c" -> "a b c": how values are compared, printed and written.
pub fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Is this process root (needed to write sysctls)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$HOME`, else the home directory of this user in the password database.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// The default state file: `${XDG_STATE_HOME:-$HOME/.local/state}/fanout/tune-limits.state`.
pub fn default_state_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            home_dir()
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".local/state")
        });
    base.join("fanout").join("tune-limits.state")
}

/// Does a sysctl of this name exist on this host (for names read from a state file)?
pub fn valid_sysctl_name(name: &str) -> bool {
    // ^[a-z0-9_]+(\.[a-z0-9_-]+)+$
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or("");
    let ok_first = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let rest: Vec<&str> = parts.collect();
    ok_first
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// UTC time as `2026-11-27T11:30:00Z`.
pub fn utc_stamp() -> String {
    let secs = crate::rt::unix_now();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn sysctl_names() {
        assert!(valid_sysctl_name("net.core.somaxconn"));
        assert!(valid_sysctl_name("net.ipv4.ip_local_port_range"));
        assert!(valid_sysctl_name("fs.file-max"));
        assert!(!valid_sysctl_name("fs"));
        assert!(!valid_sysctl_name("../etc.passwd"));
        assert!(!valid_sysctl_name("net..core"));
        assert!(!valid_sysctl_name("Net.core"));
    }

    #[test]
    fn words_joins_with_single_spaces() {
        assert_eq!(words("32768\t60999"), "32768 60999");
        assert_eq!(words(" a \t b  c\n"), "a b c");
    }
}
