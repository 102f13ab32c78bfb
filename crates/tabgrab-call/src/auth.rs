//! Authenticated calls: who calls ([`Principal`]), proven by what the call presents (its
//! headers, and over mutual TLS the client's certificate: [`Presented`]) to an
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
//! - [`ClientCertificates`] names the principal from the client certificate of a mutual-TLS
//!   connection (below).
//! - [`Authenticator::or`] accepts whichever of two schemes proves a principal
//!   ([`FirstOf`]): a bearer token or a client certificate, say.
//! - A client sends its token with `bearer_token` on the HTTP, gRPC or NATS transport's
//!   builder, and its certificate with [`ClientTls::mutual_from_pem`](crate::ClientTls).
//!
//! Neither authentication nor authorization is retried by a client: the kinds are not
//! retryable, so a wrong token fails once, at once.
//!
//! # What an authenticator sees
//!
//! [`Authenticator::authenticate`] gets the call's headers; it is the one method a
//! header-based scheme writes. The transports call
//! [`Authenticator::authenticate_presented`], which gets a [`Presented`]: the headers and,
//! when the call came over a connection that [`serve_tls`](crate::serve_tls) served with
//! mutual TLS, the client's [`PeerCertificate`] (the leaf, already verified against the
//! server's client CA during the handshake). Its default calls `authenticate` with the
//! headers, so an authenticator that does not care about certificates implements only
//! `authenticate`; one that does overrides `authenticate_presented` too. A call has no peer
//! certificate over plain TCP, over TLS without client certificates
//! ([`ServerTls::from_pem`](crate::ServerTls::from_pem)) and over NATS.
//!
//! # Client certificates
//!
//! With [`ServerTls::mutual_from_pem`](crate::ServerTls::mutual_from_pem) the handshake
//! already refuses a client without a certificate of the client CA, so every call is from
//! *some* holder of such a certificate; [`ClientCertificates`] says which. Its one rule: the
//! principal is the certificate's subject common name (CN), verbatim (a certificate with no
//! CN, or with more than one, names nobody and is refused). Subject alternative names are
//! not read: a client CA that names its clients by SAN only needs an authenticator of its own
//! (parse [`PeerCertificate::der`]). [`ClientCertificates::allow`] narrows it to listed names,
//! each mapped to a principal. Served without mutual TLS, it refuses every call as
//! `Unauthenticated`: it never trusts a name that no handshake verified.
//!
//! ```
//! use tabgrab_call::auth::{Authenticator as _, BearerTokens, ClientCertificates};
//! use tabgrab_call::Handlers;
//!
//! // Services show certificates; a script may send a token instead.
//! let handlers = Handlers::new().authenticate(
//!     ClientCertificates::new()
//!         .allow("kitchen", "kitchen")
//!         .or(BearerTokens::new().token("s3cret", "ops-script")),
//! );
//! ```

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};

pub use crate::tls::PeerCertificate;

/// Who is calling, as an [`Authenticator`] established it: the one principal type of every
/// kind of communication ([`tabgrab_core::principal`]), so a handler can pass it on to the
/// events and requests it sends.
pub use tabgrab_core::Principal;

/// What a call presents to prove who sends it: its headers and, over mutual TLS, the
/// client's verified certificate. See [the module docs](self#what-an-authenticator-sees).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Presented<'a> {
    /// The call's headers (HTTP headers, gRPC metadata, NATS headers).
    pub headers: &'a HeaderMap,
    /// The client certificate its connection's TLS handshake verified; `None` without mutual
    /// TLS.
    pub peer_certificate: Option<&'a PeerCertificate>,
}

impl<'a> Presented<'a> {
    /// A call that presents `headers` and no certificate.
    pub fn new(headers: &'a HeaderMap) -> Presented<'a> {
        Presented {
            headers,
            peer_certificate: None,
        }
    }

    /// The same call, over a connection whose handshake verified `certificate`.
    pub fn with_peer_certificate(self, certificate: Option<&'a PeerCertificate>) -> Presented<'a> {
        Presented {
            peer_certificate: certificate,
            ..self
        }
    }
}

/// Establishes who sends a call from what it presents: its headers (HTTP headers, gRPC
/// metadata, NATS headers) and, over mutual TLS, the client's certificate.
pub trait Authenticator: Send + Sync + 'static {
    /// The principal the headers prove, or why they prove none (a message for the caller:
    /// never the credentials themselves).
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, String>;

    /// The principal what the call presents proves, or why it proves none. The transports
    /// call this one; by default it is [`Authenticator::authenticate`] of the headers.
    /// Override it to read [`Presented::peer_certificate`].
    fn authenticate_presented(&self, presented: &Presented<'_>) -> Result<Principal, String> {
        self.authenticate(presented.headers)
    }

    /// This authenticator, or else `other`: the principal of the first that proves one
    /// ([`FirstOf`]).
    fn or<B: Authenticator>(self, other: B) -> FirstOf<Self, B>
    where
        Self: Sized,
    {
        FirstOf::new(self, other)
    }
}

/// Two authenticators, the second tried when the first proves no principal: a call passes
/// with either's credentials (a bearer token or a client certificate, say), as the principal
/// of the first that accepts it. A call that neither accepts is refused with both reasons.
/// Made by [`Authenticator::or`].
#[derive(Clone, Debug)]
pub struct FirstOf<A, B> {
    first: A,
    second: B,
}

impl<A: Authenticator, B: Authenticator> FirstOf<A, B> {
    /// `first`, else `second`.
    pub fn new(first: A, second: B) -> FirstOf<A, B> {
        FirstOf { first, second }
    }
}

impl<A: Authenticator, B: Authenticator> Authenticator for FirstOf<A, B> {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, String> {
        self.authenticate_presented(&Presented::new(headers))
    }

