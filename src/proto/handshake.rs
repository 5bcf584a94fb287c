//! The HTTP/1.1 opening handshake (RFC 6455 §4) for both roles, on `httparse`: incremental
//! parse of the request (server) or response (client), validation, `Sec-WebSocket-Accept`,
//! and the response and request bytes. Views borrow the caller's buffer; nothing here does I/O.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The largest request header block accepted by default (else 431).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 << 10;
/// Headers beyond this count answer 431.
pub const MAX_HEADERS: usize = 64;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A refusal before the upgrade: the HTTP status to answer with and why (a fixed text, or one
/// that names the offending value, e.g. an unknown query parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: Cow<'static, str>,
}

impl HttpError {
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason: Cow::Borrowed(reason),
        }
    }

    /// A refusal whose reason is built at run time (keep it one line and short: it is the body
    /// of the answer and goes to the log).
    pub fn owned(status: u16, reason: String) -> Self {
        Self {
            status,
            reason: Cow::Owned(reason),
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for HttpError {}

/// A parsed HTTP request head. Every view borrows the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// The query string without the `?`.
    pub query: Option<&'a str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// `Sec-WebSocket-Protocol`, as sent (a comma list).
    pub protocols: Option<&'a str>,
    /// `Sec-WebSocket-Extensions`, as sent.
    pub extensions: Option<&'a str>,
    pub content_length: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// Some `Upgrade` header holds the token `websocket` (every occurrence is looked at).
    upgrade_websocket: bool,
    /// Some `Connection` header holds the token `upgrade`.
    connection_upgrade: bool,
    ws_version: Option<&'a str>,
    ws_key: Option<&'a str>,
    /// The whole header block, to look up any other header.
    head: &'a [u8],
}

/// A validated WebSocket key: the base64 text the client sent (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketKey<'a>(pub &'a str);

impl<'a> WebSocketKey<'a> {
    pub fn accept(&self) -> [u8; 28] {
        accept_key(self.0.as_bytes())
    }
}

const ERR_MALFORMED: HttpError = HttpError::new(400, "malformed request");
const ERR_TOO_LARGE: HttpError = HttpError::new(431, "request header fields too large");

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet (read more). `Ok(Some((req, n)))`: the head is the
/// first `n` bytes. Errors carry the status to answer with: 400 for malformed, 431 past
/// `max_header_bytes` or `MAX_HEADERS`.
pub fn parse_request(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(Request<'_>, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // Only the first `max_header_bytes` can hold an acceptable head: what lies past them is
    // never scanned (a 64 KiB head costs what an 8 KiB one does), and a body or frames that
    // follow the head in the same read are not the parser's.
    let n = match req.parse(&buf[..buf.len().min(max_header_bytes)]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_header_bytes {
                Err(ERR_TOO_LARGE)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ERR_TOO_LARGE),
        Err(_) => return Err(ERR_MALFORMED),
    };
    if n > max_header_bytes {
        return Err(ERR_TOO_LARGE);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ERR_MALFORMED);
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = Request {
        method,
        path,
        query,
        version,
        host: None,
        origin: None,
        cookie: None,
        authorization: None,
        protocols: None,
        extensions: None,
        content_length: None,
        content_type: None,
        upgrade_websocket: false,
        connection_upgrade: false,
        ws_version: None,
        ws_key: None,
        head: &buf[..n],
    };
    for h in req.headers.iter() {
        let slot = match h.name.len() {
            4 if h.name.eq_ignore_ascii_case("host") => &mut out.host,
            6 if h.name.eq_ignore_ascii_case("origin") => &mut out.origin,
            6 if h.name.eq_ignore_ascii_case("cookie") => &mut out.cookie,
            7 if h.name.eq_ignore_ascii_case("upgrade") => {
                let v = std::str::from_utf8(h.value).map_err(|_| ERR_MALFORMED)?;
                out.upgrade_websocket |= has_token(v, "websocket");
                continue;
            }
            10 if h.name.eq_ignore_ascii_case("connection") => {
                let v = std::str::from_utf8(h.value).map_err(|_| ERR_MALFORMED)?;
                out.connection_upgrade |= has_token(v, "upgrade");
                continue;
            }
            12 if h.name.eq_ignore_ascii_case("content-type") => &mut out.content_type,
            13 if h.name.eq_ignore_ascii_case("authorization") => &mut out.authorization,
            14 if h.name.eq_ignore_ascii_case("content-length") => &mut out.content_length,
            17 if h.name.eq_ignore_ascii_case("sec-websocket-key") => &mut out.ws_key,
            21 if h.name.eq_ignore_ascii_case("sec-websocket-version") => &mut out.ws_version,
            22 if h.name.eq_ignore_ascii_case("sec-websocket-protocol") => &mut out.protocols,
            24 if h.name.eq_ignore_ascii_case("sec-websocket-extensions") => &mut out.extensions,
            _ => continue,
        };
        let value = std::str::from_utf8(h.value).map_err(|_| ERR_MALFORMED)?;
        // A repeated header: the first is kept as the view (`header_values` has them all).
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    Ok(Some((out, n)))
}

/// Does the comma-separated `list` hold `token` (case-insensitive)?
pub fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<'a> Request<'a> {
    /// The value of any header (first occurrence), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.header_values(name).next()
    }

    /// The body's length from `Content-Length` (RFC 9112 section 6.3): `None` without the
    /// header. A value that is not all digits (`+5`, `-1`, `0x10`, a list such as `5, 5`), one too
    /// large for memory, or several headers that disagree are a 400: a request whose length is
    /// unclear must not be guessed at (request smuggling).
    pub fn body_length(&self) -> Result<Option<usize>, HttpError> {
        const BAD: HttpError = HttpError::new(400, "bad Content-Length");
        let mut length = None;
        for v in self.header_values("content-length") {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BAD);
            }
            let n: usize = v.parse().map_err(|_| BAD)?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::new(400, "conflicting Content-Length headers"));
            }
            length = Some(n);
        }
        Ok(length)
    }

    /// Every value of a header, in order.
    pub fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        let head: &'a [u8] = self.head;
        // The head was validated by httparse: lines end in CRLF (or LF), names are tokens.
        head.split(|&b| b == b'\n').skip(1).filter_map(move |line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let (n, v) = (&line[..colon], &line[colon + 1..]);
            if !n.eq_ignore_ascii_case(name.as_bytes()) {
                return None;
            }
            std::str::from_utf8(v).ok().map(|v| v.trim())
        })
    }

    /// The value of one `name=value` pair of the query string (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Every `name=value` pair of the query string, percent-decoded as a browser's
    /// `URLSearchParams` encodes them (`%2C` is `,`, `+` is a space; invalid UTF-8 becomes
    /// U+FFFD). Borrows the request unless a pair needed decoding.
    pub fn query_pairs(&self) -> form_urlencoded::Parse<'a> {
        form_urlencoded::parse(self.query.unwrap_or("").as_bytes())
    }

    /// The subprotocols the client offers, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &'a str> {
        self.protocols
            .into_iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }

    /// Is this an attempt at a WebSocket upgrade (as opposed to plain HTTP)?
    pub fn is_upgrade_attempt(&self) -> bool {
        self.upgrade_websocket || self.ws_key.is_some()
    }

    /// Validates the upgrade request (RFC 6455 §4.2.1).
    ///
    /// `Ok(None)`: a plain HTTP request. `Ok(Some(key))`: a valid WebSocket upgrade.
    /// `Err`: 400 for a malformed upgrade, 426 for an unsupported version (answer with
    /// `Sec-WebSocket-Version: 13`, see `write_error_response`).
    pub fn websocket(&self) -> Result<Option<WebSocketKey<'a>>, HttpError> {
        if !self.is_upgrade_attempt() {
            return Ok(None);
        }
        if self.method != "GET" {
            return Err(HttpError::new(400, "WebSocket upgrade needs GET"));
        }
        if self.version != 1 {
            return Err(HttpError::new(400, "WebSocket upgrade needs HTTP/1.1"));
        }
        if self.host.is_none() {
            return Err(HttpError::new(400, "missing Host"));
        }
        if !self.upgrade_websocket {
            return Err(HttpError::new(400, "Upgrade must be websocket"));
        }
        if !self.connection_upgrade {
            return Err(HttpError::new(400, "Connection must include upgrade"));
        }
        match self.ws_version.map(str::trim) {
            Some("13") => {}
            _ => return Err(HttpError::new(426, "unsupported WebSocket version")),
        }
        let key = self
            .ws_key
            .map(str::trim)
            .ok_or(HttpError::new(400, "missing Sec-WebSocket-Key"))?;
        let mut decoded = [0u8; 18];
        match BASE64.decode_slice(key, &mut decoded) {
            Ok(16) if key.len() == 24 => Ok(Some(WebSocketKey(key))),
            _ => Err(HttpError::new(400, "Sec-WebSocket-Key must be 16 bytes")),
        }
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(sha1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes encode to exactly 28 base64 characters.
    let n = BASE64
        .encode_slice(digest, &mut out)
        .expect("20 bytes fit 28 base64 chars");
    debug_assert_eq!(n, 28);
    out
}

