//! Every model-serving metric, declared once with its help text.
//!
//! Labels are bounded: `modality` is `image` or `text`; `kind` is one of [`ErrorKind::label`];
//! `session` is `pool` or `rest`.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const DECODE_SECONDS: &str = "model_serving_decode_seconds";
pub const PREPROCESS_SECONDS: &str = "model_serving_preprocess_seconds";
pub const QUEUE_WAIT_SECONDS: &str = "model_serving_queue_wait_seconds";
pub const INFERENCE_SECONDS: &str = "model_serving_inference_seconds";
pub const BATCH_SIZE_ITEMS: &str = "model_serving_batch_size_items";
pub const ITEMS_ENCODED_TOTAL: &str = "model_serving_items_encoded_total";
pub const QUEUE_DEPTH_ITEMS: &str = "model_serving_queue_depth_items";
pub const QUEUE_CAPACITY_ITEMS: &str = "model_serving_queue_capacity_items";
pub const BATCH_CAP_ITEMS: &str = "model_serving_batch_cap_items";
pub const ERRORS_TOTAL: &str = "model_serving_errors_total";

pub const ALL: &[&str] = &[
    DECODE_SECONDS,
    PREPROCESS_SECONDS,
    QUEUE_WAIT_SECONDS,
    INFERENCE_SECONDS,
    BATCH_SIZE_ITEMS,
    ITEMS_ENCODED_TOTAL,
    QUEUE_DEPTH_ITEMS,
    QUEUE_CAPACITY_ITEMS,
    BATCH_CAP_ITEMS,
    ERRORS_TOTAL,
];

pub fn describe() {
    describe_histogram!(
        DECODE_SECONDS,
        Unit::Seconds,
        "Time to decode one uploaded image (including EXIF orientation and RGB conversion)."
    );
    describe_histogram!(
        PREPROCESS_SECONDS,
        Unit::Seconds,
        "Time to turn one decoded image (resize, crop, normalise) or one text (tokenize) into model input."
    );
    describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a request waited in the batching queue before its batch started."
    );
    describe_histogram!(
        INFERENCE_SECONDS,
        Unit::Seconds,
        "Time of one ONNX Runtime run over a whole batch, by modality and session: pool (the sessions that run batches) or rest (the session with every core that runs a batch finding the service idle, MODEL_SERVING_REST_SESSION)."
    );
    describe_histogram!(
        BATCH_SIZE_ITEMS,
        Unit::Count,
        "Items per ONNX Runtime run, after dynamic batching."
    );
    describe_counter!(
        ITEMS_ENCODED_TOTAL,
        Unit::Count,
        "Texts or images turned into embeddings."
    );
    describe_gauge!(
        QUEUE_DEPTH_ITEMS,
        Unit::Count,
        "Items waiting in the batching queue."
    );
    describe_gauge!(
        QUEUE_CAPACITY_ITEMS,
        Unit::Count,
        "Items the batching queue admits before refusing requests with 503."
    );
    describe_gauge!(
        BATCH_CAP_ITEMS,
        Unit::Count,
        "Most items the batch being formed may take: max_batch, or the size whose run at the recent runs' time per item comes nearest the run budget (MODEL_SERVING_MAX_RUN_MS), held against run-to-run noise."
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Requests refused or failed, by modality and error kind."
    );
    // The service's own faults exist at 0 from the start, so error rates and alerts over them are
    // defined before the first one (input errors appear when they first happen).
    for modality in MODALITIES {
        for kind in FAULT_KINDS {
            metrics::counter!(ERRORS_TOTAL, "modality" => modality, "kind" => kind).increment(0);
        }
    }
}

/// The `modality` label's values.
pub const MODALITIES: [&str; 2] = ["text", "image"];
/// Error kinds that are the service's fault (503/500), not the caller's.
pub const FAULT_KINDS: [&str; 3] = ["overloaded", "stopped", "inference"];

pub fn decode(elapsed: Duration) {
    metrics::histogram!(DECODE_SECONDS, "modality" => "image").record(elapsed.as_secs_f64());
}

pub fn preprocess(modality: &'static str, elapsed: Duration) {
    metrics::histogram!(PREPROCESS_SECONDS, "modality" => modality).record(elapsed.as_secs_f64());
}

pub fn queue_wait(modality: &'static str, elapsed: Duration) {
    metrics::histogram!(QUEUE_WAIT_SECONDS, "modality" => modality).record(elapsed.as_secs_f64());
}

pub fn inference(modality: &'static str, session: &'static str, elapsed: Duration) {
    metrics::histogram!(INFERENCE_SECONDS, "modality" => modality, "session" => session)
        .record(elapsed.as_secs_f64());
}

pub fn batch_size(modality: &'static str, items: usize) {
    metrics::histogram!(BATCH_SIZE_ITEMS, "modality" => modality).record(items as f64);
}

pub fn items_encoded(modality: &'static str, items: usize) {
    metrics::counter!(ITEMS_ENCODED_TOTAL, "modality" => modality).increment(items as u64);
}

pub fn queue_depth(modality: &'static str, items: usize) {
    metrics::gauge!(QUEUE_DEPTH_ITEMS, "modality" => modality).set(items as f64);
}

pub fn queue_capacity(modality: &'static str, items: usize) {
    metrics::gauge!(QUEUE_CAPACITY_ITEMS, "modality" => modality).set(items as f64);
}

pub fn error(modality: &'static str, kind: &'static str) {
    metrics::counter!(ERRORS_TOTAL, "modality" => modality, "kind" => kind).increment(1);
}

pub fn batch_cap(modality: &'static str, items: usize) {
    metrics::gauge!(BATCH_CAP_ITEMS, "modality" => modality).set(items as f64);
}
