//! Authentication of upgrade requests: finds a JWT (`Authorization: Bearer`, `?token=`, or a
//! named cookie), verifies it (HS256 only, `exp` required) and hands the app the verified
//! claims as a `Token`. Owns the token format; must not know what claims mean to an app (topics
//! are the push app's business).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::stats::Counter;
use crate::proto::handshake::Request;

/// Secrets shorter than this are accepted with a warning (HS256 wants 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// The `--jwt-*` settings.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// The HS256 secret shared with the token issuer.
    pub secret: Vec<u8>,
    /// Also look for the token in this cookie.
    pub cookie: Option<String>,
    /// Close (1008) a connection when its token's `exp` passes.
    pub close_on_expiry: bool,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("cookie", &self.cookie)
            .field("close_on_expiry", &self.close_on_expiry)
            .finish()
    }
}

/// A verified token: its standard claims, and every claim as JSON for the app.
#[derive(Debug)]
pub struct Token {
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    pub sub: Option<Box<str>>,
    /// The whole claims object, as the issuer sent it.
    claims: Box<RawValue>,
}

impl Token {
    /// The claims object as JSON text (an app deserializes the claims it knows from it).
    pub fn claims_json(&self) -> &str {
        self.claims.get()
    }

    /// Seconds until `exp` (0 when it has passed).
    pub fn remaining_secs(&self, now_unix: u64) -> u64 {
        self.exp.saturating_sub(now_unix)
    }
}

/// Why a token was refused (each answers 401 and has its own counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// Not HS256 (`none`, HS512, RS256, ...).
    BadAlgorithm,
}

impl AuthFailure {
    /// The body of the 401.
    pub const fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>"
            }
            AuthFailure::Malformed => {
                "malformed token (not a JWT, bad base64/JSON, or no numeric exp claim)"
            }
            AuthFailure::BadSignature => "bad token signature",
            AuthFailure::Expired => "token expired",
            AuthFailure::NotYetValid => "token not valid yet (nbf)",
            AuthFailure::BadAlgorithm => "token algorithm must be HS256",
        }
    }

    pub const fn counter(self) -> Counter {
        match self {
            AuthFailure::Missing => Counter::AuthMissing,
            AuthFailure::Malformed => Counter::AuthMalformed,
            AuthFailure::BadSignature => Counter::AuthBadSignature,
            AuthFailure::Expired => Counter::AuthExpired,
            AuthFailure::NotYetValid => Counter::AuthNotYetValid,
            AuthFailure::BadAlgorithm => Counter::AuthBadAlgorithm,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub const fn challenge(self) -> &'static str {
        match self {
            AuthFailure::Missing => "Bearer",
            _ => "Bearer error=\"invalid_token\"",
        }
    }
}

/// Verifies tokens against one secret. Built once, shared by every shard.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    cookie: Option<String>,
    close_on_expiry: bool,
    /// The 401 text for a missing token, naming the cookie when there is one.
    missing: String,
}

/// The standard claims the server reads itself.
#[derive(Deserialize)]
struct Standard {
    exp: u64,
    #[serde(default)]
    sub: Option<Box<str>>,
}

impl JwtVerifier {
    pub fn new(cfg: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // `nbf` is optional; when present, a token is refused before it.
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: DecodingKey::from_secret(&cfg.secret),
            validation,
            cookie: cfg.cookie.clone(),
            close_on_expiry: cfg.close_on_expiry,
            missing: match &cfg.cookie {
                Some(name) => format!(
                    "missing token: send Authorization: Bearer <jwt>, ?token=<jwt> or the {name} cookie"
                ),
                None => AuthFailure::Missing.reason().into(),
            },
        }
    }

    /// The body of the 401 for `failure` (a missing token's names the cookie, if any).
    pub fn reason(&self, failure: AuthFailure) -> &str {
        match failure {
            AuthFailure::Missing => &self.missing,
            other => other.reason(),
        }
    }

    pub fn close_on_expiry(&self) -> bool {
        self.close_on_expiry
    }

    /// Finds and verifies the request's token.
    pub fn check(&self, req: &Request<'_>) -> Result<Token, AuthFailure> {
        let token = find_token(req, self.cookie.as_deref()).ok_or(AuthFailure::Missing)?;
        self.verify(token)
    }

    /// Verifies one token (signature, algorithm, `exp`).
    pub fn verify(&self, token: &str) -> Result<Token, AuthFailure> {
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, &self.key, &self.validation)
            .map_err(|e| classify(e.kind(), token))?;
        let std: Standard =
            serde_json::from_str(data.claims.get()).map_err(|_| AuthFailure::Malformed)?;
        Ok(Token {
            exp: std.exp,
            sub: std.sub,
            claims: data.claims,
        })
    }
}

