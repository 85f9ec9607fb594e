//! Every backend metric, declared once with its help text. Labels are bounded: `stage` is one
//! of encode / index_search / presign / total, `kind` text / image / similar / recommend, `result` hit / miss,
//! `upstream` model-serving / index / storage, `operation` a fixed verb, `outcome` hits / empty /
//! below_floor, `check` one of the canary's [`QUALITY_CHECKS`], `sample` points / objects and
//! `problem` one of [`CATALOGUE_PROBLEMS`], `outcome` of a re-index one of [`REINDEX_OUTCOMES`].

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const SEARCH_STAGE_SECONDS: &str = "backend_search_stage_seconds";
pub const SEARCHES_TOTAL: &str = "backend_searches_total";
pub const SEARCH_OUTCOMES_TOTAL: &str = "backend_search_outcomes_total";
pub const STAGED_SEARCHES_TOTAL: &str = "backend_staged_searches_total";
pub const QUERY_CACHE_TOTAL: &str = "backend_query_cache_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "backend_upstream_errors_total";
pub const BREAKER_OPEN: &str = "backend_model_breaker_open";
pub const INDEX_POINTS: &str = "backend_index_points";
pub const INGESTED_ITEMS_TOTAL: &str = "backend_ingested_items_total";
pub const INDEX_OPERATION_SECONDS: &str = "backend_index_operation_seconds";
pub const MODEL_MISMATCH_TOTAL: &str = "backend_model_mismatch_total";
pub const REINDEX_ITEMS_TOTAL: &str = "backend_reindex_items_total";
pub const REINDEX_RUNNING: &str = "backend_reindex_running";
pub const REINDEX_PROGRESS: &str = "backend_reindex_progress_ratio";
pub const THUMBNAILS_TOTAL: &str = "backend_thumbnails_total";
pub const SEARCH_QUALITY_SCORE: &str = "search_quality_score";
pub const SEARCH_QUALITY_QUESTIONS: &str = "search_quality_questions";
pub const SEARCH_QUALITY_LAST_RUN: &str = "search_quality_last_run_timestamp_seconds";
pub const SEARCH_QUALITY_RUN_SECONDS: &str = "search_quality_run_seconds";

pub const CATALOGUE_SAMPLED: &str = "catalogue_check_sampled";
pub const CATALOGUE_PROBLEMS_FOUND: &str = "catalogue_check_problems";
pub const CATALOGUE_LAST_RUN: &str = "catalogue_check_last_run_timestamp_seconds";

/// What the catalogue check counts (`problem` label), see [`crate::catalogue_check`].
pub const CATALOGUE_PROBLEMS: [&str; 3] = ["missing_object", "presign_failed", "orphan_object"];

/// The catalogue check's gauges: absent until its first run.
pub const CATALOGUE: &[&str] = &[
    CATALOGUE_SAMPLED,
    CATALOGUE_PROBLEMS_FOUND,
    CATALOGUE_LAST_RUN,
];

/// The canary's checks (`check` label), see [`crate::canary`].
pub const QUALITY_CHECKS: [&str; 4] = [
    "caption_recall_at_10",
    "caption_mrr",
    "type_precision_at_10",
    "photo_recall_at_1",
];

/// The canary's gauges: absent until its first run (no data is not a score of 0).
pub const QUALITY: &[&str] = &[
    SEARCH_QUALITY_SCORE,
    SEARCH_QUALITY_QUESTIONS,
    SEARCH_QUALITY_LAST_RUN,
    SEARCH_QUALITY_RUN_SECONDS,
];

/// What a re-index did with each item (`outcome` label of [`REINDEX_ITEMS_TOTAL`]).
pub const REINDEX_OUTCOMES: [&str; 4] = ["embedded", "kept", "dropped", "removed"];

/// What became of a point's thumbnail (`outcome` label of [`THUMBNAILS_TOTAL`]).
pub const THUMBNAIL_OUTCOMES: [&str; 4] = ["made", "reused", "original", "impossible"];

/// The `kind` label's values.
pub const SEARCH_KINDS: [&str; 4] = ["text", "image", "similar", "recommend"];
/// The `outcome` label's values.
pub const SEARCH_OUTCOMES: [&str; 3] = ["hits", "empty", "below_floor"];

/// The `upstream` label's values.
pub const UPSTREAMS: [&str; 3] = ["model-serving", "index", "storage"];

pub const ALL: &[&str] = &[
    SEARCH_STAGE_SECONDS,
    SEARCHES_TOTAL,
    SEARCH_OUTCOMES_TOTAL,
    STAGED_SEARCHES_TOTAL,
    QUERY_CACHE_TOTAL,
    UPSTREAM_ERRORS_TOTAL,
    BREAKER_OPEN,
    INDEX_POINTS,
    INGESTED_ITEMS_TOTAL,
    INDEX_OPERATION_SECONDS,
    MODEL_MISMATCH_TOTAL,
    REINDEX_ITEMS_TOTAL,
    REINDEX_RUNNING,
    REINDEX_PROGRESS,
    THUMBNAILS_TOTAL,
];

