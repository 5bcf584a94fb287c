//! Message assembly (RFC 6455 §5.4–5.5): turns frames into events. A message whole in the
//! caller's buffer is unmasked in place and lent out as a slice; only a message cut by a read
//! boundary or fragmented is copied into a per-connection buffer, allocated on demand and freed
//! once delivered. Owns fragmentation, UTF-8, size and close-payload rules; must not do I/O.

use super::deflate::RSV1;
use super::frame::{self, FrameHeader, OpCode};
use super::mask::{apply_mask, apply_mask_ascii};
use super::utf8::Utf8Validator;
use super::{close_code, ProtocolError, Role};

/// Shared by every connection of a shard; passed in on each call so a connection's decoder
/// stays one pointer wide.
#[derive(Debug, Clone, Copy)]
pub struct DecoderConfig {
    /// The role of the endpoint that receives the frames.
    pub role: Role,
    /// Largest message (sum of its fragments), else close 1009.
    pub max_message_size: usize,
    /// RSV bits a negotiated extension gives meaning to.
    pub rsv_allowed: u8,
}

impl DecoderConfig {
    /// 1 MiB, as Python's websockets: for a server the limit counts twice per connection that
    /// does not read (the message arriving and its reply queued), so the default is what
    /// bounds an attacker (docs/limits.md). Raise it for larger messages.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

    pub const fn new(role: Role) -> Self {
        Self {
            role,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            rsv_allowed: 0,
        }
    }
}

/// A close frame's content. `code` is 1005 (`NO_STATUS`) when the frame had no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// What the peer said. Slices borrow the input buffer or the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(CloseFrame<'a>),
    /// A whole data message whose first frame had RSV1 set (permessage-deflate negotiated):
    /// the payload is still compressed, and a text message's UTF-8 is not checked yet.
    Compressed {
        text: bool,
        payload: &'a [u8],
    },
}

/// The outcome of one `Decoder::next` call.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// `n` bytes were consumed and completed an event.
    Event(usize, Event<'a>),
    /// `n` bytes were consumed (possibly 0) without completing an event; call again with the rest.
    Progress(usize),
    /// The rest holds no complete unit: keep it, and call again once more bytes are appended.
    Incomplete,
}

/// Per-connection decoder state. Idle (between messages) it owns no heap memory.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<Box<Partial>>,
}

/// A data message that did not fit in one read: its bytes so far and the frame being read.
#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    buf: Vec<u8>,
    utf8: Utf8Validator,
    /// RSV1 was set on the first frame: the bytes are compressed (UTF-8 checked later).
    compressed: bool,
    frame: Option<FrameInProgress>,
    /// The message was handed out; drop this state on the next call.
    delivered: bool,
}

#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: u64,
    phase: u8,
}

const ERR_CONTINUATION: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "continuation frame without a message");
const ERR_INTERLEAVED: ProtocolError = ProtocolError::new(
    close_code::PROTOCOL,
    "new data frame inside a fragmented message",
);
const ERR_TOO_BIG: ProtocolError = ProtocolError::new(close_code::TOO_BIG, "message too big");
const ERR_UTF8: ProtocolError = ProtocolError::new(close_code::INVALID_DATA, "invalid UTF-8");
const ERR_CLOSE_LEN: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "close payload of one byte");
const ERR_CLOSE_CODE: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "invalid close code");
const ERR_RSV1: ProtocolError = ProtocolError::new(
    close_code::PROTOCOL,
    "RSV1 set on a control or continuation frame",
);

/// How much a message buffer reserves ahead of the bytes that actually arrived: a peer that
/// announces a large frame does not get that much memory until it sends it.
const RESERVE_AHEAD: u64 = 64 << 10;

impl Decoder {
    pub const fn new() -> Self {
        Self { partial: None }
    }

