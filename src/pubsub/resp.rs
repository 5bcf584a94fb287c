//! RESP2, the Redis protocol, as far as the broker speaks it: commands written as arrays of
//! bulk strings, and replies parsed incrementally in the style of httparse (`Ok(None)` for
//! "need more bytes", `Ok(Some((value, consumed)))` borrowing from the input). Every length
//! is checked against a stated limit before it is trusted. No I/O here.

/// A reply, borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<&'a [u8]>),
    /// `None` is the null array.
    Array(Option<Vec<Value<'a>>>),
}

impl<'a> Value<'a> {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP: the first byte of a value, a number, or a line ending was wrong.
    Malformed(&'static str),
    /// A bulk string or array longer than the limit.
    TooLarge(u64),
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Malformed(w) => write!(f, "malformed reply from Redis: {w}"),
            RespError::TooLarge(n) => write!(f, "reply from Redis too large ({n} bytes)"),
        }
    }
}

/// Arrays nest at most this deep (pub/sub pushes are one level).
const MAX_DEPTH: usize = 4;
/// Elements in one array.
const MAX_ARRAY_LEN: u64 = 1 << 20;
/// Digits and sign of a length or integer line.
const MAX_LINE: usize = 24;

/// Parses one value from the start of `buf`. Bulk strings longer than `max_bulk` are refused.
pub fn parse(buf: &[u8], max_bulk: usize) -> Result<Option<(Value<'_>, usize)>, RespError> {
    parse_at(buf, 0, max_bulk, 0)
}

fn parse_at(
    buf: &[u8],
    at: usize,
    max_bulk: usize,
    depth: usize,
) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(line), next))),
        b'-' => Ok(Some((Value::Error(line), next))),
        b':' => Ok(Some((Value::Int(int(line)?), next))),
        b'$' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            if n as u64 > max_bulk as u64 {
                return Err(RespError::TooLarge(n as u64));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not ended by CRLF"));
            }
            Ok(Some((Value::Bulk(Some(&buf[next..end])), end + 2)))
        }
        b'*' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            if n as u64 > MAX_ARRAY_LEN {
                return Err(RespError::TooLarge(n as u64));
            }
            if depth >= MAX_DEPTH {
                return Err(RespError::Malformed("arrays nested too deep"));
            }
            let mut items = Vec::with_capacity((n as usize).min(16));
            let mut pos = next;
            for _ in 0..n {
                match parse_at(buf, pos, max_bulk, depth + 1)? {
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), pos)))
        }
        _ => Err(RespError::Malformed("unknown type byte")),
    }
}

/// Finds where the first complete value of a growing buffer ends, resuming where the last call
/// stopped. `parse` starts from the first byte each time, so a reply of E elements arriving in
/// R reads would cost about E x R element parses (a catch-up of 100,000 stream entries read in
/// 64 KiB pieces: hundreds of millions); with a `Scanner` in front it costs E scans, then one
/// parse of the complete value. It accepts exactly what `parse` accepts, with the same limits.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Where the next element's type byte is, from the start of the value.
    pos: usize,
    /// Elements still expected by each open array, outermost first.
    open: Vec<u64>,
}

