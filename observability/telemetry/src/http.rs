//! Per-request telemetry for axum: a span that continues an incoming `traceparent`, and the
//! request metrics of [`crate::metrics`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use opentelemetry_http::HeaderExtractor;
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUESTS_TOTAL};

/// Routes that are polled constantly; their requests are logged at debug level only.
const QUIET_ROUTES: &[&str] = &["/metrics", "/health/live", "/health/ready"];

/// Middleware: `Router::layer(axum::middleware::from_fn_with_state("svc", track_requests))`.
/// Added with `Router::layer`, it runs after routing, so the matched route template is known.
pub async fn track_requests(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());

    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = %route,
        http.response.status_code = Empty,
        url.path = %request.uri().path(),
    );
    // The span has not been exported or logged yet, so the parent can still be set.
    let _ = span.set_parent(parent);

    let in_flight = metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT, "service" => service);
    in_flight.increment(1.0);
    // Decrement even when the client goes away and this future is dropped.
    struct InFlight(metrics::Gauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    let _in_flight = InFlight(in_flight);

    let response = next.run(request).instrument(span.clone()).await;

    let status = response.status();
    let elapsed = start.elapsed();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let class = status_class(status.as_u16());
    let labels = [
        ("service", service.to_owned()),
        ("method", method.to_owned()),
        ("route", route.clone()),
        ("status", class.to_owned()),
    ];
    metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());

    let duration_ms = elapsed.as_secs_f64() * 1e3;
    span.in_scope(|| {
        if QUIET_ROUTES.contains(&route.as_str()) {
            tracing::debug!(method, route = %route, status = status.as_u16(), duration_ms, "request completed");
        } else if status.is_server_error() {
            tracing::warn!(method, route = %route, status = status.as_u16(), duration_ms, "request failed");
        } else {
            tracing::info!(method, route = %route, status = status.as_u16(), duration_ms, "request completed");
        }
    });
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").expect("method")),
            "OTHER"
        );
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(413), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
    }
}
