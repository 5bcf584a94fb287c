//! The push app with the Redis broker: several nodes (servers, each with its own broker
//! connections) joined by a real `redis-server`. A publish to any node reaches every
//! subscriber once and in order; subscriptions follow local interest; a Redis outage is
//! answered with 503 and healed by resubscribing.

mod common;

use std::time::{Duration, Instant};

use common::push::{
    http, json, next_text, publish, push_config, push_server, silent, sub, wait_healthy, Ws, KEY,
};
use common::redis::RedisServer;
use fanout::apps::push::PushConfig;
use fanout::pubsub::redis::RedisConfig;
use fanout::pubsub::{BrokerConfig, HistoryConfig, HistoryPolicy};
use fanout::server::Server;
use tungstenite::Message;

fn node(redis_url: &str) -> Server {
    push_server(
        common::base_config(),
        PushConfig {
            broker: BrokerConfig::Redis(RedisConfig::parse(redis_url).unwrap()),
            ..push_config()
        },
    )
}

#[test]
fn a_publish_to_any_node_reaches_every_subscriber_once_in_order() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis.url())).collect();
    nodes.iter().for_each(wait_healthy);
    // Two subscribers per node, by URL and by message.
    let mut subs: Vec<Ws> = Vec::new();
    for n in &nodes {
        subs.push(sub(n.local_addr(), "?topics=news"));
        let mut ws = sub(n.local_addr(), "");
        ws.send(Message::text(r#"{"op":"subscribe","topic":"news"}"#))
            .unwrap();
        assert_eq!(next_text(&mut ws), r#"{"op":"subscribed","topic":"news"}"#);
        subs.push(ws);
    }
    let mut other = sub(nodes[0].local_addr(), "?topics=sport");
    assert!(
        redis.wait_numsub("fanout:news", 3),
        "one subscription per node"
    );
    for i in 0..20 {
        let at = nodes[i % 3].local_addr();
        let (status, body) = publish(at, "news", &format!("n{i}"), "text/plain", KEY);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), r#"{"topic":"news","nodes":3}"#);
    }
    // Over WebSocket too, binary over HTTP.
    let mut publisher = sub(nodes[1].local_addr(), "");
    publisher
        .send(Message::text(
            r#"{"op":"publish","topic":"news","data":"ws"}"#,
        ))
        .unwrap();
    assert_eq!(
        next_text(&mut publisher),
        r#"{"op":"published","topic":"news","nodes":3}"#
    );
    let (status, _) = publish(
        nodes[2].local_addr(),
        "news",
        "raw",
        "application/octet-stream",
        KEY,
    );
    assert_eq!(status, 200);
    for ws in subs.iter_mut() {
        for i in 0..20 {
            assert_eq!(next_text(ws), format!("n{i}"));
        }
        assert_eq!(next_text(ws), "ws");
        assert_eq!(next_text(ws), "binary:raw");
        assert!(silent(ws, Duration::from_millis(100)), "nothing twice");
    }
    assert!(silent(&mut other, Duration::from_millis(100)));
    // A topic nobody subscribes to, anywhere.
    let (status, body) = publish(nodes[0].local_addr(), "void", "x", "text/plain", KEY);
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"topic":"void","nodes":0}"#)
    );
    let (_, metrics) = http(
        nodes[0].local_addr(),
        "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert!(metrics.contains("fanout_broker_up 1"), "{metrics}");
    assert!(
        metrics.contains("fanout_broker_messages_received_total 22"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fanout_broker_rtt_seconds_count "),
        "{metrics}"
    );
}

#[test]
fn a_node_subscribes_in_redis_once_per_topic_and_only_while_it_has_subscribers() {
    let redis = RedisServer::start();
    let n = node(&redis.url());
    wait_healthy(&n);
    let before = redis.calls("subscribe");
    let subs: Vec<Ws> = (0..50)
        .map(|_| sub(n.local_addr(), "?topics=crowd"))
        .collect();
    assert!(redis.wait_numsub("fanout:crowd", 1));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        redis.calls("subscribe") - before,
        1,
        "50 subscribers on two shards: one SUBSCRIBE"
    );
    assert_eq!(
        redis.cmd(&["PUBSUB", "CHANNELS", "fanout:*"]),
        "fanout:crowd"
    );
    let mut subs = subs;
    let mut last = subs.pop().unwrap();
    drop(subs);
    // One left: still subscribed.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(redis.numsub("fanout:crowd"), 1);
    let (status, _) = publish(n.local_addr(), "crowd", "still", "text/plain", KEY);
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut last), "still");
    // Unsubscribing the last one leaves Redis.
    last.send(Message::text(r#"{"op":"unsubscribe","topic":"crowd"}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut last),
        r#"{"op":"unsubscribed","topic":"crowd"}"#
    );
    assert!(
        redis.wait_numsub("fanout:crowd", 0),
        "unsubscribed in Redis"
    );
    assert_eq!(redis.cmd(&["PUBSUB", "CHANNELS", "fanout:*"]), "");
}