    fn authenticate_presented(&self, presented: &Presented<'_>) -> Result<Principal, String> {
        match self.first.authenticate_presented(presented) {
            Ok(principal) => Ok(principal),
            Err(first) => self
                .second
                .authenticate_presented(presented)
                .map_err(|second| format!("{first}; or else {second}")),
        }
    }
}

/// The client certificate of a mutual-TLS connection, named by its subject's common name
/// (CN); see [the module docs](self#client-certificates).
#[derive(Clone, Debug, Default)]
pub struct ClientCertificates {
    /// The common names let in, with the principal each stands for; empty: every name, as
    /// itself.
    allowed: Vec<(String, Principal)>,
}

impl ClientCertificates {
    /// Any verified client certificate, as the principal named by its CN.
    pub fn new() -> ClientCertificates {
        ClientCertificates::default()
    }

    /// Lets in the certificates whose CN is `common_name` (exactly), as `principal`; once
    /// one name is allowed, a certificate with any other CN is refused.
    pub fn allow(
        mut self,
        common_name: impl Into<String>,
        principal: impl Into<String>,
    ) -> ClientCertificates {
        self.allowed
            .push((common_name.into(), Principal::new(principal)));
        self
    }

    /// The principal `certificate` names under these rules.
    fn principal(&self, certificate: &PeerCertificate) -> Result<Principal, String> {
        let Some(name) = certificate.common_name() else {
            return Err(
                "the client certificate's subject has no single common name (CN)".to_owned(),
            );
        };
        if self.allowed.is_empty() {
            return Ok(Principal::new(name));
        }
        self.allowed
            .iter()
            .find(|(allowed, _)| *allowed == name)
            .map(|(_, principal)| principal.clone())
            .ok_or_else(|| format!("the client certificate of {name:?} is not allowed here"))
    }
}

impl Authenticator for ClientCertificates {
    /// Headers alone never prove a certificate: always refused.
    fn authenticate(&self, _headers: &HeaderMap) -> Result<Principal, String> {
        Err(NO_CERTIFICATE.to_owned())
    }

    fn authenticate_presented(&self, presented: &Presented<'_>) -> Result<Principal, String> {
        match presented.peer_certificate {
            Some(certificate) => self.principal(certificate),
            None => Err(NO_CERTIFICATE.to_owned()),
        }
    }
}

/// Why [`ClientCertificates`] refuses a call without a certificate.
const NO_CERTIFICATE: &str = "no client certificate: this server names its callers by their \
                              mutual-TLS certificate, and this call's connection verified none \
                              (the server must require client certificates, \
                              ServerTls::mutual_from_pem, and the client show one, \
                              ClientTls::mutual_from_pem)";

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

    #[test]
    fn first_of_takes_the_first_principal_and_names_both_refusals() {
        let either = BearerTokens::new()
            .token("tok-a", "a")
            .or(BearerTokens::new().token("tok-b", "b"));
        assert_eq!(
            either
                .authenticate(&headers("Bearer tok-b"))
                .unwrap()
                .name(),
            "b"
        );
        assert_eq!(
            either
                .authenticate(&headers("Bearer tok-a"))
                .unwrap()
                .name(),
            "a"
        );
        let why = either.authenticate(&headers("Bearer tok-c")).unwrap_err();
        assert!(why.contains("; or else "), "{why}");
        assert!(!why.contains("tok-"), "{why}");
    }

    #[test]
    fn client_certificates_need_a_certificate_with_a_name() {
        let certs = ClientCertificates::new();
        let none = HeaderMap::new();
        let why = certs
            .authenticate_presented(&Presented::new(&none))
            .unwrap_err();
        assert!(why.contains("no client certificate"), "{why}");
        assert!(certs.authenticate(&none).is_err());
        let garbage = PeerCertificate::from_der(b"not DER".to_vec());
        assert_eq!(garbage.common_name(), None);
        let presented = Presented::new(&none).with_peer_certificate(Some(&garbage));
        let why = certs.authenticate_presented(&presented).unwrap_err();
        assert!(why.contains("common name"), "{why}");
    }
}