fn classify(kind: &ErrorKind, token: &str) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthFailure::BadAlgorithm,
        // `alg: none` (or any name the library does not know) fails as a header that does not
        // parse: tell it apart from a token that is garbage.
        _ if header_alg(token).is_some_and(|a| a != "HS256") => AuthFailure::BadAlgorithm,
        _ => AuthFailure::Malformed,
    }
}

/// The `alg` of a token's header, if the header decodes.
fn header_alg(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let b64 = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Header>(&json).ok().map(|h| h.alg)
}

/// The token of a request: `Authorization: Bearer`, then `?token=`, then the cookie `cookie`.
pub fn find_token<'a>(req: &Request<'a>, cookie: Option<&str>) -> Option<&'a str> {
    let bearer = req
        .authorization
        .and_then(|a| a.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    if bearer.is_some() {
        return bearer;
    }
    if let Some(t) = req.query_param("token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let name = cookie?;
    req.header_values("cookie")
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::parse_request;
    use crate::rt::unix_now;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(alg: Algorithm, secret: &[u8], claims: &str) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            secret: SECRET.to_vec(),
            cookie: Some("jwt".into()),
            close_on_expiry: false,
        })
    }

    #[test]
    fn failures_are_classified() {
        let v = verifier();
        let later = unix_now() + 3600;
        let good = token(
            Algorithm::HS256,
            SECRET,
            &format!(r#"{{"exp":{later},"sub":"ann","x":[1]}}"#),
        );
        let t = v.verify(&good).unwrap();
        assert_eq!(t.sub.as_deref(), Some("ann"));
        assert_eq!(t.exp, later);
        assert!(t.claims_json().contains(r#""x":[1]"#));
        let other = token(
            Algorithm::HS256,
            b"another secret, just as long......",
            &format!(r#"{{"exp":{later}}}"#),
        );
        assert_eq!(v.verify(&other).unwrap_err(), AuthFailure::BadSignature);
        let old = token(Algorithm::HS256, SECRET, r#"{"exp":1000}"#);
        assert_eq!(v.verify(&old).unwrap_err(), AuthFailure::Expired);
        let no_exp = token(Algorithm::HS256, SECRET, r#"{"sub":"x"}"#);
        assert_eq!(v.verify(&no_exp).unwrap_err(), AuthFailure::Malformed);
        let hs512 = token(Algorithm::HS512, SECRET, &format!(r#"{{"exp":{later}}}"#));
        assert_eq!(v.verify(&hs512).unwrap_err(), AuthFailure::BadAlgorithm);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{later}}}"#))
        );
        assert_eq!(v.verify(&none).unwrap_err(), AuthFailure::BadAlgorithm);
        for junk in ["", "abc", "a.b.c", "e30.e30.", "....."] {
            assert_eq!(
                v.verify(junk).unwrap_err(),
                AuthFailure::Malformed,
                "{junk}"
            );
        }
    }

    #[test]
    fn token_places() {
        let find = |head: &str| {
            let raw = format!("GET {head}\r\n\r\n");
            let (req, _) = parse_request(raw.as_bytes(), 8192).unwrap().unwrap();
            find_token(&req, Some("jwt")).map(str::to_string)
        };
        assert_eq!(
            find("/ HTTP/1.1\r\nAuthorization: Bearer abc"),
            Some("abc".into())
        );
        assert_eq!(
            find("/ HTTP/1.1\r\nAuthorization: bearer  abc "),
            Some("abc".into())
        );
        assert_eq!(find("/ HTTP/1.1\r\nAuthorization: Basic abc"), None);
        assert_eq!(find("/?a=1&token=t.u.v HTTP/1.1"), Some("t.u.v".into()));
        assert_eq!(
            find("/ HTTP/1.1\r\nCookie: a=1; jwt=c.d.e; b=2"),
            Some("c.d.e".into())
        );
        assert_eq!(find("/ HTTP/1.1\r\nCookie: jwtx=1"), None);
        assert_eq!(find("/ HTTP/1.1"), None);
    }
}
