//! NATS decentralized authentication for tests: operator, account and user JWTs signed the
//! way `nsc` signs them (ed25519 nkeys), and `.creds` files, so a test can start a
//! nats-server in operator mode ([`Decentralized::operator_mode`]) and give each client a
//! creds file ([`Decentralized::user_creds`]) without `nsc`.

use base64::Engine as _;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT about `subject` with `nats` claims, signed by `issuer`.
pub fn sign(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let payload = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("a key pair with its seed signs");
    format!("{signed}.{}", b64(&signature))
}

/// An operator's JWT, self-signed, naming its system account.
pub fn operator(operator: &nkeys::KeyPair, system_account: &str) -> String {
    sign(
        operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({
            "type": "operator",
            "version": 2,
            "system_account": system_account,
        }),
    )
}

/// An account's JWT signed by `operator`, with JetStream when `jetstream`.
pub fn account(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
) -> String {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = serde_json::json!(-1);
        }
    }
    sign(
        operator,
        &account.public_key(),
        name,
        serde_json::json!({ "type": "account", "version": 2, "limits": limits }),
    )
}

/// A user's JWT signed by `account`.
pub fn user(account: &nkeys::KeyPair, user: &nkeys::KeyPair) -> String {
    sign(
        account,
        &user.public_key(),
        "test-user",
        serde_json::json!({
            "type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1,
        }),
    )
}

/// A `.creds` file's text: the user JWT and an nkey seed, as `nsc` writes them.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// An operator with a system account and one application account (with JetStream), ready to
/// start a server in operator mode and to mint users of the application account.
pub struct Decentralized {
    operator: nkeys::KeyPair,
    system: nkeys::KeyPair,
    /// The application account users are made in.
    pub account: nkeys::KeyPair,
}

impl Default for Decentralized {
    fn default() -> Decentralized {
        Decentralized::new()
    }
}

impl Decentralized {
    /// Fresh keys for the operator and both accounts.
    pub fn new() -> Decentralized {
        Decentralized {
            operator: nkeys::KeyPair::new_operator(),
            system: nkeys::KeyPair::new_account(),
            account: nkeys::KeyPair::new_account(),
        }
    }

    /// The server's operator mode: both accounts preloaded.
    pub fn operator_mode(&self) -> crate::nats_server::OperatorMode {
        crate::nats_server::OperatorMode {
            operator_jwt: operator(&self.operator, &self.system.public_key()),
            system_account: Some(self.system.public_key()),
            accounts: vec![
                (
                    self.system.public_key(),
                    account(&self.operator, &self.system, "SYS", false),
                ),
                (
                    self.account.public_key(),
                    account(&self.operator, &self.account, "APP", true),
                ),
            ],
        }
    }

    /// A new user of the application account: its `.creds` text, its JWT and its seed.
    pub fn user_creds(&self) -> (String, String, String) {
        let pair = nkeys::KeyPair::new_user();
        let jwt = user(&self.account, &pair);
        let seed = pair.seed().expect("a fresh user key has a seed");
        (creds(&jwt, &seed), jwt, seed)
    }
}
