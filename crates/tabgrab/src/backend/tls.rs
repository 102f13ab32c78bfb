//! What a failed TLS handshake with a broker means, in words an operator can act on: the
//! one table both broker backends (NATS and RabbitMQ, both on rustls) explain their connect
//! errors with.

/// A TLS handshake failure in rustls' words, explained; `None` when `text` is not one. The
/// settings named (`tls_ca=`, `tls_cert=`, `tls_key=`) are the bus URL's, the same on both.
pub(crate) fn failure(text: &str) -> Option<&'static str> {
    // Alerts first: `alert: CertificateExpired` is about this client's certificate.
    let known = [
        (
            "alert: CertificateRequired",
            "the server requires a client certificate (tls_cert= and tls_key=)",
        ),
        (
            "alert: UnknownCA",
            "the server does not trust this client's certificate (signed by a CA it does not know)",
        ),
        (
            "alert: CertificateExpired",
            "the server refused this client's certificate as expired",
        ),
        (
            "alert: BadCertificate",
            "the server refused this client's certificate",
        ),
        (
            "alert: HandshakeFailure",
            "the server refused the handshake (a client certificate it wants, or no common cipher)",
        ),
        (
            "UnknownIssuer",
            "the server's certificate is signed by a CA this client does not trust \
             (name the CA with tls_ca=)",
        ),
        (
            "BadSignature",
            "the server's certificate is not signed by a CA this client trusts (its \
             signature does not verify: another CA of the same name signed it?)",
        ),
        (
            "certificate expired",
            "the server's certificate has expired",
        ),
        ("Expired", "the server's certificate has expired"),
        ("not valid yet", "the server's certificate is not valid yet"),
        ("NotValidYet", "the server's certificate is not valid yet"),
        (
            "NotValidForName",
            "the server's certificate is not valid for this host name",
        ),
        ("Revoked", "the server's certificate is revoked"),
        (
            "invalid peer certificate",
            "the server's certificate is invalid",
        ),
        ("InvalidContentType", "the server does not speak TLS there"),
        ("CorruptMessage", "the server does not speak TLS there"),
    ];
    known
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, why)| *why)
}
