//! Frame headers (RFC 6455 §5.2): incremental parse of the 2 to 14 header bytes and the
//! encoder for both roles. Owns the per-frame rules (RSV bits, opcodes, masking direction,
//! control frame limits); must not know about messages or buffers beyond a slice.

use super::{close_code, mask::apply_mask, ProtocolError, Role};

/// The longest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    #[inline]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    #[inline]
    const fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }
}

/// A parsed frame header. `header_len + payload_len` bytes make the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

const ERR_RSV: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "reserved bits set");
const ERR_OPCODE: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "reserved opcode");
const ERR_UNMASKED: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "client frame not masked");
const ERR_MASKED: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "server frame masked");
const ERR_CONTROL_LEN: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "control frame over 125 bytes");
const ERR_CONTROL_FIN: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "fragmented control frame");
const ERR_LEN64: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "64-bit length with top bit set");

/// Parses a frame header from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed; nothing is consumed. `rsv_allowed` holds the RSV
/// bits a negotiated extension gives meaning to (0 without extensions). The frame's role rules
/// are those of the receiving endpoint `role`.
#[inline]
pub fn parse_header(
    buf: &[u8],
    role: Role,
    rsv_allowed: u8,
) -> Result<Option<FrameHeader>, ProtocolError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    if rsv & !rsv_allowed != 0 {
        return Err(ERR_RSV);
    }
    let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(ERR_OPCODE)?;
    let masked = b1 & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(ERR_UNMASKED),
        Role::Client if masked => return Err(ERR_MASKED),
        _ => {}
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if len7 > 125 {
            return Err(ERR_CONTROL_LEN);
        }
        if !fin {
            return Err(ERR_CONTROL_FIN);
        }
    }
    let (payload_len, mut pos) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                let len = u64::from_be_bytes(w);
                if len >> 63 != 0 {
                    return Err(ERR_LEN64);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    let mask = if masked {
        match buf.get(pos..pos + 4) {
            Some(b) => {
                pos += 4;
                Some([b[0], b[1], b[2], b[3]])
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: pos,
    }))
}

/// Writes a frame header into `out` and returns its length (2 to 14 bytes).
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = ((fin as u8) << 7) | ((rsv & 0x7) << 4) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    pos
}

/// The header length a frame with this payload length gets.
#[inline]
pub const fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as u64 {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Appends a whole frame (header and payload, masked with `mask` when given) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, 0, opcode, payload.len() as u64, mask);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// Builds the payload of a close frame: the code in network order, then the reason, cut to
/// fit in 125 bytes on a character boundary. Returns the buffer and the used length.
pub fn close_payload(code: u16, reason: &str) -> ([u8; MAX_CONTROL_PAYLOAD], usize) {
    let mut out = [0u8; MAX_CONTROL_PAYLOAD];
    out[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    (out, 2 + end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_server(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        parse_header(buf, Role::Server, 0)
    }

    #[test]
    fn three_length_forms_round_trip() {
        for (len, hlen) in [
            (0u64, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut out, true, 0, OpCode::Binary, len, mask);
                assert_eq!(n, hlen + if mask.is_some() { 4 } else { 0 });
                assert_eq!(n, header_len(len, mask.is_some()));
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let h = parse_header(&out[..n], role, 0).unwrap().unwrap();
                assert_eq!(h.payload_len, len);
                assert_eq!(h.header_len, n);
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.opcode, OpCode::Binary);
                // Every strict prefix is "need more".
                for cut in 0..n {
                    assert_eq!(parse_header(&out[..cut], role, 0), Ok(None));
                }
            }
        }
    }

    #[test]
    fn rfc_examples() {
        // Unmasked "Hello" as sent by a server.
        let h = parse_header(&[0x81, 0x05, 0x48], Role::Client, 0)
            .unwrap()
            .unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len), (true, OpCode::Text, 5));
        // Masked "Hello" from a client.
        let h = parse_header(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d], Role::Server, 0)
            .unwrap()
            .unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.header_len, 6);
    }

    #[test]
    fn protocol_errors_close_with_1002() {
        let cases: &[(&[u8], &str)] = &[
            (&[0xC1, 0x80, 0, 0, 0, 0], "reserved bits set"),
            (&[0xA1, 0x80, 0, 0, 0, 0], "reserved bits set"),
            (&[0x91, 0x80, 0, 0, 0, 0], "reserved bits set"),
            (&[0x83, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x87, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x8B, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x8F, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x81, 0x00], "client frame not masked"),
            (&[0x89, 0xFE, 0, 126], "control frame over 125 bytes"),
            (&[0x88, 0xFF], "control frame over 125 bytes"),
            (&[0x09, 0x80, 0, 0, 0, 0], "fragmented control frame"),
            (
                &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                "64-bit length with top bit set",
            ),
        ];
        for (bytes, reason) in cases {
            let err = parse_server(bytes).unwrap_err();
            assert_eq!(err.code, 1002, "{bytes:?}");
            assert_eq!(err.reason, *reason, "{bytes:?}");
        }
        let err = parse_header(&[0x81, 0x80, 1, 2, 3, 4], Role::Client, 0).unwrap_err();
        assert_eq!((err.code, err.reason), (1002, "server frame masked"));
    }

    #[test]
    fn negotiated_rsv_bits_are_accepted() {
        let h = parse_header(&[0xC1, 0x80, 0, 0, 0, 0], Role::Server, 0b100)
            .unwrap()
            .unwrap();
        assert_eq!(h.rsv, 0b100);
    }

    #[test]
    fn close_payload_cuts_on_char_boundary() {
        let reason = "é".repeat(100);
        let (buf, n) = close_payload(1000, &reason);
        assert!(n <= 125);
        assert_eq!(&buf[..2], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&buf[2..n]).is_ok());
    }

    #[test]
    fn encode_frame_masks_payload() {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            Some([0x37, 0xfa, 0x21, 0x3d]),
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }
}
