//! The client side of the opening handshake: `parse_response` on the server's answer, with a
//! fixed key (so its accept value can be found through the seed corpus and dictionary).
#![no_main]

use fanout::proto::handshake::{client_key, parse_response, ClientHandshakeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    // The key of the seed corpus: 16 zero bytes ("AAAAAAAAAAAAAAAAAAAAAA==").
    let key = client_key([0; 16]);
    let offered: &[&str] = match ctl & 3 {
        0 => &[],
        1 => &["chat"],
        _ => &["chat", "superchat"],
    };
    let max = if ctl & 4 != 0 { 128 } else { 4096 };
    match parse_response(input, &key, offered, max) {
        Ok(None) => assert!(input.len() < max, "incomplete past the size limit"),
        Ok(Some((resp, n))) => {
            assert!(n <= input.len());
            if let Some(p) = resp.protocol {
                assert!(offered.contains(&p), "unoffered protocol accepted");
            }
            assert!(resp.extensions.is_none_or(str::is_empty));
            // One byte earlier the head was incomplete (or, past the limit, too large).
            match parse_response(&input[..n - 1], &key, offered, max) {
                Ok(None) => {}
                Err(ClientHandshakeError::TooLarge) => assert!(n > max),
                other => panic!("strict prefix gave {other:?}"),
            }
        }
        Err(ClientHandshakeError::Status(s)) => assert_ne!(s, 101),
        Err(_) => {}
    }
});