impl Scanner {
    /// `Ok(Some(end))`: `buf[..end]` holds one complete value (and the scanner starts over for
    /// the next one, from `buf[end..]`). `Ok(None)`: call again with the same bytes and more.
    /// `buf` must start where the value starts and keep its bytes between calls.
    pub fn complete(&mut self, buf: &[u8], max_bulk: usize) -> Result<Option<usize>, RespError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let Some((line, next)) = line(buf, self.pos + 1)? else {
                return Ok(None);
            };
            let mut end = next;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    int(line)?;
                }
                b'$' => {
                    let n = int(line)?;
                    if n >= 0 {
                        if n as u64 > max_bulk as u64 {
                            return Err(RespError::TooLarge(n as u64));
                        }
                        end = next + n as usize + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(RespError::Malformed("bulk string not ended by CRLF"));
                        }
                    }
                }
                b'*' => {
                    let n = int(line)?;
                    if n > 0 {
                        if n as u64 > MAX_ARRAY_LEN {
                            return Err(RespError::TooLarge(n as u64));
                        }
                        if self.open.len() >= MAX_DEPTH {
                            return Err(RespError::Malformed("arrays nested too deep"));
                        }
                        self.open.push(n as u64);
                        self.pos = next;
                        continue;
                    }
                    if n == 0 && self.open.len() >= MAX_DEPTH {
                        return Err(RespError::Malformed("arrays nested too deep"));
                    }
                }
                _ => return Err(RespError::Malformed("unknown type byte")),
            }
            // One element done: it may finish the arrays around it.
            self.pos = end;
            loop {
                match self.open.last_mut() {
                    None => {
                        self.pos = 0;
                        return Ok(Some(end));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// The line starting at `at` (without its CRLF) and where the next one starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    // Simple strings and errors may be long (an error message); lengths may not.
    match rest.iter().position(|&b| b == b'\r') {
        Some(i) => {
            if rest.len() < i + 2 {
                return Ok(None);
            }
            if rest[i + 1] != b'\n' {
                return Err(RespError::Malformed("CR without LF"));
            }
            Ok(Some((&rest[..i], at + i + 2)))
        }
        None if rest.len() > 64 << 10 => Err(RespError::Malformed("line longer than 64 KiB")),
        None => Ok(None),
    }
}

fn int(line: &[u8]) -> Result<i64, RespError> {
    if line.is_empty() || line.len() > MAX_LINE {
        return Err(RespError::Malformed("bad number"));
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(RespError::Malformed("bad number"))
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        bulk(out, a);
    }
}

/// Appends an array header, for a command whose arguments are written one by one with `bulk`.
pub fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one bulk string.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Appends one bulk string made of two parts (e.g. a prefix and a name), without a copy
/// of them in between.
pub fn bulk2(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    header(out, b'$', a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn itoa(n: usize) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_whole_and_in_pieces() {
        let wire = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n*-1\r\n";
        let want = vec![
            Value::Simple(b"OK"),
            Value::Error(b"ERR no"),
            Value::Int(42),
            Value::Bulk(Some(b"hello")),
            Value::Bulk(None),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message")),
                Value::Bulk(Some(b"ch")),
                Value::Bulk(Some(b"")),
            ])),
            Value::Array(None),
        ];
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let (v, n) = parse(&wire[at..], 1024).unwrap().unwrap();
            got.push(v);
            at += n;
        }
        assert_eq!(got, want);
        // Every strict prefix of a value is incomplete, never an error.
        for end in 0..wire.len() {
            let mut at = 0;
            while let Some((_, n)) = parse(&wire[at..end], 1024).unwrap() {
                at += n;
            }
        }
    }

    #[test]
    fn limits_and_garbage() {
        assert_eq!(
            parse(b"$2000\r\n", 1024),
            Err(RespError::TooLarge(2000)),
            "a long bulk is refused before its bytes arrive"
        );
        assert!(parse(b"?x\r\n", 1024).is_err());
        assert!(parse(b"$abc\r\n", 1024).is_err());
        assert!(parse(b"$3\r\nabcXY", 1024).is_err());
        assert!(parse(b"+OK\rX", 1024).is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 1024).is_err());
        assert!(parse(&[b'$'; 70_000], 1024).is_err());
    }

    #[test]
    fn any_bytes_parse_or_fail_without_panicking() {
        // A cheap deterministic sweep (the fuzz target `resp` goes further): every prefix of
        // replies with garbage spliced in.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let parts: [&[u8]; 8] = [b"*", b"$", b":", b"+", b"-", b"\r\n", b"-1", b"12"];
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.extend_from_slice(parts[(seed % 8) as usize]);
                if seed % 5 == 0 {
                    buf.push((seed >> 8) as u8);
                }
            }
            if let Ok(Some((_, n))) = parse(&buf, 64) {
                assert!(n <= buf.len());
            }
            scanner_agrees(&buf, 64);
        }
    }

    /// Feeds `buf` to a `Scanner` one byte at a time and checks it finds what `parse` finds
    /// in the whole buffer: the same end, "need more" throughout, or an error.
    fn scanner_agrees(buf: &[u8], max_bulk: usize) {
        let mut s = Scanner::default();
        let mut found = Ok(None);
        for end in 0..=buf.len() {
            found = s.complete(&buf[..end], max_bulk);
            match found {
                Ok(None) => {}
                Ok(Some(n)) => {
                    assert_eq!(n, end, "complete as soon as the last byte arrives: {buf:?}");
                    break;
                }
                Err(_) => break,
            }
        }
        match parse(buf, max_bulk) {
            Ok(Some((_, n))) => assert_eq!(found, Ok(Some(n)), "{buf:?}"),
            Ok(None) => assert_eq!(found, Ok(None), "{buf:?}"),
            Err(_) => assert!(found.is_err(), "{buf:?}: {found:?}"),
        }
    }

    #[test]
    fn the_scanner_finds_what_parse_finds() {
        let wire = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n*-1\r\n*0\r\n*2\r\n*1\r\n:1\r\n*0\r\n";
        let mut at = 0;
        while at < wire.len() {
            scanner_agrees(&wire[at..], 1024);
            at += parse(&wire[at..], 1024).unwrap().unwrap().1;
        }
        for bad in [
            &b"$2000\r\n"[..],
            b"?x\r\n",
            b"$abc\r\n",
            b"$3\r\nabcXY",
            b"+OK\rX",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*0\r\n",
            b"*2\r\n:1\r\n:x\r\n",
        ] {
            scanner_agrees(bad, 1024);
        }
    }

    #[test]
    fn a_large_reply_in_many_reads_is_scanned_where_it_stopped() {
        // The shape of a catch-up: {epoch, head, XRANGE of 100,000 entries}.
        let mut wire = Vec::new();
        header(&mut wire, b'*', 3);
        bulk(&mut wire, b"0123456789ab");
        wire.extend_from_slice(b":100000\r\n");
        header(&mut wire, b'*', 100_000);
        for i in 0..100_000u32 {
            header(&mut wire, b'*', 2);
            bulk(&mut wire, format!("{i}-0").as_bytes());
            header(&mut wire, b'*', 2);
            bulk(&mut wire, b"f");
            bulk(&mut wire, &[b'x'; 100]);
        }
        let mut s = Scanner::default();
        let mut reads = 0;
        let mut end = 0;
        let found = loop {
            end = (end + (64 << 10)).min(wire.len());
            reads += 1;
            let before = s.pos;
            if let Some(n) = s.complete(&wire[..end], 1 << 20).unwrap() {
                break n;
            }
            assert!(end < wire.len(), "the whole reply is complete");
            // It resumed where it stopped and stopped at the last unfinished entry (an entry
            // is about 140 bytes): the next read does not scan this one's bytes again.
            assert!(s.pos >= before && end - s.pos < 256, "{} of {end}", s.pos);
        };
        assert_eq!(found, wire.len());
        assert!(reads > 100, "{reads} reads");
        let Value::Array(Some(v)) = parse(&wire, 1 << 20).unwrap().unwrap().0 else {
            panic!("an array");
        };
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn commands() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"ch", b""]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$0\r\n\r\n");
        out.clear();
        header(&mut out, b'*', 2);
        bulk(&mut out, b"SUBSCRIBE");
        bulk2(&mut out, b"fanout:", b"news");
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$11\r\nfanout:news\r\n");
    }
}
