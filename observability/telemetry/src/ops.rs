//! The operational endpoints every service exposes: `/metrics`, `/health/live`, `/health/ready`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

type Checks = RwLock<BTreeMap<&'static str, Result<(), String>>>;

/// Named readiness checks; the service is ready when every check is ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Checks>,
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A cheap check of one dependency: `Ok` when it answers, else why not (no secrets: the
/// reason is shown on `/health/ready`).
pub struct Probe {
    name: &'static str,
    check: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
}

impl Probe {
    pub fn new<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            check: Box::new(move || Box::pin(check())),
        }
    }
}

/// The task behind [`Readiness::watch`]; dropping it stops the probes.
#[must_use = "dropping the task stops the probes"]
pub struct ProbeTask(Option<tokio::task::JoinHandle<()>>);

impl ProbeTask {
    /// Lets the probes run until every clone of the watched [`Readiness`] is gone.
    pub fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for ProbeTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
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

    fn state(&self, check: &'static str) -> Option<Result<(), String>> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks.get(check).cloned()
    }

    fn set(&self, check: &'static str, state: Result<(), String>) {
        let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
        checks.insert(check, state);
    }

    /// Runs every probe now and then each `interval`, each bounded by `timeout`, and keeps its
    /// check's state. Transitions are logged. Outside a Tokio runtime nothing runs.
    pub fn watch(&self, probes: Vec<Probe>, interval: Duration, timeout: Duration) -> ProbeTask {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime: readiness probes do not run");
            return ProbeTask(None);
        };
        // Not ready until each probe has answered once: a service must not claim its
        // dependencies are fine before it has looked (the first probes run at once).
        {
            let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
            for probe in &probes {
                checks
                    .entry(probe.name)
                    .or_insert_with(|| Err("not probed yet".into()));
            }
        }
        let checks = Arc::downgrade(&self.checks);
        let probes: Arc<[Probe]> = probes.into();
        ProbeTask(Some(
            runtime.spawn(probe_loop(checks, probes, interval, timeout)),
        ))
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

async fn probe_loop(
    checks: Weak<Checks>,
    probes: Arc<[Probe]>,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut running = tokio::task::JoinSet::new();
        for (i, probe) in probes.iter().enumerate() {
            let check = (probe.check)();
            running.spawn(async move {
                let outcome = match tokio::time::timeout(timeout, check).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                };
                (i, outcome)
            });
        }
        let mut outcomes = Vec::with_capacity(probes.len());
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => tracing::error!(%error, "readiness probe failed to run"),
            }
        }
        // Every Readiness is gone: the service was dropped.
        let Some(checks) = checks.upgrade() else {
            return;
        };
        let readiness = Readiness { checks };
        for (i, outcome) in outcomes {
            let name = probes[i].name;
            let before = readiness.state(name);
            match (&before, &outcome) {
                (Some(Ok(())) | None, Err(reason)) => {
                    tracing::warn!(check = name, %reason, "dependency unreachable; not ready")
                }
                (Some(Err(_)), Ok(())) => tracing::info!(check = name, "dependency back; ready"),
                _ => {}
            }
            readiness.set(name, outcome);
        }
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