    /// True when the decoder holds no state between messages (and no heap memory).
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Bytes held for an unfinished message.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buf.capacity())
    }

    /// Decodes the next unit from `buf`, unmasking it in place. Call in a loop, advancing by the
    /// consumed count, until `Incomplete`; then keep the unconsumed rest and call again with it
    /// and the next bytes appended. An error means the connection must be closed with its code.
    pub fn next<'a>(
        &'a mut self,
        cfg: &DecoderConfig,
        buf: &'a mut [u8],
    ) -> Result<Decoded<'a>, ProtocolError> {
        if self.partial.as_ref().is_some_and(|p| p.delivered) {
            self.partial = None;
        }
        if self.partial.as_ref().is_some_and(|p| p.frame.is_some()) {
            return self.continue_frame(buf);
        }
        let Some(h) = frame::parse_header(buf, cfg.role, cfg.rsv_allowed)? else {
            return Ok(Decoded::Incomplete);
        };
        let in_message = self.partial.is_some();
        match h.opcode {
            OpCode::Continuation if !in_message => return Err(ERR_CONTINUATION),
            OpCode::Text | OpCode::Binary if in_message => return Err(ERR_INTERLEAVED),
            _ => {}
        }
        let compressed = h.rsv & RSV1 != 0;
        if compressed && (h.opcode.is_control() || h.opcode == OpCode::Continuation) {
            return Err(ERR_RSV1);
        }
        if h.opcode.is_control() {
            return control_frame(&h, buf);
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len());
        if h.payload_len > (cfg.max_message_size.saturating_sub(so_far)) as u64 {
            return Err(ERR_TOO_BIG);
        }
        let available = (buf.len() - h.header_len) as u64;
        if !in_message && h.fin && available >= h.payload_len {
            // The hot path: a whole message in the read buffer, lent out in place.
            let total = h.header_len + h.payload_len as usize;
            let payload = &mut buf[h.header_len..total];
            let event = if compressed {
                if let Some(key) = h.mask {
                    apply_mask(payload, key, 0);
                }
                Event::Compressed {
                    text: h.opcode == OpCode::Text,
                    payload,
                }
            } else if h.opcode == OpCode::Text {
                let ascii = match h.mask {
                    Some(key) => apply_mask_ascii(payload, key, 0).1,
                    None => false,
                };
                let text = if ascii {
                    // SAFETY: every byte is below 0x80 (checked while unmasking): ASCII is UTF-8.
                    unsafe { std::str::from_utf8_unchecked(payload) }
                } else {
                    simdutf8::basic::from_utf8(payload).map_err(|_| ERR_UTF8)?
                };
                Event::Text(text)
            } else {
                if let Some(key) = h.mask {
                    apply_mask(payload, key, 0);
                }
                Event::Binary(payload)
            };
            return Ok(Decoded::Event(total, event));
        }
        let frame = FrameInProgress {
            fin: h.fin,
            mask: h.mask,
            remaining: h.payload_len,
            phase: 0,
        };
        let partial = self.partial.get_or_insert_with(|| {
            Box::new(Partial {
                opcode: h.opcode,
                buf: Vec::new(),
                utf8: Utf8Validator::new(),
                compressed,
                frame: None,
                delivered: false,
            })
        });
        partial
            .buf
            .reserve(h.payload_len.min(RESERVE_AHEAD) as usize);
        partial.frame = Some(frame);
        Ok(Decoded::Progress(h.header_len))
    }

    /// Copies (unmasked, validated) payload bytes of the frame in progress into the message.
    fn continue_frame<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, ProtocolError> {
        let Some(p) = self.partial.as_deref_mut() else {
            return Ok(Decoded::Incomplete);
        };
        let Some(f) = p.frame.as_mut() else {
            return Ok(Decoded::Incomplete);
        };
        let n = f.remaining.min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        if let Some(key) = f.mask {
            f.phase = apply_mask(chunk, key, f.phase as usize) as u8;
        }
        if p.opcode == OpCode::Text && !p.compressed {
            p.utf8.feed(chunk).map_err(|_| ERR_UTF8)?;
        }
        if f.remaining > n as u64 {
            let left = (f.remaining - n as u64).min(RESERVE_AHEAD) as usize;
            p.buf.reserve(n + left);
        }
        p.buf.extend_from_slice(chunk);
        f.remaining -= n as u64;
        if f.remaining > 0 {
            return Ok(if n == 0 {
                Decoded::Incomplete
            } else {
                Decoded::Progress(n)
            });
        }
        let fin = f.fin;
        p.frame = None;
        if !fin {
            return Ok(Decoded::Progress(n));
        }
        p.delivered = true;
        let event = if p.compressed {
            Event::Compressed {
                text: p.opcode == OpCode::Text,
                payload: &p.buf,
            }
        } else if p.opcode == OpCode::Text {
            p.utf8.finish().map_err(|_| ERR_UTF8)?;
            // SAFETY: every byte of `p.buf` went through `p.utf8`, which accepted the whole
            // sequence and ended on a code point boundary (`finish` above).
            Event::Text(unsafe { std::str::from_utf8_unchecked(&p.buf) })
        } else {
            Event::Binary(&p.buf)
        };
        Ok(Decoded::Event(n, event))
    }
}

