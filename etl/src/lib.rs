//! The ETL job: a dataset → model-serving (image embeddings, in batches) → S3 (the image, under a
//! content-addressed key) → the backend's batch API (vector + payload).
//!
//! Stages overlap: a blocking reader feeds a bounded channel; up to `concurrency` batches are
//! encoded, stored and upserted at once. Point ids are [`catalog::point_id`]s of dataset and image
//! content (the scheme the backend's API uses too), so a rerun (after a crash, or to top up) skips
//! what is indexed, without re-encoding, and never duplicates; a photo the API added is not loaded
//! twice.

pub mod backup;
mod batch;
pub mod datasets;
pub mod download;
pub mod errors;
pub mod metrics;
pub mod reindex;
pub mod run_secrets;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backend_api::BackendClient;
use catalog::store::ObjectStore;
use catalog::{ImageObject, content_key};
use futures::StreamExt;
use model_serving_api::ModelServingClient;
use uuid::Uuid;

use crate::batch::process_batch;
use crate::datasets::{DatasetKind, Extracted};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dataset: DatasetKind,
    pub source: PathBuf,
    pub limit: Option<usize>,
    pub batch_size: usize,
    pub concurrency: usize,
    pub dry_run: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Pixels (width × height, from the headers) sent to model-serving in one request at most:
    /// its `MODEL_SERVING_MAX_REQUEST_PIXELS`, which refuses a larger request whole.
    pub max_request_pixels: u64,
}

/// model-serving's default per-request pixel budget (8 images at its 16 Mpx cap).
pub const DEFAULT_MAX_REQUEST_PIXELS: u64 = 8 * 16 * 1024 * 1024;

pub struct Clients {
    pub backend: BackendClient,
    pub model: ModelServingClient,
    pub store: ObjectStore,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub loaded: usize,
    pub already_present: usize,
    pub failed: Vec<(String, String)>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn throughput(&self) -> f64 {
        self.loaded as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    #[error("{stage} kept failing after {attempts} attempts: {message}")]
    Persistent {
        stage: &'static str,
        attempts: u32,
        message: String,
    },
    #[error("the dataset reader stopped unexpectedly")]
    Reader,
    /// The index holds another model's vectors than model-serving makes: nothing was loaded.
    #[error("{0}")]
    ModelMismatch(String),
}

/// Before any work: the index must be the model's that model-serving serves here (the backend
/// refuses each batch otherwise, after its encoding was spent).
async fn same_model(clients: &Clients) -> Result<(), LoadError> {
    let failed = |stage: &'static str, message: String| LoadError::Persistent {
        stage,
        attempts: 1,
        message,
    };
    let stats = clients
        .backend
        .stats()
        .await
        .map_err(|e| failed("backend stats", e.to_string()))?;
    let Some(indexed) = stats.fingerprint else {
        return Ok(());
    };
    let serving = clients
        .model
        .model_info()
        .await
        .map_err(|e| failed("model info", e.to_string()))?;
    if serving.fingerprint != indexed {
        return Err(LoadError::ModelMismatch(format!(
            "the index holds vectors of {}, but model-serving at {} serves {} ({}): load with the index's model, or re-index first (etl reindex)",
            stats.model.unwrap_or(indexed),
            clients.model.base_url(),
            serving.name,
            serving.fingerprint
        )));
    }
    Ok(())
}

/// Where an item's bytes are stored. Model-serving refuses what is not an image, so the
/// octet-stream fallback is only reached by bytes it could decode but the sniffer does not know.
pub fn stored_object(bytes: &[u8]) -> ImageObject {
    ImageObject::of_image(bytes).unwrap_or_else(|| ImageObject {
        key: content_key(bytes, "bin"),
        content_type: "application/octet-stream",
    })
}

/// The point id of an item's image: stable across runs, and the one the backend's API gives the
/// same photo.
pub fn point_id(dataset: DatasetKind, bytes: &[u8]) -> Uuid {
    catalog::point_id(dataset.name(), &stored_object(bytes).key)
}

