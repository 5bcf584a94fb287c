//! permessage-deflate (RFC 7692): the server's side of the negotiation and the per-message
//! codec (raw DEFLATE, the `00 00 ff ff` tail stripped and restored). Owns offer parsing,
//! the response, and bounded inflation; must not do I/O. Contexts belong to the caller, who
//! decides whether they are shared per shard (no context takeover) or kept per connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{close_code, Event, ProtocolError};

/// The bytes a sync flush ends with; removed from every compressed message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The RSV bit that marks a compressed message.
pub const RSV1: u8 = 0b100;

/// The server's permessage-deflate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Accept offers at all.
    pub enabled: bool,
    /// Messages shorter than this go out uncompressed.
    pub min_size: usize,
    /// LZ77 window of our compressor (9..=15), also the largest window we let the client use
    /// when it offers `client_max_window_bits`.
    pub window_bits: u8,
    /// Keep compression contexts between messages (better ratio, but a compressor of about
    /// 256 KiB and an inflater of about 40 KiB per connection that uses them). Off: both sides
    /// reset after every message and the contexts are shared by a whole shard.
    pub context_takeover: bool,
    /// zlib level 0..=9.
    pub level: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            min_size: 256,
            window_bits: 15,
            context_takeover: false,
            level: 1,
        }
    }
}

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// We reset our compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (so may we our inflater).
    pub client_no_context_takeover: bool,
    /// Our compressor's window. 8 (which zlib cannot produce) means: never compress, which
    /// the extension allows (RSV1 clear).
    pub server_max_window_bits: u8,
    /// `server_max_window_bits` is in the response: always when the client offered it (even
    /// 15: accepting the parameter means answering it, RFC 7692 §7.1.2.1), and when we use
    /// less than 15.
    pub announce_server_window: bool,
    /// The client's window, when the response limits it.
    pub client_max_window_bits: Option<u8>,
}

impl Params {
    /// Appends the `Sec-WebSocket-Extensions` value of the response.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"permessage-deflate");
        if self.server_no_context_takeover {
            out.extend_from_slice(b"; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.extend_from_slice(b"; client_no_context_takeover");
        }
        if self.announce_server_window {
            out.extend_from_slice(b"; server_max_window_bits=");
            push_bits(out, self.server_max_window_bits);
        }
        if let Some(b) = self.client_max_window_bits {
            out.extend_from_slice(b"; client_max_window_bits=");
            push_bits(out, b);
        }
    }

    /// The response value as a string.
    pub fn response(&self) -> String {
        let mut v = Vec::with_capacity(96);
        self.write_response(&mut v);
        String::from_utf8(v).expect("ASCII")
    }

    /// Packs into one byte (see `Params::unpack`): bit 7 on, bit 6 server takeover, bit 5
    /// client takeover, low nibble our window bits.
    pub fn pack(&self) -> u8 {
        0x80 | (!self.server_no_context_takeover as u8) << 6
            | (!self.client_no_context_takeover as u8) << 5
            | (self.server_max_window_bits & 0x0f)
    }
}

/// The parts of `Params` a connection keeps, in one byte (0: no deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packed(pub u8);

impl Packed {
    pub const OFF: Packed = Packed(0);

    pub fn on(self) -> bool {
        self.0 & 0x80 != 0
    }
    /// Our compressor keeps its context between messages.
    pub fn server_takeover(self) -> bool {
        self.0 & 0x40 != 0
    }
    /// The client's compressor keeps its context: so must our inflater.
    pub fn client_takeover(self) -> bool {
        self.0 & 0x20 != 0
    }
    pub fn server_window_bits(self) -> u8 {
        self.0 & 0x0f
    }
    /// May we compress at all (zlib cannot honour an 8-bit window)?
    pub fn can_compress(self) -> bool {
        self.on() && self.server_window_bits() >= 9
    }
}

fn push_bits(out: &mut Vec<u8>, b: u8) {
    if b >= 10 {
        out.push(b'1');
    }
    out.push(b'0' + b % 10);
}

