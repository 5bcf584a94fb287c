//! The upgrade gate's readers of peer bytes: where the token is taken from (`find_token`:
//! Authorization, `?token=`, cookie), JWT verification of whatever is found there (and of the
//! raw input as a token), and the Origin allow-list.
#![no_main]

use std::sync::OnceLock;

use fanout::proto::handshake::{parse_request, DEFAULT_MAX_HEADER_BYTES};
use fanout::server::auth::{find_token, JwtConfig, JwtVerifier};
use fanout::server::origin::OriginPolicy;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        JwtVerifier::new(&JwtConfig {
            secret: b"fuzz secret that is 32 bytes lon".to_vec(),
            cookie: Some("jwt".into()),
            close_on_expiry: false,
        })
    })
}

fn origins() -> &'static OriginPolicy {
    static O: OnceLock<OriginPolicy> = OnceLock::new();
    O.get_or_init(|| {
        OriginPolicy::parse(&["https://app.example.com", "https://*.example.org:8443"])
            .expect("valid list")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Arbitrary bytes are never a token signed with the secret.
        assert!(verifier().verify(text).is_err());
        let _ = OriginPolicy::parse(&[text]);
    }
    let Ok(Some((req, _))) = parse_request(data, DEFAULT_MAX_HEADER_BYTES) else {
        return;
    };
    if let Some(token) = find_token(&req, Some("jwt")) {
        assert!(!token.is_empty());
        let start = token.as_ptr() as usize - data.as_ptr() as usize;
        assert!(
            start + token.len() <= data.len(),
            "the token borrows the request"
        );
        assert!(verifier().verify(token).is_err());
    }
    let allowed = origins().allows(req.origin);
    if req.origin.is_none() {
        assert!(allowed, "no Origin is allowed");
    }
});
