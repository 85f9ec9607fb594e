//! Re-index: every stored image embedded again from its object, into a new index beside the live
//! one (which keeps serving), then one switch for every reader (a Qdrant alias; the embedded
//! engine's pointer file).
//!
//! - The new index is named by its model ([`IndexModel::target_name`]) and kept when a run stops,
//!   so running again resumes: what it holds is kept, not embedded again.
//! - The live index is walked in id order, a page at a time; each page's objects are read from
//!   S3 and embedded in small requests, the payload carried over (keyword vectors are rebuilt
//!   from it by the index).
//! - Writes go on meanwhile, into the live index; the ids they touch are remembered. The last
//!   step holds writes back: it copies what is in the live index and not in the new one (and
//!   what was touched), removes what is no longer live, and switches. Nothing written before the
//!   switch is lost; writes waiting for it land in the new index.
//! - With `model: next`, the new index is made by `MODEL_SERVING_NEXT_URL`'s model, and the
//!   backend's searches move to that model-serving at the switch.
//! - With `stage`, there is no switch: the new index is staged beside the live one and searched
//!   by the requests that name its model ([`super::models`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backend_api::{ReindexModel, ReindexState, ReindexStatus};
use futures::StreamExt as _;
use uuid::Uuid;

use super::{SearchEngine, SearchError, now_rfc3339};
use crate::encoder::{Embedder, EncoderError};
use crate::index::{Filter, IndexModel, Point, Record, VectorIndex};
use crate::metrics;
use crate::storage::StorageError;

/// Items read from the live index per step.
const PAGE: usize = 64;
/// Images per encode request (model-serving's pixel budget per request holds 8 large photos).
const ENCODE_CHUNK: usize = 8;
/// Objects read from S3 at once.
const READS_IN_FLIGHT: usize = 8;
/// Ids read per step when the two indexes are compared.
const ID_PAGE: usize = 1000;
/// Ids remembered as written during a run; past this the last step compares every point.
const MAX_TOUCHED: usize = 100_000;

/// The re-index under way or last run, and what writes touched meanwhile.
#[derive(Default)]
pub struct Jobs {
    status: Mutex<Option<ReindexStatus>>,
    /// Ids written or deleted while a run is under way (`None`: too many, compare all).
    touched: Mutex<Option<HashSet<Uuid>>>,
    running: std::sync::atomic::AtomicBool,
    next: Mutex<Option<Arc<dyn Embedder>>>,
}

impl Jobs {
    fn status(&self) -> std::sync::MutexGuard<'_, Option<ReindexStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut ReindexStatus)) {
        if let Some(status) = self.status().as_mut() {
            change(status);
            let progress = if status.total == 0 {
                1.0
            } else {
                status.handled as f64 / status.total as f64
            };
            metrics::reindex_state(status.state == ReindexState::Running, progress);
        }
    }

    /// Remembers ids a write touched, while a run is under way.
    pub fn touched(&self, ids: impl IntoIterator<Item = Uuid>) {
        if !self.running.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = touched.as_mut() {
            set.extend(ids);
            if set.len() > MAX_TOUCHED {
                *touched = None;
            }
        }
    }
}

/// What one step did.
#[derive(Default)]
struct Counts {
    embedded: u64,
    kept: u64,
    dropped: u64,
}

impl SearchEngine {
    /// The model-serving of `MODEL_SERVING_NEXT_URL`, for `model: next` re-indexes.
    pub fn set_next_model(&self, encoder: Arc<dyn Embedder>) {
        *self.reindex.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(encoder);
    }

