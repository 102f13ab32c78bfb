//! Secrets that must never reach output: connection URLs that carry credentials.
//!
//! A bus or store URL may hold a password (`amqp://user:pw@host`, `postgres://u:pw@host/db`),
//! a token (`nats://token@host`) or a secret setting (`?password=…`, `?token=…`,
//! `?creds=…`). Such a URL is a [`SecretUrl`] from the moment it is read: its `Display` and
//! `Debug` show it redacted (`amqp://user:***@host`), so that logs, reports, errors and
//! `--help` can name the server without the secret, and only [`SecretUrl::expose`] gives the
//! real text, to the client library that connects.
//!
//! Client libraries may quote the URL in their own errors. Such an error goes through
//! [`SecretUrl::scrub`] before it becomes the source of one of ours: every secret part of
//! the URL is replaced by `***` in the error's text and in that of its sources.
//!
//! One type, one place: every URL of tabgrab and the pizzeria that can hold a secret is
//! shown through it.

use std::fmt;

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Query settings whose values are secrets (compared without case).
const SECRET_SETTINGS: &[&str] = &[
    "password",
    "pass",
    "passwd",
    "pwd",
    "token",
    "secret",
    "key",
    "creds",
    "credentials",
    "nkey",
    "seed",
    "jwt",
    "sslpassword",
    "sslkey",
    "auth",
    "authorization",
    "passphrase",
];

/// A URL that may carry credentials; shown redacted, exposed only to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    /// The URL as given.
    url: String,
    /// The URL with every secret replaced by [`REDACTED`].
    shown: String,
    /// The secret parts, longest first, for [`SecretUrl::scrub`].
    secrets: Vec<String>,
}

impl SecretUrl {
    /// Wraps `url`, finding its secrets: the password (or, without one, the user part, which
    /// is a token in `nats://token@host`) of each comma-separated server, and the values of
    /// query settings named like secrets.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        let url = url.into();
        let mut secrets = Vec::new();
        let shown = url
            .split(',')
            .map(|part| redact_one(part, &mut secrets))
            .collect::<Vec<_>>()
            .join(",");
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        SecretUrl {
            url,
            shown,
            secrets,
        }
    }

    /// The URL with its secrets, for the client library that connects. Never print it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with every secret replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// The credentials in the URL's user info (of its first server, percent-decoded): the
    /// user and, if there is one, the password. For `nats://token@host` that is the token,
    /// with no password.
    pub fn userinfo(&self) -> Option<(String, Option<String>)> {
        let first = self.url.split(',').next()?;
        let (_, rest) = first.split_once("://")?;
        let authority = rest.split(['/', '?']).next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => (percent_decode(user), Some(percent_decode(password))),
            None => (percent_decode(userinfo), None),
        })
    }

    /// The URL without the user info of any of its servers: for a client library that takes
    /// the credentials apart (so that it cannot log them with the address).
    pub fn without_userinfo(&self) -> String {
        self.url
            .split(',')
            .map(|part| match part.split_once("://") {
                Some((scheme, rest)) => {
                    let end = rest.find(['/', '?']).unwrap_or(rest.len());
                    let (authority, tail) = rest.split_at(end);
                    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                    format!("{scheme}://{host}{tail}")
                }
                None => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the URL carries a secret.
    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// `text` with every secret of this URL (also percent-decoded) replaced by `***`.
    pub fn scrub_text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), REDACTED);
            let decoded = percent_decode(secret);
            if decoded != *secret && !decoded.is_empty() {
                text = text.replace(decoded.as_str(), REDACTED);
            }
        }
        text
    }

    /// `error`, with its text and that of its sources scrubbed of this URL's secrets: what a
    /// client library's error becomes before it is the source of one of ours.
    pub fn scrub(&self, error: &(dyn std::error::Error + 'static)) -> Scrubbed {
        let mut chain = Vec::new();
        let mut next = Some(error);
        while let Some(e) = next {
            chain.push(self.scrub_text(&e.to_string()));
            next = e.source();
        }
        Scrubbed::from_chain(chain)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.shown).finish()
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl::new(url)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl::new(url)
    }
}

/// `text` as a URL with its secrets redacted (see [`SecretUrl`]).
pub fn redact_url(text: &str) -> String {
    SecretUrl::new(text).shown
}

/// An error whose text (and its sources' texts) had secrets scrubbed out; see
/// [`SecretUrl::scrub`].
#[derive(Debug, Clone)]
pub struct Scrubbed {
    /// This error's text.
    message: String,
    /// The scrubbed source, if the original had one.
    source: Option<Box<Scrubbed>>,
}

