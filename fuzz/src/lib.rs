//! Shared harness of the fuzz targets: how an input is cut into reads, the server-style feed
//! loop around `Decoder::next`, and a plain whole-buffer reference decoder to compare it with.
//! Owns no target; must not be used outside `fuzz/`.

pub use fanout::proto::testing::Owned;
use fanout::proto::{Decoded, Decoder, DecoderConfig, Role};

/// The message size limit of the frame targets (1 MiB): large enough for any input, small
/// enough that a header announcing a huge frame is refused from the header alone.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The tiny limit some inputs select, to reach the 1009 paths with short inputs.
pub const TINY_MESSAGE: usize = 64;
/// What the decoder may reserve past the bytes received (`RESERVE_AHEAD` in message.rs).
const RESERVE_AHEAD: usize = 64 << 10;

/// A frames input: byte 0 picks the options and the number (0 to 7) of read-size bytes that
/// follow; the rest is the byte stream of the peer.
pub struct FramesInput<'a> {
    pub cfg: DecoderConfig,
    /// Read sizes, cycled (each byte `s` reads `s + 1` bytes). Empty: one read of everything.
    pub sizes: &'a [u8],
    pub stream: &'a [u8],
}

impl<'a> FramesInput<'a> {
    pub fn new(role: Role, data: &'a [u8]) -> Option<Self> {
        let (&ctl, rest) = data.split_first()?;
        let n = ((ctl & 7) as usize).min(rest.len());
        let (sizes, stream) = rest.split_at(n);
        let mut cfg = DecoderConfig::new(role);
        cfg.max_message_size = if ctl & 0x08 != 0 {
            TINY_MESSAGE
        } else {
            MAX_MESSAGE
        };
        // RSV1 as a negotiated extension (permessage-deflate) would allow it.
        cfg.rsv_allowed = if ctl & 0x10 != 0 { 0b100 } else { 0 };
        Some(Self { cfg, sizes, stream })
    }

    /// The stream cut into reads of the chosen sizes.
    pub fn reads(&self) -> Vec<&'a [u8]> {
        if self.sizes.is_empty() {
            return vec![self.stream];
        }
        let mut out = Vec::new();
        let mut rest = self.stream;
        let mut i = 0;
        while !rest.is_empty() {
            let size = self.sizes[i % self.sizes.len()] as usize + 1;
            let (read, tail) = rest.split_at(size.min(rest.len()));
            out.push(read);
            rest = tail;
            i += 1;
        }
        out
    }
}

/// Feeds `reads` the way the server does (the unconsumed tail is kept and the next read is
/// appended to it; `next` is called until `Incomplete`) and checks the decoder's contract on
/// every call: it never claims more bytes than it was given, never spins without consuming,
/// only fails with 1002 / 1007 / 1009, and holds memory in proportion to the limit.
pub fn decode_reads(cfg: &DecoderConfig, reads: &[&[u8]]) -> Vec<Owned> {
    let total: usize = reads.iter().map(|r| r.len()).sum();
    let memory_bound = 2 * (cfg.max_message_size + RESERVE_AHEAD + total) + 64;
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut stash: Vec<u8> = Vec::new();
    for read in reads {
        let mut data = std::mem::take(&mut stash);
        data.extend_from_slice(read);
        let mut pos = 0;
        let mut idle_calls = 0;
        loop {
            let before = pos;
            let avail = data.len() - pos;
            match dec.next(cfg, &mut data[pos..]) {
                Ok(Decoded::Event(n, e)) => {
                    assert!(n <= avail, "event consumed past the input");
                    out.push(Owned::of(&e));
                    pos += n;
                }
                Ok(Decoded::Progress(n)) => {
                    assert!(n <= avail, "progress past the input");
                    pos += n;
                }
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    assert!(
                        matches!(e.code, 1002 | 1007 | 1009),
                        "unexpected close code {}",
                        e.code
                    );
                    out.push(Owned::Error(e.code));
                    return out;
                }
            }
            // A call that consumes nothing must be followed by one that does (or stops):
            // otherwise the server's loop would spin.
            idle_calls = if pos == before { idle_calls + 1 } else { 0 };
            assert!(idle_calls <= 2, "decoder spins without consuming");
            assert!(
                dec.buffered() <= memory_bound,
                "decoder holds {} bytes (bound {memory_bound})",
                dec.buffered()
            );
        }
        stash = data[pos..].to_vec();
    }
    out
}

