//! TLS for calls over HTTP and gRPC: [`ServerTls`] for [`serve_tls`](crate::serve_tls),
//! [`ClientTls`] for the HTTP and gRPC transports, mutual TLS included.
//!
//! One way to configure it, from PEM (bytes or files): a server's certificate chain and key,
//! and, to require client certificates, the CA that signs them; a client's trusted CA and,
//! for mutual TLS, its own certificate and key. rustls with ring does the work, the one
//! crypto provider of the whole build (the NATS, RabbitMQ and PostgreSQL clients use it
//! too). ALPN chooses HTTP/2 or HTTP/1.1 (gRPC: HTTP/2).
//!
//! Errors are typed and say what is wrong: a file that cannot be read, PEM without a
//! certificate or key (`Malformed`); a peer that fails the handshake (untrusted, expired or
//! not yet valid, no client certificate) fails the call with `Protocol` and rustls' reason,
//! once: it is not retried, since the next handshake would fail the same way. That holds for
//! a server that refuses the client's certificate too, although with TLS 1.3 it says so only
//! after the client's handshake is done: the client's sockets record the alert, and the call
//! that finds its connection closed reports it. Only a server that refuses a client without
//! a certificate by closing the connection, with no alert read, leaves the client with a
//! closed connection (`Unavailable`, whose message says to look at mutual TLS). Keys never
//! appear in `Debug` output or errors.
//!
//! With mutual TLS, the server hands the client's verified certificate
//! ([`PeerCertificate`]) to the authenticator: see [`crate::auth`].

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tabgrab_core::{Error, ErrorKind};

/// The ALPN protocols a server offers, HTTP/2 first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Malformed, format!("TLS: {what}: {e}"))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("TLS: cannot read the {what} {}: {e}", path.display()),
        )
    })
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(what, e))?;
    if certs.is_empty() {
        return Err(malformed(what, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    // The key's bytes never go into the error: only what kind of problem it has.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it",
            _ => "not a readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
        };
        malformed(what, why)
    })
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|e| malformed(what, e))?;
    }
    Ok(roots)
}

/// A server's TLS: its certificate and key, and optionally the CA its clients' certificates
/// must chain to (mutual TLS).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_certificates_required", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with the certificate chain `cert_pem` (leaf first) and its private key `key_pem`.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, Error> {
        ServerTls::build(cert_pem, key_pem, None)
    }

    /// [`ServerTls::from_pem`] from files.
    pub fn from_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<ServerTls, Error> {
        let cert = read(cert.as_ref(), "server certificate")?;
        let key = read(key.as_ref(), "server key")?;
        ServerTls::from_pem(&cert, &key)
    }

    /// Mutual TLS with the certificate `cert_pem`, key `key_pem`, and clients that must show
    /// a certificate signed by a CA of `client_ca_pem`: a client without one, or with
    /// another, fails the handshake before any request is read.
    pub fn mutual_from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: &[u8],
    ) -> Result<ServerTls, Error> {
        ServerTls::build(cert_pem, key_pem, Some(client_ca_pem))
    }

    /// [`ServerTls::mutual_from_pem`] from files.
    pub fn mutual_from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: impl AsRef<Path>,
    ) -> Result<ServerTls, Error> {
        let cert = read(cert.as_ref(), "server certificate")?;
        let key = read(key.as_ref(), "server key")?;
        let ca = read(client_ca.as_ref(), "client CA")?;
        ServerTls::mutual_from_pem(&cert, &key, &ca)
    }

    fn build(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> Result<ServerTls, Error> {
        let chain = certificates(cert_pem, "server certificate")?;
        let key = key(key_pem, "server key")?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| malformed("protocol versions", e))?;
        let builder = match client_ca_pem {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca, "client CA")?),
                    provider(),
                )
                .build()
                .map_err(|e| malformed("client CA", e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| malformed("server certificate and key", e))?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            config: Arc::new(config),
            mutual: client_ca_pem.is_some(),
        })
    }

    /// The acceptor of the server's connections.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// A client's TLS: the CA it trusts, and optionally its own certificate (mutual TLS).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    identity: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// TLS trusting the CA certificates of `ca_pem` only.
    pub fn trusting_pem(ca_pem: &[u8]) -> Result<ClientTls, Error> {
        ClientTls::build(ca_pem, None)
    }

    /// [`ClientTls::trusting_pem`] from a file.
    pub fn trusting_file(ca: impl AsRef<Path>) -> Result<ClientTls, Error> {
        ClientTls::trusting_pem(&read(ca.as_ref(), "CA certificate")?)
    }

    /// Mutual TLS: trusting `ca_pem`, and showing the certificate `cert_pem` with its key
    /// `key_pem` to the server.
    pub fn mutual_from_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<ClientTls, Error> {
        ClientTls::build(ca_pem, Some((cert_pem, key_pem)))
    }

    /// [`ClientTls::mutual_from_pem`] from files.
    pub fn mutual_from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ClientTls, Error> {
        let ca = read(ca.as_ref(), "CA certificate")?;
        let cert = read(cert.as_ref(), "client certificate")?;
        let key = read(key.as_ref(), "client key")?;
        ClientTls::mutual_from_pem(&ca, &cert, &key)
    }

    fn build(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<ClientTls, Error> {
        let roots = roots(ca_pem, "CA certificate")?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| malformed("protocol versions", e))?
            .with_root_certificates(roots);
        // No ALPN here: the connector offers what its transport speaks.
        let config = match identity {
            Some((cert, key_pem)) => builder
                .with_client_auth_cert(
                    certificates(cert, "client certificate")?,
                    key(key_pem, "client key")?,
                )
                .map_err(|e| malformed("client certificate and key", e))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            identity: identity.is_some(),
        })
    }

    /// Whether this client shows a certificate (mutual TLS).
    pub(crate) fn has_identity(&self) -> bool {
        self.identity
    }

    /// The rustls configuration (the connector sets the ALPN protocols it speaks).
    pub(crate) fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }
}