/// A control frame is small (<= 125 bytes): it is decoded only once whole in the buffer.
fn control_frame<'a>(h: &FrameHeader, buf: &'a mut [u8]) -> Result<Decoded<'a>, ProtocolError> {
    let total = h.header_len + h.payload_len as usize;
    if buf.len() < total {
        return Ok(Decoded::Incomplete);
    }
    let payload = &mut buf[h.header_len..total];
    if let Some(key) = h.mask {
        apply_mask(payload, key, 0);
    }
    let event = match h.opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => Event::Close(parse_close(payload)?),
    };
    Ok(Decoded::Event(total, event))
}

/// Validates a close payload (RFC 6455 §5.5.1, §7.4).
pub fn parse_close(payload: &[u8]) -> Result<CloseFrame<'_>, ProtocolError> {
    match payload {
        [] => Ok(CloseFrame {
            code: close_code::NO_STATUS,
            reason: "",
        }),
        [_] => Err(ERR_CLOSE_LEN),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_valid_on_wire(code) {
                return Err(ERR_CLOSE_CODE);
            }
            let reason = simdutf8::basic::from_utf8(reason).map_err(|_| ERR_UTF8)?;
            Ok(CloseFrame { code, reason })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::frame::encode_frame;

    pub use crate::proto::testing::Owned;

    /// Feeds `chunks` the way the server does: unconsumed bytes are kept and the next chunk is
    /// appended to them. Stops at the first error.
    pub fn decode_chunks(cfg: &DecoderConfig, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut stash: Vec<u8> = Vec::new();
        for chunk in chunks {
            let mut data = std::mem::take(&mut stash);
            data.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match dec.next(cfg, &mut data[pos..]) {
                    Ok(Decoded::Event(n, e)) => {
                        out.push(Owned::of(&e));
                        pos += n;
                    }
                    Ok(Decoded::Progress(n)) => pos += n,
                    Ok(Decoded::Incomplete) => break,
                    Err(e) => {
                        out.push(Owned::Error(e.code));
                        return out;
                    }
                }
            }
            stash = data[pos..].to_vec();
        }
        assert!(dec.is_idle() || !stash.is_empty() || dec.partial.is_some());
        out
    }

    fn server() -> DecoderConfig {
        DecoderConfig::new(Role::Server)
    }

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, fin, op, payload, Some(KEY));
        v
    }

    fn raw(first: u8, payload: &[u8]) -> Vec<u8> {
        // A masked frame with an arbitrary first byte (for bad opcodes / bits).
        let mut v = vec![first, 0x80 | payload.len() as u8];
        v.extend_from_slice(&KEY);
        let start = v.len();
        v.extend_from_slice(payload);
        apply_mask(&mut v[start..], KEY, 0);
        v
    }

    fn run(bytes: &[u8]) -> Vec<Owned> {
        decode_chunks(&server(), &[bytes])
    }

    fn deflating() -> DecoderConfig {
        DecoderConfig {
            rsv_allowed: RSV1,
            ..server()
        }
    }

    #[test]
    fn rsv1_marks_a_compressed_message_whole_or_fragmented() {
        // Not UTF-8 and not checked: the bytes are compressed.
        let z = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let cfg = deflating();
        let whole = raw(0xc1, &z);
        assert_eq!(
            decode_chunks(&cfg, &[&whole]),
            vec![Owned::Compressed(true, z.to_vec())]
        );
        let mut frags = raw(0x42, &z[..3]); // RSV1 + binary, not FIN
        frags.extend(raw(0x89, b"p")); // a ping in between
        frags.extend(raw(0x80, &z[3..])); // FIN continuation, RSV1 clear
        let want = vec![
            Owned::Ping(b"p".to_vec()),
            Owned::Compressed(false, z.to_vec()),
        ];
        assert_eq!(decode_chunks(&cfg, &[&frags]), want);
        let bytes: Vec<&[u8]> = frags.chunks(1).collect();
        assert_eq!(decode_chunks(&cfg, &bytes), want);
        // A message without RSV1 on a deflate connection is plain.
        assert_eq!(
            decode_chunks(&cfg, &[&frame(true, OpCode::Text, b"hi")]),
            vec![Owned::Text("hi".into())]
        );
    }

    #[test]
    fn rsv1_where_it_has_no_meaning_is_1002() {
        let cfg = deflating();
        let mut cont = raw(0x41, b"ab");
        cont.extend(raw(0xc0, b"cd"));
        for bytes in [raw(0xc9, b""), raw(0xca, b""), raw(0xc8, &[3, 232]), cont] {
            assert_eq!(decode_chunks(&cfg, &[&bytes]), vec![Owned::Error(1002)]);
        }
        // Without the extension RSV1 is not allowed at all.
        assert_eq!(run(&raw(0xc1, b"x")), vec![Owned::Error(1002)]);
    }

    #[test]
    fn whole_text_message_is_lent_in_place() {
        let mut bytes = frame(true, OpCode::Text, b"hello");
        let mut dec = Decoder::new();
        let ptr = bytes.as_ptr() as usize;
        match dec.next(&server(), &mut bytes).unwrap() {
            Decoded::Event(n, Event::Text(t)) => {
                assert_eq!(t, "hello");
                assert_eq!(n, 11);
                assert_eq!(t.as_ptr() as usize, ptr + 6, "borrowed from the input");
            }
            other => panic!("{other:?}"),
        }
        assert!(dec.is_idle());
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut bytes = frame(false, OpCode::Text, b"fra");
        bytes.extend(frame(true, OpCode::Ping, b"p1"));
        bytes.extend(frame(false, OpCode::Continuation, b"gme"));
        bytes.extend(frame(true, OpCode::Pong, b""));
        bytes.extend(frame(true, OpCode::Continuation, b"nted"));
        bytes.extend(frame(true, OpCode::Binary, &[0, 1, 2]));
        assert_eq!(
            run(&bytes),
            vec![
                Owned::Ping(b"p1".to_vec()),
                Owned::Pong(vec![]),
                Owned::Text("fragmented".into()),
                Owned::Binary(vec![0, 1, 2]),
            ]
        );
    }

    #[test]
    fn empty_fragments() {
        let mut bytes = frame(false, OpCode::Text, b"");
        bytes.extend(frame(false, OpCode::Continuation, b""));
        bytes.extend(frame(true, OpCode::Continuation, b""));
        assert_eq!(run(&bytes), vec![Owned::Text(String::new())]);
    }

    #[test]
    fn continuation_without_start_is_1002() {
        assert_eq!(
            run(&frame(true, OpCode::Continuation, b"x")),
            vec![Owned::Error(1002)]
        );
    }

    #[test]
    fn data_frame_inside_fragmented_message_is_1002() {
        let mut bytes = frame(false, OpCode::Text, b"a");
        bytes.extend(frame(true, OpCode::Text, b"b"));
        assert_eq!(run(&bytes), vec![Owned::Error(1002)]);
        let mut bytes = frame(false, OpCode::Binary, b"a");
        bytes.extend(frame(true, OpCode::Binary, b"b"));
        assert_eq!(run(&bytes), vec![Owned::Error(1002)]);
    }

    #[test]
    fn invalid_utf8_is_1007_in_whole_and_fragmented_messages() {
        assert_eq!(
            run(&frame(true, OpCode::Text, &[0xce, 0xba, 0xff])),
            vec![Owned::Error(1007)]
        );
        // Valid pieces that end inside a code point at the end of the message.
        let mut bytes = frame(false, OpCode::Text, &[0xce]);
        bytes.extend(frame(true, OpCode::Continuation, b""));
        assert_eq!(run(&bytes), vec![Owned::Error(1007)]);
    }

    #[test]
    fn invalid_utf8_fails_fast_before_the_message_ends() {
        // First fragment already invalid: the error comes without the rest of the message.
        let bytes = frame(false, OpCode::Text, &[b'a', 0xed, 0xa0, 0x80]);
        assert_eq!(run(&bytes), vec![Owned::Error(1007)]);
        // A single frame cut by the read boundary: the bad byte fails its chunk.
        let bytes = frame(true, OpCode::Text, &[b'a', b'b', 0xff, b'c', b'd']);
        let out = decode_chunks(&server(), &[&bytes[..9]]);
        assert_eq!(out, vec![Owned::Error(1007)]);
    }

    #[test]
    fn message_size_limit_is_1009() {
        let cfg = DecoderConfig {
            max_message_size: 10,
            ..server()
        };
        let out = decode_chunks(&cfg, &[&frame(true, OpCode::Binary, &[0; 11])]);
        assert_eq!(out, vec![Owned::Error(1009)]);
        let mut bytes = frame(false, OpCode::Binary, &[0; 6]);
        bytes.extend(frame(true, OpCode::Continuation, &[0; 5]));
        assert_eq!(decode_chunks(&cfg, &[&bytes]), vec![Owned::Error(1009)]);
        // Exactly at the limit is fine.
        let mut bytes = frame(false, OpCode::Binary, &[0; 6]);
        bytes.extend(frame(true, OpCode::Continuation, &[0; 4]));
        assert_eq!(
            decode_chunks(&cfg, &[&bytes]),
            vec![Owned::Binary(vec![0; 10])]
        );
        // A huge announced length is refused from the header alone.
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&KEY);
        assert_eq!(run(&huge), vec![Owned::Error(1009)]);
    }

    #[test]
    fn close_payload_rules() {
        let close = |p: &[u8]| run(&frame(true, OpCode::Close, p));
        assert_eq!(close(b""), vec![Owned::Close(1005, String::new())]);
        assert_eq!(close(&[0x03]), vec![Owned::Error(1002)]);
        assert_eq!(
            close(&[0x03, 0xe8, b'o', b'k']),
            vec![Owned::Close(1000, "ok".into())]
        );
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close(&code.to_be_bytes()),
                vec![Owned::Error(1002)],
                "{code}"
            );
        }
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(
                close(&code.to_be_bytes()),
                vec![Owned::Close(code, String::new())]
            );
        }
        assert_eq!(close(&[0x03, 0xe8, 0xff]), vec![Owned::Error(1007)]);
    }

    #[test]
    fn frame_level_errors_surface_as_1002() {
        assert_eq!(run(&raw(0xC1, b"x")), vec![Owned::Error(1002)]); // RSV1
        assert_eq!(run(&raw(0x83, b"x")), vec![Owned::Error(1002)]); // opcode 3
        assert_eq!(run(&raw(0x09, b"x")), vec![Owned::Error(1002)]); // ping not FIN
        assert_eq!(run(&[0x81, 0x01, b'x']), vec![Owned::Error(1002)]); // unmasked
    }

    #[test]
    fn client_role_reads_unmasked_frames() {
        let cfg = DecoderConfig::new(Role::Client);
        let mut v = Vec::new();
        encode_frame(&mut v, true, OpCode::Text, b"hi", None);
        assert_eq!(decode_chunks(&cfg, &[&v]), vec![Owned::Text("hi".into())]);
        assert_eq!(
            decode_chunks(&cfg, &[&frame(true, OpCode::Text, b"hi")]),
            vec![Owned::Error(1002)]
        );
    }

    #[test]
    fn large_message_in_small_reads_frees_its_buffer() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 250) as u8).collect();
        let bytes = frame(true, OpCode::Binary, &payload);
        let chunks: Vec<&[u8]> = bytes.chunks(4096).collect();
        let out = decode_chunks(&server(), &chunks);
        assert_eq!(out, vec![Owned::Binary(payload)]);
    }
}