#[test]
fn redis_lost_and_back_503_while_down_then_resubscribed() {
    let mut redis = RedisServer::start();
    let a = node(&redis.url());
    let b = node(&redis.url());
    wait_healthy(&a);
    wait_healthy(&b);
    let mut sa = sub(a.local_addr(), "?topics=t");
    let mut sb = sub(b.local_addr(), "?topics=t");
    assert!(redis.wait_numsub("fanout:t", 2));
    assert_eq!(
        publish(a.local_addr(), "t", "before", "text/plain", KEY).0,
        200
    );
    assert_eq!(next_text(&mut sa), "before");
    assert_eq!(next_text(&mut sb), "before");

    redis.kill();
    // Publishes are refused with 503 (never a 200 for what cannot be delivered).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = publish(b.local_addr(), "t", "lost", "text/plain", KEY);
        if status == 503 {
            assert_eq!(body.trim(), r#"{"error":"broker unavailable","topic":"t"}"#);
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "still 200 with Redis dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, health) = http(b.local_addr(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        health.starts_with("degraded: broker redis://127.0.0.1:"),
        "{health}"
    );
    // Over WebSocket: an error, and the connection stays usable.
    let mut publisher = sub(a.local_addr(), "");
    publisher
        .send(Message::text(r#"{"op":"publish","topic":"t","data":"x"}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut publisher),
        r#"{"op":"error","topic":"t","reason":"broker unavailable"}"#
    );
    let (_, metrics) = http(a.local_addr(), "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(metrics.contains("fanout_broker_up 0"), "{metrics}");

    // Local connections stayed open: they still answer.
    sa.send(Message::text(r#"{"op":"subscribe","topic":"t2"}"#))
        .unwrap();
    assert_eq!(next_text(&mut sa), r#"{"op":"subscribed","topic":"t2"}"#);

    redis.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        let (status, body) = publish(a.local_addr(), "t", "after", "text/plain", KEY);
        if status == 200 && body.contains("\"nodes\":2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back 10 s after Redis: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both nodes resubscribed: the 200 with 2 nodes reached both.
    let mut got_a = next_text(&mut sa);
    while got_a != "after" {
        got_a = next_text(&mut sa); // earlier "after" attempts that reached fewer nodes
    }
    let mut got_b = next_text(&mut sb);
    while got_b != "after" {
        got_b = next_text(&mut sb);
    }
    assert_eq!(redis.numsub("fanout:t"), 2);
    assert_eq!(redis.numsub("fanout:t2"), 1, "t2, subscribed while down");
    let (_, metrics) = http(a.local_addr(), "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        metrics.contains("fanout_broker_reconnects_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("fanout_broker_up 1"), "{metrics}");
}

#[test]
fn redis_down_at_start_the_server_starts_degraded_and_heals() {
    // A port with nothing on it, then Redis on that port.
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let n = node(&url);
    let mut s = sub(n.local_addr(), "?topics=late");
    let (status, health) = http(n.local_addr(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200);
    assert!(health.starts_with("degraded"), "{health}");
    assert_eq!(
        publish(n.local_addr(), "late", "x", "text/plain", KEY).0,
        503
    );
    redis.restart();
    wait_healthy(&n);
    assert!(redis.wait_numsub("fanout:late", 1));
    let (status, body) = publish(n.local_addr(), "late", "hello", "text/plain", KEY);
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"topic":"late","nodes":1}"#)
    );
    assert_eq!(next_text(&mut s), "hello");
}

fn history_node(redis_url: &str) -> Server {
    push_server(
        common::base_config(),
        PushConfig {
            allow_ws_publish: false,
            envelope: true,
            broker: BrokerConfig::Redis(RedisConfig::parse(redis_url).unwrap()),
            history: HistoryConfig {
                default: Some(HistoryPolicy {
                    size: 1000,
                    ttl: None,
                }),
                ..HistoryConfig::default()
            },
            ..push_config()
        },
    )
}

#[test]
fn with_history_in_redis_a_client_moves_to_another_node_and_recovers() {
    let redis = RedisServer::start();
    let a = history_node(&redis.url());
    let b = history_node(&redis.url());
    wait_healthy(&a);
    wait_healthy(&b);
    let mut ws = sub(a.local_addr(), "?topics=room");
    assert!(redis.wait_numsub("fanout:room", 1));
    for i in 1..=3 {
        assert_eq!(
            publish(b.local_addr(), "room", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    let mut last = serde_json::Value::Null;
    for i in 1..=3 {
        last = json(&mut ws);
        assert_eq!(
            (last["data"].as_str(), last["offset"].as_u64()),
            (Some(&*format!("m{i}")), Some(i))
        );
    }
    let epoch = last["epoch"].as_str().unwrap().to_string();
    drop(ws);
    for i in 4..=8 {
        assert_eq!(
            publish(a.local_addr(), "room", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    // Back, on the other node.
    let mut ws = sub(b.local_addr(), "");
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","topic":"room","since":{{"offset":3,"epoch":"{epoch}"}}}}"#
    )))
    .unwrap();
    let ack = json(&mut ws);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64()),
        (Some(true), Some(5)),
        "{ack}"
    );
    for i in 4..=8 {
        let m = json(&mut ws);
        assert_eq!(
            (m["data"].as_str(), m["offset"].as_u64()),
            (Some(&*format!("m{i}")), Some(i))
        );
    }
    assert_eq!(
        publish(a.local_addr(), "room", "m9", "text/plain", KEY).0,
        200
    );
    assert_eq!(json(&mut ws)["offset"], 9);
    assert!(silent(&mut ws, Duration::from_millis(100)));
    // The history is in Redis: a stream and the epoch / head beside it.
    assert_eq!(redis.cmd(&["XLEN", "fanout:h:room"]), "9");
    assert_eq!(redis.cmd(&["HGET", "fanout:m:room", "epoch"]), epoch);
}

#[test]
fn a_node_cut_off_from_redis_catches_up_from_the_stream() {
    let redis = RedisServer::start();
    let a = history_node(&redis.url());
    let b = history_node(&redis.url());
    wait_healthy(&a);
    wait_healthy(&b);
    let mut ws = sub(a.local_addr(), "?topics=flow");
    assert!(redis.wait_numsub("fanout:flow", 1));
    let total = 300u64;
    let publisher = {
        let at = b.local_addr();
        std::thread::spawn(move || {
            for i in 1..=total {
                assert_eq!(
                    publish(at, "flow", &format!("m{i}"), "text/plain", KEY).0,
                    200
                );
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    // Cut every subscribing connection twice while the publisher runs: node A loses its
    // subscription, reconnects, resubscribes and reads the stream from its last offset.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(60));
        redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    publisher.join().unwrap();
    for i in 1..=total {
        let m = json(&mut ws);
        assert_eq!(m["offset"].as_u64(), Some(i), "{m}");
    }
    assert!(silent(&mut ws, Duration::from_millis(200)), "nothing twice");
    let (_, metrics) = http(a.local_addr(), "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        metrics.contains("fanout_broker_reconnects_total 2"),
        "{metrics}"
    );
}

#[test]
fn redis_restarted_without_its_data_starts_a_new_epoch() {
    let mut redis = RedisServer::start();
    let a = history_node(&redis.url());
    wait_healthy(&a);
    let mut ws = sub(a.local_addr(), "?topics=t");
    assert!(redis.wait_numsub("fanout:t", 1));
    assert_eq!(publish(a.local_addr(), "t", "x", "text/plain", KEY).0, 200);
    let first = json(&mut ws);
    let old = first["epoch"].as_str().unwrap().to_string();
    redis.kill();
    redis.restart();
    wait_healthy(&a);
    assert!(redis.wait_numsub("fanout:t", 1));
    assert_eq!(publish(a.local_addr(), "t", "y", "text/plain", KEY).0, 200);
    let m = json(&mut ws);
    assert_eq!(m["offset"], 1);
    assert_ne!(m["epoch"].as_str().unwrap(), old);
    let mut back = sub(a.local_addr(), "");
    back.send(Message::text(format!(
        r#"{{"op":"subscribe","topic":"t","since":{{"offset":1,"epoch":"{old}"}}}}"#
    )))
    .unwrap();
    let ack = json(&mut back);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["reason"].as_str()),
        (Some(false), Some("epoch changed")),
        "{ack}"
    );
}

#[test]
fn with_history_nothing_accepted_after_a_redis_restart_is_lost_on_a_node_that_came_back_later() {
    let mut redis = RedisServer::start();
    let a = history_node(&redis.url());
    let b = history_node(&redis.url());
    wait_healthy(&a);
    wait_healthy(&b);
    let mut on_b = sub(b.local_addr(), "?topics=r");
    let mut on_a = sub(a.local_addr(), "?topics=r");
    assert!(redis.wait_numsub("fanout:r", 2));
    assert_eq!(
        publish(a.local_addr(), "r", "before", "text/plain", KEY).0,
        200
    );
    assert_eq!(json(&mut on_b)["data"], "before");
    assert_eq!(json(&mut on_a)["data"], "before");
    redis.kill();
    redis.restart();
    // Publish to A as fast as it accepts, from the moment Redis is back: B may come back
    // later and must read what it missed from the new epoch's stream.
    let mut accepted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while accepted.len() < 30 {
        assert!(Instant::now() < deadline, "A never came back");
        i += 1;
        let body = format!("m{i}");
        if publish(a.local_addr(), "r", &body, "text/plain", KEY).0 == 200 {
            accepted.push(body);
        }
    }
    for (n, want) in accepted.iter().enumerate() {
        let m = json(&mut on_b);
        assert_eq!(
            m["data"].as_str(),
            Some(want.as_str()),
            "message {n} on B: {m}"
        );
        assert_eq!(m["offset"].as_u64(), Some(n as u64 + 1), "{m}");
    }
    assert!(silent(&mut on_b, Duration::from_millis(100)));
}

#[test]
fn with_history_in_redis_a_plain_subscribe_is_told_the_position_to_come_back_with() {
    let redis = RedisServer::start();
    let a = history_node(&redis.url());
    let b = history_node(&redis.url());
    wait_healthy(&a);
    wait_healthy(&b);
    for i in 1..=4 {
        assert_eq!(
            publish(a.local_addr(), "p", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    // Subscribed, and nothing arrives before it leaves: the answer's position is all it has.
    let mut ws = sub(b.local_addr(), "");
    ws.send(Message::text(r#"{"op":"subscribe","topic":"p"}"#))
        .unwrap();
    let ack = json(&mut ws);
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(ack["offset"], 4, "{ack}");
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    assert_eq!(epoch.len(), 12);
    drop(ws);
    for i in 5..=6 {
        assert_eq!(
            publish(a.local_addr(), "p", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    let mut ws = sub(a.local_addr(), &format!("?topics=p&since.p=4:{epoch}"));
    let ack = json(&mut ws);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64()),
        (Some(true), Some(2)),
        "{ack}"
    );
    assert_eq!(json(&mut ws)["data"], "m5");
    assert_eq!(json(&mut ws)["data"], "m6");
}

/// A self-signed certificate for 127.0.0.1 in a fresh directory: (cert.pem, key.pem).
fn self_signed(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("fanout-redis-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn rediss_publishes_cross_nodes_over_tls_and_an_untrusted_redis_is_refused() {
    let (cert, key) = self_signed("ok");
    let redis = RedisServer::start_tls(cert.clone(), key);
    let tls_node = |ca: Option<&std::path::Path>| {
        let mut cfg = RedisConfig::parse(&redis.tls_url()).unwrap();
        if let Some(ca) = ca {
            cfg.tls = Some(fanout::client::Trust::CaFile(ca.to_path_buf()));
        }
        push_server(
            common::base_config(),
            PushConfig {
                broker: BrokerConfig::Redis(cfg),
                ..push_config()
            },
        )
    };
    // Two nodes on Redis' TLS port (the only thing it speaks there), trusting its CA.
    let (a, b) = (tls_node(Some(&cert)), tls_node(Some(&cert)));
    wait_healthy(&a);
    wait_healthy(&b);
    let mut s = sub(b.local_addr(), "?topics=secure");
    assert!(redis.wait_numsub("fanout:secure", 1));
    let (status, body) = publish(a.local_addr(), "secure", "sealed", "text/plain", KEY);
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"topic\":\"secure\",\"nodes\":1}\n")
    );
    assert_eq!(next_text(&mut s), "sealed");
    // A node trusting only the system's CAs refuses the self-signed certificate: degraded,
    // saying why, and publishes answer 503.
    let c = tls_node(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let (_, h) = http(c.local_addr(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        if h.contains("certificate") || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        health.starts_with("degraded: broker rediss://127.0.0.1:")
            && health.contains("certificate"),
        "{health}"
    );
    let (status, _) = publish(c.local_addr(), "secure", "x", "text/plain", KEY);
    assert_eq!(status, 503);
}
