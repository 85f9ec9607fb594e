//! The HTTP metrics every service emits, declared once with their help text.
//!
//! Labels are bounded: `service` (a binary's fixed name), `method` (the standard verbs, else
//! `OTHER`), `route` (the matched route template, else `unmatched`), `status` (the class: `2xx` ..).
//!
//! Plus the standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), read from `/proc` at each scrape.

use std::sync::LazyLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
pub const BUILD_INFO: &str = "build_info";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";

static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Refreshes the process metrics; `/metrics` calls it before rendering.
pub(crate) fn collect_process() {
    PROCESS.collect();
}

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
    PROCESS.describe();
    collect_process();
}
