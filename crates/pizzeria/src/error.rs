//! The pizzeria's error: a matchable [`ErrorKind`], a message that says what failed and what
//! to do, and the underlying cause, shaped like `tabgrab::Error`.

use std::fmt;

/// What went wrong, as a stable, matchable value.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The event bus (the embedded log) failed: opening, publishing, subscribing, closing.
    Bus,
    /// A socket, file or HTTP exchange failed.
    Io,
    /// Orders or services did not finish before their deadline.
    Deadline,
    /// The command line asked for something impossible.
    Usage,
    /// This style or scenario cannot run on the chosen engine (the message says which and
    /// what runs instead): a documented limit, not a failure.
    Unsupported,
}

/// A pizzeria error: a kind, a message, and an optional source.
#[derive(Debug)]
pub struct Error {
    /// The matchable kind.
    kind: ErrorKind,
    /// What failed, in words, and what to do about it.
    message: String,
    /// The underlying error, kept for `source()` chains and shown on the same line.
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.source = Some(source.into());
        self
    }

    /// The matchable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<tabgrab::Error> for Error {
    fn from(error: tabgrab::Error) -> Error {
        Error::new(ErrorKind::Bus, "the event bus failed").with_source(error)
    }
}
