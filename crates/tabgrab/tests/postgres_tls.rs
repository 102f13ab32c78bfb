//! PostgreSQL over TLS (rustls): `sslmode=require` encrypts, `disable` does not,
//! `verify-full` refuses a server certificate it cannot verify and accepts it with its CA
//! (`sslrootcert=`). Against the machine's server (`ssl = on`), as the server itself reports
//! it in `pg_stat_ssl`.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

const BASE: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn connect(url: &str) -> Result<sqlx::PgPool, sqlx::Error> {
    tabgrab::sql::connect_postgres(url, 1, Duration::from_secs(10), Duration::from_secs(10)).await
}

/// Whether the server says this connection is encrypted, and with which protocol.
async fn encrypted(pool: &sqlx::PgPool) -> (bool, Option<String>) {
    sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sslmode_require_encrypts_and_verify_full_checks_the_certificate() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let plain = connect(&format!("{BASE}?sslmode=disable")).await.unwrap();
    assert!(!encrypted(&plain).await.0, "the control: disable is plain");
    let server_ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&plain)
        .await
        .unwrap();
    if server_ssl != "on" {
        assert!(
            std::env::var_os("TABGRAB_REQUIRE_SERVICES").is_none(),
            "PostgreSQL has ssl = {server_ssl}; this machine's server has ssl = on"
        );
        println!("SKIPPED: the PostgreSQL server has ssl = {server_ssl}");
        return;
    }
    let cert_file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&plain)
        .await
        .unwrap();
    plain.close().await;

    let tls = connect(&format!("{BASE}?sslmode=require")).await.unwrap();
    let (ssl, version) = encrypted(&tls).await;
    assert!(ssl, "sslmode=require is encrypted");
    println!("sslmode=require: {version:?}");
    assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));
    tls.close().await;
    // The default (prefer) encrypts too when the server can.
    let preferred = connect(BASE).await.unwrap();
    assert!(
        encrypted(&preferred).await.0,
        "sslmode=prefer uses TLS when offered"
    );
    preferred.close().await;

    // A certificate nobody vouched for is refused, with a reason.
    let refused = connect(&format!("{BASE}?sslmode=verify-full"))
        .await
        .expect_err("verify-full without the server's CA must fail");
    let said = format!("{refused} {refused:?}").to_lowercase();
    assert!(
        said.contains("certificate") || said.contains("tls"),
        "{said}"
    );

    // With the server's certificate as the root, under the name it was issued for.
    if std::fs::metadata(&cert_file).is_err() {
        println!("SKIPPED the verify-full check with sslrootcert: {cert_file} is not readable");
        return;
    }
    let url = format!(
        "postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={cert_file}"
    );
    match connect(&url).await {
        Ok(verified) => {
            assert!(encrypted(&verified).await.0);
            verified.close().await;
        }
        Err(e) => panic!("verify-full with sslrootcert={cert_file} failed: {e} {e:?}"),
    }
}
