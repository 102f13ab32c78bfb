//! The accept loop under an accept source that keeps failing (the timeouts and the limit are
//! tested over real sockets in `tests/server_limits.rs`).

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::*;

/// An accept source that fails with `EMFILE` every time, recording when it was asked.
struct OutOfDescriptors {
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Accept for OutOfDescriptors {
    type Io = tokio::io::DuplexStream;

    async fn accept(&mut self) -> io::Result<tokio::io::DuplexStream> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Instant::now());
        }
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }
}

#[tokio::test(start_paused = true)]
async fn a_lasting_accept_failure_is_retried_with_growing_pauses_not_in_a_spin() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let listener = OutOfDescriptors {
        calls: Arc::clone(&calls),
    };
    let start = Instant::now();
    serve_on(
        listener,
        axum::Router::new(),
        tokio::time::sleep(Duration::from_secs(60)),
        ServeConfig::default(),
        None,
    )
    .await
    .expect("the loop stops at shutdown");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(60),
        "shutdown is prompt"
    );
    let calls = calls.lock().expect("not poisoned").clone();
    // 5 ms doubling to 1 s: 9 attempts in the first 1.3 s, then one a second.
    assert!(
        (60..=70).contains(&calls.len()),
        "{} accepts in 60 s",
        calls.len()
    );
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
    assert_eq!(gaps.last(), Some(&Duration::from_secs(1)));
}

/// A server other machines can reach is warned about, with what to do; one on loopback is not.
#[test]
fn a_server_reachable_from_other_machines_is_warned_about() {
    for public in ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:80", "10.0.0.1:0"] {
        let warning = beyond_this_machine(public.parse().unwrap())
            .unwrap_or_else(|| panic!("{public}: no warning"));
        assert!(
            warning.contains("without TLS or authentication"),
            "{warning}"
        );
        assert!(warning.contains("bind 127.0.0.1"), "{warning}");
    }
    for local in ["127.0.0.1:0", "127.0.0.2:8080", "[::1]:8080"] {
        assert_eq!(beyond_this_machine(local.parse().unwrap()), None, "{local}");
    }
}
