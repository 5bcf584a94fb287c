//! Test and fuzz support, not API: an owned copy of a decoder event, so runs of the decoder can
//! be compared (unit tests, `tests/proto_split.rs`, the fuzz harness). Owns no protocol rule.

use super::Event;

/// An owned copy of an event, or the close code of the error that ended a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    Compressed(bool, Vec<u8>),
    Error(u16),
}

impl Owned {
    /// Copies an event, checking the invariants its borrowed form promises: text is UTF-8
    /// (it may be built unchecked) and control payloads are at most 125 bytes.
    pub fn of(e: &Event<'_>) -> Owned {
        match e {
            Event::Text(t) => {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok(), "Text not UTF-8");
                Owned::Text(t.to_string())
            }
            Event::Binary(b) => Owned::Binary(b.to_vec()),
            Event::Ping(b) => {
                assert!(b.len() <= 125, "ping payload over 125 bytes");
                Owned::Ping(b.to_vec())
            }
            Event::Pong(b) => {
                assert!(b.len() <= 125, "pong payload over 125 bytes");
                Owned::Pong(b.to_vec())
            }
            Event::Close(c) => Owned::Close(c.code, c.reason.to_string()),
            Event::Compressed { text, payload } => Owned::Compressed(*text, payload.to_vec()),
        }
    }
}