    /// The model-serving of `MODEL_SERVING_NEXT_URL`, if configured.
    pub(super) fn next_model(&self) -> Option<Arc<dyn Embedder>> {
        self.reindex
            .next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The re-index under way or last run.
    pub fn reindex_status(&self) -> Option<ReindexStatus> {
        self.reindex.status().clone()
    }

    /// Starts a re-index in the background, or answers the one under way. With `stage`, the
    /// new index is kept beside the live one ([`super::models`]) instead of replacing it.
    pub async fn start_reindex(
        self: &Arc<Self>,
        model: ReindexModel,
        stage: bool,
    ) -> Result<ReindexStatus, SearchError> {
        let (encoder, switch_encoder) = match model {
            ReindexModel::Current => (self.encoder(), false),
            ReindexModel::Next => match self.next_model() {
                Some(next) => (next, true),
                None => {
                    return Err(SearchError::Invalid(
                            "model \"next\" needs MODEL_SERVING_NEXT_URL: the model-serving of the new model".into(),
                        ));
                }
            },
        };
        if self
            .reindex
            .running
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return self.reindex_status().ok_or_else(|| {
                SearchError::Invalid("a re-index is starting; ask again in a moment".into())
            });
        }
        let begun = async {
            let target_model = encoder.describe().await?;
            if stage
                && self
                    .index
                    .model()
                    .is_some_and(|live| live.fingerprint == target_model.fingerprint)
            {
                return Err(SearchError::Invalid(format!(
                    "the live index is {target_model}'s already: stage another model ({{\"model\": \"next\", \"stage\": true}}), or re-index without stage"
                )));
            }
            let total = self.index.count(&Filter::default()).await?;
            Ok::<_, SearchError>((target_model, total))
        }
        .await;
        let (target_model, total) = match begun {
            Ok(begun) => begun,
            Err(error) => {
                self.reindex
                    .running
                    .store(false, std::sync::atomic::Ordering::Release);
                return Err(error);
            }
        };
        *self
            .reindex
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
        let status = ReindexStatus {
            state: ReindexState::Running,
            stage,
            model: target_model.name.clone(),
            fingerprint: target_model.fingerprint.clone(),
            from_fingerprint: self.index.model().map(|m| m.fingerprint),
            total,
            handled: 0,
            embedded: 0,
            kept: 0,
            dropped: 0,
            removed: 0,
            started_at: now_rfc3339(),
            seconds: 0.0,
            embedded_per_second: 0.0,
            error: None,
        };
        *self.reindex.status() = Some(status.clone());
        metrics::reindex_state(true, 0.0);
        tracing::info!(
            model = %target_model,
            from = ?status.from_fingerprint,
            total,
            stage,
            "re-index started"
        );
        let engine = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = engine
                .reindex(
                    &encoder,
                    &target_model,
                    switch_encoder && !stage,
                    stage,
                    started,
                )
                .await;
            let seconds = started.elapsed().as_secs_f64();
            engine.reindex.update(|status| {
                status.seconds = seconds;
                match &result {
                    Ok(()) => status.state = ReindexState::Done,
                    Err(error) => {
                        status.state = ReindexState::Failed;
                        status.error = Some(error.to_string());
                    }
                }
            });
            match &result {
                Ok(()) if stage => {
                    tracing::info!(model = %target_model, seconds, "re-index done; the new index is staged beside the live one (search it with model=)")
                }
                Ok(()) => {
                    tracing::info!(model = %target_model, seconds, "re-index done; the new index is live")
                }
                Err(error) => {
                    tracing::error!(%error, model = %target_model, "re-index failed; run it again to resume")
                }
            }
            *engine
                .reindex
                .touched
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
            engine
                .reindex
                .running
                .store(false, std::sync::atomic::Ordering::Release);
        });
        Ok(status)
    }

    async fn reindex(
        &self,
        encoder: &Arc<dyn Embedder>,
        model: &IndexModel,
        switch_encoder: bool,
        stage: bool,
        started: Instant,
    ) -> Result<(), SearchError> {
        let target = self.index.rebuild_target(model).await?;
        let mut offset = 0;
        loop {
            let page = self.index.list(offset, PAGE, &Filter::default()).await?;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            let counts = self.copy(&target, encoder, model, page).await?;
            self.progress(&counts, started);
        }
        // The graph is built now, not after the switch: the first searches on it are fast.
        target.optimize().await?;

        let _writes_held = self.writes.write().await;
        let touched = self
            .reindex
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let live = all_ids(self.index.as_ref()).await?;
        let copied = all_ids(target.as_ref()).await?;
        let mut again: Vec<Uuid> = live.difference(&copied).copied().collect();
        match touched {
            Some(touched) => again.extend(touched.iter().filter(|id| live.contains(*id))),
            // Too many writes to remember: every point is compared by its payload.
            None => again.extend(live.intersection(&copied)),
        }
        again.sort_unstable();
        again.dedup();
        let gone: Vec<Uuid> = copied.difference(&live).copied().collect();
        if !gone.is_empty() {
            target.delete(&gone).await?;
            metrics::reindexed("removed", gone.len());
            self.reindex.update(|s| s.removed += gone.len() as u64);
        }
        for ids in again.chunks(PAGE) {
            let records = self.index.retrieve(ids, false).await?;
            // Written again whatever the new index holds: a write may have changed its payload.
            let counts = self.embed_into(&target, encoder, model, records).await?;
            self.progress(&counts, started);
        }
        target.flush().await?;
        if stage {
            self.index.stage(model).await?;
        } else {
            self.index.promote(model).await?;
        }
        if switch_encoder {
            *self.encoder.write().unwrap_or_else(|e| e.into_inner()) = encoder.clone();
        }
        drop(_writes_held);
        self.staged_changed().await;
        self.after_write().await;
        Ok(())
    }

    fn progress(&self, counts: &Counts, started: Instant) {
        metrics::reindexed("embedded", counts.embedded as usize);
        metrics::reindexed("kept", counts.kept as usize);
        metrics::reindexed("dropped", counts.dropped as usize);
        let seconds = started.elapsed().as_secs_f64();
        self.reindex.update(|s| {
            s.embedded += counts.embedded;
            s.kept += counts.kept;
            s.dropped += counts.dropped;
            s.handled = s.embedded + s.kept + s.dropped;
            s.seconds = seconds;
            s.embedded_per_second = s.embedded as f64 / seconds.max(1e-3);
        });
    }

    /// One page: what the new index holds already is kept, the rest embedded into it.
    async fn copy(
        &self,
        target: &Arc<dyn VectorIndex>,
        encoder: &Arc<dyn Embedder>,
        model: &IndexModel,
        page: Vec<Record>,
    ) -> Result<Counts, SearchError> {
        let ids: Vec<Uuid> = page.iter().map(|r| r.id).collect();
        let there: HashSet<Uuid> = target
            .retrieve(&ids, false)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let kept = there.len() as u64;
        let todo = page
            .into_iter()
            .filter(|r| !there.contains(&r.id))
            .collect();
        let mut counts = self.embed_into(target, encoder, model, todo).await?;
        counts.kept += kept;
        Ok(counts)
    }

    /// Reads the records' objects, embeds them with `encoder` and writes them into `target`
    /// with their payloads. An object gone or refused by the model is dropped (and logged); a
    /// fault stops the run (it resumes).
    async fn embed_into(
        &self,
        target: &Arc<dyn VectorIndex>,
        encoder: &Arc<dyn Embedder>,
        model: &IndexModel,
        records: Vec<Record>,
    ) -> Result<Counts, SearchError> {
        let mut counts = Counts::default();
        let read: Vec<(Record, Result<Vec<u8>, StorageError>)> =
            futures::stream::iter(records.into_iter().map(|record| async move {
                let bytes = self.store.get(&record.payload.s3_key).await;
                (record, bytes)
            }))
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await;
        let mut ready = Vec::with_capacity(read.len());
        for (record, bytes) in read {
            match bytes {
                Ok(bytes) => ready.push((record, bytes)),
                Err(StorageError::NotFound(key)) => {
                    tracing::warn!(id = %record.id, s3_key = %key, "re-index: object gone; item dropped");
                    counts.dropped += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
        for chunk in ready.chunks(ENCODE_CHUNK) {
            let images: Vec<Vec<u8>> = chunk.iter().map(|(_, bytes)| bytes.clone()).collect();
            let vectors = match encoder.embed_images(images).await {
                Ok(embedded) => {
                    check_same_model(model, &embedded.model)?;
                    embedded.value.into_iter().map(Some).collect()
                }
                // One image refused: the others one at a time, so only it is dropped.
                Err(EncoderError::Rejected { .. }) => {
                    let mut vectors = Vec::with_capacity(chunk.len());
                    for (record, bytes) in chunk {
                        match encoder.embed_images(vec![bytes.clone()]).await {
                            Ok(embedded) => {
                                check_same_model(model, &embedded.model)?;
                                vectors.push(embedded.value.into_iter().next());
                            }
                            Err(EncoderError::Rejected { message, .. }) => {
                                tracing::warn!(id = %record.id, %message, "re-index: the model refused this image; item dropped");
                                vectors.push(None);
                            }
                            Err(error) => return Err(error.into()),
                        }
                    }
                    vectors
                }
                Err(error) => return Err(error.into()),
            };
            let mut points = Vec::with_capacity(chunk.len());
            for ((record, _), vector) in chunk.iter().zip(vectors) {
                match vector {
                    Some(vector) => points.push(Point {
                        id: record.id,
                        vector,
                        payload: record.payload.clone(),
                    }),
                    None => counts.dropped += 1,
                }
            }
            counts.embedded += points.len() as u64;
            target.upsert(points).await?;
        }
        Ok(counts)
    }
}

/// A model-serving that changes its model during a run would mix two models in the new index.
fn check_same_model(expected: &IndexModel, got: &IndexModel) -> Result<(), SearchError> {
    if expected.fingerprint == got.fingerprint {
        return Ok(());
    }
    metrics::model_mismatch();
    Err(SearchError::ModelMismatch {
        index: expected.clone(),
        other: got.to_string(),
        other_source: "the model the re-index's model-serving serves now",
    })
}

/// Every id an index holds.
async fn all_ids(index: &dyn VectorIndex) -> Result<HashSet<Uuid>, SearchError> {
    let mut ids = HashSet::new();
    let mut offset = 0;
    loop {
        let page = index.list(offset, ID_PAGE, &Filter::default()).await?;
        if page.is_empty() {
            return Ok(ids);
        }
        offset += page.len();
        ids.extend(page.into_iter().map(|r| r.id));
    }
}
