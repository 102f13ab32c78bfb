//! `lab.json`: every figure of the lab, the machine, the version and the seed, as the
//! [`LabReport`] serialises; the printed table is `LabReport::render` of the same value.

use std::path::Path;

use super::report::LabReport;
use crate::error::{Error, ErrorKind};

/// Writes `report` as pretty JSON to `path`.
pub fn write(report: &LabReport, path: &Path) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::new(ErrorKind::Io, "cannot encode the lab's figures").with_source(e))?;
    std::fs::write(path, json).map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot write {}", path.display())).with_source(e)
    })
}

/// Reads a report written by [`write()`].
pub fn read(path: &Path) -> Result<LabReport, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot read {}", path.display())).with_source(e)
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Usage,
            format!("{} is not a lab report", path.display()),
        )
        .with_source(e)
    })
}
