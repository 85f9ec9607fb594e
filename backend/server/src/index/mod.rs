//! The vector index behind one trait, [`VectorIndex`], with two implementations chosen by
//! configuration: Qdrant's embedded engine on disk ([`edge::EdgeIndex`], the default) and a
//! Qdrant server over gRPC ([`server::QdrantServerIndex`], when `QDRANT_URL` is set). Both store
//! the same payload and index the same keyword fields, [`Filters::FIELDS`]. Beside each dense
//! vector both store a keyword vector made from the payload ([`keywords`]), for keyword and
//! hybrid search.

pub mod edge;
pub mod keywords;
pub mod server;

use std::sync::Arc;

use backend_api::{Filters, ImageAttributes};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What is stored with each vector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredPayload {
    pub s3_key: String,
    pub created_at: String,
    /// The card-size thumbnail's object key, once made ([`crate::thumbnails`]); empty when none
    /// can be made (the original is gone or unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    #[serde(flatten)]
    pub attributes: ImageAttributes,
}

/// The model whose vectors an index holds, recorded when the index is made (a Qdrant
/// collection's metadata; a file beside the embedded store). Searching or writing with another
/// model's vectors is refused: they would be compared with vectors of a different space.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexModel {
    pub name: String,
    /// model-serving's fingerprint of the model files (`GET /v1/model`).
    pub fingerprint: String,
    pub dim: usize,
}

impl IndexModel {
    /// What names the store (collection, folder) made for this model's vectors: the
    /// fingerprint's hex digits, `base-<hex>`; `rebuilt` gives the other of the two names a
    /// model's store alternates between, so a re-index with the same model has a fresh target.
    pub fn store_name(&self, base: &str, rebuilt: bool) -> String {
        let hex: String = self
            .fingerprint
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect();
        if rebuilt {
            format!("{base}-{hex}-rebuilt")
        } else {
            format!("{base}-{hex}")
        }
    }

    /// The store a re-index with this model writes into, given the live store's name: the
    /// model's name, or its alternate when the live store already has that name.
    pub fn target_name(&self, base: &str, live: &str) -> String {
        let first = self.store_name(base, false);
        if live == first {
            self.store_name(base, true)
        } else {
            first
        }
    }
}

impl std::fmt::Display for IndexModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {} dimensions)",
            self.name, self.fingerprint, self.dim
        )
    }
}

#[derive(Debug, Clone)]
pub struct Point {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: StoredPayload,
}

/// Exact keyword matches, all of which must hold: the shopper's [`Filters`], and an object key;
/// and words none of which may be in the caption (a shopper's `-floral`: a full-text match on
/// the caption's text index, case-insensitive, whole words).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub attributes: Filters,
    pub s3_key: Option<String>,
    pub without_words: Vec<String>,
}

/// The payload field with a full-text index, for word exclusions.
pub const CAPTION: &str = "caption";
/// The payload field holding a point's thumbnail key.
pub const THUMBNAIL: &str = "thumbnail";

impl Filter {
    pub fn attributes(attributes: Filters) -> Self {
        Self {
            attributes,
            ..Self::default()
        }
    }

    pub fn s3_key(key: impl Into<String>) -> Self {
        Self {
            s3_key: Some(key.into()),
            ..Self::default()
        }
    }

    /// Every condition as `(payload field, value)`.
    pub fn must(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.attributes
            .iter()
            .chain(self.s3_key.as_deref().map(|key| ("s3_key", key)))
    }

    pub fn is_empty(&self) -> bool {
        self.must().next().is_none() && self.without_words.is_empty()
    }
}

/// What a search ranks by.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexQuery {
    /// Nearest to a dense vector (cosine similarity).
    Vector(Vec<f32>),
    /// Best BM25 matches of the words' keyword vector (IDF-weighted by the index); only points
    /// sharing a term are found.
    Keywords(keywords::SparseVector),
    /// Both rankings, [`HYBRID_DEPTH`] (at least the page's depth) and [`KEYWORD_DEPTH`] deep,
    /// fused by distribution-based score fusion (see [`keywords`]).
    Hybrid {
        vector: Vec<f32>,
        keywords: keywords::SparseVector,
    },
}

