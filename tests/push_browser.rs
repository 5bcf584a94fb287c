//! The push app as a browser uses it: the WebSocket path, percent-decoded query strings,
//! unknown parameters refused, CORS on the HTTP API, form bodies as text, and refused upgrades
//! counted by reason.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::push::{next_text, publish, silent, sub, KEY};
use common::NeverAnswers;
use fanout::apps::push::{Push, PushConfig};
use fanout::server::auth::JwtConfig;
use fanout::server::origin::OriginPolicy;
use fanout::server::{Config, Server, SlowConsumerPolicy};

const PAGE: &str = "https://app.example";

fn server(cfg: Config, push: PushConfig) -> Server {
    Server::start(
        Config {
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ..cfg
        },
        Push::new(push),
    )
    .unwrap()
}

fn push_cfg() -> PushConfig {
    PushConfig {
        publish_key: Some(KEY.into()),
        ..PushConfig::default()
    }
}

/// Sends a raw request; returns the response head (lowercase header names kept as sent) and
/// body. A 101 leaves the socket open: only its head is read.
fn raw(addr: SocketAddr, req: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

fn upgrade(addr: SocketAddr, target: &str, extra: &str) -> (u16, String, String) {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn metric(addr: SocketAddr, line_start: &str) -> u64 {
    let (_, _, body) = raw(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in {body}"))
}

#[test]
fn upgrades_only_on_the_websocket_path() {
    let s = server(common::config(), push_cfg());
    let addr = s.local_addr();
    assert_eq!(upgrade(addr, "/ws?topics=a", "").0, 101);
    for target in ["/", "/other?topics=a", "/ws/", "/wsx"] {
        let (status, _, body) = upgrade(addr, target, "");
        assert_eq!(status, 404, "{target}: {body}");
        assert!(body.contains("connect to /ws"), "{target}: {body}");
    }
    // Another path with --ws-path.
    let custom = server(
        common::config(),
        PushConfig {
            ws_path: "/live/updates".into(),
            ..push_cfg()
        },
    );
    let addr = custom.local_addr();
    assert_eq!(upgrade(addr, "/live/updates", "").0, 101);
    assert_eq!(upgrade(addr, "/ws", "").0, 404);
}

#[test]
fn query_strings_are_percent_decoded() {
    let s = server(common::config(), push_cfg());
    let addr = s.local_addr();
    // As URLSearchParams writes `topics=news,sport`.
    let mut both = sub(addr, "?topics=news%2Csport");
    let mut escaped = sub(addr, "?topics=n%65ws");
    let mut slash = sub(addr, "?topics=news%2Fuk");
    let mut twice = sub(addr, "?topics=sport&topics=news%2Fuk");
    assert_eq!(publish(addr, "news", "n1", "text/plain", KEY).0, 200);
    assert_eq!(publish(addr, "sport", "s1", "text/plain", KEY).0, 200);
    assert_eq!(publish(addr, "news/uk", "u1", "text/plain", KEY).0, 200);
    assert_eq!(next_text(&mut both), "n1");
    assert_eq!(next_text(&mut both), "s1");
    assert_eq!(next_text(&mut escaped), "n1");
    assert_eq!(next_text(&mut slash), "u1");
    assert_eq!(next_text(&mut twice), "s1");
    assert_eq!(next_text(&mut twice), "u1");
    for ws in [&mut both, &mut escaped, &mut slash, &mut twice] {
        assert!(silent(ws, Duration::from_millis(100)), "nothing else");
    }
    // `+` is a space in a query string, and a space is not a topic character: the answer
    // names the decoded topic.
    let (status, _, body) = upgrade(addr, "/ws?topics=a+b", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("topic \"a b\""), "{body}");
}

#[test]
fn unknown_or_empty_parameters_are_refused_by_name() {
    let s = server(common::config(), push_cfg());
    let addr = s.local_addr();
    let (status, _, body) = upgrade(addr, "/ws?topic=a", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown query parameter \"topic\""), "{body}");
    let (status, _, body) = upgrade(addr, "/ws?topics=a&x%0Ay=1", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""x\ny""#), "escaped: {body}");
    for target in ["/ws?topics=", "/ws?topics", "/ws?topics=,,"] {
        let (status, _, body) = upgrade(addr, target, "");
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("?topics= is empty"), "{target}: {body}");
    }
    // Parameters others read: the token, and history positions.
    assert_eq!(
        upgrade(addr, "/ws?topics=a&since.a=17:0123456789ab", "").0,
        101
    );
    let (status, _, body) = upgrade(addr, "/ws?topics=a&since.a=17", "");
    assert_eq!(status, 400, "a position is OFFSET:EPOCH: {body}");
    assert_eq!(upgrade(addr, "/ws?token=x", "").0, 101);
    assert_eq!(upgrade(addr, "/ws", "").0, 101);
}

#[test]
fn form_bodies_publish_text_and_must_be_utf8() {
    let s = server(common::config(), push_cfg());
    let addr = s.local_addr();
    let mut ws = sub(addr, "?topics=f");
    let form = "application/x-www-form-urlencoded";
    assert_eq!(publish(addr, "f", "hello", form, KEY).0, 200);
    assert_eq!(next_text(&mut ws), "hello", "a text frame, not binary");
    // The body goes out as sent (not form-decoded).
    assert_eq!(publish(addr, "f", "a=1&b=%20", form, KEY).0, 200);
    assert_eq!(next_text(&mut ws), "a=1&b=%20");
    let (status, _, body) = raw(
        addr,
        &format!("POST /publish/f HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nContent-Type: {form}\r\nContent-Length: 2\r\n\r\n\u{ff}"),
    );
    // U+00FF is two UTF-8 bytes: that one is valid. Now a raw 0xFF.
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_text(&mut ws), "\u{ff}");
    let mut s2 = TcpStream::connect(addr).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s2.write_all(format!("POST /publish/f HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nContent-Type: {form}\r\nContent-Length: 1\r\n\r\n").as_bytes()).unwrap();
    s2.write_all(&[0xff]).unwrap();
    let mut out = String::new();
    let _ = s2.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(silent(&mut ws, Duration::from_millis(100)));
}

fn cors_server() -> Server {
    server(
        Config {
            cors_origins: Some(OriginPolicy::parse(&[PAGE]).unwrap()),
            ..common::config()
        },
        push_cfg(),
    )
}

#[test]
fn cors_preflight_is_answered_for_allowed_origins() {
    let s = cors_server();
    let addr = s.local_addr();
    let preflight = |origin: &str| {
        raw(
            addr,
            &format!("OPTIONS /publish/news HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"),
        )
    };
    let (status, head, _) = preflight(PAGE);
    assert_eq!(status, 204, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(PAGE));
    assert!(header(&head, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    let h = header(&head, "access-control-allow-headers").unwrap_or_default();
    assert!(
        h.contains("Authorization") && h.contains("Content-Type"),
        "{head}"
    );
    assert_eq!(header(&head, "access-control-max-age"), Some("600"));
    assert_eq!(header(&head, "vary"), Some("Origin"));
    // Another origin: no CORS (the route's own answer to OPTIONS).
    let (status, head, _) = preflight("https://evil.example");
    assert_eq!(status, 405, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), None);
}

#[test]
fn cors_headers_on_publish_healthz_and_metrics() {
    let s = cors_server();
    let addr = s.local_addr();
    let mut ws = sub(addr, "?topics=c");
    // POST /publish is answered later (once every shard queued it): the origin is kept.
    let (status, head, body) = raw(
        addr,
        &format!("POST /publish/c HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(PAGE));
    assert_eq!(header(&head, "vary"), Some("Origin"));
    assert_eq!(next_text(&mut ws), "hi");
    for path in ["/healthz", "/metrics"] {
        let (status, head, _) = raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\n\r\n"),
        );
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&head, "access-control-allow-origin"),
            Some(PAGE),
            "{path}: {head}"
        );
        let (_, head, _) = raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n\r\n"),
        );
        assert_eq!(header(&head, "access-control-allow-origin"), None, "{path}");
    }
    // Without --cors-origins nothing changes.
    let plain = server(common::config(), push_cfg());
    let (_, head, _) = raw(
        plain.local_addr(),
        &format!("GET /healthz HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\n\r\n"),
    );
    assert_eq!(header(&head, "access-control-allow-origin"), None);
}

