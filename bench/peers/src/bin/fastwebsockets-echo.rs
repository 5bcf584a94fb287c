//! Echo server on `fastwebsockets`, written as that crate's own
//! `examples/echo_server.rs` does it: hyper 1.x serves the HTTP/1.1 upgrade
//! (`fastwebsockets::upgrade::upgrade`), the upgraded socket is wrapped in a
//! `FragmentCollector` so fragmented messages come back whole, and the
//! connection task runs under `tokio::task::unconstrained` as in the example.
//!
//! fastwebsockets answers pings and closes by itself (auto_pong, auto_close,
//! both on by default and set explicitly here), so the loop only echoes Text
//! and Binary frames back.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use fanout_bench_peers::{accept_backoff, bind, parse_args, runtime, tune, MAX_MESSAGE};

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // fastwebsockets rejects a frame whose payload is >= max_message_size
    // (default 64 << 20), so allow one byte more to accept exactly 64 MiB.
    // The limit is per frame: FragmentCollector does not cap the total.
    ws.set_max_message_size(MAX_MESSAGE + 1);
    let mut ws = FragmentCollector::new(ws);

    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

fn routine(e: &WebSocketError) -> bool {
    matches!(
        e,
        WebSocketError::UnexpectedEOF
            | WebSocketError::ConnectionClosed
            | WebSocketError::IoError(_)
    )
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;

    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            if !routine(&e) {
                eprintln!("websocket error: {e}");
            }
        }
    });

    Ok(response)
}

async fn serve(stream: TcpStream) {
    let io = TokioIo::new(stream);
    let conn = http1::Builder::new()
        .serve_connection(io, service_fn(server_upgrade))
        .with_upgrades();
    if let Err(e) = conn.await {
        if !(e.is_incomplete_message() || e.is_closed() || e.is_canceled()) {
            eprintln!("http error: {e}");
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
                    tokio::spawn(serve(stream));
                }
                Err(e) => accept_backoff(&e).await,
            }
        }
    })
}
