//! Reading and removing what is indexed: one image, pages of images, stats.

use std::time::Instant;

use backend_api::{Filters, ImageItem, ListResponse, StatsResponse};
use uuid::Uuid;

use super::{MAX_BATCH, MAX_DEPTH, MAX_K, SearchEngine, SearchError};
use crate::index::{Filter, Record, StoredPayload};
use crate::metrics;

impl SearchEngine {
    /// An item with its pre-signed URL (local signing: no call to storage).
    pub(super) fn item(&self, id: Uuid, payload: StoredPayload) -> Result<ImageItem, SearchError> {
        let url = self.store.presign_get(&payload.s3_key)?;
        let thumbnail_url = match payload.thumbnail.as_deref() {
            Some(key) if !key.is_empty() => Some(self.store.presign_get(key)?),
            _ => None,
        };
        Ok(ImageItem {
            id,
            thumbnail_url,
            s3_key: payload.s3_key,
            created_at: payload.created_at,
            attributes: payload.attributes,
            url,
        })
    }

    /// Items with pre-signed URLs, in order: a few microseconds of CPU each, no await.
    pub(super) fn items(
        &self,
        records: impl IntoIterator<Item = (Uuid, StoredPayload)>,
    ) -> Result<Vec<ImageItem>, SearchError> {
        records
            .into_iter()
            .map(|(id, payload)| self.item(id, payload))
            .collect()
    }

    /// The stored point without its vector, or `NotFound`.
    async fn record(&self, id: Uuid) -> Result<Record, SearchError> {
        self.index
            .retrieve(&[id], false)
            .await?
            .into_iter()
            .next()
            .ok_or(SearchError::NotFound(id))
    }

    pub async fn get(&self, id: Uuid) -> Result<ImageItem, SearchError> {
        let record = self.record(id).await?;
        self.item(record.id, record.payload)
    }

    /// Removes the point, and its object when no other point shares it.
    pub async fn delete(&self, id: Uuid) -> Result<(), SearchError> {
        let record = self.record(id).await?;
        let key = record.payload.s3_key;
        let _writing = self.writes.read().await;
        let guard = self.lock_objects([key.as_str()]).await;
        let started = Instant::now();
        self.reindex.touched([id]);
        self.index.delete(&[id]).await?;
        metrics::index_operation("delete", started.elapsed());
        let shared = self.index.count(&Filter::s3_key(key.clone())).await?;
        if shared == 0 {
            self.store.delete(&key).await?;
            self.remember_deleted(&key);
            // Its thumbnail goes with it (none made yet is fine: deletes are idempotent).
            self.store.delete(&::catalog::thumbnail_key(&key)).await?;
        }
        drop(guard);
        self.after_write().await;
        tracing::info!(%id, s3_key = %key, object_deleted = shared == 0, "image deleted");
        Ok(())
    }

    /// Points with their vectors, in id order (a backup's reads).
    pub async fn points_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<backend_api::PointsPage, SearchError> {
        if !(1..=backend_api::MAX_POINTS_PAGE).contains(&limit) {
            return Err(SearchError::Invalid(format!(
                "limit must be between 1 and {}",
                backend_api::MAX_POINTS_PAGE
            )));
        }
        let all = Filter::default();
        let (listed, total) =
            tokio::try_join!(self.index.list(offset, limit, &all), self.index.count(&all))?;
        let ids: Vec<Uuid> = listed.iter().map(|r| r.id).collect();
        let mut records = self.index.retrieve(&ids, true).await?;
        records.sort_by_key(|r| r.id);
        let points = records
            .into_iter()
            .filter_map(|r| {
                let vector = r.vector?;
                Some(backend_api::StoredPoint {
                    id: r.id,
                    vector,
                    s3_key: r.payload.s3_key,
                    created_at: r.payload.created_at,
                    attributes: r.payload.attributes,
                })
            })
            .collect();
        Ok(backend_api::PointsPage {
            points,
            offset,
            limit,
            total,
            fingerprint: self.index.model().map(|m| m.fingerprint),
        })
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
        let filter = Filter::attributes(filters.clone());
        let listed = async {
            tokio::try_join!(
                self.index.list(offset, limit, &filter),
                self.index.count(&filter)
            )
            .map_err(SearchError::from)
        };
        let (records, total) = self.with_checked_filters(filters, listed).await?;
        let items = self.items(records.into_iter().map(|r| (r.id, r.payload)))?;
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
        let model = self.index.model();
        Ok(StatsResponse {
            total,
            model: model.as_ref().map(ToString::to_string),
            fingerprint: model.map(|m| m.fingerprint),
            by_dataset: as_map(self.index.facet("dataset", 1000).await?),
            by_category: as_map(self.index.facet("category", 1000).await?),
        })
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
}
