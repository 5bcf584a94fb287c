//! Sans-IO RFC 6455 (+ RFC 7692 permessage-deflate): bytes in, events out, for both roles. Owns the handshake, frame and
//! message rules; must never touch sockets, clocks, threads or the global allocator on the
//! hot path (a complete frame is parsed and delivered without allocating).

pub mod connection;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
#[cfg(test)]
mod pair;
#[doc(hidden)]
pub mod testing;
pub mod utf8;

pub use connection::{Connection, Input, Phase, Tick, Timeout, Timeouts, Transmit};
pub use frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
pub use message::{CloseFrame, Decoded, Decoder, DecoderConfig, Event};

/// Which side of the connection this endpoint plays. A server expects masked frames and
/// sends unmasked ones; a client the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A complete data message, borrowed from the read buffer (or the message buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// A protocol violation by the peer: the connection is closed with `code` (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: u16,
    pub reason: &'static str,
}

impl ProtocolError {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// Close status codes (RFC 6455 §7.4.1 and the IANA registry).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    /// Never sent on the wire: "no status code was present".
    pub const NO_STATUS: u16 = 1005;
    /// Never sent on the wire: "closed without a close frame".
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const EXTENSION: u16 = 1010;
    pub const INTERNAL: u16 = 1011;

    /// May a peer send `code` in a close frame?
    pub const fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
