//! The `Origin` allow-list of upgrade requests (`--allowed-origins`): exact origins
//! (`https://app.example.com`) and wildcard subdomains (`https://*.example.com`). Owns parsing
//! and matching; a request without `Origin` (a non-browser client) is allowed, because every
//! browser sends one on a WebSocket handshake.

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `prefix` is `scheme://`, `suffix` is `.example.com[:port]`,
    /// both lowercase.
    Subdomains { prefix: String, suffix: String },
}

/// The allowed origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    patterns: Vec<Pattern>,
}

impl OriginPolicy {
    /// Parses a list such as `https://app.example.com, https://*.example.com`. Errors name the
    /// entry at fault.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in list.iter().flat_map(|s| s.as_ref().split(',')) {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            patterns.push(parse_pattern(entry)?);
        }
        if patterns.is_empty() {
            return Err("--allowed-origins is empty".into());
        }
        Ok(Self { patterns })
    }

    /// Is a request with this `Origin` header allowed? `None` (no header) is.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim();
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            Pattern::Subdomains { prefix, suffix } => {
                origin.len() > prefix.len() + suffix.len()
                    && origin.is_char_boundary(prefix.len())
                    && origin.is_char_boundary(origin.len() - suffix.len())
                    && origin[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && is_label_chain(&origin[prefix.len()..origin.len() - suffix.len()])
            }
        })
    }
}

/// One or more DNS labels joined by dots (the part a `*` stands for).
fn is_label_chain(s: &str) -> bool {
    s.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn parse_pattern(entry: &str) -> Result<Pattern, String> {
    let bad = |why: &str| {
        format!("allowed origin `{entry}`: {why} (e.g. https://app.example.com or https://*.example.com)")
    };
    let lower = entry.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(bad("bad scheme"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("an origin is scheme://host[:port], with no path"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (
            h,
            after
                .strip_prefix(':')
                .or((!after.is_empty()).then_some("x")),
        )
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad("bad port"));
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') || !is_label_chain(domain) {
            return Err(bad("a wildcard is `*.` followed by a domain"));
        }
        let suffix = &rest[1..]; // `.example.com[:port]`
        return Ok(Pattern::Subdomains {
            prefix: format!("{scheme}://"),
            suffix: suffix.to_string(),
        });
    }
    if host.contains('*') {
        return Err(bad("`*` may only be the first label"));
    }
    Ok(Pattern::Exact(lower))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let p =
            OriginPolicy::parse(&["https://app.example.com, https://*.example.org:8443"]).unwrap();
        assert!(p.allows(None));
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("HTTPS://App.Example.com")));
        assert!(!p.allows(Some("http://app.example.com")));
        assert!(!p.allows(Some("https://app.example.com:444")));
        assert!(!p.allows(Some("https://evil.com")));
        assert!(!p.allows(Some("null")));
        assert!(p.allows(Some("https://a.example.org:8443")));
        assert!(p.allows(Some("https://a.b.example.org:8443")));
        assert!(!p.allows(Some("https://example.org:8443")));
        assert!(!p.allows(Some("https://.example.org:8443")));
        assert!(!p.allows(Some("https://a.example.org")));
        assert!(!p.allows(Some("https://evilexample.org:8443")));
        assert!(!p.allows(Some("https://a/b.example.org:8443")));
        let v6 = OriginPolicy::parse(&["http://[::1]:8080", "http://[::1]"]).unwrap();
        assert!(v6.allows(Some("http://[::1]:8080")));
        assert!(v6.allows(Some("http://[::1]")));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "app.example.com",
            "https://",
            "https://a.com/path",
            "https://a.*.com",
            "https://*.",
            "https://a.com:x",
            "https://[::1]x",
            " , ",
        ] {
            assert!(OriginPolicy::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
