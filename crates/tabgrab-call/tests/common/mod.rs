//! Messages and a server shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab_call::{CallContext, HandlerError, Handlers};
use tabgrab_core::{Message, Rejection};
use tokio::sync::oneshot;

/// A query answered with its number plus one; `fail: true` makes the handler fail.
#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.add.v1", query, response = u64)]
pub struct Add {
    pub n: u64,
}

/// A command the handler refuses when `amount` is 0.
#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.charge.v1", command, response = Charged)]
pub struct Charge {
    pub amount: u64,
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Charged {
    pub amount: u64,
}

/// A query whose handler sleeps for `ms` before answering.
#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.slow.v1", query, response = u64)]
pub struct Slow {
    pub ms: u64,
}

/// Counts handler invocations; `cancelled` fires when a slow handler is dropped unfinished.
#[derive(Clone, Default)]
pub struct Probe {
    pub calls: Arc<AtomicU64>,
    pub cancelled: Arc<AtomicU64>,
}

impl Probe {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }
}

struct CancelGuard(Arc<AtomicU64>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub fn handlers(probe: &Probe) -> Handlers {
    let (p1, p2, p3) = (probe.clone(), probe.clone(), probe.clone());
    Handlers::new()
        .handle(move |q: Add, _ctx: CallContext| {
            let p = p1.clone();
            async move {
                p.calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(q.n + 1)
            }
        })
        .handle(move |c: Charge, _ctx: CallContext| {
            let p = p2.clone();
            async move {
                p.calls.fetch_add(1, Ordering::SeqCst);
                if c.amount == 0 {
                    return Err(HandlerError::from(Rejection::new(
                        "test.zero",
                        "nothing to charge",
                    )));
                }
                Ok(Charged { amount: c.amount })
            }
        })
        .handle(move |q: Slow, _ctx: CallContext| {
            let p = p3.clone();
            async move {
                p.calls.fetch_add(1, Ordering::SeqCst);
                let mut guard = CancelGuard(Arc::clone(&p.cancelled), false);
                tokio::time::sleep(Duration::from_millis(q.ms)).await;
                guard.1 = true;
                Ok::<_, HandlerError>(q.ms)
            }
        })
}

/// A running server; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(handlers: Handlers) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::on(listener, handlers)
    }

    pub fn on(listener: tokio::net::TcpListener, handlers: Handlers) -> Server {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tabgrab_call::serve(
            listener,
            tabgrab_call::router(handlers),
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Serves `handlers` over TLS (mutual TLS if `tls` requires client certificates).
    pub async fn start_tls(handlers: Handlers, tls: tabgrab_call::ServerTls) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tabgrab_call::serve_tls(
            listener,
            tabgrab_call::router(handlers),
            async move {
                let _ = stopped.await;
            },
            tabgrab_call::ServeConfig::default(),
            tls,
        ));
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url_tls(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `cond` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Who the server says the caller is.
#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.whoami.v1", query, response = String)]
pub struct WhoAmI {}

/// The test handlers, and one that answers [`WhoAmI`] with the caller's principal.
pub fn with_whoami(probe: &Probe) -> Handlers {
    handlers(probe).handle(|_w: WhoAmI, ctx: CallContext| async move {
        Ok::<_, HandlerError>(
            ctx.principal()
                .map(|p| p.name().to_owned())
                .unwrap_or_default(),
        )
    })
}
