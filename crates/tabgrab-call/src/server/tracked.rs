//! What tells a connection's [`State`] what the connection does: the service around the router
//! (a request head arrived; its answer was sent) and the socket (bytes arrived).
//!
//! Why wrap the service and the body and not use a middleware: a request is in flight from
//! its head to the last byte of its answer, and only the response body knows when that is
//! (hyper drops it once written, or when the peer goes away). Named futures and bodies, as
//! tower writes them, so a request costs no allocation beyond the router's.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::routing::future::RouteFuture;
use http::{Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::State;
use crate::tls::PeerCertificate;

/// A request in flight on a connection, from its head to the end of its answer.
#[derive(Debug)]
pub(super) struct InFlight(Arc<State>);

impl InFlight {
    fn start(state: &Arc<State>, version: Version) -> InFlight {
        state.request_started(version == Version::HTTP_2);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The router as a hyper service that counts its requests in flight, and gives each request
/// the connection's verified client certificate, if any.
#[derive(Clone, Debug)]
pub(super) struct Tracked {
    router: axum::Router,
    state: Arc<State>,
    peer: Option<PeerCertificate>,
}

impl Tracked {
    /// `router`, serving the connection of `state`.
    pub(super) fn new(router: axum::Router, state: Arc<State>) -> Tracked {
        Tracked {
            router,
            state,
            peer: None,
        }
    }

    /// The same, on a connection whose TLS handshake verified the client certificate `peer`:
    /// every request carries it in its extensions.
    pub(super) fn with_peer(mut self, peer: Option<PeerCertificate>) -> Tracked {
        self.peer = peer;
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody<axum::body::Body>>;
    type Error = Infallible;
    type Future = TrackedFuture<RouteFuture<Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        let in_flight = InFlight::start(&self.state, request.version());
        // The router is always ready (axum's `poll_ready` is `Ready(Ok(()))`); a clone is an
        // `Arc` clone, as hyper-util's `TowerToHyperService` does per request.
        let mut router = self.router.clone();
        TrackedFuture {
            inner: tower::Service::call(&mut router, request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The router's future, whose response body carries the request's [`InFlight`].
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project! {
    /// A response body that ends its request's [`InFlight`] when dropped.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A socket that tells its connection's state when bytes arrive.
    #[derive(Debug)]
    pub(super) struct Watched<T> {
        #[pin]
        inner: T,
        state: Arc<State>,
    }
}

impl<T> Watched<T> {
    /// `inner`, reporting to `state`.
    pub(super) fn new(inner: T, state: Arc<State>) -> Watched<T> {
        Watched { inner, state }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = ready!(this.inner.poll_read(cx, buf));
        if buf.filled().len() > before {
            this.state.bytes_read();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
