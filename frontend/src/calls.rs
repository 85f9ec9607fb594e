//! The backend calls a page makes: each one on behalf of the shopper the edge resolved, under the
//! page's timeout, counted by outcome, and reduced to a [`Trouble`] when it gives nothing to show.
//! The facets for the filter selects are cached briefly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use backend_api::{BackendClient, ClientError, ErrorKind, FacetsResponse};
use http_edge::rate_limit::ClientIp;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// No answer within the page's timeout.
    Slow,
    /// Unreachable, or a fault on its side (5xx, an answer that does not decode).
    Down,
    /// The backend refused the request, for the reason its error code names. Its message is for
    /// operators (it may name routes); the page shows the kind's shopper-safe words.
    Refused(ErrorKind),
}

impl Trouble {
    /// The trouble of a refusal carrying `code`; a code this build does not know is a refusal of
    /// the request as asked.
    pub(crate) fn refused(code: &str) -> Self {
        Self::Refused(ErrorKind::from_code(code).unwrap_or(ErrorKind::InvalidRequest))
    }
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
                status,
                code,
                message,
            })) => {
                tracing::info!(call, status, code, message, "backend refused the request");
                Err(Trouble::refused(&code))
            }
            // The backend's per-shopper limit (the frontend calls on the shopper's behalf).
            Ok(Err(ClientError::RateLimited { .. })) => {
                Err(Trouble::Refused(ErrorKind::RateLimited))
            }
            Ok(Err(error)) => {
                tracing::warn!(call, error = %error, "backend call failed");
                Err(Trouble::Down)
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Trouble::Slow) => "timeout",
            Err(Trouble::Down) => "unavailable",
            Err(Trouble::Refused(_)) => "rejected",
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
