//! What sockets may hold on the call server: a head must arrive within the header-read
//! timeout (slowloris and silent sockets included, whatever the protocol), a keep-alive
//! connection is closed after the idle timeout (HTTP/1 and HTTP/2), and when idle sockets fill
//! the connection limit a normal request is still answered while a request in flight is never
//! cut. Real sockets on 127.0.0.1:0, short configured timeouts; every wait has a bound that
//! fails the test rather than hoping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tabgrab_call::ServeConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use common::{Probe, handlers};

/// Far longer than any configured timeout here: reaching it fails the test.
const BOUND: Duration = Duration::from_secs(5);

/// A running server with `config`; stopped (and awaited) by [`Running::stop`].
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(config: ServeConfig) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tabgrab_call::router(handlers(&Probe::default()));
        let task = tokio::spawn(tabgrab_call::serve_with(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            config,
        ));
        Running { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the server drains within the bound")
            .unwrap()
            .unwrap();
    }
}

fn config(header_read: Duration, idle: Duration) -> ServeConfig {
    ServeConfig {
        header_read_timeout: Some(header_read),
        idle_timeout: Some(idle),
        ..ServeConfig::default()
    }
}

/// Waits until the server closes `stream` (EOF or reset), reading and dropping whatever it
/// sends; how long that took. Panics if it is still open after [`BOUND`].
async fn closed_after(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closed the connection within the bound");
    start.elapsed()
}

/// One HTTP/1.1 request for `Add { n: 1 }`, keep-alive.
const ADD: &[u8] = b"POST /queries/test.add.v1 HTTP/1.1\r\nhost: t\r\n\
content-type: application/json\r\ncontent-length: 7\r\n\r\n{\"n\":1}";

/// Sends [`ADD`] on `stream` and reads its answer (`2`) to the end.
async fn add_over(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    write.write_all(ADD).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        while !(answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"\r\n\r\n2")) {
            let n = read.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answered within the bound");
}

