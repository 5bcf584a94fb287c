//! Per-topic history and recovery on resubscribe, against a real server: a subscriber that
//! comes back with the last position it saw gets exactly what it missed, then the live
//! stream, with no gap and no duplicate at the seam; a position that cannot be honoured is
//! answered `recovered:false` with the reason.

mod common;

use std::time::{Duration, Instant};

use common::push::{http, json, publish, push_config, push_server, silent, sub, Ws, KEY};
use fanout::apps::push::PushConfig;
use fanout::pubsub::{HistoryConfig, HistoryPolicy};
use fanout::server::Server;
use serde_json::Value;
use tungstenite::Message;

fn server(size: usize, max_recovery: usize) -> Server {
    push_server(
        common::base_config(),
        PushConfig {
            envelope: true,
            history: HistoryConfig {
                default: Some(HistoryPolicy { size, ttl: None }),
                max_recovery,
                ..HistoryConfig::default()
            },
            ..push_config()
        },
    )
}

fn subscribe(ws: &mut Ws, topic: &str, since: Option<(u64, &str)>) {
    let cmd = match since {
        Some((o, e)) => format!(
            r#"{{"op":"subscribe","topic":"{topic}","since":{{"offset":{o},"epoch":"{e}"}}}}"#
        ),
        None => format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#),
    };
    ws.send(Message::text(cmd)).unwrap();
}