#[test]
fn refused_upgrades_are_counted_by_reason() {
    let s = server(
        Config {
            allowed_origins: Some(OriginPolicy::parse(&[PAGE]).unwrap()),
            ..common::config()
        },
        push_cfg(),
    );
    let addr = s.local_addr();
    assert_eq!(upgrade(addr, "/nope", "").0, 404);
    assert_eq!(upgrade(addr, "/ws?topic=a", "").0, 400);
    assert_eq!(upgrade(addr, "/ws?topics=bad!", "").0, 400);
    assert_eq!(
        upgrade(addr, "/ws", "Origin: https://evil.example\r\n").0,
        403
    );
    assert_eq!(
        raw(addr, "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").0,
        426
    );
    let m = |r: &str| {
        metric(
            addr,
            &format!("fanout_handshake_refused_total{{reason=\"{r}\"}} "),
        )
    };
    assert_eq!(m("path"), 1);
    assert_eq!(m("bad_request"), 2);
    assert_eq!(m("origin"), 1);
    assert_eq!(m("version"), 1);
    assert_eq!(m("auth"), 0);
}

#[test]
fn the_401_names_a_cookie_only_when_there_is_one() {
    let secret = vec![7u8; 32];
    for (cookie, wanted, unwanted) in [
        (None, "?token=<jwt>", "cookie"),
        (Some("sid"), "the sid cookie", "the token cookie"),
    ] {
        let s = server(
            Config {
                jwt: Some(JwtConfig {
                    secret: secret.clone(),
                    cookie: cookie.map(Into::into),
                    close_on_expiry: false,
                }),
                ..common::config()
            },
            push_cfg(),
        );
        let addr = s.local_addr();
        let (status, _, body) = upgrade(addr, "/ws", "");
        assert_eq!(status, 401);
        assert!(body.contains(wanted), "{body}");
        assert!(!body.contains(unwanted), "{body}");
        let m = metric(addr, "fanout_handshake_refused_total{reason=\"auth\"} ");
        assert_eq!(m, 1);
    }
}

#[test]
fn a_deferred_request_that_times_out_keeps_its_cors_headers() {
    let s = Server::start(
        Config {
            cors_origins: Some(OriginPolicy::parse(&[PAGE]).unwrap()),
            close_timeout: Duration::from_millis(200),
            ..common::config()
        },
        NeverAnswers,
    )
    .unwrap();
    let (status, head, _) = raw(
        s.local_addr(),
        &format!("GET /slow HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\n\r\n"),
    );
    assert_eq!(status, 504, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some(PAGE));
}
