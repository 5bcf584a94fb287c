//! `ws://` and `wss://` URLs: host, port, path and the Host header. Owns parsing only (no DNS).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    /// `wss://`: TLS to the server.
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

impl WsUrl {
    pub fn parse(s: &str) -> Result<WsUrl, UrlError> {
        let (rest, tls) = if let Some(r) = s.strip_prefix("ws://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("wss://") {
            (r, true)
        } else {
            return Err(UrlError(format!("{s}: expected a ws:// or wss:// URL")));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(UrlError(format!("{s}: missing or unsupported host")));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| UrlError(format!("{s}: unclosed [ in host")))?;
            let port = &v6[end + 1..];
            (v6[..end].to_string(), port.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => p
                .parse()
                .map_err(|_| UrlError(format!("{s}: bad port `{p}`")))?,
        };
        if host.is_empty() {
            return Err(UrlError(format!("{s}: missing host")));
        }
        Ok(WsUrl {
            host,
            port,
            path,
            tls,
        })
    }

    /// The Host header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// Resolves the host (numeric addresses need no lookup).
    pub fn resolve(&self) -> std::io::Result<Vec<std::net::SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = WsUrl::parse("ws://127.0.0.1:9001/ws?topics=a,b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9001, "/ws?topics=a,b")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9001");
        let u = WsUrl::parse("ws://localhost").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = WsUrl::parse("ws://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.host_header(), "[::1]:9");
        let u = WsUrl::parse("ws://h:1?x=1").unwrap();
        assert_eq!(u.path, "/?x=1");
        let u = WsUrl::parse("wss://example.com/x").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.host_header()), (443, "example.com".to_string()));
        assert_eq!(u.to_string(), "wss://example.com/x");
        let u = WsUrl::parse("wss://h:9001").unwrap();
        assert_eq!(u.host_header(), "h:9001");
        for bad in ["http://x", "ws://", "ws://h:port", "wss://", "ws://u@h"] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