impl Scrubbed {
    fn from_chain(mut chain: Vec<String>) -> Scrubbed {
        let mut error: Option<Scrubbed> = None;
        while let Some(message) = chain.pop() {
            error = Some(Scrubbed {
                message,
                source: error.map(Box::new),
            });
        }
        error.unwrap_or(Scrubbed {
            message: String::new(),
            source: None,
        })
    }
}

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Scrubbed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Redacts one server's URL, collecting its secrets.
fn redact_one(part: &str, secrets: &mut Vec<String>) -> String {
    let (before_query, query) = match part.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (part, None),
    };
    let mut shown = match before_query.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first '/'; its user info at the last '@' in it.
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let userinfo = match userinfo.split_once(':') {
                        Some((user, password)) => {
                            secrets.push(password.to_owned());
                            format!("{user}:{REDACTED}")
                        }
                        None => {
                            // `nats://token@host`: a lone user part may be a token.
                            secrets.push(userinfo.to_owned());
                            REDACTED.to_owned()
                        }
                    };
                    format!("{scheme}://{userinfo}@{host}{path}")
                }
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        let settings: Vec<String> = query
            .split('&')
            .map(|setting| match setting.split_once('=') {
                Some((name, value)) if is_secret_setting(name) => {
                    secrets.push(value.to_owned());
                    format!("{name}={REDACTED}")
                }
                _ => setting.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&settings.join("&"));
    }
    shown
}

fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    // `ssl_password`, `nkey_seed`…: a name that ends like a secret is one (redacting a
    // harmless setting costs nothing; printing a secret does).
    SECRET_SETTINGS.iter().any(|s| name.ends_with(s))
}

/// Decodes `%XX` escapes (what a library may print after parsing the URL).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_tokens_and_secret_settings_are_redacted() {
        let cases = [
            (
                "nats://user:pw@127.0.0.1:4222",
                "nats://user:***@127.0.0.1:4222",
            ),
            (
                "nats://s3cr3tToken@127.0.0.1:4222",
                "nats://***@127.0.0.1:4222",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://u:p%40ss@h:5432/db?sslmode=require&password=x",
                "postgres://u:***@h:5432/db?sslmode=require&password=***",
            ),
            (
                "nats://a:1@h1:4222,nats://b:2@h2:4222?namespace=run&token=t",
                "nats://a:***@h1:4222,nats://b:***@h2:4222?namespace=run&token=***",
            ),
            (
                "nats://127.0.0.1:4222?ack_wait_ms=2000",
                "nats://127.0.0.1:4222?ack_wait_ms=2000",
            ),
            (
                "sqlite:./pizzeria-data/x.sqlite",
                "sqlite:./pizzeria-data/x.sqlite",
            ),
            (
                "tls://h:4222?creds=/etc/app.creds",
                "tls://h:4222?creds=***",
            ),
        ];
        for (url, shown) in cases {
            let secret = SecretUrl::new(url);
            assert_eq!(secret.to_string(), shown, "{url}");
            assert_eq!(format!("{secret:?}"), format!("SecretUrl({shown:?})"));
            assert_eq!(secret.expose(), url);
        }
        assert!(!SecretUrl::new("nats://127.0.0.1:4222").has_secret());
    }

    #[test]
    fn credentials_can_be_taken_apart_from_the_address() {
        let url = SecretUrl::new("nats://u%40x:p%3Aw@h:4222,nats://u:p@h2:4222?x=1");
        assert_eq!(
            url.userinfo(),
            Some(("u@x".to_owned(), Some("p:w".to_owned())))
        );
        assert_eq!(url.without_userinfo(), "nats://h:4222,nats://h2:4222?x=1");
        let token = SecretUrl::new("nats://tok@h:4222");
        assert_eq!(token.userinfo(), Some(("tok".to_owned(), None)));
        assert_eq!(SecretUrl::new("nats://h:4222").userinfo(), None);
    }

    #[test]
    fn errors_are_scrubbed_through_their_whole_chain() {
        #[derive(Debug)]
        struct Inner;
        impl fmt::Display for Inner {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bad password p@ss for postgres://u:p%40ss@h/db")
            }
        }
        impl std::error::Error for Inner {}
        #[derive(Debug)]
        struct Outer(Inner);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let url = SecretUrl::new("postgres://u:p%40ss@h/db");
        let scrubbed = url.scrub(&Outer(Inner));
        assert_eq!(scrubbed.to_string(), "connect failed");
        let inner = std::error::Error::source(&scrubbed).map(ToString::to_string);
        assert_eq!(
            inner.as_deref(),
            Some("bad password *** for postgres://u:***@h/db")
        );
    }
}
