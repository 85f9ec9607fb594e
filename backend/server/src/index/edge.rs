//! Qdrant's embedded engine (`qdrant-edge`), on disk under `DATA_DIR/index`.
//!
//! The engine is synchronous; every call runs on the blocking pool. One process owns the store:
//! an advisory lock on `owner.lock` is taken before the engine touches any file, so a second
//! process fails fast with a clear message instead of racing the first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use backend_api::Filters;
use qdrant_edge::{
    Condition, CountRequestBuilder, CreateIndex, CreateVectorName, DEFAULT_VECTOR_NAME, Distance,
    EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams, FacetRequestBuilder,
    FacetValue, FieldCondition, FieldIndexOperations, Filter as EdgeFilter, Fusion,
    HasVectorCondition, JsonPath, Match, Modifier, NamedQuery, OperationError, Payload,
    PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, PointVectorsPersisted, PrefetchBuilder, QueryEnum, QueryRequestBuilder,
    RetrieveRequestBuilder, ScoringQuery, SearchParams, UpdateOperation, UpdateVectorsOp,
    VectorInternal, VectorNameOperations, VectorOperations, VectorPersisted, VectorStructInternal,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::Value;
use uuid::Uuid;

use super::keywords::{self, KEYWORDS, SparseVector};
use super::{
    Filter, IndexError, IndexQuery, Point, Record, ScoredPoint, SearchRequest, SearchTuning,
    StoredPayload, VectorIndex,
};

pub struct EdgeIndex {
    dir: PathBuf,
    tuning: SearchTuning,
    /// Created on the first write when the store is new (the vector size comes with it).
    shard: RwLock<Option<Arc<EdgeShard>>>,
    _owner: File,
}

fn internal(e: OperationError) -> IndexError {
    match e {
        OperationError::WrongVectorDimension {
            expected_dim,
            received_dim,
        } => IndexError::Dimension {
            expected: expected_dim,
            got: received_dim,
        },
        other => IndexError::Internal(other.to_string()),
    }
}

fn key(field: &str) -> Result<JsonPath, IndexError> {
    field
        .parse::<JsonPath>()
        .map_err(|()| IndexError::Internal(format!("invalid payload key {field:?}")))
}

fn edge_filter(filter: &Filter) -> Result<Option<EdgeFilter>, IndexError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let must = filter
        .must()
        .map(|(field, value)| {
            Ok(Condition::Field(FieldCondition::new_match(
                key(field)?,
                Match::from(value.to_owned()),
            )))
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Ok(Some(EdgeFilter {
        must: Some(must),
        ..Default::default()
    }))
}

fn to_payload(payload: &StoredPayload) -> Result<Payload, IndexError> {
    match serde_json::to_value(payload) {
        Ok(Value::Object(map)) => Ok(Payload(map)),
        Ok(_) => Err(IndexError::Internal("payload is not an object".into())),
        Err(e) => Err(IndexError::Internal(e.to_string())),
    }
}

fn from_payload(payload: Option<&Payload>) -> Result<StoredPayload, IndexError> {
    let map = payload.map(|p| p.0.clone()).unwrap_or_default();
    serde_json::from_value(Value::Object(map))
        .map_err(|e| IndexError::Internal(format!("stored payload unreadable: {e}")))
}

fn sparse(vector: SparseVector) -> qdrant_edge::SparseVector {
    qdrant_edge::SparseVector {
        indices: vector.indices,
        values: vector.values,
    }
}

fn dense(vector: Vec<f32>) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::default_dense(vector)))
}

fn by_keywords(words: SparseVector) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
        query: VectorInternal::Sparse(sparse(words)),
        using: Some(KEYWORDS.to_owned()),
    }))
}

fn uuid_of(id: &PointId) -> Option<Uuid> {
    match id {
        PointId::Uuid(u) => Some(*u),
        PointId::NumId(_) => None,
    }
}

