//! The Python that runs a test's peer written in Python (a client or server tabgrab did not
//! write): `TABGRAB_PYTHON`, else `$TABGRAB_VENV/bin/python`, else
//! `$HOME/.cache/tabgrab-venv/bin/python` (the venv `.ci/run` prepares), the first that can
//! import what the peer needs.

use std::path::PathBuf;
use std::process::Command;

/// The first candidate Python that can run `import <imports>`. When none can: panics under
/// `TABGRAB_REQUIRE_SERVICES=1`, otherwise prints why the test is skipped and returns
/// `None`. `packages` names what to install, for the message.
pub fn with(imports: &str, packages: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TABGRAB_PYTHON").map(PathBuf::from),
        std::env::var_os("TABGRAB_VENV").map(|v| PathBuf::from(v).join("bin/python")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tabgrab-venv/bin/python")),
    ];
    for python in candidates.into_iter().flatten() {
        let usable = Command::new(&python)
            .args(["-c", &format!("import {imports}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if usable {
            return Some(python);
        }
    }
    let reason = format!(
        "no Python that can import {imports} (set TABGRAB_PYTHON; .ci/run installs {packages} \
         into its venv)"
    );
    assert!(
        !crate::services::required(),
        "{reason}, and {}=1 requires it",
        crate::services::REQUIRE_ENV
    );
    eprintln!("SKIPPED: {reason}");
    None
}