/// Appends the 101 response.
pub fn write_accept_response(
    out: &mut Vec<u8>,
    key: &WebSocketKey<'_>,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&key.accept());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// The reason phrase for the statuses this server sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a complete HTTP/1.1 response that closes the connection.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The headers that let a page from `origin` read a response (CORS), for an origin the
/// server's list allows: the origin echoed, and `Vary: Origin` for caches.
pub fn cors_headers(origin: &str) -> [(&'static str, &str); 2] {
    [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
}

/// The extra headers of the answer (204) to a CORS preflight from an allowed origin: the
/// methods and request headers the HTTP API takes, cached by the browser for 10 minutes.
pub const CORS_PREFLIGHT_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type",
    ),
    ("Access-Control-Max-Age", "600"),
];

/// Appends the answer to a refused handshake: the status, its reason as the body, and for 426
/// the version this server speaks.
pub fn write_error_response(out: &mut Vec<u8>, err: &HttpError) {
    let headers: &[(&str, &str)] = if err.status == 426 {
        &[("Sec-WebSocket-Version", "13")]
    } else {
        &[]
    };
    let mut body = Vec::with_capacity(err.reason.len() + 1);
    body.extend_from_slice(err.reason.as_bytes());
    body.push(b'\n');
    write_response(out, err.status, headers, "text/plain; charset=utf-8", &body);
}

// ----- client role -----

/// A client key: 16 random bytes, base64 (24 characters).
pub fn client_key(random: [u8; 16]) -> [u8; 24] {
    let mut out = [0u8; 24];
    let n = BASE64
        .encode_slice(random, &mut out)
        .expect("16 bytes fit 24 base64 chars");
    debug_assert_eq!(n, 24);
    out
}

/// Appends a client's upgrade request. `path` includes any query.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &[u8; 24],
    protocols: &[&str],
    headers: &[(&str, &str)],
) {
    use std::io::Write;
    let path = if path.is_empty() { "/" } else { path };
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    );
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
    if !protocols.is_empty() {
        let _ = write!(out, "Sec-WebSocket-Protocol: {}\r\n", protocols.join(", "));
    }
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a server's answer to the upgrade is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshakeError {
    Malformed,
    /// The server answered with another status than 101.
    Status(u16),
    MissingUpgrade,
    BadAccept,
    /// The server picked a subprotocol the client did not offer.
    UnofferedProtocol,
    /// The server enabled an extension the client did not offer.
    UnofferedExtension,
    /// The server's answer to an offered extension is not acceptable.
    BadExtension(&'static str),
    TooLarge,
}