pub fn describe() {
    describe_histogram!(
        SEARCH_STAGE_SECONDS,
        Unit::Seconds,
        "Time of each search stage: encode (query embedding), index_search, presign, total."
    );
    describe_counter!(
        SEARCHES_TOTAL,
        Unit::Count,
        "Searches answered, by kind (text, image, similar)."
    );
    describe_counter!(
        SEARCH_OUTCOMES_TOTAL,
        Unit::Count,
        "Searches answered, by kind and outcome: hits; empty (nothing in the index or the filters); below_floor (a text search nothing matched at the model's relevance floor, shown as no good matches)."
    );
    describe_counter!(
        STAGED_SEARCHES_TOTAL,
        Unit::Count,
        "Searches that named the staged model (model=, beside the live one), by kind and outcome as in backend_search_outcomes_total, which counts them too: the two models' outcome shares side by side."
    );
    describe_counter!(
        QUERY_CACHE_TOTAL,
        Unit::Count,
        "Query-embedding cache lookups, by result (hit, miss)."
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        Unit::Count,
        "Failed calls to a dependency, by upstream (model-serving, index, storage)."
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the model-serving circuit breaker is open, else 0."
    );
    describe_gauge!(INDEX_POINTS, Unit::Count, "Points in the vector index.");
    describe_counter!(
        INGESTED_ITEMS_TOTAL,
        Unit::Count,
        "Images upserted into the index."
    );
    describe_histogram!(
        INDEX_OPERATION_SECONDS,
        Unit::Seconds,
        "Time of index operations other than search, by operation (upsert, delete, flush, optimize)."
    );
    describe_gauge!(
        SEARCH_QUALITY_SCORE,
        "The search-quality canary's last score per check (0-1): caption_recall_at_10, caption_mrr, type_precision_at_10, photo_recall_at_1."
    );
    describe_gauge!(
        SEARCH_QUALITY_QUESTIONS,
        Unit::Count,
        "Questions the canary asked in its last run, per check."
    );
    describe_gauge!(
        SEARCH_QUALITY_LAST_RUN,
        Unit::Seconds,
        "Unix time of the canary's last completed run."
    );
    describe_gauge!(
        SEARCH_QUALITY_RUN_SECONDS,
        Unit::Seconds,
        "How long the canary's last run took."
    );
    describe_gauge!(
        CATALOGUE_SAMPLED,
        Unit::Count,
        "What the last catalogue check sampled, by sample: points (each object HEADed and its pre-signed URL fetched) and objects (each looked up in the index)."
    );
    describe_gauge!(
        CATALOGUE_PROBLEMS_FOUND,
        Unit::Count,
        "Problems the last catalogue check found in its sample, by problem: missing_object (a point without its object), presign_failed (the object exists, its pre-signed URL does not answer), orphan_object (an object no point references)."
    );
    describe_gauge!(
        CATALOGUE_LAST_RUN,
        Unit::Seconds,
        "Unix time of the last completed catalogue check."
    );
    describe_counter!(
        MODEL_MISMATCH_TOTAL,
        Unit::Count,
        "Searches and writes refused because the index holds another model's vectors than model-serving's (or the batch's) model."
    );
    describe_counter!(
        REINDEX_ITEMS_TOTAL,
        Unit::Count,
        "Items a re-index handled, by outcome: embedded (re-embedded into the new index), kept (already there: a resumed re-index), dropped (its object is gone or the model refused it), removed (deleted from the live index meanwhile)."
    );
    describe_gauge!(
        REINDEX_RUNNING,
        Unit::Count,
        "1 while a re-index runs on this backend, else 0."
    );
    describe_gauge!(
        REINDEX_PROGRESS,
        Unit::Count,
        "Share of the live index's items the running (or last) re-index has handled, 0 to 1."
    );
    describe_counter!(
        THUMBNAILS_TOTAL,
        Unit::Count,
        "Card-size thumbnails, by outcome: made (decoded, scaled, stored), reused (another point's object already had one), original (the original is already card-sized and smaller: it serves as its own), impossible (the original is gone or unreadable)."
    );
    for outcome in THUMBNAIL_OUTCOMES {
        metrics::counter!(THUMBNAILS_TOTAL, "outcome" => outcome).increment(0);
    }
    breaker_state(false);
    metrics::counter!(MODEL_MISMATCH_TOTAL).increment(0);
    metrics::gauge!(REINDEX_RUNNING).set(0.0);
    metrics::gauge!(REINDEX_PROGRESS).set(0.0);
    for outcome in REINDEX_OUTCOMES {
        metrics::counter!(REINDEX_ITEMS_TOTAL, "outcome" => outcome).increment(0);
    }
    // Error series exist from the start at 0, so rates and alerts over them are defined before
    // the first failure.
    for upstream in UPSTREAMS {
        metrics::counter!(UPSTREAM_ERRORS_TOTAL, "upstream" => upstream).increment(0);
    }
    // So are the shopper signals: zero-result and below-floor rates are defined from the start.
    for kind in SEARCH_KINDS {
        for outcome in SEARCH_OUTCOMES {
            metrics::counter!(SEARCH_OUTCOMES_TOTAL, "kind" => kind, "outcome" => outcome)
                .increment(0);
            metrics::counter!(STAGED_SEARCHES_TOTAL, "kind" => kind, "outcome" => outcome)
                .increment(0);
        }
    }
}

