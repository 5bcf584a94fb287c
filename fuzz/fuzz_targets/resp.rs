//! RESP replies from Redis: any bytes parse to a value, "need more", or an error, never a
//! panic; a value consumes at most the input; every strict prefix of a complete value is
//! "need more", never an error (so a reply split across reads parses the same).
#![no_main]

use fanout::pubsub::resp::parse;
use libfuzzer_sys::fuzz_target;

const MAX_BULK: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, n))) = parse(data, MAX_BULK) {
        assert!(n > 0 && n <= data.len());
        for end in 0..n {
            assert!(matches!(parse(&data[..end], MAX_BULK), Ok(None)));
        }
    }
});