/// The certificate a client showed in a mutual-TLS handshake (the leaf, not its chain), after
/// the server verified it against its client CA ([`ServerTls::mutual_from_pem`]).
///
/// [`serve_tls`](crate::serve_tls) puts it in the extensions of every request of the
/// connection (`http::Request::extensions`, and the same in tonic's `Request::extensions`), and
/// the transports hand it to the [`Authenticator`](crate::auth::Authenticator) in
/// [`Presented::peer_certificate`](crate::auth::Presented). A connection without a verified
/// certificate (plain TCP, TLS without client certificates) has none. A client cannot put one
/// there: extensions are the server's, never read from the wire.
///
/// Cloning it is cheap (the DER bytes are shared). `Debug` shows the subject's common name
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    der: Arc<CertificateDer<'static>>,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("common_name", &self.common_name())
            .finish_non_exhaustive()
    }
}

impl PeerCertificate {
    /// A certificate from its DER bytes, unverified: what the server puts in a request's
    /// extensions passed the handshake's verification, one made here is whatever the caller
    /// says (for a custom transport, or a test of an authenticator).
    pub fn from_der(der: impl Into<Vec<u8>>) -> PeerCertificate {
        PeerCertificate {
            der: Arc::new(CertificateDer::from(der.into())),
        }
    }

    /// The first certificate of a verified chain (the peer's own).
    pub(crate) fn from_chain(chain: &[CertificateDer<'_>]) -> Option<PeerCertificate> {
        chain.first().map(|leaf| PeerCertificate {
            der: Arc::new(leaf.clone().into_owned()),
        })
    }

    /// Its DER bytes, to parse with any X.509 crate.
    pub fn der(&self) -> &[u8] {
        self.der.as_ref()
    }

    /// The common name (CN) of its subject; `None` when the bytes are not an X.509
    /// certificate, the subject has no CN, its CN is not a string, or it has more than one CN
    /// (ambiguous, so no name at all rather than a guess).
    pub fn common_name(&self) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.der()).ok()?;
        let mut names = cert.subject().iter_common_name();
        let first = names.next()?;
        if names.next().is_some() {
            return None;
        }
        first.as_str().ok().map(str::to_owned)
    }
}

