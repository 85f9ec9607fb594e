//! W3C trace context on outgoing calls.

use opentelemetry_http::HeaderInjector;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds `traceparent` (and `tracestate`) for the current span to an outgoing request, so the
/// callee's spans join this trace.
pub fn inject(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let context = tracing::Span::current().context();
    let mut headers = http::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    request.headers(headers)
}
