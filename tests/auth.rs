//! Upgrade policies against real clients: JWT authentication (every failure kind, the three
//! places a token may be, topic claims in the push app, close on expiry), the Origin
//! allow-list, and per-IP connection caps and handshake rates (flooding from 127.0.0.1 while
//! 127.0.0.2 still connects).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fanout::apps::push::{Push, PushConfig};
use fanout::rt::unix_now;
use fanout::server::auth::JwtConfig;
use fanout::server::origin::OriginPolicy;
use fanout::server::per_ip::RateLimit;
use fanout::server::stats::total;
use fanout::server::{Config, Counter, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

const SECRET: &[u8] = b"test secret that is 32 bytes lon";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

type Ws = tungstenite::WebSocket<TcpStream>;

fn jwt(close_on_expiry: bool, cookie: Option<&str>) -> Option<JwtConfig> {
    Some(JwtConfig {
        secret: SECRET.to_vec(),
        cookie: cookie.map(str::to_string),
        close_on_expiry,
    })
}

fn sign(alg: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A good HS256 token valid for an hour, with `extra` claims.
fn token(extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({ "exp": unix_now() + 3600, "sub": "tester" });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    sign(Algorithm::HS256, SECRET, claims)
}

/// A server's answer to a raw upgrade request.
struct Reply {
    status: u16,
    head: String,
    body: String,
    /// Holds the connection open after a 101.
    _sock: TcpStream,
}

fn connect_from(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let sock = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            s.connect(&addr.into()).unwrap();
            s.into()
        }
    };
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock
}

/// Sends an upgrade request for `target` with extra header lines and reads the answer.
fn upgrade(addr: SocketAddr, from: Option<IpAddr>, target: &str, headers: &[&str]) -> Reply {
    let mut sock = connect_from(addr, from);
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match sock.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!("no complete answer: {other:?} after {buf:?}"),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = Vec::new();
    if status != 101 {
        let _ = sock.read_to_end(&mut body);
    }
    Reply {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
        _sock: sock,
    }
}

/// A tungstenite client: `target` plus extra headers.
#[allow(clippy::result_large_err)] // tungstenite's own error type
fn ws(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(req, sock) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking socket interrupted"),
    }
}

fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn echo_with(cfg: Config) -> Server {
    common::echo_server(common::config().merge(cfg))
}

/// `common::config()` with the policies of `cfg`.
trait Merge {
    fn merge(self, cfg: Config) -> Config;
}

impl Merge for Config {
    fn merge(self, cfg: Config) -> Config {
        Config {
            jwt: cfg.jwt,
            allowed_origins: cfg.allowed_origins,
            max_conns_per_ip: cfg.max_conns_per_ip,
            handshake_rate_per_ip: cfg.handshake_rate_per_ip,
            ..self
        }
    }
}

fn count(s: &Server, c: Counter) -> u64 {
    total(&s.stats(), c)
}

