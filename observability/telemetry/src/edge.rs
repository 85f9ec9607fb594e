//! What every service puts between the network and its handlers, built once here:
//!
//! - [`protect`]: on the API routes, a total request timeout (503 + `Retry-After`), a deadline
//!   for the whole request body (408: a slow upload is cut off), and a global concurrency limit
//!   that sheds the excess at once (503 + `Retry-After`) instead of queueing it. The operational
//!   routes (`/metrics`, `/health/*`) are merged outside it, so they answer while the API is
//!   saturated.
//! - [`serve`]: hyper with a deadline for the request head (`axum::serve` sets no timer, so a
//!   client trickling header bytes would hold its connection forever), the peer address as
//!   [`ConnectInfo`], and graceful shutdown.
//! - [`crate::rate_limit`]: per-client and per-key rate limits (429 + `Retry-After`).
//!
//! Every refusal is the shared error body `{"error": {"code", "message"}}` and is counted in
//! `http_requests_rejected_total{service, reason}`.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::ServiceExt as _;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::metrics::HTTP_REQUESTS_REJECTED_TOTAL;

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

/// The shared error body, with `Retry-After` (seconds) when the client should come back.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

pub(crate) fn count_rejection(service: &'static str, reason: &'static str) {
    metrics::counter!(HTTP_REQUESTS_REJECTED_TOTAL, "service" => service, "reason" => reason)
        .increment(1);
}

/// Puts the timeouts and the concurrency limit on `api` (the routes that do work). Merge the
/// operational routes after this, so they stay reachable when the API sheds load.
pub fn protect<S>(api: Router<S>, service: &'static str, limits: &EdgeLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
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

/// Serves `app` on a bound listener until `shutdown` resolves, then drains in-flight requests.
///
/// Each request carries [`ConnectInfo<SocketAddr>`] (the peer), which the rate limits key on.
/// A request head must arrive within `header_timeout`, else the connection is closed; hyper
/// runs that deadline while a kept-alive connection waits for its next head too, so it is also
/// the idle limit of HTTP/1 connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Per-connection failures (reset before accept) need nothing; running out
                    // of descriptors needs a pause, not a busy loop.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service =
            app.clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, peer = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A request's peer, when it came through [`serve`] (in-process calls have none).
pub fn peer_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}
