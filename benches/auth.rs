//! Criterion micro-benchmarks of the per-handshake cost of the upgrade policies: JWT (HS256)
//! verification, taking the token from a parsed request, the per-IP limiter (admit + release,
//! one address and many), and the Origin allow-list. Each is work done once per upgrade, on top
//! of the plain handshake (`cargo bench --bench proto -- handshake` for that).
//!
//! Run: `cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3`
//! (`scripts/bench-auth.sh` runs it and the end-to-end comparison, and writes JSON).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fanout::proto::handshake::parse_request;
use fanout::rt::unix_now;
use fanout::server::auth::{JwtConfig, JwtVerifier};
use fanout::server::origin::OriginPolicy;
use fanout::server::per_ip::{PerIpLimiter, RateLimit};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &[u8] = b"a bench secret of 32 bytes long!";

fn token() -> String {
    let claims = serde_json::json!({
        "exp": unix_now() + 3600,
        "sub": "user-12345",
        "sub_topics": ["news.*", "alerts"],
        "pub_topics": ["chat.room-1"],
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let verifier = JwtVerifier::new(&JwtConfig {
        secret: SECRET.to_vec(),
        cookie: Some("fanout_jwt".into()),
        close_on_expiry: false,
    });
    let tok = token();
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&tok)).unwrap())
    });
    let bad = format!("{}x", &tok[..tok.len() - 1]);
    c.bench_function("jwt_verify_bad_signature", |b| {
        b.iter(|| verifier.verify(black_box(&bad)).unwrap_err())
    });
    let raw = format!(
        "GET /ws?topics=news.uk&token={tok} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n\r\n"
    );
    let (req, _) = parse_request(raw.as_bytes(), 8192).unwrap().unwrap();
    c.bench_function("jwt_check_request_query", |b| {
        b.iter(|| verifier.check(black_box(&req)).unwrap())
    });
    let origins = OriginPolicy::parse(&["https://a.example.net", "https://*.example.com"]).unwrap();
    c.bench_function("origin_allows_wildcard", |b| {
        b.iter(|| assert!(origins.allows(black_box(req.origin))))
    });
    let limiter = PerIpLimiter::new(1_000_000, Some(RateLimit::new(1e12, Some(1 << 30)))).unwrap();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    c.bench_function("per_ip_admit_release_one_ip", |b| {
        b.iter(|| {
            let now = Instant::now();
            limiter.admit(black_box(ip), now).unwrap();
            limiter.release(ip, now);
        })
    });
    let mut n = 0u32;
    c.bench_function("per_ip_admit_release_10k_ips", |b| {
        b.iter(|| {
            n = (n + 1) % 10_000;
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            let now = Instant::now();
            limiter.admit(black_box(ip), now).unwrap();
            limiter.release(ip, now);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
