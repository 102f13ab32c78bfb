//! Certificates for TLS tests, made with the `openssl` command: a CA (of a name of its own),
//! a server certificate for `127.0.0.1` and `localhost`, and a client certificate (ECDSA
//! P-256, valid two days); and an expired server certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`certificates`] writes.
#[derive(Clone, Debug)]
pub struct Certificates {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM), for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    /// The server's key (PEM).
    pub server_key: PathBuf,
    /// A client certificate (PEM) for mutual TLS.
    pub client_cert: PathBuf,
    /// The client's key (PEM).
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Makes a CA, a server and a client certificate in `dir`.
pub fn certificates(dir: &Path) -> std::io::Result<Certificates> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // Each CA's name is its own: two CAs of one name make a stranger's certificate fail
    // on its signature instead of on its unknown issuer, which is not what tests mean.
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let ca_subject = format!("/CN=tabgrab test CA {}-{unique}", std::process::id());
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", ca_subject.as_str()];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca)?;
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        let subject = format!("/CN={name}");
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", subject.as_str()];
        req.extend(ec);
        req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        )?;
    }
    Ok(Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}

/// A server certificate (for 127.0.0.1 and localhost) signed by the CA that [`certificates`]
/// made in `dir`, whose validity ended long ago (1 to 2 January 2020): what a client must
/// refuse as expired. Returns the certificate and its key (PEM), written in `dir`.
pub fn expired_server_certificate(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    // `openssl x509 -req` sets notBefore to now; only `openssl ca` takes both dates.
    std::fs::write(
        dir.join("expired-ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = expired-index.txt\nnew_certs_dir = .\n\
         serial = expired-serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = none\n\
         x509_extensions = server\n[any]\ncommonName = supplied\n\
         [server]\nsubjectAltName = IP:127.0.0.1,DNS:localhost\nextendedKeyUsage = serverAuth\n",
    )?;
    std::fs::write(dir.join("expired-index.txt"), "")?;
    std::fs::write(dir.join("expired-serial"), "1000\n")?;
    openssl(
        dir,
        &[
            "req",
            "-subj",
            "/CN=expired",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "expired.key",
            "-out",
            "expired.csr",
        ],
    )?;
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "expired-ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-notext",
            "-in",
            "expired.csr",
            "-out",
            "expired.pem",
        ],
    )?;
    Ok((dir.join("expired.pem"), dir.join("expired.key")))
}
