//! Where the TLS files and credentials a broker URL names come from: a file path, or
//! `env:NAME`, an environment variable that holds the content itself (the PEM text of a
//! certificate or key, a `.creds` file's text, an nkey seed). Only the variable's name is
//! in the URL, and URLs reach logs and process lists; the content is never shown (an error
//! names the setting and the variable or path).
//!
//! For settings the client library reads from files (NATS' CA, client certificate and key),
//! environment content is written to files of a private directory (mode 0700, files 0600)
//! that lives as long as the connection: the library reads them again when it reconnects.

use std::path::Path;

use crate::{Error, ErrorKind};

/// The prefix of a setting that names an environment variable instead of a file.
const ENV: &str = "env:";

/// The environment variable `path` names (`env:NAME`), if it names one.
fn variable(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix(ENV)
}

/// The content of the setting `what` (`tls_key`, ...), from its file or its variable; `url`
/// (redacted) is for the error message.
pub(crate) fn read(what: &str, path: &Path, url: &dyn std::fmt::Display) -> Result<Vec<u8>, Error> {
    match variable(path) {
        Some(name) => std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "{url}: {what} names the environment variable {name}, which is not set \
                         (or empty)"
                    ),
                )
            }),
        None => std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::Malformed,
                format!("{url}: cannot read the {what} {}", path.display()),
            )
            .with_source(e)
        }),
    }
}

/// How the setting is shown in an error: its path, or `environment variable NAME`.
pub(crate) fn shown(path: &Path) -> String {
    match variable(path) {
        Some(name) => format!("in the environment variable {name}"),
        None => path.display().to_string(),
    }
}

/// Files a client library can read: the paths themselves, or, for `env:` settings, files
/// written with their content into a private directory kept here.
#[cfg(feature = "nats")]
#[derive(Debug, Default)]
pub(crate) struct Files {
    dir: Option<tempfile::TempDir>,
}

#[cfg(feature = "nats")]
impl Files {
    /// A path holding the setting's content: `path` itself (which must exist), or a private
    /// file with the variable's content.
    pub(crate) fn path(
        &mut self,
        what: &str,
        path: &Path,
        url: &dyn std::fmt::Display,
    ) -> Result<std::path::PathBuf, Error> {
        if variable(path).is_none() {
            // Checked here, so that a missing file is this error, not the client's.
            return std::fs::metadata(path)
                .map(|_| path.to_owned())
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Malformed,
                        format!("{url}: cannot read the {what} {}", path.display()),
                    )
                    .with_source(e)
                });
        }
        let content = read(what, path, url)?;
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Storage,
                format!("{url}: cannot write the {what} to a private file"),
            )
            .with_source(e)
        };
        if self.dir.is_none() {
            // tempfile makes the directory 0700 on Unix.
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("tabgrab-tls-")
                    .tempdir()
                    .map_err(io)?,
            );
        }
        let Some(dir) = &self.dir else {
            unreachable!("made above")
        };
        let file = dir
            .path()
            .join(what.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        write_private(&file, &content).map_err(io)?;
        Ok(file)
    }
}

/// Writes `content` to `file`, readable by this user only.
#[cfg(feature = "nats")]
fn write_private(file: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(file)?.write_all(content)
}

#[cfg(all(test, feature = "nats"))]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn an_env_setting_is_read_from_its_variable_and_written_privately() {
        // A variable every process here has (the test cannot set one: no unsafe code).
        let (name, value) = std::env::vars_os()
            .find_map(|(n, v)| Some((n.into_string().ok()?, v)).filter(|(_, v)| !v.is_empty()))
            .expect("some environment variable");
        let value = value.into_encoded_bytes();
        let path = PathBuf::from(format!("env:{name}"));
        let url = "nats://h:4222";
        assert_eq!(read("tls_ca", &path, &url).unwrap(), value);
        let mut files = Files::default();
        let written = files.path("tls_ca", &path, &url).unwrap();
        assert_eq!(std::fs::read(&written).unwrap(), value);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&written).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A file is used where it is, once it is found.
        assert_eq!(files.path("tls_ca", &written, &url).unwrap(), written);
        let missing = PathBuf::from("/no/such/ca.pem");
        let e = files.path("tls_ca", &missing, &url).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
        drop(files);
        assert!(
            !written.exists(),
            "the private copy goes with the connection"
        );

        let unset = PathBuf::from("env:TABGRAB_NO_SUCH_VARIABLE_8c1f");
        let e = read("tls_key", &unset, &url).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert!(
            e.to_string().contains("TABGRAB_NO_SUCH_VARIABLE_8c1f"),
            "{e}"
        );
        assert_eq!(
            shown(&unset),
            "in the environment variable TABGRAB_NO_SUCH_VARIABLE_8c1f"
        );
    }
}
