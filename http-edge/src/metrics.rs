//! The one metric of the edge, declared with its help text.

use metrics::{Unit, describe_counter};

/// Refused at the edge before a handler ran; `reason`: `overloaded`, `timeout`, `body_timeout`,
/// `rate_limited`.
pub const HTTP_REQUESTS_REJECTED_TOTAL: &str = "http_requests_rejected_total";

/// Declares the edge's metric. Called where a service builds its edge ([`crate::protect`],
/// [`crate::rate_limit::RateLimit`]), after its recorder is installed; repeating it is harmless.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_REJECTED_TOTAL,
        Unit::Count,
        "HTTP requests refused at the edge, by service and reason (overloaded, timeout, body_timeout, rate_limited)."
    );
}

pub(crate) fn count_rejection(service: &'static str, reason: &'static str) {
    metrics::counter!(HTTP_REQUESTS_REJECTED_TOTAL, "service" => service, "reason" => reason)
        .increment(1);
}
