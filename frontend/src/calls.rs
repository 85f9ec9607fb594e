//! The backend calls a page makes: each one on behalf of the shopper the edge resolved, under the
//! page's timeout, counted by outcome, and reduced to a [`Trouble`] when it gives nothing to show.
//! The facets for the filter selects are cached briefly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use backend_api::{BackendClient, ClientError, FacetsResponse};
use telemetry::rate_limit::ClientIp;

use crate::metrics;

#[derive(Clone)]
pub struct AppState {
    pub backend: BackendClient,
    pub facets: moka::future::Cache<(), Arc<FacetsResponse>>,
    pub page_size: usize,
    pub max_upload_bytes: usize,
    pub timeout: Duration,
}

/// Why a backend call gave nothing to show.
#[derive(Debug)]
pub(crate) enum Trouble {
    Slow,
    Down,
    Rejected { status: u16, message: String },
}

impl AppState {
    /// The backend client for one request: on behalf of the shopper the edge resolved, so the
    /// backend's per-client limits see shoppers rather than this frontend.
    pub(crate) fn backend_for(&self, client: Option<Extension<ClientIp>>) -> BackendClient {
        match client {
            Some(Extension(ClientIp(ip))) => self.backend.on_behalf_of(ip),
            None => self.backend.clone(),
        }
    }

    /// Runs one backend call under the page's timeout, counting it by outcome.
    pub(crate) async fn call<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Trouble> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, future).await {
            Err(_) => Err(Trouble::Slow),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ClientError::Transport(e))) if e.is_timeout() => Err(Trouble::Slow),
            Ok(Err(ClientError::Rejected {
                status, message, ..
            })) => Err(Trouble::Rejected { status, message }),
            // The backend's per-shopper limit (the frontend calls on the shopper's behalf).
            Ok(Err(ClientError::RateLimited { message, .. })) => Err(Trouble::Rejected {
                status: 429,
                message,
            }),
            Ok(Err(error)) => {
                tracing::warn!(call, error = %error, "backend call failed");
                Err(Trouble::Down)
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Trouble::Slow) => "timeout",
            Err(Trouble::Down) => "unavailable",
            Err(Trouble::Rejected { .. }) => "rejected",
        };
        if matches!(result, Err(Trouble::Slow)) {
            tracing::warn!(
                call,
                timeout_ms = self.timeout.as_millis() as u64,
                "backend call timed out"
            );
        }
        metrics::backend_call(call, outcome, started.elapsed());
        result
    }

    /// The filter values, cached briefly; a page renders without filters when they fail.
    pub(crate) async fn facets(&self) -> Option<FacetsResponse> {
        if let Some(cached) = self.facets.get(&()).await {
            return Some((*cached).clone());
        }
        let facets = self.call("facets", self.backend.facets()).await.ok()?;
        self.facets.insert((), Arc::new(facets.clone())).await;
        Some(facets)
    }
}
