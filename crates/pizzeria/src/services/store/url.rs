//! Where a store keeps its data: [`StoreUrl`], parsed from the `--store` option (`memory`,
//! `sqlite:PATH`, `postgres://…`) and shown without the password a PostgreSQL URL may carry,
//! so that it can go into logs and reports.

use tabgrab::{Error, ErrorKind};

/// Where a [`Store`](super::Store) keeps its data, parsed from the `--store` option.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A private SQLite database in memory (not durable).
    Memory,
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreUrl {
    /// Parses `memory`, `sqlite:PATH` (or `sqlite://PATH`) and `postgres://…` /
    /// `postgresql://…`.
    pub fn parse(url: &str) -> Result<StoreUrl, Error> {
        if url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
        {
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "store {:?} is not a store URL: use sqlite:PATH, postgres://user@host/db or memory",
                tabgrab::SecretUrl::new(url).redacted()
            ),
        ))
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            // Never print a password: shown through the one redaction of tabgrab.
            StoreUrl::Postgres(url) => {
                f.write_str(tabgrab::SecretUrl::new(url.as_str()).redacted())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_hide_passwords() {
        assert_eq!(StoreUrl::parse("memory").ok(), Some(StoreUrl::Memory));
        assert_eq!(
            StoreUrl::parse("sqlite:./d/e.sqlite").ok(),
            Some(StoreUrl::Sqlite("./d/e.sqlite".into()))
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/e.sqlite").ok(),
            Some(StoreUrl::Sqlite("/tmp/e.sqlite".into()))
        );
        let pg = StoreUrl::parse("postgres://u:secret@h:5432/db").ok();
        assert_eq!(
            pg.map(|u| u.to_string()).as_deref(),
            Some("postgres://u:***@h:5432/db")
        );
        let bad = StoreUrl::parse("mysql://x").err().map(|e| e.kind());
        assert_eq!(bad, Some(ErrorKind::Malformed));
        assert!(StoreUrl::parse("sqlite:").is_err());
    }
}
