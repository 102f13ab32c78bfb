//! Gating tests on real servers: skip loudly locally, fail in CI.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The environment variable that turns a missing server into a test failure.
pub const REQUIRE_ENV: &str = "TABGRAB_REQUIRE_SERVICES";

/// Whether missing services must fail tests (`TABGRAB_REQUIRE_SERVICES=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Returns `true` when `name` answers on `addr`. When it does not: panics under
/// `TABGRAB_REQUIRE_SERVICES=1`, otherwise prints why the test is skipped and returns `false`.
///
/// ```no_run
/// if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
///     return; // skipped, with the reason printed
/// }
/// ```
pub fn require(name: &str, addr: &str) -> bool {
    let reachable = addr
        .parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    let reason = format!("{name} is not reachable on {addr}");
    assert!(!required(), "{reason}, and {REQUIRE_ENV}=1 requires it");
    eprintln!("SKIPPED: {reason}; start it or set {REQUIRE_ENV}=1 to make this a failure");
    false
}
