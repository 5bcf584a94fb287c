//! The state file `apply` writes and `revert` reads: the format of the bash tune-limits.sh
//! (v1), unchanged, so a state file written by either reverts with either.
//!
//! `# comment` lines, then one record a line, `KIND<TAB>NAME<TAB>VALUE`, VALUE to the end of
//! the line (it may hold tabs):
//! - `sysctl NAME VALUE`: the previous value, exactly as read from /proc/sys
//! - `dir PATH` (empty value): a directory apply created
//! - `file PATH BACKUP`: a file apply wrote; BACKUP (empty if there was none) holds what was
//!   there before

/// The first line of a new state file.
pub const HEADER: &str = "# fanout tune-limits state v1: KIND<TAB>NAME<TAB>PREVIOUS VALUE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: String,
    pub name: String,
    pub value: String,
}

impl Record {
    pub fn new(kind: &str, name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            name: name.into(),
            value: value.into(),
        }
    }

    /// The record as a line, without its newline.
    pub fn line(&self) -> String {
        format!("{}\t{}\t{}", self.kind, self.name, self.value)
    }

    /// Parses one line: kind up to the first tab, name up to the second, value the rest
    /// (empty when there is no second tab; a line without a tab is all kind).
    pub fn parse(line: &str) -> Self {
        let (kind, rest) = line.split_once('\t').unwrap_or((line, ""));
        let (name, value) = rest.split_once('\t').unwrap_or((rest, ""));
        Self::new(kind, name, value)
    }
}

/// The records of a state file, in order; comments and empty lines skipped.
pub fn parse(text: &str) -> Vec<Record> {
    text.split('\n')
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Record::parse)
        .collect()
}

/// Is there a record of this kind and name?
pub fn has(records: &[Record], kind: &str, name: &str) -> bool {
    records.iter().any(|r| r.kind == kind && r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_bash_script_wrote() {
        let text = "# fanout tune-limits state v1: KIND<TAB>NAME<TAB>PREVIOUS VALUE\n\
                    # apply --connections 50000 at 2026-11-27T10:00:00Z\n\
                    sysctl\tnet.core.somaxconn\t128\n\
                    sysctl\tnet.ipv4.ip_local_port_range\t32768\t60999\n\
                    \n\
                    dir\t/tmp/r/etc/sysctl.d\t\n\
                    file\t/tmp/r/etc/sysctl.d/90-fanout.conf\t\n\
                    file\t/tmp/r/etc/security/limits.d/90-fanout.conf\t/s.state.bak.0\n\
                    # apply --connections 400000 at 2026-11-27T10:01:00Z\n\
                    sysctl\tnet.ipv4.tcp_mem\t287901\t383868\t575802";
        let r = parse(text);
        assert_eq!(r.len(), 6);
        assert_eq!(r[0], Record::new("sysctl", "net.core.somaxconn", "128"));
        assert_eq!(r[1].value, "32768\t60999");
        assert_eq!(r[2], Record::new("dir", "/tmp/r/etc/sysctl.d", ""));
        assert_eq!(r[3].value, "");
        assert_eq!(r[4].value, "/s.state.bak.0");
        assert_eq!(r[5].value, "287901\t383868\t575802");
        assert!(has(&r, "sysctl", "net.ipv4.tcp_mem"));
        assert!(!has(&r, "file", "net.ipv4.tcp_mem"));
    }

    #[test]
    fn lines_round_trip() {
        for rec in [
            Record::new("sysctl", "net.ipv4.tcp_mem", "1\t2\t3"),
            Record::new("dir", "/a b/c", ""),
            Record::new("file", "/x", "/y.bak.1"),
        ] {
            assert_eq!(Record::parse(&rec.line()), rec);
        }
        assert_eq!(Record::parse("odd"), Record::new("odd", "", ""));
        assert_eq!(Record::parse("k\tn"), Record::new("k", "n", ""));
    }
}
