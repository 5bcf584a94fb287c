//! A small client on fanout's client reactor: opens a few connections to a ws:// URL, sends
//! each a few messages, prints what comes back, and closes.
//!
//! Run a server (`cargo run --release -- serve`), then:
//! `cargo run --release --example client -- ws://127.0.0.1:9001/ 3`

use std::time::{Duration, Instant};

use fanout::client::{
    Client, ClientConfig, ClientCtx, ClientError, ClientHandler, ConnectOptions, WsUrl,
};
use fanout::proto::Message;

struct Printer {
    done: usize,
}

struct Conn {
    received: u32,
}

impl ClientHandler for Printer {
    type State = Conn;

    fn on_open(&mut self, ctx: &mut ClientCtx<'_, Conn>, protocol: Option<&str>) {
        println!("#{} open (subprotocol {protocol:?})", ctx.key());
        for i in 0..3 {
            ctx.send_text(&format!("hello {i} from #{}", ctx.key()));
        }
    }

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, Conn>, msg: Message<'_>) {
        println!("#{} got {msg:?}", ctx.key());
        ctx.state().received += 1;
        if ctx.state().received == 3 {
            ctx.close(1000, "done");
        }
    }

    fn on_error(&mut self, key: usize, _: &mut Conn, err: &ClientError) {
        eprintln!("#{key} error: {err}");
    }

    fn on_close(&mut self, key: usize, st: Conn, code: u16, _reason: &str) {
        println!("#{key} closed with {code} after {} messages", st.received);
        self.done += 1;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = WsUrl::parse(&args.next().unwrap_or_else(|| "ws://127.0.0.1:9001/".into()))?;
    let count: usize = args.next().map_or(Ok(2), |n| n.parse())?;
    let addr = *url.resolve()?.first().ok_or("no address for host")?;
    let mut client = Client::new(ClientConfig::default(), Printer { done: 0 })?;
    for _ in 0..count {
        client.connect(addr, &url, &ConnectOptions::default(), Conn { received: 0 })?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.handler().done < count && Instant::now() < deadline {
        client.poll(Some(Duration::from_millis(100)))?;
    }
    Ok(())
}