/// A canary run's scores (`check`, score, questions asked), its duration and its end (Unix time).
pub fn search_quality(scores: &[(&'static str, f64, usize)], seconds: f64, now: f64) {
    for &(check, score, asked) in scores {
        metrics::gauge!(SEARCH_QUALITY_SCORE, "check" => check).set(score);
        metrics::gauge!(SEARCH_QUALITY_QUESTIONS, "check" => check).set(asked as f64);
    }
    metrics::gauge!(SEARCH_QUALITY_RUN_SECONDS).set(seconds);
    metrics::gauge!(SEARCH_QUALITY_LAST_RUN).set(now);
}

/// A catalogue check's sample sizes and findings, and when it ended (Unix time).
pub fn catalogue_check(report: &crate::catalogue_check::CheckReport, now: f64) {
    metrics::gauge!(CATALOGUE_SAMPLED, "sample" => "points").set(report.points_checked as f64);
    metrics::gauge!(CATALOGUE_SAMPLED, "sample" => "objects").set(report.objects_checked as f64);
    for (problem, found) in CATALOGUE_PROBLEMS.into_iter().zip([
        report.missing_objects,
        report.presign_failures,
        report.orphan_objects,
    ]) {
        metrics::gauge!(CATALOGUE_PROBLEMS_FOUND, "problem" => problem).set(found as f64);
    }
    metrics::gauge!(CATALOGUE_LAST_RUN).set(now);
}

pub fn stage(stage: &'static str, elapsed: Duration) {
    metrics::histogram!(SEARCH_STAGE_SECONDS, "stage" => stage).record(elapsed.as_secs_f64());
}

pub fn search(kind: &'static str) {
    metrics::counter!(SEARCHES_TOTAL, "kind" => kind).increment(1);
}

/// What a search answered: `below_floor` when its hits were dropped by the relevance floor;
/// `staged` when it ran on the staged model.
pub fn search_outcome(kind: &'static str, hits: usize, below_floor: bool, staged: bool) {
    let outcome = match (below_floor, hits) {
        (true, _) => "below_floor",
        (false, 0) => "empty",
        (false, _) => "hits",
    };
    metrics::counter!(SEARCH_OUTCOMES_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
    if staged {
        metrics::counter!(STAGED_SEARCHES_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
    }
}

pub fn cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(QUERY_CACHE_TOTAL, "result" => result).increment(1);
}

pub fn upstream_error(upstream: &'static str) {
    metrics::counter!(UPSTREAM_ERRORS_TOTAL, "upstream" => upstream).increment(1);
}

pub fn breaker_state(open: bool) {
    metrics::gauge!(BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

pub fn index_points(points: u64) {
    metrics::gauge!(INDEX_POINTS).set(points as f64);
}

pub fn model_mismatch() {
    metrics::counter!(MODEL_MISMATCH_TOTAL).increment(1);
}

pub fn reindexed(outcome: &'static str, items: usize) {
    metrics::counter!(REINDEX_ITEMS_TOTAL, "outcome" => outcome).increment(items as u64);
}

pub fn reindex_state(running: bool, progress: f64) {
    metrics::gauge!(REINDEX_RUNNING).set(if running { 1.0 } else { 0.0 });
    metrics::gauge!(REINDEX_PROGRESS).set(progress.clamp(0.0, 1.0));
}

pub fn thumbnail(outcome: &'static str) {
    metrics::counter!(THUMBNAILS_TOTAL, "outcome" => outcome).increment(1);
}

pub fn ingested(items: usize) {
    metrics::counter!(INGESTED_ITEMS_TOTAL).increment(items as u64);
}

pub fn index_operation(operation: &'static str, elapsed: Duration) {
    metrics::histogram!(INDEX_OPERATION_SECONDS, "operation" => operation)
        .record(elapsed.as_secs_f64());
}
