//! The live status page: served by the server layer for any app, fed once a second over
//! `/status/ws`, off or behind a key when asked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::push::{http, publish, sub, KEY};
use fanout::apps::push::{Push, PushConfig};
use fanout::server::status::StatusAccess;
use fanout::server::{Config, Server};
use tungstenite::{connect, Message};

fn cfg(status: StatusAccess) -> Config {
    Config {
        status,
        ..common::config()
    }
}

/// The next sample from a status feed, parsed.
fn sample(ws: &mut common::push::Ws) -> serde_json::Value {
    loop {
        match ws.read().expect("a sample") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

fn feed(addr: SocketAddr, query: &str) -> common::push::Ws {
    let (ws, _) = connect(format!("ws://{addr}/status/ws{query}")).expect("feed opens");
    common::push::set_timeout(&ws, Duration::from_secs(5));
    ws
}

#[test]
fn echo_serves_the_page_and_a_live_feed() {
    let s = common::echo_server(cfg(StatusAccess::Open));
    let addr = s.local_addr();
    for path in ["/", "/status"] {
        let (status, body) = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("/status/ws") && body.contains("<canvas"),
            "{path}"
        );
    }
    let mut ws = feed(addr, "");
    let first = sample(&mut ws);
    assert_eq!(first["shards"], 2);
    assert!(first["open"].as_u64().unwrap() >= 1, "{first}");
    assert!(first["rss"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["lag_us"].as_array().unwrap().len(), 2);
    // Some traffic, then the next sample shows it as rates.
    let (mut echo, _) = connect(common::url(addr)).unwrap();
    for _ in 0..5 {
        echo.send(Message::text("x")).unwrap();
        echo.read().unwrap();
    }
    let next = sample(&mut ws);
    assert!(next["t"].as_u64() > first["t"].as_u64());
    assert!(next["accepts"].as_f64().unwrap() > 0.0, "{next}");
    assert!(next["msgs_in"].as_f64().unwrap() > 0.0, "{next}");
    // The viewer's own messages are ignored; it closes cleanly.
    ws.send(Message::text("hello")).unwrap();
    let _ = sample(&mut ws);
    ws.close(None).unwrap();
}

#[test]
fn push_samples_carry_publishes_and_deliveries() {
    let s = Server::start(
        cfg(StatusAccess::Open),
        Push::new(PushConfig {
            publish_key: Some(KEY.into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    let mut ws = feed(addr, "");
    let first = sample(&mut ws);
    assert_eq!(first["app"]["publishes"], 0.0, "{first}");
    let _subs: Vec<_> = (0..3).map(|_| sub(addr, "?topics=n")).collect();
    assert_eq!(publish(addr, "n", "x", "text/plain", KEY).0, 200);
    let next = sample(&mut ws);
    assert!(next["app"]["publishes"].as_f64().unwrap() > 0.0, "{next}");
    assert!(next["app"]["deliveries"].as_f64().unwrap() > 0.0, "{next}");
}

#[test]
fn a_key_guards_the_page_and_the_feed() {
    let s = common::echo_server(cfg(StatusAccess::Key("s3e".into())));
    let addr = s.local_addr();
    assert_eq!(http(addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").0, 403);
    assert_eq!(
        http(addr, "GET /?key=nope HTTP/1.1\r\nHost: t\r\n\r\n").0,
        403
    );
    assert_eq!(
        http(addr, "GET /?key=s3e HTTP/1.1\r\nHost: t\r\n\r\n").0,
        200
    );
    match connect(format!("ws://{addr}/status/ws")) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("{:?}", other.map(|x| x.1.status())),
    }
    let mut ws = feed(addr, "?key=s3e");
    assert!(sample(&mut ws)["open"].as_u64().is_some());
}

#[test]
fn off_leaves_the_paths_to_the_app() {
    let s = common::echo_server(cfg(StatusAccess::Off));
    let addr = s.local_addr();
    assert_eq!(http(addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").0, 404);
    // The echo app takes an upgrade on any path, this one too.
    let (mut ws, _) = connect(format!("ws://{addr}/status/ws")).unwrap();
    ws.send(Message::text("echo")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("echo"));
}