/// One offered parameter set, validated.
#[derive(Debug, Default, Clone, Copy)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Picks the first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` values (RFC 7692 §5, §7.1). Offers with unknown or repeated
/// parameters or invalid values are declined; no acceptable offer means no compression.
pub fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    cfg: &DeflateConfig,
) -> Option<Params> {
    if !cfg.enabled {
        return None;
    }
    for value in headers {
        for ext in split_outside_quotes(value, b',') {
            let mut parts = split_outside_quotes(ext, b';');
            let name = parts.next().unwrap_or("").trim();
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            let Some(offer) = parse_offer(parts) else {
                continue;
            };
            if let Some(p) = accept(&offer, cfg) {
                return Some(p);
            }
        }
    }
    None
}

/// The offer a client makes when it wants to share its contexts: neither side keeps one
/// between messages. Both offers say the client can compress with a smaller window if the
/// server asks (`client_max_window_bits`, RFC 7692 §7.1.2.2).
pub const CLIENT_OFFER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits";

/// The offer of a client that lets both sides keep their contexts.
pub const TAKEOVER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Checks a server's answer to `CLIENT_OFFER` (`shared`) or `TAKEOVER_OFFER` (RFC 7692 §5.2,
/// §7.1): a single permessage-deflate with valid parameters, `server_no_context_takeover` kept
/// when it was requested, and a `client_max_window_bits` only with a value (8 to 15: the
/// window our compressor must keep within; with 8, which zlib cannot produce, the client
/// sends every message uncompressed).
pub fn check_response(value: &str, shared: bool) -> Result<Params, &'static str> {
    let mut exts = split_outside_quotes(value, b',');
    let ext = exts.next().unwrap_or("");
    if exts.next().is_some() {
        return Err("more than one extension in the response");
    }
    let mut parts = split_outside_quotes(ext, b';');
    if !parts
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return Err("an extension that was not offered");
    }
    let o = parse_offer(parts).ok_or("invalid permessage-deflate parameters")?;
    if shared && !o.server_no_context_takeover {
        return Err("server_no_context_takeover was requested but not accepted");
    }
    let client_max_window_bits = match o.client_max_window_bits {
        None => None,
        Some(None) => return Err("client_max_window_bits without a value in the response"),
        Some(bits) => bits,
    };
    Ok(Params {
        server_no_context_takeover: o.server_no_context_takeover,
        client_no_context_takeover: o.client_no_context_takeover || shared,
        server_max_window_bits: o.server_max_window_bits.unwrap_or(15),
        announce_server_window: o.server_max_window_bits.is_some(),
        client_max_window_bits,
    })
}

fn accept(offer: &Offer, cfg: &DeflateConfig) -> Option<Params> {
    let ours = cfg.window_bits.clamp(9, 15);
    let server_max_window_bits = match offer.server_max_window_bits {
        Some(v) => v.min(ours),
        None => ours,
    };
    let client_max_window_bits = match offer.client_max_window_bits {
        // Not offered: the client does not understand the parameter; its window is 15.
        None => None,
        Some(v) => {
            let b = v.unwrap_or(15).min(ours);
            (b < 15 || v.is_some()).then_some(b)
        }
    };
    Some(Params {
        server_no_context_takeover: offer.server_no_context_takeover || !cfg.context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover || !cfg.context_takeover,
        server_max_window_bits,
        announce_server_window: offer.server_max_window_bits.is_some()
            || server_max_window_bits < 15,
        client_max_window_bits,
    })
}

fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = 0u8;
    for p in params {
        let p = p.trim();
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p, None),
        };
        let bit = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => {
                value.is_none().then_some(())?;
                o.server_no_context_takeover = true;
                1
            }
            "client_no_context_takeover" => {
                value.is_none().then_some(())?;
                o.client_no_context_takeover = true;
                2
            }
            "server_max_window_bits" => {
                o.server_max_window_bits = Some(window_bits(value?)?);
                4
            }
            "client_max_window_bits" => {
                o.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                });
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some(o)
}

