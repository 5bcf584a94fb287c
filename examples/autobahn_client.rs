//! The client role under Autobahn|Testsuite: runs every case of a `wstest -m fuzzingserver`
//! one after the other on fanout's client reactor, echoing each message back as it came (text
//! as text, binary as binary), then asks the suite to write its report
//! (`scripts/autobahn-client.sh` runs it).
//!
//! `cargo run --release --example autobahn_client -- ws://127.0.0.1:9011 [--deflate]`

use std::time::{Duration, Instant};

use fanout::client::{Client, ClientConfig, ClientCtx, ClientHandler, ConnectOptions, WsUrl};
use fanout::proto::Message;

const AGENT: &str = "fanout";

#[derive(Default)]
struct Echo {
    /// The case count, from /getCaseCount.
    count: Option<usize>,
    done: bool,
}

impl ClientHandler for Echo {
    /// Whether this connection asks for the case count.
    type State = bool;

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, bool>, msg: Message<'_>) {
        if *ctx.state() {
            if let Message::Text(t) = msg {
                self.count = t.trim().parse().ok();
            }
            return;
        }
        match msg {
            Message::Text(t) => ctx.send_text(t),
            Message::Binary(b) => ctx.send_binary(b),
        }
    }

    fn on_close(&mut self, _key: usize, _: bool, _code: u16, _reason: &str) {
        self.done = true;
    }
}

/// Opens `path` and runs the reactor until the connection is closed (or a minute passed).
fn run(
    client: &mut Client<Echo>,
    base: &str,
    path: &str,
    opts: &ConnectOptions,
    asks_count: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let url = WsUrl::parse(&format!("{base}{path}"))?;
    let addr = *url.resolve()?.first().ok_or("no address for host")?;
    client.handler().done = false;
    client.connect(addr, &url, opts, asks_count)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.handler().done && Instant::now() < deadline {
        client.poll(Some(Duration::from_millis(50)))?;
    }
    if !client.handler().done {
        for key in client.keys() {
            client.abort(key);
        }
        eprintln!("{path}: no close within 60 s");
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9011".into())
        .trim_end_matches('/')
        .to_string();
    let deflate = args.any(|a| a == "--deflate");
    let opts = ConnectOptions {
        deflate,
        ..ConnectOptions::default()
    };
    let cfg = ClientConfig {
        batch_io: false,
        ..ClientConfig::default()
    };
    let mut client = Client::new(cfg, Echo::default())?;
    run(
        &mut client,
        &base,
        "/getCaseCount",
        &ConnectOptions::default(),
        true,
    )?;
    let count = client.handler().count.ok_or("no case count")?;
    eprintln!("autobahn client: {count} cases");
    for case in 1..=count {
        let path = format!("/runCase?case={case}&agent={AGENT}");
        run(&mut client, &base, &path, &opts, false)?;
    }
    let path = format!("/updateReports?agent={AGENT}");
    run(&mut client, &base, &path, &ConnectOptions::default(), false)?;
    Ok(())
}