/// Runs a load to the end, or until a dependency stays down (then nothing loaded is lost: every
/// acknowledged batch is in the index, and a rerun continues from there).
#[tracing::instrument(name = "etl.load", skip_all, fields(dataset = options.dataset.name(), limit = options.limit))]
pub async fn load(options: &LoadOptions, clients: &Clients) -> Result<Summary, LoadError> {
    if !options.dry_run {
        same_model(clients).await?;
    }
    let started = Instant::now();
    let batch_size = options.batch_size.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Extracted>(batch_size * 2);
    let (kind, source, limit) = (options.dataset, options.source.clone(), options.limit);
    let reader = tokio::task::spawn_blocking(move || datasets::extract(kind, &source, limit, &tx));

    let progress = if options.progress {
        indicatif::ProgressBar::new(options.limit.map_or(0, |l| l as u64))
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos:>7}/{len:7} items [{elapsed_precise}] {per_sec:>10} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut summary = Summary::default();
    // Batches from the channel; skipped entries are recorded as they pass.
    let mut skipped = Vec::new();
    let batches = futures::stream::poll_fn(|cx| {
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            match rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(Extracted::Item(item))) => {
                    batch.push(item);
                    if batch.len() == batch_size {
                        return std::task::Poll::Ready(Some(batch));
                    }
                }
                std::task::Poll::Ready(Some(Extracted::Skipped { key, reason })) => {
                    skipped.push((key, reason));
                }
                std::task::Poll::Ready(None) => {
                    return std::task::Poll::Ready((!batch.is_empty()).then_some(batch));
                }
                std::task::Poll::Pending if !batch.is_empty() => {
                    // Hand over a partial batch rather than hold items while the reader is slow.
                    return std::task::Poll::Ready(Some(batch));
                }
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    });
    if options.dry_run {
        let items: usize = batches
            .map(|b| b.len())
            .fold(0, |a, n| async move { a + n })
            .await;
        summary.loaded = 0;
        summary.already_present = 0;
        tracing::info!(items, "dry run: read the dataset, wrote nothing");
        progress.finish_and_clear();
        reader.await.map_err(|_| LoadError::Reader)??;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }
    let claimed = Mutex::new(HashSet::new());
    let mut results = batches
        .map(|batch| {
            process_batch(
                clients,
                options.dataset,
                batch,
                &claimed,
                options.max_request_pixels,
            )
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut error = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(outcome) => {
                let name = options.dataset.name();
                metrics::items(name, "loaded", outcome.loaded);
                metrics::items(name, "present", outcome.present);
                metrics::items(name, "failed", outcome.failed.len());
                metrics::failures(name, "image", outcome.failed.len());
                summary.loaded += outcome.loaded;
                summary.already_present += outcome.present;
                progress.inc((outcome.loaded + outcome.present + outcome.failed.len()) as u64);
                for (key, reason) in &outcome.failed {
                    tracing::warn!(item = %key, %reason, "item failed");
                }
                summary.failed.extend(outcome.failed);
                if !options.progress {
                    tracing::info!(
                        loaded = summary.loaded,
                        already_present = summary.already_present,
                        failed = summary.failed.len(),
                        "progress"
                    );
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    drop(results);
    progress.finish_and_clear();
    for (key, reason) in &skipped {
        tracing::warn!(item = %key, %reason, "entry skipped");
    }
    metrics::items(options.dataset.name(), "failed", skipped.len());
    metrics::failures(options.dataset.name(), "source", skipped.len());
    summary.failed.splice(0..0, skipped);
    summary.elapsed = started.elapsed();
    metrics::throughput(options.dataset.name(), summary.throughput());
    if let Some(e) = error {
        metrics::finished(options.dataset.name(), false);
        return Err(e);
    }
    reader.await.map_err(|_| LoadError::Reader)??;
    metrics::finished(options.dataset.name(), true);
    Ok(summary)
}