/// 8..=15, decimal digits only, no leading zero (RFC 7692 §7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// A parameter value, token or quoted-string (the quotes removed; no escapes are needed for
/// the values this extension defines, so a backslash makes the value invalid).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// Splits on `sep` except inside double quotes.
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, b) in s.bytes().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// An inflated message as the event an app gets. Text is checked for UTF-8 here: it could
/// not be while compressed.
pub fn inflated_event(buf: &[u8], text: bool) -> Result<Event<'_>, ProtocolError> {
    if !text {
        return Ok(Event::Binary(buf));
    }
    simdutf8::basic::from_utf8(buf)
        .map(Event::Text)
        .map_err(|_| ERR_UTF8)
}

const ERR_UTF8: ProtocolError = ProtocolError::new(close_code::INVALID_DATA, "invalid UTF-8");
const ERR_INFLATE: ProtocolError =
    ProtocolError::new(close_code::INVALID_DATA, "invalid compressed data");
const ERR_TOO_BIG: ProtocolError = ProtocolError::new(close_code::TOO_BIG, "message too big");

/// Output grows by at most this much per step, so a bomb stops near the limit.
const GROW_STEP: usize = 64 << 10;

/// A raw-DEFLATE compressor for messages.
pub struct Deflater {
    c: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Deflater {
    /// `window_bits` 9..=15, `level` 0..=9.
    pub fn new(window_bits: u8, level: u8) -> Self {
        Self {
            c: Compress::new_with_window_bits(
                Compression::new(level.min(9) as u32),
                false,
                window_bits.clamp(9, 15),
            ),
        }
    }

    /// Appends `payload` compressed as one message (tail removed) to `out`. `reset`: start
    /// the next message from an empty context (no context takeover).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>, reset: bool) {
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        let base_in = self.c.total_in();
        loop {
            let consumed = (self.c.total_in() - base_in) as usize;
            let before = self.c.total_out();
            let status = self
                .c
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflate cannot fail on valid state");
            let consumed = (self.c.total_in() - base_in) as usize;
            let produced = self.c.total_out() - before;
            // Done when all input is taken and the flush fit (spare room left over).
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
            if status == Status::BufError && produced == 0 && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty message is a single empty stored block (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if reset {
            self.c.reset();
        }
    }
}

/// A raw-DEFLATE decompressor for messages, bounded by the message size limit.
pub struct Inflater {
    d: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// Always a 15-bit window: it reads any smaller window too (zlib itself widens 8 to 9
    /// when compressing, so trusting a peer's 8 would fail on valid data).
    pub fn new() -> Self {
        Self {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }

    /// Inflates one message (`payload` without its tail) into `out` (cleared first). More
    /// than `limit` bytes of output is a 1009 error, found without inflating past the limit
    /// by more than one step; bad data is 1007. `reset`: forget the context afterwards (the
    /// client does not take it over, or the inflater is shared).
    pub fn inflate(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        reset: bool,
    ) -> Result<(), ProtocolError> {
        out.clear();
        let r = self.run(payload, out, limit).and_then(|end| {
            if end {
                Ok(true)
            } else {
                self.run(&TAIL, out, limit)
            }
        });
        match r {
            Ok(ended) => {
                if reset || ended {
                    self.d.reset(false);
                }
                Ok(())
            }
            Err(e) => {
                self.d.reset(false);
                Err(e)
            }
        }
    }

    /// Feeds `input` until it is consumed; `Ok(true)` when the stream ended (a final block).
    fn run(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, ProtocolError> {
        let base_in = self.d.total_in();
        loop {
            let consumed = (self.d.total_in() - base_in) as usize;
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(ERR_TOO_BIG);
                }
                // Room for one byte past the limit, to tell "exactly the limit" from "over".
                let room = (limit + 1 - out.len()).min(GROW_STEP.max(out.len()));
                out.reserve_exact(room);
            }
            let before_out = self.d.total_out();
            let status = self
                .d
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| ERR_INFLATE)?;
            if out.len() > limit {
                return Err(ERR_TOO_BIG);
            }
            let consumed_now = (self.d.total_in() - base_in) as usize;
            let progressed = consumed_now > consumed || self.d.total_out() > before_out;
            match status {
                Status::StreamEnd => {
                    // Anything after a final block is not part of this stream.
                    return if consumed_now == input.len() || input == TAIL {
                        Ok(true)
                    } else {
                        Err(ERR_INFLATE)
                    };
                }
                _ if consumed_now == input.len() && out.len() < out.capacity() => return Ok(false),
                _ if !progressed && out.len() < out.capacity() => return Err(ERR_INFLATE),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DeflateConfig {
        DeflateConfig {
            enabled: true,
            ..DeflateConfig::default()
        }
    }

    fn takeover() -> DeflateConfig {
        DeflateConfig {
            context_takeover: true,
            ..cfg()
        }
    }

    fn neg(h: &str, c: &DeflateConfig) -> Option<String> {
        negotiate([h], c).map(|p| p.response())
    }

    #[test]
    fn disabled_accepts_nothing() {
        assert_eq!(neg("permessage-deflate", &DeflateConfig::default()), None);
    }

    #[test]
    fn plain_offer_without_takeover_config() {
        assert_eq!(
            neg("permessage-deflate", &cfg()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }

    #[test]
    fn plain_offer_with_takeover_config() {
        assert_eq!(
            neg("permessage-deflate", &takeover()).as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn browser_offer() {
        // What Chromium sends.
        assert_eq!(
            neg("permessage-deflate; client_max_window_bits", &takeover()).as_deref(),
            Some("permessage-deflate")
        );
        let small = DeflateConfig {
            window_bits: 10,
            ..takeover()
        };
        assert_eq!(
            neg("permessage-deflate; client_max_window_bits", &small).as_deref(),
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=10")
        );
    }

    #[test]
    fn all_four_parameters_honoured() {
        let p = negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=12"],
            &takeover(),
        )
        .unwrap();
        assert_eq!(
            p,
            Params {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                announce_server_window: true,
                client_max_window_bits: Some(12),
            }
        );
        assert_eq!(
            p.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=12"
        );
    }

    #[test]
    fn an_offered_server_window_is_always_answered() {
        assert_eq!(
            neg("permessage-deflate; server_max_window_bits=15", &takeover()).as_deref(),
            Some("permessage-deflate; server_max_window_bits=15")
        );
    }

    #[test]
    fn quoted_values_are_accepted() {
        let p = negotiate(
            ["permessage-deflate; server_max_window_bits=\"10\""],
            &cfg(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 10);
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_is_taken() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        ] {
            assert_eq!(neg(bad, &cfg()), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(
                negotiate([two.as_str()], &takeover()).map(|p| p.server_max_window_bits),
                Some(12),
                "{two}"
            );
        }
    }

    #[test]
    fn other_extensions_are_skipped_across_headers() {
        let p = negotiate(
            [
                "x-webkit-deflate-frame",
                "foo; a=\"b,c\", permessage-deflate; client_no_context_takeover",
            ],
            &takeover(),
        )
        .unwrap();
        assert!(p.client_no_context_takeover);
        assert!(!p.server_no_context_takeover);
    }

    #[test]
    fn client_checks_the_response() {
        let ok = check_response(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            true,
        )
        .unwrap();
        assert!(ok.server_no_context_takeover && ok.client_no_context_takeover);
        assert_eq!(
            check_response(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
                true
            )
            .unwrap()
            .server_max_window_bits,
            10
        );
        // The server caps our window: offered, so accepted with a value, refused without.
        assert_eq!(
            check_response(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
                true
            )
            .unwrap()
            .client_max_window_bits,
            Some(10)
        );
        for bad in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; x=1",
            "x-other",
            "permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
        ] {
            assert!(check_response(bad, true).is_err(), "{bad}");
        }
        // What this server answers to the client's offers passes the client's check, with
        // its own window or a smaller one.
        let p = negotiate([CLIENT_OFFER], &cfg()).unwrap();
        assert_eq!(check_response(&p.response(), true).unwrap(), p);
        assert_eq!(p.client_max_window_bits, None);
        let small = DeflateConfig {
            window_bits: 10,
            ..cfg()
        };
        for (offer, shared) in [(CLIENT_OFFER, true), (TAKEOVER_OFFER, false)] {
            let p = negotiate([offer], &small).unwrap();
            assert_eq!(p.client_max_window_bits, Some(10), "{offer}");
            assert_eq!(check_response(&p.response(), shared).unwrap(), p);
        }
        // With the takeover offer, a plain answer means both keep their contexts.
        let p = check_response("permessage-deflate", false).unwrap();
        assert!(!p.server_no_context_takeover && !p.client_no_context_takeover);
    }

    #[test]
    fn window_bits_8_is_accepted_but_never_compressed() {
        let p = negotiate(["permessage-deflate; server_max_window_bits=8"], &cfg()).unwrap();
        assert_eq!(p.server_max_window_bits, 8);
        assert!(!Packed(p.pack()).can_compress());
        assert!(Packed(p.pack()).on());
    }

    #[test]
    fn packing_round_trips() {
        let p = Params {
            server_no_context_takeover: false,
            client_no_context_takeover: true,
            server_max_window_bits: 11,
            announce_server_window: true,
            client_max_window_bits: None,
        };
        let k = Packed(p.pack());
        assert!(k.on() && k.server_takeover() && !k.client_takeover());
        assert_eq!(k.server_window_bits(), 11);
        assert!(!Packed::OFF.on());
    }

    fn roundtrip(msgs: &[&[u8]], reset: bool) {
        let mut d = Deflater::new(15, 6);
        let mut i = Inflater::new();
        let mut out = Vec::new();
        for m in msgs {
            let mut z = Vec::new();
            d.compress(m, &mut z, reset);
            assert!(!z.ends_with(&TAIL));
            i.inflate(&z, &mut out, 1 << 20, reset).unwrap();
            assert_eq!(&out[..], *m);
        }
    }

    #[test]
    fn compress_inflate_round_trip() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let msgs: [&[u8]; 5] = [b"hello hello hello", b"", b"hello hello hello", &big, b"x"];
        roundtrip(&msgs, false);
        roundtrip(&msgs, true);
    }

    #[test]
    fn rfc_examples_inflate() {
        // RFC 7692 §7.2.3.1 and §7.2.3.2: "Hello" compressed, and the second "Hello" using the
        // shared window.
        let mut i = Inflater::new();
        let mut out = Vec::new();
        i.inflate(
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            &mut out,
            100,
            false,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        i.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], &mut out, 100, false)
            .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.3: a stored (uncompressed) block.
        i.inflate(
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            &mut out,
            100,
            true,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // An empty message.
        i.inflate(&[0x00], &mut out, 100, true).unwrap();
        assert_eq!(out, b"");
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 16 << 20];
        let mut z = Vec::new();
        Deflater::new(15, 9).compress(&zeros, &mut z, true);
        assert!(z.len() < 100 << 10, "{}", z.len());
        let mut i = Inflater::new();
        let mut out = Vec::new();
        let e = i.inflate(&z, &mut out, 1 << 20, true).unwrap_err();
        assert_eq!(e.code, close_code::TOO_BIG);
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
        // Exactly at the limit is fine, and the inflater is usable again.
        let mut z = Vec::new();
        Deflater::new(15, 9).compress(&zeros[..1 << 20], &mut z, true);
        i.inflate(&z, &mut out, 1 << 20, true).unwrap();
        assert_eq!(out.len(), 1 << 20);
    }

    #[test]
    fn garbage_is_1007() {
        let mut i = Inflater::new();
        let mut out = Vec::new();
        let e = i
            .inflate(&[0xff, 0xff, 0xff, 0xff, 0x12], &mut out, 1000, true)
            .unwrap_err();
        assert_eq!(e.code, close_code::INVALID_DATA);
        // Usable afterwards.
        i.inflate(
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            &mut out,
            100,
            true,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn small_windows_round_trip() {
        let text: Vec<u8> = (0..100_000u32)
            .map(|i| b"abcdefghij"[(i * 7 % 10) as usize])
            .collect();
        for bits in 9..=15 {
            let mut z = Vec::new();
            Deflater::new(bits, 6).compress(&text, &mut z, true);
            let mut out = Vec::new();
            Inflater::new()
                .inflate(&z, &mut out, 1 << 20, true)
                .unwrap();
            assert_eq!(out, text, "{bits}");
        }
    }
}
