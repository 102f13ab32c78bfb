//! Headless Chromium (Debian's `chromium`) for the tests that look at a page as a browser
//! renders it: the lab's report and the operator console.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// The Chromium binary, if installed.
pub(crate) fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Whether Chromium is there; if not, says so (and fails under TABGRAB_REQUIRE_SERVICES).
pub(crate) fn require() -> bool {
    if chromium().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("TABGRAB_REQUIRE_SERVICES").is_none(),
        "chromium is required (TABGRAB_REQUIRE_SERVICES is set): apt-get install -y chromium"
    );
    println!("skipped the browser check: /usr/bin/chromium is absent");
    false
}

/// Headless Chromium with a profile in `user_dir`, quiet and without network extras.
pub(crate) fn headless(user_dir: &Path) -> Command {
    let mut command = Command::new(chromium().unwrap());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    command.arg(format!("--user-data-dir={}", user_dir.display()));
    command
}

/// The DOM of `url` after it rendered (`--dump-dom`); fails the test if Chromium does.
pub(crate) fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let dom = headless(profile.path())
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// A PNG screenshot of `url` at `size` (`width,height`) in `png`; returns its bytes, checked
/// to be a PNG of at least `min_bytes` (a nearly empty one is a blank page).
pub(crate) fn screenshot(url: &str, png: &Path, size: &str, min_bytes: usize) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let shot = headless(profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={size}"))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "no PNG screenshot");
    assert!(bytes.len() > min_bytes, "the screenshot is nearly empty");
    bytes
}
