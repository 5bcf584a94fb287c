//! Incremental UTF-8 validation for text messages that arrive in pieces: fails on the first
//! bad byte (not at the end of the message), uses `simdutf8` for the bulk and keeps at most
//! three bytes of an unfinished code point between pieces. Owns no buffer.

/// Validator state between pieces of one text message: the bytes of a code point cut by a
/// piece boundary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// The input is not UTF-8 (or, from `finish`, ends inside a code point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Length of the sequence a leading byte starts (0 for a byte that cannot start one).
#[inline]
fn sequence_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Validates the next piece. Errors as soon as a byte makes the text invalid, including a
    /// piece that ends in a prefix no continuation could complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = sequence_len(self.pending[0]);
            let take = (need - have).min(bytes.len());
            self.pending[have..have + take].copy_from_slice(&bytes[..take]);
            let now = have + take;
            bytes = &bytes[take..];
            match simdutf8::compat::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() && now < need => {
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        if simdutf8::basic::from_utf8(bytes).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Checks that the message did not end inside a code point.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        // Feed one byte at a time, return per-byte results until the first error.
        let mut v = Utf8Validator::new();
        let mut out = Vec::new();
        for b in bytes {
            let r = v.feed(std::slice::from_ref(b));
            out.push(r);
            if r.is_err() {
                return out;
            }
        }
        out.push(v.finish());
        out
    }

    #[test]
    fn valid_text_in_any_pieces() {
        let text = "κόσμε ascii 𝄞 日本語 \u{10FFFF}";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut v = Utf8Validator::new();
            v.feed(&bytes[..cut]).unwrap();
            v.feed(&bytes[cut..]).unwrap();
            v.finish().unwrap();
        }
        assert!(split_all(bytes).iter().all(|r| r.is_ok()));
    }

    #[test]
    fn fails_on_the_first_bad_byte() {
        // "κόσμε" then 0xED 0xA0 0x80 (a surrogate): fails at 0xA0, not later.
        let mut bytes = "κόσμε".as_bytes().to_vec();
        let good = bytes.len();
        bytes.extend_from_slice(&[0xed, 0xa0, 0x80, b'e', b'd', b'i', b't', b'e', b'd']);
        let results = split_all(&bytes);
        assert_eq!(results.len(), good + 2);
        assert_eq!(results.last(), Some(&Err(InvalidUtf8)));
    }

    #[test]
    fn rejects_invalid_and_truncated() {
        for bad in [
            &[0xff][..],
            &[0xc0, 0x80],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0x80],
            &[0xe0, 0x80, 0x80],
        ] {
            let mut v = Utf8Validator::new();
            assert!(v.feed(bad).is_err() || v.finish().is_err(), "{bad:?}");
        }
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
