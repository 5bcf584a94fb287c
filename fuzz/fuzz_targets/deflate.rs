//! permessage-deflate: any `Sec-WebSocket-Extensions` value negotiates without panicking, and
//! what the server answers always passes the client's check of an answer; any bytes inflate to
//! an error or to at most the limit (a bomb stops at the limit); and compressing then
//! inflating gives the input back, in every window size.
#![no_main]

use fanout::proto::deflate::{check_response, negotiate, DeflateConfig, Deflater, Inflater};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    if let Ok(header) = std::str::from_utf8(rest) {
        let cfg = DeflateConfig {
            enabled: true,
            window_bits: 9 + ctl % 7,
            context_takeover: ctl & 0x80 != 0,
            ..DeflateConfig::default()
        };
        if let Some(p) = negotiate([header], &cfg) {
            let resp = p.response();
            assert!(resp.starts_with("permessage-deflate"));
            // Our client offers client_max_window_bits: it reads back what was agreed, the
            // window the server gave it included.
            assert_eq!(check_response(&resp, false), Ok(p));
            if p.server_no_context_takeover {
                assert!(check_response(&resp, true).is_ok());
            }
        }
    }
    let mut out = Vec::new();
    let mut inf = Inflater::new();
    if inf.inflate(rest, &mut out, LIMIT, ctl & 1 != 0).is_ok() {
        assert!(out.len() <= LIMIT);
    }
    let mut z = Vec::new();
    Deflater::new(9 + ctl % 7, ctl % 10).compress(rest, &mut z, true);
    let mut back = Vec::new();
    Inflater::new()
        .inflate(&z, &mut back, rest.len().max(1), true)
        .expect("own output inflates");
    assert_eq!(back, rest);
});
