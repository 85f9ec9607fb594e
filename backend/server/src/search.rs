//! The search engine: query → embedding → vector search → pre-signed URLs, and the write path.
//! It knows nothing of HTTP; the handlers map its [`SearchError`] to statuses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_api::{
    ErrorKind, FacetValue, FacetsResponse, Filters, ImageAttributes, ImageItem, IngestItem,
    ListResponse, SearchHit, SearchParams, SearchResponse, StatsResponse,
};
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use crate::encoder::{EncoderError, QueryEncoder};
use crate::index::{Filter, IndexError, Point, Record, SearchRequest, StoredPayload, VectorIndex};
use crate::metrics;
use crate::storage::{ObjectStore, StorageError};

pub const DEFAULT_K: usize = 20;
pub use backend_api::{MAX_PAGE as MAX_K, MAX_RESULT_DEPTH as MAX_DEPTH};
pub const MAX_BATCH: usize = 1000;
pub const MAX_QUERY_CHARS: usize = 500;
/// Stripes of the per-object lock: adds and deletes of the same object key are serialised.
const OBJECT_LOCK_STRIPES: usize = 64;
/// How long (and how many) object keys removed by deletes are remembered for batch ingests.
const RECENTLY_DELETED_FOR: Duration = Duration::from_secs(600);
const RECENTLY_DELETED_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
    #[error("no image with id {0}")]
    NotFound(Uuid),
    /// A batch item names an object that a delete removed while the batch was on its way.
    #[error("object {0} was deleted meanwhile; store it again, then retry")]
    ObjectGone(String),
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
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::ObjectGone(_) => ErrorKind::ObjectMissing,
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
    encoder: QueryEncoder,
    optimize: Arc<OptimizeScheduler>,
    /// Known values of each filter field, refreshed after writes.
    facets: tokio::sync::RwLock<Option<BTreeMap<String, Vec<FacetValue>>>>,
    /// Objects are content-addressed and shared by every point with the same bytes. A delete
    /// ("no point refers to it any more, remove it") racing an add of the same bytes ("store it,
    /// index a point") could remove an object the new point uses; both hold the key's stripe.
    object_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Keys whose object a delete removed lately. A batch ingest names objects the ETL stored
    /// before sending it, so the lock alone cannot help when the delete comes in between: such
    /// keys are checked (`HEAD`) before their points are written. Deletes are rare, so almost
    /// every batch checks nothing.
    recently_deleted: std::sync::Mutex<HashMap<String, Instant>>,
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
pub use catalog::{content_key, sniff_image};

