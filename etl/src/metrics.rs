//! Every ETL metric, declared once with its help text, and the push to a Prometheus
//! Pushgateway (a batch job is not scraped: it pushes). Labels are bounded: `dataset` is one of
//! the three kinds, `outcome` loaded / present / failed, `stage` exists / encode / store / upsert.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const ITEMS_TOTAL: &str = "etl_items_total";
pub const FAILURES_TOTAL: &str = "etl_failures_total";
pub const STAGE_SECONDS: &str = "etl_stage_seconds";
pub const THROUGHPUT: &str = "etl_throughput_items_per_second";
pub const LAST_SUCCESS: &str = "etl_last_success_timestamp_seconds";
pub const JOB_FAILED: &str = "etl_job_failed";

pub fn describe() {
    describe_counter!(
        ITEMS_TOTAL,
        Unit::Count,
        "Dataset entries handled, by dataset and outcome (loaded, present, failed)."
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Time of one batch in a pipeline stage (exists, encode, store, upsert)."
    );
    describe_counter!(
        FAILURES_TOTAL,
        Unit::Count,
        "Dataset entries that failed, by dataset and reason: source (the entry itself: no or unreadable file, malformed line) or image (model-serving refused it: not an image, corrupt, too large)."
    );
    describe_gauge!(THROUGHPUT, "Items loaded per second over the run so far.");
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time at which a load last completed without a fatal error."
    );
    describe_gauge!(
        JOB_FAILED,
        "1 when the last load stopped on a persistent failure, else 0."
    );
}

pub fn items(dataset: &'static str, outcome: &'static str, n: usize) {
    metrics::counter!(ITEMS_TOTAL, "dataset" => dataset, "outcome" => outcome).increment(n as u64);
}

/// `reason`: `source` or `image` (see [`FAILURES_TOTAL`]'s help).
pub fn failures(dataset: &'static str, reason: &'static str, n: usize) {
    metrics::counter!(FAILURES_TOTAL, "dataset" => dataset, "reason" => reason).increment(n as u64);
}

pub fn stage(stage: &'static str, elapsed: Duration) {
    metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(elapsed.as_secs_f64());
}

pub fn throughput(dataset: &'static str, per_second: f64) {
    metrics::gauge!(THROUGHPUT, "dataset" => dataset).set(per_second);
}

pub fn finished(dataset: &'static str, ok: bool) {
    metrics::gauge!(JOB_FAILED, "dataset" => dataset).set(if ok { 0.0 } else { 1.0 });
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        metrics::gauge!(LAST_SUCCESS, "dataset" => dataset).set(now);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot push metrics to {url}: {message}")]
pub struct PushError {
    pub url: String,
    pub message: String,
}

/// Replaces this job's metrics group on the Pushgateway (`PUT /metrics/job/etl/dataset/<d>`).
pub async fn push(gateway: &str, dataset: &str, rendered: String) -> Result<(), PushError> {
    let url = format!(
        "{}/metrics/job/etl/dataset/{dataset}",
        gateway.trim_end_matches('/')
    );
    let err = |message: String| PushError {
        url: url.clone(),
        message,
    };
    let response = reqwest::Client::new()
        .put(&url)
        .header("content-type", "text/plain; version=0.0.4")
        .body(rendered)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(err(format!(
            "{status}: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    Ok(())
}
