//! RESP replies from Redis: any bytes parse to a value, "need more", or an error, never a
//! panic; a value consumes at most the input; every strict prefix of a complete value is
//! "need more", never an error (so a reply split across reads parses the same); and the
//! `Scanner` fed the bytes one at a time finds the same end, or the same failure.
#![no_main]

use fanout::pubsub::resp::{parse, Scanner};
use libfuzzer_sys::fuzz_target;

const MAX_BULK: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data, MAX_BULK);
    if let Ok(Some((_, n))) = whole {
        assert!(n > 0 && n <= data.len());
        for end in 0..n {
            assert!(matches!(parse(&data[..end], MAX_BULK), Ok(None)));
        }
    }
    let mut s = Scanner::default();
    let mut found = Ok(None);
    for end in 0..=data.len() {
        found = s.complete(&data[..end], MAX_BULK);
        if !matches!(found, Ok(None)) {
            break;
        }
    }
    match whole {
        Ok(Some((_, n))) => assert_eq!(found, Ok(Some(n))),
        Ok(None) => assert_eq!(found, Ok(None)),
        Err(_) => assert!(found.is_err()),
    }
});
