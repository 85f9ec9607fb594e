//! [`protect`]: on the API routes, a total request timeout (503 + `Retry-After`), a deadline for
//! the whole request body (408: a slow upload is cut off), and a global concurrency limit that
//! sheds the excess at once (503 + `Retry-After`) instead of queueing it. The operational routes
//! (`/metrics`, `/health/*`) are merged outside it, so they answer while the API is saturated.
//!
//! Every refusal is the shared error body and is counted in
//! `http_requests_rejected_total{service, reason}`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{BoxError, Router};
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::error::error_response;
use crate::metrics::count_rejection;

/// Default deadline for a whole request body.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 20;
/// Default deadline for a request head.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default number of API requests handled at once.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;

/// The limits every service applies at its edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    /// From the request head to the response head; beyond it, 503 + `Retry-After`.
    pub request_timeout: Duration,
    /// From the request head to the body's last byte; beyond it, 408 and the connection closes.
    pub body_timeout: Duration,
    /// For the request head itself (HTTP/1), and for an idle kept-alive connection's next
    /// head; beyond it, the connection is closed.
    pub header_timeout: Duration,
    /// API requests handled at once; beyond it, 503 + `Retry-After` at once. 0: unlimited.
    pub max_concurrent: usize,
}

impl EdgeLimits {
    /// The defaults around a service's own request timeout.
    pub const fn new(request_timeout: Duration) -> Self {
        Self {
            request_timeout,
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            max_concurrent: DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }

    /// Refuses settings that would disable a timeout by accident.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("request timeout", self.request_timeout),
            ("body timeout", self.body_timeout),
            ("header timeout", self.header_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("the {name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Puts the timeouts and the concurrency limit on `api` (the routes that do work). Merge the
/// operational routes after this, so they stay reachable when the API sheds load.
pub fn protect<S>(api: Router<S>, service: &'static str, limits: &EdgeLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    crate::metrics::describe();
    let max = match limits.max_concurrent {
        0 => tokio::sync::Semaphore::MAX_PERMITS,
        n => n,
    };
    let deadline = BodyDeadline {
        service,
        limit: limits.body_timeout,
    };
    // Axum applies a layer to each route separately; the global limit shares one semaphore.
    let stack = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |error: BoxError| async move {
            edge_error(service, &error)
        }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(max))
        .timeout(limits.request_timeout);
    api.layer(middleware::from_fn_with_state(deadline, body_deadline))
        .layer(stack)
}

fn edge_error(service: &'static str, error: &BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        count_rejection(service, "overloaded");
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the service is at capacity; retry shortly",
            Some(1),
        )
    } else if error.is::<tower::timeout::error::Elapsed>() {
        count_rejection(service, "timeout");
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; retry shortly",
            Some(1),
        )
    } else {
        tracing::error!(%error, "edge layer failed");
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            None,
        )
    }
}

#[derive(Clone, Copy)]
struct BodyDeadline {
    service: &'static str,
    limit: Duration,
}

/// Gives the body `limit` from now to arrive in full. Whatever the handler makes of the failed
/// read (each maps body errors its own way), the client gets 408 and the connection closes.
async fn body_deadline(
    State(deadline): State<BodyDeadline>,
    request: Request,
    next: Next,
) -> Response {
    if http_body::Body::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let watch = expired.clone();
    let request = request.map(move |inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(deadline.limit)),
            expired: watch,
            done: false,
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    count_rejection(deadline.service, "body_timeout");
    let mut response = error_response(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body did not arrive in time",
        None,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body that fails once its deadline passes, however steadily bytes trickle in.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
    done: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            this.done = true;
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
