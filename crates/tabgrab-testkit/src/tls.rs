//! Certificates for TLS tests, made with the `openssl` command: a CA, a server certificate
//! for `127.0.0.1` and `localhost`, and a client certificate (ECDSA P-256, valid two days).

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
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tabgrab test CA"];
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