#[tokio::test]
async fn slowloris_and_silent_sockets_are_closed_after_the_header_read_timeout() {
    let header_read = Duration::from_millis(300);
    let server = Running::start(config(header_read, Duration::from_secs(60))).await;
    // A head a byte every 50 ms (it would take seconds), the first bytes of the HTTP/2
    // preface and then nothing (the protocol sniff), and nothing at all.
    let preludes: [&[u8]; 3] = [
        b"POST /queries/test.add.v1 HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        b"PRI * HTTP/2.0\r\n",
        b"",
    ];
    for prelude in preludes {
        let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
        let dribble = tokio::spawn(async move {
            for byte in prelude {
                if write.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Keep the write half open: silence, not a close.
            std::future::pending::<()>().await;
        });
        let open_for = closed_after(&mut read).await;
        dribble.abort();
        assert!(
            open_for >= header_read - Duration::from_millis(50),
            "{:?}: closed after {open_for:?}, before the timeout",
            String::from_utf8_lossy(prelude)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_later_http1_head_sent_slowly_is_closed_after_the_header_read_timeout() {
    let header_read = Duration::from_millis(300);
    let server = Running::start(config(header_read, Duration::from_secs(60))).await;
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    add_over(&mut read, &mut write).await;
    // Idle for a while (within the idle timeout), then a head a byte every 50 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let dribble = tokio::spawn(async move {
        for byte in ADD {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let open_for = closed_after(&mut read).await;
    dribble.abort();
    // Closed a header-read timeout after its first byte, long before the idle timeout.
    assert!(
        open_for >= header_read - Duration::from_millis(50),
        "{open_for:?}"
    );
    assert!(open_for < Duration::from_secs(3), "{open_for:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let server = Running::start(config(Duration::from_secs(60), idle)).await;
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    add_over(&mut read, &mut write).await;
    // A second request on the same connection: keep-alive works.
    add_over(&mut read, &mut write).await;
    let open_for = closed_after(&mut read).await;
    assert!(open_for >= idle - Duration::from_millis(50), "{open_for:?}");
    drop(write);
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let server = Running::start(config(Duration::from_secs(60), idle)).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/queries/test.add.v1", server.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"n\":1}",
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    drop(response);
    let start = Instant::now();
    // The client's connection ends when the server says GOAWAY and closes.
    tokio::time::timeout(BOUND, connection)
        .await
        .expect("the server closed the idle HTTP/2 connection within the bound")
        .unwrap()
        .ok();
    assert!(start.elapsed() >= idle - Duration::from_millis(50));
    server.stop().await;
}

#[tokio::test]
async fn when_idle_sockets_fill_the_limit_a_request_is_still_answered() {
    let max = 8;
    let server = Running::start(ServeConfig {
        max_connections: max,
        ..config(Duration::from_secs(60), Duration::from_secs(60))
    })
    .await;
    // One idle keep-alive connection that has served a request, then 40 silent ones.
    let (mut idle_read, mut idle_write) =
        TcpStream::connect(server.addr).await.unwrap().into_split();
    add_over(&mut idle_read, &mut idle_write).await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(server.addr).await.unwrap().into_split());
    }
    // A normal request on a new connection is answered.
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    add_over(&mut read, &mut write).await;
    // The server holds at most `max` (42 were accepted): the oldest silent sockets gave way,
    // and the idle connection, which has served a request, stayed while a silent one could go.
    let gave_way = silent.len() + 2 - max;
    for (read, _) in silent.iter_mut().take(gave_way) {
        closed_after(read).await;
    }
    add_over(&mut idle_read, &mut idle_write).await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_is_never_cut_to_make_room() {
    let server = Running::start(ServeConfig {
        max_connections: 2,
        ..config(Duration::from_secs(60), Duration::from_secs(60))
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let slow = |ms: u64| {
        let client = client.clone();
        let url = format!("http://{}/queries/test.slow.v1", server.addr);
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(format!("{{\"ms\":{ms}}}"))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let (a, b) = (slow(400), slow(400));
    // Both slow calls are in flight on the two connections; a third waits for room.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let c = slow(0);
    let c = tokio::time::timeout(BOUND, c).await.unwrap().unwrap();
    assert_eq!(c.unwrap(), reqwest::StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "answered after {:?}: it did not wait for room",
        start.elapsed()
    );
    for slow in [a, b] {
        let status = tokio::time::timeout(BOUND, slow).await.unwrap().unwrap();
        assert_eq!(status.unwrap(), reqwest::StatusCode::OK, "not cut");
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_is_prompt_with_silent_and_idle_connections_open() {
    let server = Running::start(config(Duration::from_secs(60), Duration::from_secs(60))).await;
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    add_over(&mut read, &mut write).await;
    let _silent: Vec<TcpStream> =
        futures::future::join_all((0..3).map(|_| TcpStream::connect(server.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let start = Instant::now();
    server.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// Over TLS the handshake counts as the head: a socket that says nothing, or starts a
/// ClientHello and stops, is closed after the header-read timeout, and a shutdown with such
/// sockets open is prompt.
#[tokio::test]
async fn over_tls_a_stalled_handshake_is_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let tls = tabgrab_call::ServerTls::from_files(&certs.server_cert, &certs.server_key).unwrap();
    let header_read = Duration::from_millis(300);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tabgrab_call::serve_tls(
        listener,
        tabgrab_call::router(handlers(&Probe::default())),
        async move {
            let _ = stopped.await;
        },
        config(header_read, Duration::from_secs(60)),
        tls,
    ));
    // Nothing, and the first bytes of a TLS record (a handshake, ClientHello) then nothing.
    for prelude in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        write.write_all(prelude).await.unwrap();
        let open_for = closed_after(&mut read).await;
        assert!(
            open_for >= header_read - Duration::from_millis(50),
            "{prelude:?}: closed after {open_for:?}, before the timeout"
        );
        drop(write);
    }
    let _silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(BOUND, task)
        .await
        .expect("the server drains within the bound")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < header_read,
        "a pending handshake does not hold the shutdown: {:?}",
        started.elapsed()
    );
}