impl EdgeIndex {
    /// Opens the store in `dir`, or prepares a new one there.
    pub fn open(dir: &Path, tuning: SearchTuning) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::Unavailable(format!("{}: {e}", dir.display())))?;
        let lock_path = dir.join("owner.lock");
        let owner = File::create(&lock_path)
            .map_err(|e| IndexError::Unavailable(format!("{}: {e}", lock_path.display())))?;
        match owner.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(IndexError::Unavailable(format!(
                    "the index at {} is in use by another process (one process owns an embedded index; stop the other backend or set DATA_DIR)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(IndexError::Unavailable(format!(
                    "{}: {e}",
                    lock_path.display()
                )));
            }
        }
        let shard_dir = dir.join("shard");
        let shard = if EdgeConfig::load(&shard_dir).is_some() {
            // Only the pool size is given: everything else keeps what the shard was made with.
            let pool = EdgeConfig::builder()
                .max_search_threads(tuning.threads)
                .build();
            let shard = EdgeShard::load(&shard_dir, Some(pool)).map_err(internal)?;
            tracing::info!(dir = %shard_dir.display(), "embedded index opened");
            Some(Arc::new(shard))
        } else {
            None
        };
        Ok(Self {
            dir: shard_dir,
            tuning,
            shard: RwLock::new(shard),
            _owner: owner,
        })
    }

    fn current(&self) -> Option<Arc<EdgeShard>> {
        self.shard.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The shard, created for vectors of `dim` if the store is new.
    fn shard_for(&self, dim: usize) -> Result<Arc<EdgeShard>, IndexError> {
        self.shard_with(dim, true)
    }

    /// A new store as made before keyword vectors (dense vectors only), for tests of the
    /// keyword backfill that migrates such stores.
    #[doc(hidden)]
    pub fn open_without_keywords(
        dir: &Path,
        tuning: SearchTuning,
        dim: usize,
    ) -> Result<Self, IndexError> {
        let index = Self::open(dir, tuning)?;
        index.shard_with(dim, false)?;
        Ok(index)
    }

    fn shard_with(&self, dim: usize, keywords: bool) -> Result<Arc<EdgeShard>, IndexError> {
        let mut guard = self.shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(shard) = guard.as_ref() {
            return Ok(shard.clone());
        }
        let mut config = EdgeConfig::builder().vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParams::builder(dim, Distance::Cosine).build(),
        );
        if keywords {
            config = config.sparse_vector(
                KEYWORDS,
                EdgeSparseVectorParams::builder()
                    .modifier(Modifier::Idf)
                    .build(),
            );
        }
        let config = config.max_search_threads(self.tuning.threads).build();
        let shard = EdgeShard::new(&self.dir, config).map_err(internal)?;
        for field in Filters::FIELDS {
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: key(field)?,
                        field_schema: Some(PayloadFieldSchema::FieldType(
                            PayloadSchemaType::Keyword,
                        )),
                    }),
                ))
                .map_err(internal)?;
        }
        tracing::info!(dir = %self.dir.display(), dim, "embedded index created");
        let shard = Arc::new(shard);
        *guard = Some(shard.clone());
        Ok(shard)
    }

    /// Runs blocking engine work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(Option<Arc<EdgeShard>>) -> Result<T, IndexError> + Send + 'static,
    {
        let shard = self.current();
        tokio::task::spawn_blocking(move || work(shard))
            .await
            .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))?
    }
}

/// Points with their payloads in id order (stable pages), filtered.
fn scroll(
    shard: &EdgeShard,
    offset: usize,
    limit: usize,
    filter: Option<EdgeFilter>,
) -> Result<Vec<Record>, IndexError> {
    // No scoring query: points in id order.
    let mut builder = QueryRequestBuilder::new(limit)
        .offset(offset)
        .with_payload(WithPayloadInterface::Bool(true))
        .with_vector(WithVector::Bool(false));
    if let Some(filter) = filter {
        builder = builder.filter(filter);
    }
    let hits = shard.query(builder.build()).map_err(internal)?;
    hits.iter()
        .filter_map(|h| uuid_of(&h.id).map(|id| (id, h)))
        .map(|(id, h)| {
            Ok(Record {
                id,
                payload: from_payload(h.payload.as_ref())?,
                vector: None,
            })
        })
        .collect()
}