#[test]
fn every_auth_failure_is_a_401_with_its_reason_and_counter() {
    let s = echo_with(Config {
        jwt: jwt(false, None),
        ..common::base_config()
    });
    let addr = s.local_addr();
    let later = unix_now() + 3600;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{later}}}"#))
    );
    let cases = [
        (String::new(), "missing token", Counter::AuthMissing),
        ("not.a-jwt".into(), "malformed", Counter::AuthMalformed),
        (
            sign(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({ "sub": "no exp" }),
            ),
            "malformed",
            Counter::AuthMalformed,
        ),
        (
            sign(
                Algorithm::HS256,
                b"another secret, 32 bytes long...",
                serde_json::json!({ "exp": later }),
            ),
            "bad token signature",
            Counter::AuthBadSignature,
        ),
        (
            sign(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({ "exp": unix_now() - 10 }),
            ),
            "token expired",
            Counter::AuthExpired,
        ),
        (
            sign(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({ "exp": later, "nbf": unix_now() + 600 }),
            ),
            "not valid yet",
            Counter::AuthNotYetValid,
        ),
        (none, "must be HS256", Counter::AuthBadAlgorithm),
        (
            sign(
                Algorithm::HS512,
                SECRET,
                serde_json::json!({ "exp": later }),
            ),
            "must be HS256",
            Counter::AuthBadAlgorithm,
        ),
    ];
    for (tok, reason, _) in &cases {
        let auth = format!("Authorization: Bearer {tok}");
        let headers: &[&str] = if tok.is_empty() { &[] } else { &[&auth] };
        let r = upgrade(addr, None, "/", headers);
        assert_eq!(r.status, 401, "{tok}: {}{}", r.head, r.body);
        assert!(
            r.head.contains("WWW-Authenticate: Bearer"),
            "{tok}: {}",
            r.head
        );
        assert!(r.body.contains(reason), "{tok}: {}", r.body);
    }
    assert_eq!(count(&s, Counter::AuthMissing), 1);
    assert_eq!(count(&s, Counter::AuthMalformed), 2);
    assert_eq!(count(&s, Counter::AuthBadSignature), 1);
    assert_eq!(count(&s, Counter::AuthExpired), 1);
    assert_eq!(count(&s, Counter::AuthNotYetValid), 1);
    assert_eq!(count(&s, Counter::AuthBadAlgorithm), 2);
    assert_eq!(count(&s, Counter::Http401), cases.len() as u64);
    assert_eq!(count(&s, Counter::HandshakesOk), 0);
    // Plain HTTP is not an upgrade: no token needed for health checks.
    let health = common::raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(health.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn a_token_opens_from_the_header_the_query_or_the_cookie() {
    let s = echo_with(Config {
        jwt: jwt(false, Some("fanout_jwt")),
        ..common::base_config()
    });
    let addr = s.local_addr();
    let t = token(serde_json::json!({}));
    let bearer = format!("Bearer {t}");
    let cookie = format!("theme=dark; fanout_jwt={t}");
    let mut clients = [
        ws(addr, "/", &[("Authorization", &bearer)]).unwrap(),
        ws(addr, &format!("/?token={t}"), &[]).unwrap(),
        ws(addr, "/", &[("Cookie", &cookie)]).unwrap(),
    ];
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(next_text(c), format!("hello {i}"));
    }
    // Another cookie name is no token.
    let wrong = format!("other={t}");
    match ws(addr, "/", &[("Cookie", &wrong)]) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(count(&s, Counter::HandshakesOk), 3);
}