impl std::fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed HTTP response"),
            Self::Status(s) => write!(f, "server answered HTTP {s}"),
            Self::MissingUpgrade => f.write_str("response lacks Upgrade/Connection headers"),
            Self::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
            Self::UnofferedProtocol => f.write_str("server chose a subprotocol not offered"),
            Self::UnofferedExtension => f.write_str("server enabled an extension not offered"),
            Self::BadExtension(why) => write!(f, "bad Sec-WebSocket-Extensions answer: {why}"),
            Self::TooLarge => f.write_str("response head too large"),
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// A server's accepted upgrade, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub protocol: Option<&'a str>,
    pub extensions: Option<&'a str>,
}

/// Parses and checks the server's answer. `Ok(None)`: incomplete. `Ok(Some((resp, n)))`: the
/// head is the first `n` bytes; frames may follow in the same buffer.
pub fn parse_response<'a>(
    buf: &'a [u8],
    key: &[u8; 24],
    offered_protocols: &[&str],
    max_header_bytes: usize,
) -> Result<Option<(Response<'a>, usize)>, ClientHandshakeError> {
    let r = parse_response_offering_extensions(buf, key, offered_protocols, max_header_bytes)?;
    if let Some((resp, _)) = &r {
        if resp.extensions.is_some_and(|e| !e.is_empty()) {
            return Err(ClientHandshakeError::UnofferedExtension);
        }
    }
    Ok(r)
}