fn records(found: Vec<qdrant_edge::Record>) -> Result<Vec<Record>, IndexError> {
    found
        .iter()
        .filter_map(|r| uuid_of(&r.id).map(|id| (id, r)))
        .map(|(id, r)| {
            let vector = match &r.vector {
                Some(VectorStructInternal::Single(v)) => Some(v.clone()),
                Some(VectorStructInternal::Named(named)) => match named.get(DEFAULT_VECTOR_NAME) {
                    Some(VectorInternal::Dense(v)) => Some(v.clone()),
                    _ => None,
                },
                _ => None,
            };
            Ok(Record {
                id,
                payload: from_payload(r.payload.as_ref())?,
                vector,
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl VectorIndex for EdgeIndex {
    fn dim(&self) -> Option<usize> {
        let shard = self.current()?;
        let config = shard.config();
        config.vectors.get(DEFAULT_VECTOR_NAME).map(|p| p.size)
    }

    fn has_keywords(&self) -> bool {
        self.current()
            .is_none_or(|shard| shard.config().sparse_vectors.contains_key(KEYWORDS))
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), IndexError> {
        let Some(dim) = points.first().map(|p| p.vector.len()) else {
            return Ok(());
        };
        let shard = self.shard_for(dim)?;
        let with_keywords = shard.config().sparse_vectors.contains_key(KEYWORDS);
        let persisted = points
            .iter()
            .map(|p| {
                let vector = if with_keywords {
                    let keywords = keywords::document(&p.payload.attributes)?;
                    VectorStructPersisted::Named(
                        [
                            (
                                DEFAULT_VECTOR_NAME.to_owned(),
                                VectorPersisted::Dense(p.vector.clone()),
                            ),
                            (
                                KEYWORDS.to_owned(),
                                VectorPersisted::Sparse(sparse(keywords)),
                            ),
                        ]
                        .into(),
                    )
                } else {
                    VectorStructPersisted::Single(p.vector.clone())
                };
                Ok(PointStructPersisted {
                    id: PointId::Uuid(p.id),
                    vector,
                    payload: Some(to_payload(&p.payload)?),
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        tokio::task::spawn_blocking(move || {
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(persisted)),
                ))
                .map_err(internal)
        })
        .await
        .map_err(|e| IndexError::Internal(e.to_string()))?
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<usize, IndexError> {
        let ids: Vec<PointId> = ids.iter().map(|u| PointId::Uuid(*u)).collect();
        self.blocking(move |shard| {
            let Some(shard) = shard else { return Ok(0) };
            let existing = shard
                .retrieve(
                    RetrieveRequestBuilder::new(ids.clone())
                        .with_payload(WithPayloadInterface::Bool(false))
                        .build(),
                )
                .map_err(internal)?
                .len();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePoints { ids },
                ))
                .map_err(internal)?;
            Ok(existing)
        })
        .await
    }

    async fn retrieve(&self, ids: &[Uuid], with_vector: bool) -> Result<Vec<Record>, IndexError> {
        let ids: Vec<PointId> = ids.iter().map(|u| PointId::Uuid(*u)).collect();
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            let found = shard
                .retrieve(
                    RetrieveRequestBuilder::new(ids)
                        .with_payload(WithPayloadInterface::Bool(true))
                        .with_vector(WithVector::Bool(with_vector))
                        .build(),
                )
                .map_err(internal)?;
            records(found)
        })
        .await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<ScoredPoint>, IndexError> {
        let tuning = self.tuning;
        let filter = edge_filter(&request.filter)?;
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            // With an excluded id, fetch from the top and page in memory (k + offset <= 1000).
            let (limit, offset) = match request.exclude {
                Some(_) => (request.offset + request.limit + 1, 0),
                None => (request.limit, request.offset),
            };
            let params = SearchParams {
                hnsw_ef: Some(tuning.hnsw_ef),
                exact: tuning.exact,
                ..Default::default()
            };
            let mut builder = QueryRequestBuilder::new(limit)
                .offset(offset)
                .with_payload(WithPayloadInterface::Bool(true))
                .with_vector(WithVector::Bool(false));
            match request.query {
                IndexQuery::Vector(vector) => {
                    builder = builder.query(dense(vector)).params(params);
                }
                IndexQuery::Keywords(words) => {
                    builder = builder.query(by_keywords(words));
                }
                IndexQuery::Hybrid { vector, keywords } => {
                    let depth = IndexQuery::prefetch_depth(limit + offset);
                    let mut by_meaning = PrefetchBuilder::new(depth)
                        .query(dense(vector))
                        .params(params);
                    let mut by_words = PrefetchBuilder::new(depth).query(by_keywords(keywords));
                    if let Some(filter) = &filter {
                        by_meaning = by_meaning.filter(filter.clone());
                        by_words = by_words.filter(filter.clone());
                    }
                    builder = builder
                        .add_prefetch(by_meaning.build())
                        .add_prefetch(by_words.build())
                        .query(ScoringQuery::Fusion(Fusion::Dbsf));
                }
            }
            if let Some(filter) = filter {
                builder = builder.filter(filter);
            }
            if let Some(min) = request.min_score {
                builder = builder.score_threshold(min);
            }
            let hits = shard.query(builder.build()).map_err(internal)?;
            let mut out = Vec::with_capacity(hits.len());
            for hit in hits {
                let Some(id) = uuid_of(&hit.id) else { continue };
                if Some(id) == request.exclude {
                    continue;
                }
                out.push(ScoredPoint {
                    id,
                    score: hit.score,
                    payload: from_payload(hit.payload.as_ref())?,
                });
            }
            if request.exclude.is_some() {
                out = out
                    .into_iter()
                    .skip(request.offset)
                    .take(request.limit)
                    .collect();
            }
            Ok(out)
        })
        .await
    }

    async fn list(
        &self,
        offset: usize,
        limit: usize,
        filter: &Filter,
    ) -> Result<Vec<Record>, IndexError> {
        let filter = edge_filter(filter)?;
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            scroll(&shard, offset, limit, filter)
        })
        .await
    }

    async fn count(&self, filter: &Filter) -> Result<u64, IndexError> {
        let filter = edge_filter(filter)?;
        self.blocking(move |shard| {
            let Some(shard) = shard else { return Ok(0) };
            let mut builder = CountRequestBuilder::new().exact(true);
            if let Some(filter) = filter {
                builder = builder.filter(filter);
            }
            Ok(shard.count(builder.build()).map_err(internal)? as u64)
        })
        .await
    }

    async fn facet(
        &self,
        field: &'static str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, IndexError> {
        let path = key(field)?;
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            let response = shard
                .facet(
                    FacetRequestBuilder::new(path)
                        .limit(limit)
                        .exact(true)
                        .build(),
                )
                .map_err(internal)?;
            Ok(response
                .hits
                .iter()
                .filter_map(|hit| match &hit.value {
                    FacetValue::Keyword(value) => Some((value.clone(), hit.count as u64)),
                    _ => None,
                })
                .collect())
        })
        .await
    }

    async fn add_keywords(&self) -> Result<(), IndexError> {
        self.blocking(|shard| {
            let Some(shard) = shard else { return Ok(()) };
            if shard.config().sparse_vectors.contains_key(KEYWORDS) {
                return Ok(());
            }
            let config = serde_json::from_value(serde_json::json!({"sparse": {"modifier": "idf"}}))
                .map_err(|e| IndexError::Internal(format!("keyword vector config: {e}")))?;
            shard
                .update(UpdateOperation::VectorNameOperation(
                    VectorNameOperations::CreateVectorName(CreateVectorName {
                        vector_name: KEYWORDS.to_owned(),
                        config,
                    }),
                ))
                .map_err(internal)
        })
        .await
    }

    async fn missing_keywords(&self, limit: usize) -> Result<Vec<Record>, IndexError> {
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            let without = EdgeFilter {
                must_not: Some(vec![Condition::HasVector(HasVectorCondition {
                    has_vector: KEYWORDS.to_owned(),
                })]),
                ..Default::default()
            };
            scroll(&shard, 0, limit, Some(without))
        })
        .await
    }

    async fn set_keywords(&self, records: &[Record]) -> Result<(), IndexError> {
        let points = records
            .iter()
            .map(|r| {
                let words = keywords::document(&r.payload.attributes)?;
                Ok(PointVectorsPersisted {
                    id: PointId::Uuid(r.id),
                    vector: VectorStructPersisted::Named(
                        [(KEYWORDS.to_owned(), VectorPersisted::Sparse(sparse(words)))].into(),
                    ),
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        self.blocking(move |shard| {
            let Some(shard) = shard else { return Ok(()) };
            shard
                .update(UpdateOperation::VectorOperation(
                    VectorOperations::UpdateVectors(UpdateVectorsOp {
                        points,
                        update_filter: None,
                    }),
                ))
                .map_err(internal)
        })
        .await
    }

    async fn flush(&self) -> Result<(), IndexError> {
        self.blocking(|shard| match shard {
            Some(shard) => shard.flush().map_err(internal),
            None => Ok(()),
        })
        .await
    }

    async fn optimize(&self) -> Result<(), IndexError> {
        self.blocking(|shard| match shard {
            Some(shard) => shard.optimize().map(|_| ()).map_err(internal),
            None => Ok(()),
        })
        .await
    }
}
