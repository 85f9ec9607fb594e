//! Every frontend metric, declared once with its help text. Labels are bounded: `call` is a
//! fixed backend operation, `outcome` one of ok / rejected / unavailable / timeout, `page` a
//! fixed page name.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_histogram};

pub const BACKEND_CALLS_TOTAL: &str = "frontend_backend_calls_total";
pub const BACKEND_CALL_SECONDS: &str = "frontend_backend_call_duration_seconds";
pub const PAGES_TOTAL: &str = "frontend_pages_total";

pub const ALL: &[&str] = &[BACKEND_CALLS_TOTAL, BACKEND_CALL_SECONDS, PAGES_TOTAL];

pub fn describe() {
    describe_counter!(
        BACKEND_CALLS_TOTAL,
        Unit::Count,
        "Calls to the backend, by call (search_text, search_image, similar, get_image, facets, stats) and outcome (ok, rejected, unavailable, timeout)."
    );
    describe_histogram!(
        BACKEND_CALL_SECONDS,
        Unit::Seconds,
        "Time of each call to the backend, by call."
    );
    describe_counter!(
        PAGES_TOTAL,
        Unit::Count,
        "Pages rendered, by page (home, results, image_results, similar, product, not_found) and what the shopper saw (ok, empty, error)."
    );
}

pub fn backend_call(call: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!(BACKEND_CALLS_TOTAL, "call" => call, "outcome" => outcome).increment(1);
    metrics::histogram!(BACKEND_CALL_SECONDS, "call" => call).record(took.as_secs_f64());
}

pub fn page(page: &'static str, shown: &'static str) {
    metrics::counter!(PAGES_TOTAL, "page" => page, "shown" => shown).increment(1);
}
