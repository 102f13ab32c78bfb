//! Metrics in Prometheus' text exposition, and the HTTP endpoint that serves them beside
//! `/healthz` and `/readyz`.

use std::sync::OnceLock;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Health;
use super::recorders::Slot;
use crate::{Error, ErrorKind};

static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder; cheap to clone.
#[derive(Clone)]
pub struct Prometheus {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").finish_non_exhaustive()
    }
}

impl Prometheus {
    /// Installs the Prometheus recorder as the process's `metrics` recorder, or returns the
    /// one installed before. Install it before building buses, subscriptions, requesters and
    /// clients: they take their histogram handles when they are built, and a handle taken
    /// before any recorder records nothing.
    ///
    /// Fails if a `metrics` recorder other than tabgrab's is installed already. With
    /// [`Otel`](super::Otel)'s metrics export as well, both receive every measurement.
    pub fn install() -> Result<Prometheus, Error> {
        if let Some(handle) = INSTALLED.get() {
            return Ok(Prometheus {
                handle: handle.clone(),
            });
        }
        let recorder = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets(super::BUCKETS)
            .map_err(|e| Error::new(ErrorKind::Malformed, format!("metrics buckets: {e}")))?
            .build_recorder();
        super::recorders::install(Slot::Prometheus, move || {
            let _ = INSTALLED.set(recorder.handle());
            Box::new(recorder)
        })?;
        let handle = INSTALLED.get().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                "the Prometheus recorder was not installed",
            )
        })?;
        Ok(Prometheus { handle })
    }

    /// Every metric now, in Prometheus' text exposition format (components' statistics are
    /// read first: [`collect`](super::collect)).
    pub fn render(&self) -> String {
        super::collect();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The endpoint: `GET /metrics` (when `metrics` is given), `GET /healthz` (200 while the
/// process answers) and `GET /readyz` (200 when every check of `health` passes, 503 with the
/// failing checks otherwise; both JSON). Mount it in a service's own router, or serve it on
/// a port of its own with `axum::serve`.
pub fn router(metrics: Option<Prometheus>, health: Health) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let readiness = health.readiness();
                async move {
                    let status = if readiness.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(readiness))
                }
            }),
        );
    if let Some(metrics) = metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        );
    }
    router
}
