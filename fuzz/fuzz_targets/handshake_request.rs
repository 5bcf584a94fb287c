//! The server side of the opening handshake: `parse_request`, the header views and lookups,
//! `websocket()`, and the answer either way (`write_accept_response`, which the client parser
//! must accept, or `write_error_response`, which must carry the status).
#![no_main]

use fanout::proto::handshake::{
    parse_request, parse_response, write_accept_response, write_error_response,
    ClientHandshakeError, HttpError, DEFAULT_MAX_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

/// The answer to a refusal must itself be an HTTP response with that status.
fn check_error_response(err: &HttpError) {
    let mut out = Vec::new();
    write_error_response(&mut out, err);
    let key = [b'A'; 24];
    assert_eq!(
        parse_response(&out, &key, &[], 1 << 16),
        Err(ClientHandshakeError::Status(err.status)),
        "error response does not parse back"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let max = if ctl & 1 != 0 {
        256
    } else {
        DEFAULT_MAX_HEADER_BYTES
    };
    let (req, n) = match parse_request(input, max) {
        Ok(None) => {
            assert!(input.len() < max, "incomplete past the size limit");
            return;
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 431), "status {}", e.status);
            check_error_response(&e);
            return;
        }
        Ok(Some(parsed)) => parsed,
    };
    assert!(n <= input.len() && n <= max);
    // A complete head was incomplete one byte earlier: a server reading it in pieces sees the
    // same thing as one reading it whole.
    assert_eq!(
        parse_request(&input[..n - 1], max),
        Ok(None),
        "a strict prefix of a complete head is not incomplete"
    );

    // Every lookup a handler may do.
    let _ = req.header("host");
    let _ = req.header("x-forwarded-for");
    let _ = req.header_values("upgrade").count();
    let _ = req.header_values("connection").last();
    if let Some(name) = input.get(..(ctl as usize >> 4).min(input.len())) {
        if let Ok(name) = std::str::from_utf8(name) {
            let _ = req.header(name);
            let _ = req.query_param(name);
        }
    }
    let _ = req.query_param("token");
    let _ = req.query_param("");
    let offered: Vec<&str> = req.offered_protocols().collect();
    assert!(offered.iter().all(|p| !p.is_empty()));
    let _ = req.is_upgrade_attempt();

    match req.websocket() {
        Ok(None) => {}
        Ok(Some(key)) => {
            assert!(req.is_upgrade_attempt());
            let key_bytes: [u8; 24] = key.0.as_bytes().try_into().expect("key of 24 bytes");
            let protocol = offered.first().copied();
            let mut out = Vec::new();
            write_accept_response(&mut out, &key, protocol, None);
            let (resp, m) = parse_response(&out, &key_bytes, &offered, 1 << 16)
                .expect("our 101 is accepted by our client")
                .expect("our 101 is complete");
            assert_eq!(m, out.len());
            assert_eq!(resp.protocol, protocol);
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 426), "status {}", e.status);
            check_error_response(&e);
        }
    }
});
