//! The operational endpoints every service exposes: `/metrics`, `/health/live`, `/health/ready`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

/// Named readiness checks; the service is ready when every check is ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, check: &'static str) {
        self.set(check, Ok(()));
    }

    pub fn set_not_ready(&self, check: &'static str, reason: impl Into<String>) {
        self.set(check, Err(reason.into()));
    }

    fn set(&self, check: &'static str, state: Result<(), String>) {
        let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
        checks.insert(check, state);
    }

    pub fn is_ready(&self) -> bool {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks.values().all(Result::is_ok)
    }

    fn report(&self) -> (bool, serde_json::Value) {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let ready = checks.values().all(Result::is_ok);
        let detail: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, state)| {
                let value = match state {
                    Ok(()) => json!({"status": "ready"}),
                    Err(reason) => json!({"status": "not_ready", "reason": reason}),
                };
                ((*name).to_owned(), value)
            })
            .collect();
        (
            ready,
            json!({"status": if ready { "ready" } else { "not_ready" }, "checks": detail}),
        )
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// `/metrics`, `/health/live` and `/health/ready`, to be merged into a service's router.
pub fn ops_router<S>(metrics: PrometheusHandle, readiness: Readiness) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(OpsState { metrics, readiness })
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    crate::metrics::collect_process();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

async fn ready(State(state): State<OpsState>) -> Response {
    let (ready, body) = state.readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Resolves on SIGTERM or Ctrl-C: every service's graceful-shutdown trigger.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received; draining requests");
}