/// The connector of the HTTP and gRPC clients: TCP with `TCP_NODELAY` and `connect_timeout`,
/// and TLS for `https://` addresses (`tls`, or the Mozilla roots without it); `http://` passes
/// through. ALPN offers HTTP/2, and HTTP/1.1 too when `http1`. Its sockets record the TLS
/// failures they read in `alerts`.
pub(crate) fn connector(
    tls: Option<&ClientTls>,
    connect_timeout: std::time::Duration,
    http1: bool,
    alerts: Arc<Alerts>,
) -> Connector {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // The TLS layer sees every URI and leaves `http://` alone.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new();
    let https = match tls {
        Some(tls) => https.with_tls_config((*tls.config()).clone()),
        None => https.with_webpki_roots(),
    }
    .https_or_http();
    let inner = if http1 {
        https.enable_http1().enable_http2().wrap_connector(http)
    } else {
        https.enable_http2().wrap_connector(http)
    };
    Connector { inner, alerts }
}

/// The TLS failures that a client's connections read after their handshake.
///
/// Why: with TLS 1.3 the client's handshake is done before the server has checked the
/// client's certificate, so a server that refuses it (expired, not yet valid, from another
/// CA) says so with an alert that arrives after the client has sent its request. hyper reads
/// the alert as the end of the connection, and the call fails with "connection closed", not
/// with the reason, and would be retried as if the server were unreachable. The connector's
/// sockets record the alert here, and a call that fails with its connection closed takes the
/// reason recorded since it started: it fails with `Protocol` (not retried: the next
/// handshake fails the same way) and says why.
#[derive(Debug, Default)]
pub(crate) struct Alerts {
    last: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Alerts {
    fn record(&self, why: String) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((std::time::Instant::now(), why));
        }
    }

    /// The TLS failure read on a connection since `start`, if any.
    pub(crate) fn since(&self, start: std::time::Instant) -> Option<String> {
        let last = self.last.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| *at >= start)
            .map(|(_, why)| why.clone())
    }
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
type HttpsStream = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;

/// The HTTP and gRPC clients' connector: hyper-rustls', whose sockets record the TLS failures
/// they read ([`Alerts`]).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: HttpsConnector,
    alerts: Arc<Alerts>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = Recording<HttpsStream>;
    type Error = <HttpsConnector as tower::Service<http::Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let alerts = Arc::clone(&self.alerts);
        Box::pin(async move {
            let inner = connecting.await?;
            Ok(Recording { inner, alerts })
        })
    }
}

/// A client socket that records the TLS failure a read returns.
#[derive(Debug)]
pub(crate) struct Recording<T> {
    inner: T,
    alerts: Arc<Alerts>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Recording<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &result
            && let Some(why) = failure(e)
        {
            this.alerts.record(why);
        }
        result
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Recording<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for Recording<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

/// rustls' reason, if `error` or one of its sources is a TLS failure (an untrusted or expired
/// certificate, a missing client certificate, an alert from the peer): a call that fails so
/// fails with `Protocol`, which is not retried (a handshake that failed for a certificate
/// fails the same way the next time).
pub(crate) fn failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An io::Error's source() skips the error it wraps (often another io::Error around
        // rustls' own): go inside instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// What to add to the error of a TLS connection that the server closed after the handshake:
/// with TLS 1.3 a server that requires a client certificate refuses a client without one
/// only then, and the client sees its connection closed, not rustls' reason.
pub(crate) fn closed_hint(tls: Option<&ClientTls>) -> &'static str {
    match tls {
        Some(tls) if !tls.has_identity() => {
            " (closed after the TLS handshake: if the server requires mutual TLS, this client \
             shows no certificate; see ClientTls::mutual_from_pem)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_a_clear_error_that_shows_no_key() {
        let secret =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let e = ServerTls::from_pem(b"not a certificate", secret).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = ClientTls::trusting_pem(b"").unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        let e = ClientTls::trusting_file("/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(!format!("{e:?}").contains("c2VjcmV0"));
    }
}
