//! The search engine: query → embedding → vector search → pre-signed URLs, and the write path.
//! It knows nothing of HTTP: its [`SearchError`]s have an [`ErrorKind`], which the API maps to a
//! status. It sees the index and the model through two traits, [`VectorIndex`] and [`Embedder`].
//!
//! - [`query`]: a [`SearchPlan`] made once, then text, image and "more like this" searches;
//! - [`catalog`]: get, list, delete, stats;
//! - [`ingest`]: the write path (batches, single images) and the per-object locks;
//! - [`facets`]: the facet snapshot that filters are checked against.

mod catalog;
pub mod compose;
mod facets;
mod ingest;
mod models;
mod query;
pub mod reindex;
#[cfg(test)]
mod tests;

pub use query::SearchPlan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_api::ErrorKind;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::encoder::{Embedder, EncoderError};
use crate::index::{Filter, IndexError, IndexModel, VectorIndex};
use crate::metrics;
use crate::storage::{ObjectStore, StorageError};
use facets::FacetSnapshot;

pub const DEFAULT_K: usize = 20;
pub use backend_api::{MAX_PAGE as MAX_K, MAX_RESULT_DEPTH as MAX_DEPTH};
pub const MAX_BATCH: usize = 1000;
pub const MAX_QUERY_CHARS: usize = 500;
/// What a caller refused for a model mismatch is told to wait: it lasts until an operator acts.
const MODEL_MISMATCH_RETRY: Duration = Duration::from_secs(30);
/// Stripes of the per-object lock: adds and deletes of the same object key are serialised.
const OBJECT_LOCK_STRIPES: usize = 64;
/// How long (and how many) object keys removed by deletes are remembered for batch ingests.
const RECENTLY_DELETED_FOR: Duration = Duration::from_secs(600);
const RECENTLY_DELETED_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
    /// The upload is not an image at all (e.g. empty): refused as model-serving refuses one.
    #[error("{0}")]
    NotAnImage(String),
    #[error("no image with id {0}")]
    NotFound(Uuid),
    /// A batch item names an object that a delete removed while the batch was on its way.
    #[error("object {0} was deleted meanwhile; store it again, then retry")]
    ObjectGone(String),
    /// Searching or writing would mix two models' vectors.
    #[error(
        "the index holds vectors of model {index}, but {other_source} is {other}: re-index with `etl reindex`, or serve the index's model"
    )]
    ModelMismatch {
        index: IndexModel,
        other: String,
        other_source: &'static str,
    },
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl SearchError {
    /// What kind of failure this is, whatever the transport.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidRequest,
            Self::NotAnImage(_) => ErrorKind::UnsupportedImage,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::ObjectGone(_) => ErrorKind::ObjectMissing,
            Self::ModelMismatch { .. } => ErrorKind::ModelMismatch,
            Self::Encoder(e) => e.kind(),
            Self::Index(IndexError::Dimension { .. }) => ErrorKind::DimensionMismatch,
            Self::Index(IndexError::Unavailable(_)) => ErrorKind::IndexUnavailable,
            Self::Index(IndexError::Internal(_)) => ErrorKind::Internal,
            Self::Storage(StorageError::Unavailable(_)) => ErrorKind::StorageUnavailable,
            Self::Storage(_) => ErrorKind::Internal,
        }
    }

    /// How long to wait before trying again, when a dependency said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Encoder(e) => e.retry_after(),
            Self::ModelMismatch { .. } => Some(MODEL_MISMATCH_RETRY),
            _ => None,
        }
    }
}

/// Rebuilds the HNSW graph once writes have been quiet for a while, off the request path.
struct OptimizeScheduler {
    notify: Notify,
}

pub struct SearchEngine {
    index: Arc<dyn VectorIndex>,
    store: ObjectStore,
    /// Replaced when a re-index with another model-serving's model is promoted.
    encoder: std::sync::RwLock<Arc<dyn Embedder>>,
    /// Writes hold it shared; a re-index's last catch-up and switch hold it alone, so that no
    /// write lands in the old index after its last look.
    writes: tokio::sync::RwLock<()>,
    /// The re-index under way or last run (`POST /v1/admin/reindex`).
    reindex: reindex::Jobs,
    /// The index staged beside the live one, as last looked up ([`models`]).
    staged: tokio::sync::Mutex<models::StagedCache>,
    /// The thumbnail task, woken after writes (set once the engine is built).
    thumbnails: std::sync::OnceLock<Arc<crate::thumbnails::Thumbnails>>,
    optimize: Arc<OptimizeScheduler>,
    /// Known values of each filter field: what filters are checked against.
    facets: FacetSnapshot,
    /// Objects are content-addressed and shared by every point with the same bytes. A delete
    /// ("no point refers to it any more, remove it") racing an add of the same bytes ("store it,
    /// index a point") could remove an object the new point uses; both hold the key's stripe.
    object_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Keys whose object a delete removed lately. A batch ingest names objects the ETL stored
    /// before sending it, so the lock alone cannot help when the delete comes in between: such
    /// keys are checked (`HEAD`) before their points are written. Deletes are rare, so almost
    /// every batch checks nothing.
    recently_deleted: std::sync::Mutex<HashMap<String, Instant>>,
    /// Held while a write makes a new index or records its model: the first writes to a new
    /// index arrive together (an ETL's concurrent batches), and one of them records the model.
    adopting: tokio::sync::Mutex<()>,
}

