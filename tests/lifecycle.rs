//! A connection's life at its edges, against real sockets: strict request framing, metrics
//! that count what happened, output kept through a half-close, a paused reader judged by its
//! progress.

mod common;

use common::{config, echo_server, raw_exchange};

fn status(answer: &[u8]) -> u16 {
    answer
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_unclear_content_length_is_a_400() {
    let s = echo_server(config());
    let addr = s.local_addr();
    for head in [
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    ] {
        let answer = raw_exchange(addr, head.as_bytes());
        assert_eq!(status(&answer), 400, "{head:?}");
    }
    // One value, or the same value twice, is fine (404: the echo app has no routes).
    let answer = raw_exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!(status(&answer), 404);
}