/// How deep the ranking by meaning of a hybrid search goes before fusion. Fixed depths keep
/// the pages of the fused ranking consistent with each other down to it.
///
/// Measured on the development split (`make eval-search`, 759 held-out products; keyword depth
/// 100): 200 gave brand+type precision 0.948; 100 gives 0.913 (caption R@1 0.929 -> 0.924); 50
/// fell to 0.801 and 30 to 0.752, below the 0.8 target. Distribution-based fusion scales each
/// list by its own mean and spread, so a shallow list by meaning over-weights its tail.
pub const HYBRID_DEPTH: usize = 100;

/// How deep the ranking by words of a hybrid search goes before fusion. It matters little for
/// quality and costs CPU in proportion (every candidate is converted, merged and fused): with
/// [`HYBRID_DEPTH`] 100 on the development split, keyword depth 100 gave brand+type precision
/// 0.913, 50 gave 0.907, 20 gives 0.913 and 10 0.905 (type P@10 0.970 at 20 and 100, colour+type
/// 0.958 at 20 against 0.945). Reciprocal rank fusion, at any of these depths and weights, was
/// worse (brand+type 0.52-0.62). In `backend-bench` (C) depth 20 took the hybrid index search
/// from 0.56 to 0.45 ms at p50 (vector-only 0.21 ms).
pub const KEYWORD_DEPTH: usize = 20;

impl IndexQuery {
    /// How deep each ranking of a fused search is fetched for results down to `depth`:
    /// `(by meaning, by words)`. The ranking by meaning alone supplies enough candidates, so
    /// within [`HYBRID_DEPTH`] every page fetches the same ones, and past it only the ranking by
    /// meaning goes deeper: the ranking by words, and so its scale in the fusion, stays the same
    /// (deepening it too, from 20 to 150, made a page past 100 repeat 15 of the first 96 hits).
    pub fn prefetch_depths(depth: usize) -> (usize, usize) {
        (HYBRID_DEPTH.max(depth), KEYWORD_DEPTH)
    }
}

/// The most ids one search leaves out.
pub const MAX_EXCLUDED: usize = 64;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: IndexQuery,
    pub limit: usize,
    pub offset: usize,
    pub filter: Filter,
    /// The lowest score shown, on the scale of the query's score: cosine similarity (vector),
    /// BM25 (keywords), the fused score (hybrid).
    pub min_score: Option<f32>,
    /// Left out of the results (the query image itself for "more like this"; the liked and
    /// disliked items of a recommendation). At most [`MAX_EXCLUDED`].
    pub exclude: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct ScoredPoint {
    pub id: Uuid,
    pub score: f32,
    pub payload: StoredPayload,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub id: Uuid,
    pub payload: StoredPayload,
    pub vector: Option<Vec<f32>>,
}