#[test]
fn push_enforces_the_topic_claims() {
    let s = Server::start(
        Config {
            jwt: jwt(false, None),
            ..common::config()
        },
        Push::new(PushConfig {
            allow_ws_publish: true,
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    let t = token(serde_json::json!({
        "sub_topics": ["news.*", "alerts"],
        "pub_topics": ["chat"],
    }));
    // ?topics= outside the claims: 403 before the upgrade.
    let r = upgrade(
        addr,
        None,
        &format!("/ws?topics=alerts,sport&token={t}"),
        &[],
    );
    assert_eq!(r.status, 403, "{}{}", r.head, r.body);
    assert!(r.body.contains("does not allow"), "{}", r.body);
    // Inside them: open, and subscribed.
    let mut sub = ws(addr, &format!("/ws?topics=news.uk,alerts&token={t}"), &[]).unwrap();
    let mut c = ws(addr, &format!("/ws?token={t}"), &[]).unwrap();
    c.send(Message::text(r#"{"op":"subscribe","topic":"sport"}"#))
        .unwrap();
    let e = next_text(&mut c);
    assert!(
        e.contains(r#""op":"error""#) && e.contains("does not allow subscribing"),
        "{e}"
    );
    c.send(Message::text(r#"{"op":"subscribe","topic":"news.world"}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut c),
        r#"{"op":"subscribed","topic":"news.world"}"#
    );
    c.send(Message::text(
        r#"{"op":"publish","topic":"news.uk","data":"x"}"#,
    ))
    .unwrap();
    let e = next_text(&mut c);
    assert!(e.contains("does not allow publishing"), "{e}");
    c.send(Message::text(r#"{"op":"subscribe","topic":"chat"}"#))
        .unwrap();
    assert!(next_text(&mut c).contains("does not allow subscribing"));
    c.send(Message::text(
        r#"{"op":"publish","topic":"chat","data":"hi"}"#,
    ))
    .unwrap();
    assert_eq!(
        next_text(&mut c),
        r#"{"op":"published","topic":"chat","subscribers":0}"#
    );
    // A token without topic claims is not restricted; one with an empty list allows nothing.
    let open = token(serde_json::json!({}));
    let mut free = ws(addr, &format!("/ws?topics=sport&token={open}"), &[]).unwrap();
    free.send(Message::text(
        r#"{"op":"publish","topic":"news.uk","data":"n"}"#,
    ))
    .unwrap();
    assert_eq!(
        next_text(&mut free),
        r#"{"op":"published","topic":"news.uk","subscribers":1}"#
    );
    assert_eq!(next_text(&mut sub), "n");
    let none = token(serde_json::json!({ "sub_topics": [] }));
    let r = upgrade(addr, None, &format!("/ws?topics=a&token={none}"), &[]);
    assert_eq!(r.status, 403);
    // Bad claim types are refused with a reason rather than ignored.
    let bad = token(serde_json::json!({ "sub_topics": "news" }));
    let r = upgrade(addr, None, &format!("/ws?topics=news&token={bad}"), &[]);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("must be arrays"), "{}", r.body);
    // The refusals are in the metrics, by kind (plain HTTP needs no token).
    let m = common::raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let m = String::from_utf8_lossy(&m);
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("\nfanout_http_403_total 3\n"), "{m}");
    assert!(m.contains("\nfanout_auth_missing_token_total 0\n"), "{m}");
    assert!(m.contains("\nfanout_per_ip_rate_refused_total 0\n"), "{m}");
}

#[test]
fn an_expired_token_closes_its_connection_with_1008() {
    let s = echo_with(Config {
        jwt: jwt(true, None),
        ..common::base_config()
    });
    let addr = s.local_addr();
    let soon = sign(
        Algorithm::HS256,
        SECRET,
        serde_json::json!({ "exp": unix_now() + 2 }),
    );
    let mut short = ws(addr, &format!("/?token={soon}"), &[]).unwrap();
    let mut long = ws(
        addr,
        &format!("/?token={}", token(serde_json::json!({}))),
        &[],
    )
    .unwrap();
    let frame = loop {
        match short.read().expect("a close frame before the read timeout") {
            Message::Close(f) => break f.expect("a close code"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "token expired");
    assert_eq!(count(&s, Counter::TokenExpiredClosed), 1);
    // The connection with a valid token is untouched.
    long.send(Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut long), "still here");
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    let s = echo_with(Config {
        allowed_origins: Some(
            OriginPolicy::parse(&["https://app.example.com", "https://*.example.org"]).unwrap(),
        ),
        ..common::base_config()
    });
    let addr = s.local_addr();
    for (origin, want) in [
        (Some("https://app.example.com"), 101),
        (Some("https://a.b.example.org"), 101),
        (None, 101),
        (Some("https://example.org"), 403),
        (Some("https://app.example.com.evil.net"), 403),
        (Some("http://app.example.com"), 403),
    ] {
        let h = origin.map(|o| format!("Origin: {o}"));
        let headers: Vec<&str> = h.iter().map(String::as_str).collect();
        let r = upgrade(addr, None, "/", &headers);
        assert_eq!(r.status, want, "{origin:?}: {}{}", r.head, r.body);
        if want == 403 {
            assert!(r.body.contains("origin not allowed"), "{}", r.body);
        }
    }
    assert_eq!(count(&s, Counter::OriginRefused), 3);
}

/// Waits for the server's count of connections from `ip` (a closed client is reaped a turn
/// later).
fn wait_connections(s: &Server, ip: IpAddr, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.connections_from(ip) != n {
        assert!(
            Instant::now() < deadline,
            "{ip} still has {} connections, want {n}",
            s.connections_from(ip)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn per_ip_cap_holds_across_shards_while_another_address_connects() {
    let s = echo_with(Config {
        max_conns_per_ip: 3,
        ..common::base_config()
    });
    let addr = s.local_addr();
    let mut held: Vec<Reply> = (0..3)
        .map(|_| upgrade(addr, Some(LOCAL), "/", &[]))
        .collect();
    assert!(held.iter().all(|r| r.status == 101));
    // A flood from the same address: every one refused with a status, not a reset.
    for _ in 0..20 {
        let r = upgrade(addr, Some(LOCAL), "/", &[]);
        assert_eq!(r.status, 429, "{}{}", r.head, r.body);
        assert!(r.body.contains("too many connections"), "{}", r.body);
    }
    // Another address is not affected.
    let other: Vec<Reply> = (0..3)
        .map(|_| upgrade(addr, Some(OTHER), "/", &[]))
        .collect();
    assert!(other.iter().all(|r| r.status == 101));
    assert_eq!(s.connections_from(LOCAL), 3);
    assert_eq!(count(&s, Counter::PerIpConnsRefused), 20);
    // One closes: a slot opens.
    drop(held.pop());
    wait_connections(&s, LOCAL, 2);
    assert_eq!(upgrade(addr, Some(LOCAL), "/", &[]).status, 101);
    drop(held);
    drop(other);
    wait_connections(&s, OTHER, 0);
}

#[test]
fn handshake_rate_gets_429_with_retry_after_then_recovers() {
    let s = echo_with(Config {
        handshake_rate_per_ip: Some(RateLimit::new(2.0, Some(2))),
        ..common::base_config()
    });
    let addr = s.local_addr();
    for _ in 0..2 {
        assert_eq!(upgrade(addr, Some(LOCAL), "/", &[]).status, 101);
    }
    let r = upgrade(addr, Some(LOCAL), "/", &[]);
    assert_eq!(r.status, 429, "{}{}", r.head, r.body);
    let retry: u64 = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Retry-After header");
    assert_eq!(retry, 1);
    // Another address has its own bucket.
    assert_eq!(upgrade(addr, Some(OTHER), "/", &[]).status, 101);
    // After the wait it asked for, the address gets in again.
    let mut status = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(retry));
        status = upgrade(addr, Some(LOCAL), "/", &[]).status;
        if status == 101 {
            break;
        }
    }
    assert_eq!(status, 101);
    assert!(count(&s, Counter::PerIpRateRefused) >= 1);
    assert!(count(&s, Counter::Http429) >= 1);
}

#[test]
fn a_concurrent_flood_from_one_address_gets_exactly_the_cap_across_shards() {
    let s = echo_with(Config {
        max_conns_per_ip: 5,
        ..common::base_config()
    });
    let addr = s.local_addr();
    // 8 threads x 15 attempts at once, each holding what it gets: SO_REUSEPORT spreads them
    // over both shards, and the count is still global.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..15)
                    .map(|_| upgrade(addr, Some(LOCAL), "/", &[]))
                    .collect::<Vec<Reply>>()
            })
        })
        .collect();
    let replies: Vec<Reply> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let opened = replies.iter().filter(|r| r.status == 101).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((opened, refused), (5, 115));
    assert_eq!(s.connections_from(LOCAL), 5);
    let per_shard: Vec<u64> = s
        .stats()
        .iter()
        .map(|st| st.get(Counter::Accepted))
        .collect();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards took some: {per_shard:?}"
    );
    assert_eq!(upgrade(addr, Some(OTHER), "/", &[]).status, 101);
    drop(replies);
    wait_connections(&s, LOCAL, 0);
}

#[test]
fn a_refused_upgrade_holds_its_per_ip_slot_until_its_socket_closes() {
    // Every socket counts against its address from accept to close (a refused client that
    // keeps its socket open still holds a share of --max-connections), and closing frees it.
    let s = echo_with(Config {
        max_conns_per_ip: 2,
        jwt: jwt(false, None),
        ..common::base_config()
    });
    let addr = s.local_addr();
    let refused: Vec<Reply> = (0..2)
        .map(|_| upgrade(addr, Some(LOCAL), "/", &[]))
        .collect();
    assert!(refused.iter().all(|r| r.status == 401));
    assert_eq!(s.connections_from(LOCAL), 2);
    let auth = format!("Authorization: Bearer {}", token(serde_json::json!({})));
    assert_eq!(upgrade(addr, Some(LOCAL), "/", &[&auth]).status, 429);
    drop(refused);
    wait_connections(&s, LOCAL, 0);
    let ok: Vec<Reply> = (0..2)
        .map(|_| upgrade(addr, Some(LOCAL), "/", &[&auth]))
        .collect();
    assert!(
        ok.iter().all(|r| r.status == 101),
        "{:?}",
        ok.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(s.connections_from(LOCAL), 2);
    assert_eq!(upgrade(addr, Some(LOCAL), "/", &[&auth]).status, 429);
}
