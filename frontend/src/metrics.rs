//! Every frontend metric, declared once with its help text. Labels are bounded: `call` is a
//! fixed backend operation, `outcome` one of ok / rejected / unavailable / timeout, `page` a
//! fixed page name, `from` one of [`CLICK_SOURCES`].

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_histogram};

pub const BACKEND_CALLS_TOTAL: &str = "frontend_backend_calls_total";
pub const BACKEND_CALL_SECONDS: &str = "frontend_backend_call_duration_seconds";
pub const PAGES_TOTAL: &str = "frontend_pages_total";
pub const RESULT_CLICKS_TOTAL: &str = "frontend_result_clicks_total";
pub const RESULT_CLICK_POSITION: &str = "frontend_result_click_position";

/// Where a clicked card was shown: text results, photo results, "more like this", a product
/// page's similar items, a like / dislike list's results.
pub const CLICK_SOURCES: [&str; 5] = ["text", "image", "similar", "product", "taste"];

pub const ALL: &[&str] = &[
    BACKEND_CALLS_TOTAL,
    BACKEND_CALL_SECONDS,
    PAGES_TOTAL,
    RESULT_CLICKS_TOTAL,
    RESULT_CLICK_POSITION,
];

pub fn describe() {
    describe_counter!(
        BACKEND_CALLS_TOTAL,
        Unit::Count,
        "Calls to the backend, by call (search_text, search_image, similar, recommend, get_image, facets, stats) and outcome (ok, rejected, unavailable, timeout)."
    );
    describe_histogram!(
        BACKEND_CALL_SECONDS,
        Unit::Seconds,
        "Time of each call to the backend, by call."
    );
    describe_counter!(
        PAGES_TOTAL,
        Unit::Count,
        "Pages rendered, by page (home, results, image_results, similar, taste, product, not_found, click) and what the shopper saw (ok, empty, error)."
    );
    describe_counter!(
        RESULT_CLICKS_TOTAL,
        Unit::Count,
        "Result cards opened, by where they were shown (from: text, image, similar, product, taste). Click-through rate: these over the results pages shown with hits."
    );
    describe_histogram!(
        RESULT_CLICK_POSITION,
        "Position in the ranking (1 = first) of each opened result card, by where it was shown; sum / count is the mean click position."
    );
    // Every source's series from the start, so click-through rates are defined before a click.
    for from in CLICK_SOURCES {
        metrics::counter!(RESULT_CLICKS_TOTAL, "from" => from).increment(0);
    }
}

pub fn backend_call(call: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!(BACKEND_CALLS_TOTAL, "call" => call, "outcome" => outcome).increment(1);
    metrics::histogram!(BACKEND_CALL_SECONDS, "call" => call).record(took.as_secs_f64());
}

pub fn page(page: &'static str, shown: &'static str) {
    metrics::counter!(PAGES_TOTAL, "page" => page, "shown" => shown).increment(1);
}

pub fn click(from: &'static str, position: usize) {
    metrics::counter!(RESULT_CLICKS_TOTAL, "from" => from).increment(1);
    metrics::histogram!(RESULT_CLICK_POSITION, "from" => from).record(position as f64);
}