/// Search parameters that trade speed for recall.
#[derive(Debug, Clone, Copy)]
pub struct SearchTuning {
    pub hnsw_ef: usize,
    pub exact: bool,
    /// The embedded engine's search pool size (the server sizes its own).
    pub threads: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexError {
    #[error("the index is unavailable: {0}")]
    Unavailable(String),
    #[error("vector has {got} dimensions; the index holds {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("index error: {0}")]
    Internal(String),
}

#[async_trait::async_trait]
pub trait VectorIndex: Send + Sync {
    /// The vector size, once the index exists.
    fn dim(&self) -> Option<usize>;
    /// The model that made the vectors, as recorded; `None` while the index does not exist, or
    /// when it was made before models were recorded.
    fn model(&self) -> Option<IndexModel>;
    /// Makes the index for `model`'s vectors if there is none, and records the model (an index
    /// made before models were recorded takes it, when the vector sizes agree).
    async fn adopt(&self, model: &IndexModel) -> Result<(), IndexError>;
    /// A new, empty index for `model` beside the live one (or the one a stopped re-index left,
    /// with what it holds: a re-index resumes), to be filled and then made live by
    /// [`VectorIndex::promote`]. The live index keeps serving meanwhile.
    async fn rebuild_target(&self, model: &IndexModel) -> Result<Arc<dyn VectorIndex>, IndexError>;
    /// Makes the target of [`VectorIndex::rebuild_target`] for `model` the live index, in one
    /// step that every reader sees at once (a Qdrant alias; the embedded engine's pointer file),
    /// and removes the old one.
    async fn promote(&self, model: &IndexModel) -> Result<(), IndexError>;
    /// Keeps the filled target of [`VectorIndex::rebuild_target`] for `model` beside the live
    /// index as the staged one, searched when a request names its model (a second Qdrant alias,
    /// `<collection>-staged`; the embedded engine's `staged` pointer file). Promoting it later
    /// unstages it.
    async fn stage(&self, model: &IndexModel) -> Result<(), IndexError>;
    /// The staged index ([`VectorIndex::stage`]), if there is one (as another replica, or
    /// this process before a restart, left it).
    async fn staged(&self) -> Result<Option<Arc<dyn VectorIndex>>, IndexError>;
    /// Whether points carry keyword vectors (an index made before them does not).
    fn has_keywords(&self) -> bool;
    /// Inserts or replaces points by id.
    async fn upsert(&self, points: Vec<Point>) -> Result<(), IndexError>;
    /// Removes points; returns how many existed.
    async fn delete(&self, ids: &[Uuid]) -> Result<usize, IndexError>;
    async fn retrieve(&self, ids: &[Uuid], with_vector: bool) -> Result<Vec<Record>, IndexError>;
    async fn search(&self, request: SearchRequest) -> Result<Vec<ScoredPoint>, IndexError>;
    /// Points in id order (stable pages), filtered.
    async fn list(
        &self,
        offset: usize,
        limit: usize,
        filter: &Filter,
    ) -> Result<Vec<Record>, IndexError>;
    async fn count(&self, filter: &Filter) -> Result<u64, IndexError>;
    /// Values of a keyword field with their counts, most frequent first.
    async fn facet(
        &self,
        field: &'static str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, IndexError>;
    /// Readiness: whether the index answers at all (a server is reachable), whatever it holds.
    async fn probe(&self) -> Result<(), IndexError> {
        self.count(&Filter::default()).await.map(drop)
    }
    /// Gives an index made before keyword vectors their configuration (no-op when it has it);
    /// its points get theirs from [`VectorIndex::set_keywords`].
    async fn add_keywords(&self) -> Result<(), IndexError>;
    /// Up to `limit` points without a keyword vector (with their payloads).
    async fn missing_keywords(&self, limit: usize) -> Result<Vec<Record>, IndexError>;
    /// Writes each record's keyword vector, made from its payload.
    async fn set_keywords(&self, records: &[Record]) -> Result<(), IndexError>;
    /// Up to `limit` points that have no thumbnail field yet (with their payloads).
    async fn missing_thumbnails(&self, limit: usize) -> Result<Vec<Record>, IndexError>;
    /// Records the thumbnail key of point `id` (empty: none can be made).
    async fn set_thumbnail(&self, id: Uuid, key: &str) -> Result<(), IndexError>;
    /// Makes every acknowledged write durable.
    async fn flush(&self) -> Result<(), IndexError>;
    /// Builds the HNSW graph over what was written (off the request path).
    async fn optimize(&self) -> Result<(), IndexError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_within_the_hybrid_depth_fetch_the_same_candidates() {
        let first = IndexQuery::prefetch_depths(24);
        assert_eq!(first, (HYBRID_DEPTH, KEYWORD_DEPTH));
        for depth in 1..=HYBRID_DEPTH {
            assert_eq!(IndexQuery::prefetch_depths(depth), first, "depth {depth}");
        }
        // Past it, the ranking by meaning reaches the page; the ranking by words stays.
        assert_eq!(
            IndexQuery::prefetch_depths(HYBRID_DEPTH + 1),
            (HYBRID_DEPTH + 1, KEYWORD_DEPTH)
        );
        assert_eq!(IndexQuery::prefetch_depths(1000), (1000, KEYWORD_DEPTH));
    }
}