/// Like `parse_response`, for a client that offered extensions: `extensions` is left for the
/// caller to check against its offer.
pub fn parse_response_offering_extensions<'a>(
    buf: &'a [u8],
    key: &[u8; 24],
    offered_protocols: &[&str],
    max_header_bytes: usize,
) -> Result<Option<(Response<'a>, usize)>, ClientHandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(ClientHandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ClientHandshakeError::Malformed),
    };
    if n > max_header_bytes {
        return Err(ClientHandshakeError::TooLarge);
    }
    let code = resp.code.ok_or(ClientHandshakeError::Malformed)?;
    if code != 101 {
        return Err(ClientHandshakeError::Status(code));
    }
    let (mut upgrade, mut connection, mut accept_ok) = (false, false, false);
    let mut out = Response {
        protocol: None,
        extensions: None,
    };
    let expected = accept_key(key);
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| ClientHandshakeError::Malformed)?;
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(v, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= has_token(v, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = v.trim().as_bytes() == expected;
        } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            out.protocol = Some(v.trim());
        } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            out.extensions = Some(v.trim());
        }
    }
    if !(upgrade && connection) {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    if !accept_ok {
        return Err(ClientHandshakeError::BadAccept);
    }
    if let Some(p) = out.protocol {
        if !offered_protocols.contains(&p) {
            return Err(ClientHandshakeError::UnofferedProtocol);
        }
    }
    Ok(Some((out, n)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_length_is_digits_and_one_value() {
        let len = |headers: &str| {
            let s = format!("POST /p HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
            let (req, _) = super::parse_request(s.as_bytes(), 8192).unwrap().unwrap();
            req.body_length().map_err(|e| e.status)
        };
        assert_eq!(len(""), Ok(None));
        assert_eq!(len("Content-Length: 5\r\n"), Ok(Some(5)));
        assert_eq!(len("Content-Length:  007 \r\n"), Ok(Some(7)));
        assert_eq!(
            len("Content-Length: 5\r\ncontent-length: 5\r\n"),
            Ok(Some(5))
        );
        assert_eq!(len("Content-Length: 5\r\nContent-Length: 6\r\n"), Err(400));
        assert_eq!(len("Content-Length: +5\r\n"), Err(400));
        assert_eq!(len("Content-Length: -1\r\n"), Err(400));
        assert_eq!(len("Content-Length: 5, 5\r\n"), Err(400));
        assert_eq!(len("Content-Length: \r\n"), Err(400));
        assert_eq!(len("Content-Length: 99999999999999999999999\r\n"), Err(400));
    }

    use super::*;

    const GOOD: &str = "GET /chat?topics=a,b&token=xyz HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nCookie: sid=42\r\nAuthorization: Bearer t0k\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\nX-Custom: yes\r\n\r\n";

    fn parse(s: &str) -> Result<Option<(Request<'_>, usize)>, HttpError> {
        parse_request(s.as_bytes(), DEFAULT_MAX_HEADER_BYTES)
    }

    fn status_of(s: &str) -> u16 {
        match parse(s) {
            Err(e) => e.status,
            Ok(Some((req, _))) => match req.websocket() {
                Err(e) => e.status,
                Ok(Some(_)) => 101,
                Ok(None) => 200,
            },
            Ok(None) => 0,
        }
    }

    #[test]
    fn rfc_accept_value() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_request_gives_borrowed_views() {
        let (req, n) = parse(GOOD).unwrap().unwrap();
        assert_eq!(n, GOOD.len());
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query, Some("topics=a,b&token=xyz"));
        assert_eq!(req.query_param("token"), Some("xyz"));
        assert_eq!(req.query_param("topics"), Some("a,b"));
        assert_eq!(req.origin, Some("http://example.com"));
        assert_eq!(req.cookie, Some("sid=42"));
        assert_eq!(req.authorization, Some("Bearer t0k"));
        assert_eq!(req.header("x-custom"), Some("yes"));
        assert_eq!(
            req.offered_protocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        let key = req.websocket().unwrap().unwrap();
        let mut out = Vec::new();
        write_accept_response(&mut out, &key, Some("chat"), None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn plain_http_is_reported_as_such() {
        let s = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(status_of(s), 200);
        let s = "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let (req, n) = parse(s).unwrap().unwrap();
        assert_eq!(req.content_length, Some("2"));
        assert_eq!(&s[n..], "hi");
        assert_eq!(req.websocket(), Ok(None));
    }

    #[test]
    fn bad_upgrades_get_their_status() {
        let with = |from: &str, to: &str| GOOD.replace(from, to);
        assert_eq!(status_of(GOOD), 101);
        assert_eq!(status_of(&with("GET /chat", "POST /chat")), 400);
        assert_eq!(status_of(&with("HTTP/1.1\r\n", "HTTP/1.0\r\n")), 400);
        assert_eq!(status_of(&with("Host: server.example.com\r\n", "")), 400);
        assert_eq!(
            status_of(&with(
                "Connection: keep-alive, Upgrade",
                "Connection: close"
            )),
            400
        );
        assert_eq!(
            status_of(&with(
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 8"
            )),
            426
        );
        assert_eq!(status_of(&with("Sec-WebSocket-Version: 13\r\n", "")), 426);
        assert_eq!(
            status_of(&with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")),
            400
        );
        assert_eq!(
            status_of(&with("dGhlIHNhbXBsZSBub25jZQ==", "not base64 at all!!!!!!")),
            400
        );
        assert_eq!(
            status_of(&with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400
        );
        // Tokens may sit in any occurrence of a repeated header.
        assert_eq!(
            status_of(&with(
                "Upgrade: websocket\r\n",
                "Upgrade: h2c\r\nUpgrade: websocket\r\n"
            )),
            101
        );
        assert_eq!(
            status_of(&with(
                "Connection: keep-alive, Upgrade\r\n",
                "Connection: keep-alive\r\nConnection: Upgrade\r\n"
            )),
            101
        );
        // Case-insensitive tokens and header names.
        assert_eq!(
            status_of(&with("Upgrade: websocket", "upgrade: WebSocket")),
            101
        );
        assert_eq!(status_of("garbage\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    }

    #[test]
    fn oversized_heads_get_431() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse(&big).unwrap_err().status, 431);
        // Still incomplete but already past the cap.
        assert_eq!(parse(&big[..8500]).unwrap_err().status, 431);
        // A head of exactly the cap is accepted, one byte more is not (only the cap is read).
        let exact = |len: usize| {
            let pad = len - "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n".len();
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(pad)
            )
        };
        let cap = DEFAULT_MAX_HEADER_BYTES;
        let (_, n) = parse_request(exact(cap).as_bytes(), cap).unwrap().unwrap();
        assert_eq!(n, cap);
        let with_body = exact(cap) + "body past the head";
        assert_eq!(
            parse_request(with_body.as_bytes(), cap).unwrap().unwrap().1,
            cap
        );
        assert_eq!(
            parse_request(exact(cap + 1).as_bytes(), cap)
                .unwrap_err()
                .status,
            431
        );
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        let s = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse(&s).unwrap_err().status, 431);
    }

    #[test]
    fn error_response_426_names_the_version() {
        let mut out = Vec::new();
        write_error_response(&mut out, &HttpError::new(426, "unsupported"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn client_round_trip() {
        let key = client_key([7; 16]);
        let mut req = Vec::new();
        write_client_request(&mut req, "h:1", "/x?y=1", &key, &["chat"], &[("X-A", "b")]);
        let (parsed, _) = parse_request(&req, DEFAULT_MAX_HEADER_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.header("x-a"), Some("b"));
        let ws_key = parsed.websocket().unwrap().unwrap();
        let mut resp = Vec::new();
        write_accept_response(&mut resp, &ws_key, Some("chat"), None);
        resp.extend_from_slice(&[0x81, 0x00]);
        let (r, n) = parse_response(&resp, &key, &["chat"], 4096)
            .unwrap()
            .unwrap();
        assert_eq!(r.protocol, Some("chat"));
        assert_eq!(&resp[n..], &[0x81, 0x00]);
        // Wrong key -> bad accept; unoffered protocol; non-101.
        let other = client_key([8; 16]);
        assert_eq!(
            parse_response(&resp, &other, &["chat"], 4096),
            Err(ClientHandshakeError::BadAccept)
        );
        assert_eq!(
            parse_response(&resp, &key, &[], 4096),
            Err(ClientHandshakeError::UnofferedProtocol)
        );
        let mut not101 = Vec::new();
        write_error_response(&mut not101, &HttpError::new(403, "no"));
        assert_eq!(
            parse_response(&not101, &key, &[], 4096),
            Err(ClientHandshakeError::Status(403))
        );
    }
}
