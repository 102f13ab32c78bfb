//! Authenticated calls: who calls ([`Principal`]), proven by the request's headers to an
//! [`Authenticator`] before any handler runs, and whether they may call a message type
//! ([`Handlers::authorize`](crate::Handlers::authorize)).
//!
//! - A server whose handlers have an authenticator
//!   ([`Handlers::authenticate`](crate::Handlers::authenticate)) refuses a call without valid
//!   credentials with `Unauthenticated`: HTTP 401 (with `www-authenticate: Bearer`), gRPC
//!   `UNAUTHENTICATED`, on NATS an `unauthenticated` answer; over HTTP before the body is
//!   read. Every transport goes through the same check: the HTTP headers, the gRPC metadata
//!   and the NATS headers are all the same header map here.
//! - An authorization rule refuses a principal a message type with `PermissionDenied`: HTTP
//!   403, gRPC `PERMISSION_DENIED`.
//! - The handler finds the principal in [`CallContext::principal`](crate::CallContext). The
//!   server also writes it into the envelope the handler receives (the `principal`
//!   attribute, replacing whatever the caller sent), so the events and requests the handler
//!   makes [`caused_by`](tabgrab_core::Envelope::caused_by) it carry it on over the bus,
//!   where a consumer or responder can require it (see [`tabgrab_core::principal`]).
//! - [`BearerTokens`] is the authenticator of a fixed set of tokens, each naming a
//!   principal; a token is kept only as its SHA-256 digest and compared in constant time, and
//!   never appears in `Debug` output or errors. Any other scheme (a JWT verifier, an API
//!   gateway's header) implements [`Authenticator`].
//! - A client sends its token with `bearer_token` on the HTTP, gRPC or NATS transport's
//!   builder.
//!
//! Neither authentication nor authorization is retried by a client: the kinds are not
//! retryable, so a wrong token fails once, at once.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};

/// Who is calling, as an [`Authenticator`] established it: the one principal type of every
/// kind of communication ([`tabgrab_core::principal`]), so a handler can pass it on to the
/// events and requests it sends.
pub use tabgrab_core::Principal;

/// Establishes who sends a call from its headers (HTTP headers, gRPC metadata, NATS headers).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal the headers prove, or why they prove none (a message for the caller:
    /// never the credentials themselves).
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, String>;
}

/// The `authorization: Bearer <token>` scheme over a fixed set of tokens.
#[derive(Clone, Default)]
pub struct BearerTokens {
    /// Each token's SHA-256 digest, with the principal it names.
    tokens: Vec<([u8; 32], Principal)>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let principals: Vec<&str> = self.tokens.iter().map(|(_, p)| p.name()).collect();
        f.debug_struct("BearerTokens")
            .field("principals", &principals)
            .finish_non_exhaustive()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl BearerTokens {
    /// No token yet: every call is refused until one is added.
    pub fn new() -> BearerTokens {
        BearerTokens::default()
    }

    /// Accepts `token`, as the principal `principal`. An empty token is ignored.
    pub fn token(mut self, token: impl AsRef<str>, principal: impl Into<String>) -> BearerTokens {
        let token = token.as_ref().trim();
        if !token.is_empty() {
            self.tokens
                .push((digest(token.as_bytes()), Principal::new(principal)));
        }
        self
    }
}

impl Authenticator for BearerTokens {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, String> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err("no credentials: send `authorization: Bearer <token>`".to_owned());
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| "the authorization header is not `Bearer <token>`".to_owned())?;
        let given = digest(token.as_bytes());
        // Every entry is compared, whatever matches, in time independent of the bytes.
        let mut found = None;
        for (known, principal) in &self.tokens {
            let same = known.iter().zip(&given).fold(0_u8, |d, (a, b)| d | (a ^ b)) == 0;
            if same && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found.ok_or_else(|| "the bearer token is not valid here".to_owned())
    }
}

/// The header value a client sends for `token`; `None` when the token cannot be a header
/// value (control characters).
pub(crate) fn bearer(token: &str) -> Option<http::HeaderValue> {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(AUTHORIZATION, value.parse().unwrap());
        map
    }

    #[test]
    fn a_token_names_its_principal_and_nothing_else_passes() {
        let tokens = BearerTokens::new()
            .token("s3cret-front-desk", "front-desk")
            .token("s3cret-ops", "ops");
        assert_eq!(
            tokens.authenticate(&headers("Bearer s3cret-ops")).unwrap(),
            Principal::new("ops")
        );
        for bad in ["Bearer nope", "Basic s3cret-ops", "s3cret-ops", "Bearer "] {
            let why = tokens.authenticate(&headers(bad)).unwrap_err();
            assert!(!why.contains("s3cret"), "{why}");
        }
        assert!(tokens.authenticate(&HeaderMap::new()).is_err());
        assert!(!format!("{tokens:?}").contains("s3cret"));
        assert!(
            BearerTokens::new()
                .authenticate(&headers("Bearer x"))
                .is_err()
        );
    }
}
