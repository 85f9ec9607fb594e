//! The HTTP metrics every service emits, declared once with their help text.
//!
//! Labels are bounded: `service` (a binary's fixed name), `method` (the standard verbs, else
//! `OTHER`), `route` (the matched route template, else `unmatched`), `status` (the class: `2xx` ..).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
pub const BUILD_INFO: &str = "build_info";

pub(crate) fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by service, method, route template and status class."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from receiving an HTTP request to sending its response head."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        Unit::Count,
        "HTTP requests being handled right now."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the service name and its version."
    );
}
