//! The write path: batches of ready-made vectors (the ETL's), single images (encoded here), and
//! the per-object locks that keep a delete from removing an object a new point uses.

use std::collections::HashMap;
use std::time::Instant;

use backend_api::{ImageAttributes, ImageItem, IngestItem};
use uuid::Uuid;

use super::{
    MAX_BATCH, RECENTLY_DELETED_FOR, RECENTLY_DELETED_MAX, SearchEngine, SearchError, now_rfc3339,
    object_stripe,
};
use crate::index::{Point, StoredPayload};
use crate::metrics;

impl SearchEngine {
    /// Holds the lock stripes of `keys`, taken in stripe order so two writers cannot deadlock.
    pub(super) async fn lock_objects<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(object_stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.object_locks[stripe].lock().await);
        }
        guards
    }

    fn recently_deleted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.recently_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn remember_deleted(&self, key: &str) {
        let mut deleted = self.recently_deleted();
        if deleted.len() >= RECENTLY_DELETED_MAX {
            deleted.retain(|_, at| at.elapsed() < RECENTLY_DELETED_FOR);
        }
        if deleted.len() < RECENTLY_DELETED_MAX {
            deleted.insert(key.to_owned(), Instant::now());
        }
    }

    /// Under the keys' locks: every object a delete removed lately must be back before a point
    /// may name it.
    async fn check_objects(&self, points: &[Point]) -> Result<(), SearchError> {
        let suspects: Vec<String> = {
            let deleted = self.recently_deleted();
            if deleted.is_empty() {
                return Ok(());
            }
            let mut keys: Vec<String> = points
                .iter()
                .map(|p| &p.payload.s3_key)
                .filter(|k| deleted.contains_key(*k))
                .cloned()
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        for key in suspects {
            if !self.store.exists(&key).await? {
                return Err(SearchError::ObjectGone(key));
            }
            self.recently_deleted().remove(&key);
        }
        Ok(())
    }

    /// Idempotent upsert of ready-made vectors (the ETL's path). `made_by` is the fingerprint
    /// of the model that made them, when the caller says; either way they must be the model's
    /// that model-serving serves, and the index's.
    #[tracing::instrument(skip_all, fields(items = items.len()))]
    pub async fn ingest(
        &self,
        items: Vec<IngestItem>,
        made_by: Option<&str>,
    ) -> Result<usize, SearchError> {
        let points = self.points(items)?;
        let serving = self.encoder().describe().await?;
        if let Some(made_by) = made_by
            && made_by != serving.fingerprint
        {
            metrics::model_mismatch();
            return Err(SearchError::ModelMismatch {
                index: self.index.model().unwrap_or(serving),
                other: made_by.to_owned(),
                other_source: "the batch's model",
            });
        }
        let _writing = self.writes.read().await;
        self.admit_model(&serving).await?;
        let guards = self
            .lock_objects(points.iter().map(|p| p.payload.s3_key.as_str()))
            .await;
        self.check_objects(&points).await?;
        self.reindex.touched(points.iter().map(|p| p.id));
        let n = self.upsert(points).await?;
        drop(guards);
        self.after_write().await;
        Ok(n)
    }

    /// Checks ingest items and makes them points.
    fn points(&self, items: Vec<IngestItem>) -> Result<Vec<Point>, SearchError> {
        if items.is_empty() {
            return Err(SearchError::Invalid("no items".into()));
        }
        if items.len() > MAX_BATCH {
            return Err(SearchError::Invalid(format!(
                "at most {MAX_BATCH} items per batch"
            )));
        }
        let dim = match self.index.dim() {
            Some(dim) => dim,
            None => items[0].vector.len(),
        };
        let created_at = now_rfc3339();
        let mut points = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if item.vector.len() != dim {
                return Err(SearchError::Invalid(format!(
                    "item {i}: vector has {} dimensions; the index holds {dim}",
                    item.vector.len()
                )));
            }
            if item.vector.iter().any(|x| !x.is_finite()) || item.vector.iter().all(|x| *x == 0.0) {
                return Err(SearchError::Invalid(format!(
                    "item {i}: vector must be finite and non-zero"
                )));
            }
            if item.s3_key.trim().is_empty() || item.attributes.dataset.trim().is_empty() {
                return Err(SearchError::Invalid(format!(
                    "item {i}: s3_key and dataset are required"
                )));
            }
            points.push(Point {
                id: item.id,
                vector: item.vector,
                payload: StoredPayload {
                    s3_key: item.s3_key,
                    created_at: created_at.clone(),
                    thumbnail: None,
                    attributes: item.attributes,
                },
            });
        }
        Ok(points)
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<usize, SearchError> {
        let n = points.len();
        let started = Instant::now();
        self.index.upsert(points).await?;
        metrics::index_operation("upsert", started.elapsed());
        metrics::ingested(n);
        Ok(n)
    }

    /// Adds one image: encode through model-serving, store the bytes, index the vector.
    pub async fn add_image(
        &self,
        bytes: Vec<u8>,
        attributes: ImageAttributes,
        id: Option<Uuid>,
    ) -> Result<ImageItem, SearchError> {
        let object = ::catalog::ImageObject::of_image(&bytes).ok_or_else(|| {
            SearchError::Invalid("not an image (JPEG, PNG, WebP or GIF expected)".into())
        })?;
        if attributes.dataset.trim().is_empty() {
            return Err(SearchError::Invalid("dataset is required".into()));
        }
        let embedded = self.encoder().embed_images(vec![bytes.clone()]).await?;
        let vector = embedded
            .value
            .into_iter()
            .next()
            .ok_or_else(|| SearchError::Invalid("no embedding for the image".into()))?;
        let _writing = self.writes.read().await;
        self.admit_model(&embedded.model).await?;
        let (key, content_type) = (object.key, object.content_type);
        // Deterministic per dataset and content (the ETL's ids too): adding it again is idempotent.
        let id = id.unwrap_or_else(|| ::catalog::point_id(&attributes.dataset, &key));
        let points = self.points(vec![IngestItem {
            id,
            vector,
            s3_key: key.clone(),
            attributes,
        }])?;
        let guard = self.lock_objects([key.as_str()]).await;
        self.store.put(&key, bytes, content_type).await?;
        self.recently_deleted().remove(&key);
        self.reindex.touched([id]);
        self.upsert(points).await?;
        drop(guard);
        self.after_write().await;
        self.get(id).await
    }
}

/// Points written per step of the keyword backfill.
const KEYWORD_BATCH: usize = 256;

impl SearchEngine {
    /// Gives every point of an index made before keyword vectors its keyword vector, made from
    /// its payload (no model call), a batch at a time. Resumable: what is done is in the index,
    /// so a restart goes on where it stopped. Returns how many points it wrote.
    pub async fn backfill_keywords(&self) -> Result<usize, SearchError> {
        if self.index.dim().is_none() {
            return Ok(0);
        }
        self.index.add_keywords().await?;
        let mut written = 0;
        let mut previous = Vec::new();
        loop {
            let batch = self.index.missing_keywords(KEYWORD_BATCH).await?;
            let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
            if batch.is_empty() || ids == previous {
                // The same points again: the index did not keep what was written (their text
                // has no word at all); they are found by meaning only.
                if !batch.is_empty() {
                    tracing::warn!(points = batch.len(), "points left without keyword vectors");
                }
                break;
            }
            self.index.set_keywords(&batch).await?;
            written += batch.len();
            tracing::info!(written, "keyword vectors backfilled");
            previous = ids;
        }
        if written > 0 {
            self.index.flush().await?;
            self.written();
        }
        Ok(written)
    }
}
