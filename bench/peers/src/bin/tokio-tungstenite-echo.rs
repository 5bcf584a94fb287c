//! Echo server on `tokio-tungstenite`, written as that crate's own
//! `examples/autobahn-server.rs` does it: `accept_async` (here
//! `accept_async_with_config`, to allow one 64 MiB frame), then
//! `next()` / `send()` on the unsplit stream.
//!
//! Tungstenite answers pings and closes by itself: a queued Pong or Close
//! reply is flushed on the next read or write, so the loop only echoes Text
//! and Binary messages back.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Result};

use fanout_bench_peers::{accept_backoff, bind, parse_args, runtime, tune, MAX_MESSAGE};

fn config() -> WebSocketConfig {
    // Everything else stays at tungstenite's defaults (read buffer 128 KiB,
    // write buffer 128 KiB, unbounded max write buffer). Only the size limits
    // are set: max_message_size is 64 MiB by default already, max_frame_size
    // is 16 MiB by default, raised so a single unfragmented 64 MiB message
    // is accepted as by the other servers.
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

async fn handle_connection(stream: TcpStream) -> Result<()> {
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

async fn accept_connection(stream: TcpStream) {
    if let Err(e) = handle_connection(stream).await {
        match e {
            // Peers going away or misbehaving is routine under load.
            Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Protocol(_)
            | Error::Utf8(_)
            | Error::Io(_) => {}
            err => eprintln!("connection error: {err}"),
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    runtime(args.threads)?.block_on(async move {
        let listener = bind(args.listen)?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tune(&stream);
                    tokio::spawn(accept_connection(stream));
                }
                Err(e) => accept_backoff(&e).await,
            }
        }
    })
}