fn valid_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// A straightforward, non-incremental decoder of a whole buffer, written from RFC 6455 and the
/// decoder's documented rules: the same events and the same first error, in the same order.
/// Text fails as soon as the bytes so far of the message are no prefix of valid UTF-8.
pub fn reference(cfg: &DecoderConfig, buf: &[u8]) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut pos = 0;
    // The data message being assembled: is it text, its (unmasked) bytes so far, and was it
    // marked compressed (RSV1 on its first frame, where an extension allows RSV1).
    let mut msg: Option<(bool, Vec<u8>, bool)> = None;
    macro_rules! fail {
        ($code:expr) => {{
            out.push(Owned::Error($code));
            return out;
        }};
    }
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            return out;
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 7;
        if rsv & !cfg.rsv_allowed != 0 {
            fail!(1002);
        }
        let op = b[0] & 0x0f;
        if !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) {
            fail!(1002);
        }
        let masked = b[1] & 0x80 != 0;
        if masked != (cfg.role == Role::Server) {
            fail!(1002);
        }
        let control = op >= 8;
        let len7 = (b[1] & 0x7f) as u64;
        if control && (len7 > 125 || !fin) {
            fail!(1002);
        }
        let (len, mut hl) = match len7 {
            126 => {
                if b.len() < 4 {
                    return out;
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return out;
                }
                let len = u64::from_be_bytes(b[2..10].try_into().unwrap());
                if len >> 63 != 0 {
                    fail!(1002);
                }
                (len, 10)
            }
            n => (n, 2),
        };
        let key = if masked {
            if b.len() < hl + 4 {
                return out;
            }
            hl += 4;
            Some([b[hl - 4], b[hl - 3], b[hl - 2], b[hl - 1]])
        } else {
            None
        };
        if op == 0 && msg.is_none() {
            fail!(1002);
        }
        if (op == 1 || op == 2) && msg.is_some() {
            fail!(1002);
        }
        // RSV1 means "compressed" only on the first frame of a data message.
        if rsv & 0b100 != 0 && (control || op == 0) {
            fail!(1002);
        }
        let avail = (b.len() - hl) as u64;
        let unmask = |p: &[u8]| -> Vec<u8> {
            p.iter()
                .enumerate()
                .map(|(i, x)| x ^ key.map_or(0, |k| k[i & 3]))
                .collect()
        };
        if control {
            if avail < len {
                return out;
            }
            let payload = unmask(&b[hl..hl + len as usize]);
            let event = match op {
                9 => Owned::Ping(payload),
                10 => Owned::Pong(payload),
                _ => match payload.len() {
                    0 => Owned::Close(1005, String::new()),
                    1 => fail!(1002),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                            fail!(1002);
                        }
                        match std::str::from_utf8(&payload[2..]) {
                            Ok(r) => Owned::Close(code, r.to_string()),
                            Err(_) => fail!(1007),
                        }
                    }
                },
            };
            out.push(event);
            pos += hl + len as usize;
            continue;
        }
        let so_far = msg.as_ref().map_or(0, |m| m.1.len());
        if len > cfg.max_message_size.saturating_sub(so_far) as u64 {
            fail!(1009);
        }
        let m = msg.get_or_insert_with(|| (op == 1, Vec::new(), rsv & 0b100 != 0));
        let take = avail.min(len) as usize;
        m.1.extend(unmask(&b[hl..hl + take]));
        if m.0 && !m.2 && !valid_prefix(&m.1) {
            fail!(1007);
        }
        if (take as u64) < len {
            return out;
        }
        pos += hl + take;
        if fin {
            let (text, bytes, compressed) = msg.take().unwrap();
            if compressed {
                out.push(Owned::Compressed(text, bytes));
            } else if text {
                match String::from_utf8(bytes) {
                    Ok(s) => out.push(Owned::Text(s)),
                    Err(_) => fail!(1007),
                }
            } else {
                out.push(Owned::Binary(bytes));
            }
        }
    }
}

/// The whole frames check: the stream read whole, read in the chosen pieces, and decoded by
/// the reference must give the same events and the same first error.
pub fn check_frames(role: Role, data: &[u8]) {
    let Some(input) = FramesInput::new(role, data) else {
        return;
    };
    let whole = decode_reads(&input.cfg, &[input.stream]);
    let cut = decode_reads(&input.cfg, &input.reads());
    assert_eq!(whole, cut, "whole and cut reads disagree");
    let expected = reference(&input.cfg, input.stream);
    assert_eq!(whole, expected, "decoder and reference disagree");
}