#[test]
fn a_subscriber_back_with_its_position_gets_exactly_what_it_missed_then_live() {
    let s = server(100, 1000);
    let addr = s.local_addr();
    let mut a = sub(addr, "");
    subscribe(&mut a, "room", None);
    let ack = json(&mut a);
    assert_eq!(ack["op"], "subscribed");
    assert_eq!(
        (ack["epoch"].as_str(), ack["offset"].as_u64()),
        (Some(""), Some(0))
    );
    for i in 1..=3 {
        assert_eq!(
            publish(addr, "room", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    let mut last = Value::Null;
    for i in 1..=3 {
        last = json(&mut a);
        assert_eq!(last["data"], format!("m{i}"));
        assert_eq!(last["offset"], i);
    }
    let epoch = last["epoch"].as_str().unwrap().to_string();
    assert_eq!(epoch.len(), 12);
    drop(a);
    for i in 4..=8 {
        assert_eq!(
            publish(addr, "room", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    let mut b = sub(addr, "");
    subscribe(&mut b, "room", Some((3, &epoch)));
    let ack = json(&mut b);
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(
        (ack["replayed"].as_u64(), ack["offset"].as_u64()),
        (Some(5), Some(8))
    );
    for i in 4..=8 {
        let m = json(&mut b);
        assert_eq!(
            (m["data"].as_str(), m["offset"].as_u64()),
            (Some(&*format!("m{i}")), Some(i))
        );
    }
    assert_eq!(publish(addr, "room", "m9", "text/plain", KEY).0, 200);
    assert_eq!(json(&mut b)["offset"], 9);
    assert!(silent(&mut b, Duration::from_millis(100)), "nothing twice");

    // The URL form, on a fresh connection: since.TOPIC=OFFSET:EPOCH.
    let mut c = sub(addr, &format!("?topics=room&since.room=7:{epoch}"));
    let ack = json(&mut c);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(json(&mut c)["offset"], 8);
    assert_eq!(json(&mut c)["offset"], 9);
    assert!(silent(&mut c, Duration::from_millis(100)));

    let (_, m) = http(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        m.contains("fanout_recoveries_total{result=\"recovered\"} 2"),
        "{m}"
    );
    assert!(m.contains("fanout_recovered_messages_total 7"), "{m}");
    assert!(m.contains("fanout_history_entries 9"), "{m}");
}

#[test]
fn positions_that_cannot_be_honoured_say_why() {
    let s = server(3, 1000);
    let addr = s.local_addr();
    for i in 1..=10 {
        assert_eq!(
            publish(addr, "t", &format!("m{i}"), "text/plain", KEY).0,
            200
        );
    }
    let mut ws = sub(addr, "");
    subscribe(&mut ws, "t", None);
    let ack = json(&mut ws);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    assert_eq!(ack["offset"], 10);
    let cases = [
        ((2, epoch.as_str()), "too far behind"),
        ((5, "0123456789ab"), "epoch changed"),
        ((1000, epoch.as_str()), "offset ahead of the history"),
    ];
    for (i, ((offset, e), reason)) in cases.into_iter().enumerate() {
        let topic = "t";
        let mut w = sub(addr, "");
        subscribe(&mut w, topic, Some((offset, e)));
        let ack = json(&mut w);
        assert_eq!(ack["recovered"], false, "case {i}: {ack}");
        assert_eq!(ack["reason"], reason);
        assert_eq!(
            (ack["epoch"].as_str(), ack["offset"].as_u64()),
            (Some(&*epoch), Some(10 + i as u64)),
            "the current position comes with the refusal"
        );
        // Not recovered, but subscribed: live messages come.
        assert_eq!(publish(addr, "t", "live", "text/plain", KEY).0, 200);
        assert_eq!(json(&mut w)["data"], "live");
        assert_eq!(json(&mut ws)["data"], "live");
    }
    // 3 kept (11, 12, 13): from 10, exactly those.
    let mut w = sub(addr, "");
    subscribe(&mut w, "t", Some((10, &epoch)));
    let ack = json(&mut w);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64()),
        (Some(true), Some(3))
    );
    // More behind than --max-recovery.
    let capped = server(100, 2);
    let mut w = sub(capped.local_addr(), "");
    for _ in 0..3 {
        publish(capped.local_addr(), "c", "x", "text/plain", KEY);
    }
    subscribe(&mut w, "c", None);
    let e = json(&mut w)["epoch"].as_str().unwrap().to_string();
    let mut v = sub(capped.local_addr(), "");
    subscribe(&mut v, "c", Some((0, &e)));
    assert_eq!(json(&mut v)["reason"], "too far behind");
}

#[test]
fn reconnecting_while_publishes_flow_loses_and_repeats_nothing() {
    // Publishes over HTTP land on either shard; a subscriber keeps dropping its connection
    // and coming back (to either shard) with its last position. Every offset must be seen
    // exactly once, in order, across all its connections.
    let s = server(10_000, 10_000);
    let addr = s.local_addr();
    let total = 2000u64;
    // The first connection subscribes before anything is published.
    let mut first = Some(sub(addr, ""));
    if let Some(ws) = first.as_mut() {
        subscribe(ws, "flow", None);
        assert_eq!(json(ws)["offset"], 0);
    }
    // Four publishers, so that deliveries from the other shard are often in flight while a
    // subscriber is being recovered.
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..total / 4 {
                    assert_eq!(publish(addr, "flow", "m", "text/plain", KEY).0, 200);
                }
            })
        })
        .collect();
    let mut seen: Vec<u64> = Vec::new();
    let mut pos: Option<(u64, String)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().copied() != Some(total) {
        assert!(Instant::now() < deadline, "stuck at {:?}", seen.last());
        let mut ws = match first.take() {
            Some(ws) => ws,
            None => {
                let mut ws = sub(addr, "");
                let (o, e) = pos.clone().expect("a position after the first connection");
                subscribe(&mut ws, "flow", Some((o, &e)));
                let ack = json(&mut ws);
                assert_eq!(ack["recovered"], true, "{ack}");
                ws
            }
        };
        // Read a few, then drop the connection.
        for _ in 0..5 {
            if seen.last().copied() == Some(total) {
                break;
            }
            let m = json(&mut ws);
            let o = m["offset"].as_u64().unwrap();
            seen.push(o);
            pos = Some((o, m["epoch"].as_str().unwrap().to_string()));
        }
    }
    for p in publishers {
        p.join().unwrap();
    }
    let want: Vec<u64> = (1..=total).collect();
    assert_eq!(seen, want, "every offset once, in order");
}