/// Which lock stripe guards `key` (std's default hasher is fixed within a process).
fn object_stripe(key: &str) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % OBJECT_LOCK_STRIPES as u64) as usize
}

fn now_rfc3339() -> String {
    telemetry::time_rfc3339(std::time::SystemTime::now()).unwrap_or_default()
}

/// Object keys, point ids and sniffing are the catalog's rules, shared with the ETL.
pub use ::catalog::{content_key, sniff_image};

impl SearchEngine {
    pub fn new(
        index: Arc<dyn VectorIndex>,
        store: ObjectStore,
        encoder: Arc<dyn Embedder>,
        optimize_after: Duration,
    ) -> Arc<Self> {
        let optimize = Arc::new(OptimizeScheduler {
            notify: Notify::new(),
        });
        let engine = Arc::new(Self {
            index,
            store,
            encoder: std::sync::RwLock::new(encoder),
            writes: tokio::sync::RwLock::new(()),
            reindex: reindex::Jobs::default(),
            staged: tokio::sync::Mutex::default(),
            thumbnails: std::sync::OnceLock::new(),
            optimize: optimize.clone(),
            facets: FacetSnapshot::new(facets::SNAPSHOT_TTL),
            object_locks: (0..OBJECT_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            recently_deleted: std::sync::Mutex::new(HashMap::new()),
            adopting: tokio::sync::Mutex::new(()),
        });
        // The optimizer holds only a weak handle: it ends when the engine is dropped.
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            loop {
                optimize.notify.notified().await;
                // Wait for a quiet period: every new write restarts the wait.
                loop {
                    tokio::select! {
                        _ = optimize.notify.notified() => continue,
                        _ = tokio::time::sleep(optimize_after) => break,
                    }
                }
                let Some(engine) = weak.upgrade() else { return };
                let started = Instant::now();
                match engine.index.optimize().await {
                    Ok(()) => {
                        metrics::index_operation("optimize", started.elapsed());
                        tracing::info!(
                            duration_ms = started.elapsed().as_millis() as u64,
                            "index optimized"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "index optimization failed"),
                }
            }
        });
        engine
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    pub fn encoder(&self) -> Arc<dyn Embedder> {
        self.encoder
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuses vectors `model` made when the live index holds another model's
    /// ([`models::Serving::check_model`]).
    fn check_model(&self, model: &IndexModel) -> Result<(), SearchError> {
        self.live().check_model(model)
    }

    /// Before a write of `model`'s vectors: the index must be that model's, or take it (a new
    /// index, or one made before models were recorded, of the same vector size).
    async fn admit_model(&self, model: &IndexModel) -> Result<(), SearchError> {
        // No model recorded: another write may be making the index right now; decide after it
        // has (it records the model, or this write does).
        let _adopting = match self.index.model() {
            Some(_) => None,
            None => Some(self.adopting.lock().await),
        };
        match self.index.model() {
            Some(index) if index.fingerprint == model.fingerprint => Ok(()),
            Some(_) => self.check_model(model),
            None => {
                if self.index.dim().is_some() {
                    tracing::warn!(
                        model = %model,
                        "the index records no model (made before models were recorded); it is taken to be this one's"
                    );
                }
                self.index.adopt(model).await?;
                Ok(())
            }
        }
    }

    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    fn written(&self) {
        self.optimize.notify.notify_one();
    }

    /// Starts making thumbnails in the background for what is written (and what is there).
    pub fn start_thumbnails(self: &Arc<Self>, sweep: Duration) {
        let task = crate::thumbnails::Thumbnails::spawn(self, sweep);
        let _ = self.thumbnails.set(task);
    }

    async fn after_write(&self) {
        if let Some(thumbnails) = self.thumbnails.get() {
            thumbnails.wake();
        }
        self.facets.invalidate().await;
        if let Ok(points) = self.index.count(&Filter::default()).await {
            metrics::index_points(points);
        }
        self.written();
    }

    /// Makes every acknowledged write durable (graceful shutdown); the thumbnail task stops
    /// first, so it holds the engine no longer.
    pub async fn shutdown(&self) -> Result<(), SearchError> {
        if let Some(thumbnails) = self.thumbnails.get() {
            thumbnails.stop().await;
        }
        let started = Instant::now();
        self.index.flush().await?;
        metrics::index_operation("flush", started.elapsed());
        Ok(())
    }
}