impl SearchEngine {
    pub fn new(
        index: Arc<dyn VectorIndex>,
        store: ObjectStore,
        encoder: QueryEncoder,
        optimize_after: Duration,
    ) -> Arc<Self> {
        let optimize = Arc::new(OptimizeScheduler {
            notify: Notify::new(),
        });
        let engine = Arc::new(Self {
            index,
            store,
            encoder,
            optimize: optimize.clone(),
            facets: tokio::sync::RwLock::new(None),
            object_locks: (0..OBJECT_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            recently_deleted: std::sync::Mutex::new(HashMap::new()),
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

    pub fn encoder(&self) -> &QueryEncoder {
        &self.encoder
    }

    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    fn written(&self) {
        self.optimize.notify.notify_one();
    }

    /// Holds the lock stripes of `keys`, taken in stripe order so two writers cannot deadlock.
    async fn lock_objects<'a>(
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

    fn remember_deleted(&self, key: &str) {
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

    /// Checks paging and filters; unknown filter values are refused (they would match nothing).
    async fn plan(&self, params: &SearchParams) -> Result<(usize, usize, Filter), SearchError> {
        let k = params.k.unwrap_or(DEFAULT_K);
        let offset = params.offset.unwrap_or(0);
        if !(1..=MAX_K).contains(&k) {
            return Err(SearchError::Invalid(format!(
                "k must be between 1 and {MAX_K}"
            )));
        }
        if k.checked_add(offset).is_none_or(|depth| depth > MAX_DEPTH) {
            return Err(SearchError::Invalid(format!(
                "k + offset must be at most {MAX_DEPTH}"
            )));
        }
        if let Some(min) = params.min_score
            && !(-1.0..=1.0).contains(&min)
        {
            return Err(SearchError::Invalid(
                "min_score must be between -1 and 1".into(),
            ));
        }
        let mut facets = None;
        for (field, value) in params.filters.iter() {
            if facets.is_none() {
                facets = Some(self.facet_values().await?);
            }
            let known = facets
                .as_ref()
                .and_then(|f| f.get(field))
                .is_some_and(|values| values.iter().any(|v| v.value == value));
            if !known {
                return Err(SearchError::Invalid(format!(
                    "unknown {field} {value:?}: no indexed image has it"
                )));
            }
        }
        let filter = Filter::attributes(params.filters.clone());
        Ok((k, offset, filter))
    }

    async fn item(&self, id: Uuid, payload: StoredPayload) -> Result<ImageItem, SearchError> {
        let url = self.store.presign_get(&payload.s3_key).await?;
        Ok(ImageItem {
            id,
            s3_key: payload.s3_key,
            created_at: payload.created_at,
            attributes: payload.attributes,
            url,
        })
    }

    #[tracing::instrument(skip(self, params), fields(q.chars = q.chars().count()))]
    pub async fn search_text(
        &self,
        q: &str,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        let q = q.trim();
        if q.is_empty() {
            return Err(SearchError::Invalid("the query is empty".into()));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(SearchError::Invalid(format!(
                "the query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let plan = self.plan(params).await?;
        let encode = Instant::now();
        let (caption, vector) = self
            .encoder
            .embed_query(q)
            .instrument(tracing::info_span!("encode"))
            .await?;
        metrics::stage("encode", encode.elapsed());
        self.run("text", vector, plan, params, None, Some(caption), started)
            .await
    }

    #[tracing::instrument(skip_all, fields(bytes = image.len()))]
    pub async fn search_image(
        &self,
        image: Vec<u8>,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        if image.is_empty() {
            return Err(SearchError::Invalid("the uploaded image is empty".into()));
        }
        let plan = self.plan(params).await?;
        let encode = Instant::now();
        let vector = self
            .encoder
            .embed_images(vec![image])
            .instrument(tracing::info_span!("encode"))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| SearchError::Invalid("no embedding for the image".into()))?;
        metrics::stage("encode", encode.elapsed());
        self.run("image", vector, plan, params, None, None, started)
            .await
    }

    /// More like this: the stored vector of `id` as the query, `id` itself left out.
    #[tracing::instrument(skip(self, params))]
    pub async fn similar(
        &self,
        id: Uuid,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        let plan = self.plan(params).await?;
        let record = self.index.retrieve(&[id], true).await?.into_iter().next();
        let vector = record
            .and_then(|r| r.vector)
            .ok_or(SearchError::NotFound(id))?;
        self.run("similar", vector, plan, params, Some(id), None, started)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        kind: &'static str,
        vector: Vec<f32>,
        (k, offset, filter): (usize, usize, Filter),
        params: &SearchParams,
        exclude: Option<Uuid>,
        embedded_text: Option<String>,
        started: Instant,
    ) -> Result<SearchResponse, SearchError> {
        let search = Instant::now();
        let hits = self
            .index
            .search(SearchRequest {
                vector,
                limit: k,
                offset,
                filter,
                min_score: params.min_score,
                exclude,
            })
            .instrument(tracing::info_span!("index_search", k, offset))
            .await?;
        metrics::stage("index_search", search.elapsed());
        let presign = Instant::now();
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let item = self.item(hit.id, hit.payload).await?;
            out.push(SearchHit {
                score: hit.score,
                item,
            });
        }
        metrics::stage("presign", presign.elapsed());
        metrics::stage("total", started.elapsed());
        metrics::search(kind);
        let model = match self.encoder.model_info().await {
            Ok(info) => info.name,
            Err(_) => "unknown".to_owned(),
        };
        Ok(SearchResponse {
            hits: out,
            k,
            offset,
            embedded_text,
            model,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub async fn get(&self, id: Uuid) -> Result<ImageItem, SearchError> {
        let record = self
            .index
            .retrieve(&[id], false)
            .await?
            .into_iter()
            .next()
            .ok_or(SearchError::NotFound(id))?;
        self.item(record.id, record.payload).await
    }

    /// Removes the point, and its object when no other point shares it.
    pub async fn delete(&self, id: Uuid) -> Result<(), SearchError> {
        let record = self
            .index
            .retrieve(&[id], false)
            .await?
            .into_iter()
            .next()
            .ok_or(SearchError::NotFound(id))?;
        let key = record.payload.s3_key;
        let guard = self.lock_objects([key.as_str()]).await;
        let started = Instant::now();
        self.index.delete(&[id]).await?;
        metrics::index_operation("delete", started.elapsed());
        let shared = self.index.count(&Filter::s3_key(key.clone())).await?;
        if shared == 0 {
            self.store.delete(&key).await?;
            self.remember_deleted(&key);
        }
        drop(guard);
        self.after_write().await;
        tracing::info!(%id, s3_key = %key, object_deleted = shared == 0, "image deleted");
        Ok(())
    }

    pub async fn list(
        &self,
        offset: usize,
        limit: usize,
        filters: &Filters,
    ) -> Result<ListResponse, SearchError> {
        if !(1..=MAX_K).contains(&limit) {
            return Err(SearchError::Invalid(format!(
                "limit must be between 1 and {MAX_K}"
            )));
        }
        if offset
            .checked_add(limit)
            .is_none_or(|depth| depth > MAX_DEPTH)
        {
            return Err(SearchError::Invalid(format!(
                "limit + offset must be at most {MAX_DEPTH}"
            )));
        }
        let filter_params = SearchParams {
            filters: filters.clone(),
            ..SearchParams::default()
        };
        let (_, _, filter) = self.plan(&filter_params).await?;
        let records = self.index.list(offset, limit, &filter).await?;
        let total = self.index.count(&filter).await?;
        let mut items = Vec::with_capacity(records.len());
        for Record { id, payload, .. } in records {
            items.push(self.item(id, payload).await?);
        }
        Ok(ListResponse {
            items,
            offset,
            limit,
            total,
        })
    }

    pub async fn stats(&self) -> Result<StatsResponse, SearchError> {
        let total = self.index.count(&Filter::default()).await?;
        let as_map = |values: Vec<(String, u64)>| values.into_iter().collect();
        Ok(StatsResponse {
            total,
            by_dataset: as_map(self.index.facet("dataset", 1000).await?),
            by_category: as_map(self.index.facet("category", 1000).await?),
        })
    }

    async fn facet_values(&self) -> Result<BTreeMap<String, Vec<FacetValue>>, SearchError> {
        if let Some(cached) = self.facets.read().await.as_ref() {
            return Ok(cached.clone());
        }
        let mut facets = BTreeMap::new();
        for field in Filters::FIELDS {
            let values = self.index.facet(field, 1000).await?;
            facets.insert(
                (*field).to_owned(),
                values
                    .into_iter()
                    .map(|(value, count)| FacetValue { value, count })
                    .collect(),
            );
        }
        *self.facets.write().await = Some(facets.clone());
        Ok(facets)
    }

    pub async fn facets(&self) -> Result<FacetsResponse, SearchError> {
        Ok(FacetsResponse {
            facets: self.facet_values().await?,
        })
    }

    async fn after_write(&self) {
        *self.facets.write().await = None;
        if let Ok(points) = self.index.count(&Filter::default()).await {
            metrics::index_points(points);
        }
        self.written();
    }

    /// Which of `ids` are indexed.
    pub async fn existing(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, SearchError> {
        if ids.len() > MAX_BATCH {
            return Err(SearchError::Invalid(format!(
                "at most {MAX_BATCH} ids per request"
            )));
        }
        Ok(self
            .index
            .retrieve(ids, false)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    /// Idempotent upsert of ready-made vectors (the ETL's path).
    #[tracing::instrument(skip_all, fields(items = items.len()))]
    pub async fn ingest(&self, items: Vec<IngestItem>) -> Result<usize, SearchError> {
        let points = self.points(items)?;
        let guards = self
            .lock_objects(points.iter().map(|p| p.payload.s3_key.as_str()))
            .await;
        self.check_objects(&points).await?;
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
        let object = catalog::ImageObject::of_image(&bytes).ok_or_else(|| {
            SearchError::Invalid("not an image (JPEG, PNG, WebP or GIF expected)".into())
        })?;
        if attributes.dataset.trim().is_empty() {
            return Err(SearchError::Invalid("dataset is required".into()));
        }
        let vector = self
            .encoder
            .embed_images(vec![bytes.clone()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| SearchError::Invalid("no embedding for the image".into()))?;
        let (key, content_type) = (object.key, object.content_type);
        // Deterministic per dataset and content (the ETL's ids too): adding it again is idempotent.
        let id = id.unwrap_or_else(|| catalog::point_id(&attributes.dataset, &key));
        let points = self.points(vec![IngestItem {
            id,
            vector,
            s3_key: key.clone(),
            attributes,
        }])?;
        let guard = self.lock_objects([key.as_str()]).await;
        self.store.put(&key, bytes, content_type).await?;
        self.recently_deleted().remove(&key);
        self.upsert(points).await?;
        drop(guard);
        self.after_write().await;
        self.get(id).await
    }

    /// Makes every acknowledged write durable (graceful shutdown).
    pub async fn shutdown(&self) -> Result<(), SearchError> {
        let started = Instant::now();
        self.index.flush().await?;
        metrics::index_operation("flush", started.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 24);
        assert!(now.starts_with("20") && now.ends_with('Z'));
    }
}
