//! A Qdrant server (or cluster) through `qdrant-client` (gRPC), used when `QDRANT_URL` is set.
//! Same payload, same keyword indexes, same filters as the embedded engine.

use std::sync::RwLock;
use std::time::Duration;

use backend_api::Filters;
use http_edge::retry::{Backoff, Transient, retry};
use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    CreateVectorNameRequestBuilder, DeletePointsBuilder, Distance, FacetCountsBuilder, FieldType,
    Filter as QdrantFilter, Fusion, GetPointsBuilder, Modifier, NamedVectors, PointId, PointStruct,
    PointVectors, PointsIdsList, PrefetchQueryBuilder, Query, QueryPointsBuilder,
    SearchParamsBuilder, SparseVectorCreationConfigBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpdatePointVectorsBuilder, UpsertPointsBuilder, Vector,
    VectorInput, VectorParamsBuilder, facet_value,
};
use serde_json::Value;
use uuid::Uuid;

use super::keywords::{self, KEYWORDS, SparseVector};
use super::{
    CAPTION, Filter, IndexError, IndexModel, IndexQuery, Point, Record, ScoredPoint, SearchRequest,
    SearchTuning, StoredPayload, THUMBNAIL, VectorIndex,
};

/// How a new collection is laid out over a Qdrant cluster; `None`: Qdrant's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterLayout {
    pub shards: Option<u32>,
    pub replication_factor: Option<u32>,
    pub write_consistency: Option<u32>,
}

/// The Qdrant nodes this backend may talk to (`QDRANT_URL`, comma-separated): calls go to the
/// current one; a call that fails transiently moves to the next, so losing the node the backend
/// talks to costs one retry, not the catalogue. Any node of a cluster serves every collection.
pub struct Nodes {
    nodes: Vec<Qdrant>,
    current: std::sync::atomic::AtomicUsize,
}

impl Nodes {
    fn connect(urls: &str, api_key: Option<String>) -> Result<Self, IndexError> {
        let nodes = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                Qdrant::from_url(url)
                    .api_key(api_key.clone())
                    .skip_compatibility_check()
                    .build()
                    .map_err(unavailable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(IndexError::Unavailable("QDRANT_URL names no node".into()));
        }
        Ok(Self {
            nodes,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Acquire) % self.nodes.len()
    }

    /// The node `failed` did not answer: the next one is current (unless another call moved
    /// on already).
    fn next(&self, failed: usize) {
        if self.nodes.len() > 1 {
            let next = (failed + 1) % self.nodes.len();
            if self
                .current
                .compare_exchange(
                    failed,
                    next,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                )
                .is_ok()
            {
                tracing::warn!(
                    failed,
                    next,
                    "qdrant node not answering; using the next one"
                );
            }
        }
    }
}

impl std::ops::Deref for Nodes {
    type Target = Qdrant;

    fn deref(&self) -> &Qdrant {
        &self.nodes[self.current()]
    }
}

pub struct QdrantServerIndex {
    client: std::sync::Arc<Nodes>,
    /// What points are read and written through: the alias of the live collection (or, for a
    /// collection made before re-indexing existed, its own name); a re-index target's name.
    collection: String,
    /// The model recorded in the live collection's metadata.
    model: RwLock<Option<IndexModel>>,
    tuning: SearchTuning,
    dim: RwLock<Option<usize>>,
    /// Whether the collection has keyword vectors (one made before them has not).
    keywords: RwLock<bool>,
    /// Held while the collection is being created (the first writes race for it).
    creating: tokio::sync::Mutex<()>,
    layout: ClusterLayout,
}

/// A failed call to the Qdrant server: counted as an upstream error where it happens (the
/// embedded engine is in process, not an upstream).
fn unavailable(e: qdrant_client::QdrantError) -> IndexError {
    crate::metrics::upstream_error("index");
    IndexError::Unavailable(e.to_string())
}

/// Data calls that meet a transient failure (a peer restarting or unreachable, a leader election
/// under way, overload) are tried again: 3 calls in all, about 100 then 200 ms apart. Every call
/// retried is idempotent: reads, and upserts and deletes by id.
const SERVER_RETRY: Backoff = Backoff::new(3, Duration::from_millis(100));

/// gRPC status codes (grpc/doc/statuscodes.md) that say "try again": ABORTED, UNAVAILABLE;
/// and CANCELLED, UNKNOWN, which a connection that broke mid-call (a node killed) surfaces as.
/// Every call retried is idempotent, so trying one of those again costs at most a repeat.
const CANCELLED: i32 = 1;
/// INTERNAL is a server fault, not retried, except the one qdrant-client makes of a refused
/// connection ("Failed to connect to ...": the node is down).
const INTERNAL: i32 = 13;
const UNKNOWN: i32 = 2;
const ABORTED: i32 = 10;
const UNAVAILABLE: i32 = 14;

struct ServerError(qdrant_client::QdrantError);

impl Transient for ServerError {
    fn is_transient(&self) -> bool {
        match &self.0 {
            qdrant_client::QdrantError::ResponseError { status } => {
                matches!(
                    i32::from(status.code()),
                    CANCELLED | UNKNOWN | ABORTED | UNAVAILABLE
                ) || (i32::from(status.code()) == INTERNAL
                    && status.message().starts_with("Failed to connect"))
            }
            qdrant_client::QdrantError::ResourceExhaustedError { .. } => true,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match &self.0 {
            qdrant_client::QdrantError::ResourceExhaustedError {
                retry_after_seconds,
                ..
            } => Some(Duration::from_secs(*retry_after_seconds)),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One data call to the server, retried while it fails transiently ([`SERVER_RETRY`]); a
/// transient failure moves the next attempt to the next node.
async fn call<T, Fut>(
    nodes: &Nodes,
    what: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, IndexError>
where
    Fut: Future<Output = Result<T, qdrant_client::QdrantError>>,
{
    retry(&SERVER_RETRY, what, || {
        let node = nodes.current();
        let pending = attempt();
        async move {
            pending.await.map_err(|e| {
                let error = ServerError(e);
                if error.is_transient() {
                    nodes.next(node);
                }
                error
            })
        }
    })
    .await
    .map_err(|ServerError(e)| unavailable(e))
}

/// The collection metadata key holding the [`IndexModel`] that made its vectors.
const MODEL_METADATA: &str = "model";

fn model_metadata(
    model: &IndexModel,
) -> Result<std::collections::HashMap<String, Value>, IndexError> {
    let value = serde_json::to_value(model)
        .map_err(|e| IndexError::Internal(format!("model record: {e}")))?;
    Ok([(MODEL_METADATA.to_owned(), value)].into())
}

/// The gRPC filter for our keyword matches.
pub fn qdrant_filter(filter: &Filter) -> Option<QdrantFilter> {
    if filter.is_empty() {
        return None;
    }
    let mut out = QdrantFilter::must(
        filter
            .must()
            .map(|(field, value)| Condition::matches(field, value.to_owned())),
    );
    out.must_not = filter
        .without_words
        .iter()
        .map(|word| Condition::matches_text(CAPTION, word.clone()))
        .collect();
    Some(out)
}

/// The sparse vector of a keyword query.
fn by_keywords(words: SparseVector) -> Query {
    Query::new_nearest(VectorInput::new_sparse(words.indices, words.values))
}

/// The keyword vector's configuration: term weights times the index's IDF.
fn keyword_vectors() -> SparseVectorsConfigBuilder {
    let mut config = SparseVectorsConfigBuilder::default();
    config.add_named_vector_params(
        KEYWORDS,
        SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
    );
    config
}

fn point_uuid(id: Option<&PointId>) -> Option<Uuid> {
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Uuid(s) => s.parse().ok(),
        PointIdOptions::Num(_) => None,
    }
}

fn payload_of(
    map: std::collections::HashMap<String, qdrant_client::qdrant::Value>,
) -> Result<StoredPayload, IndexError> {
    let json = Value::from(qdrant_client::Payload::from(map));
    serde_json::from_value(json)
        .map_err(|e| IndexError::Internal(format!("stored payload unreadable: {e}")))
}

impl QdrantServerIndex {
    /// Runs a query and reads each UUID-keyed point's payload (points with other ids are
    /// skipped) into what `build` makes of its id, score and payload.
    async fn query<T>(
        &self,
        builder: QueryPointsBuilder,
        build: impl Fn(Uuid, f32, StoredPayload) -> T,
    ) -> Result<Vec<T>, IndexError> {
        let response = call(&self.client, "qdrant query", || {
            self.client.query(builder.clone())
        })
        .await?;
        response
            .result
            .into_iter()
            .filter_map(|p| point_uuid(p.id.as_ref()).map(|id| (id, p)))
            .map(|(id, p)| Ok(build(id, p.score, payload_of(p.payload)?)))
            .collect()
    }

    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        tuning: SearchTuning,
    ) -> Result<Self, IndexError> {
        let nodes = Nodes::connect(url, api_key)?;
        let index = Self::named(std::sync::Arc::new(nodes), collection, tuning);
        index.read_dim().await?;
        Ok(index)
    }

    fn named(client: std::sync::Arc<Nodes>, collection: &str, tuning: SearchTuning) -> Self {
        Self {
            client,
            collection: collection.to_owned(),
            model: RwLock::new(None),
            tuning,
            dim: RwLock::new(None),
            keywords: RwLock::new(true),
            creating: tokio::sync::Mutex::new(()),
            layout: ClusterLayout::default(),
        }
    }

    /// The alias of the staged collection ([`VectorIndex::stage`]).
    fn staged_alias(&self) -> String {
        format!("{}-staged", self.collection)
    }

    /// The collection the staged alias names, if any.
    async fn staged_collection(&self) -> Result<Option<String>, IndexError> {
        let staged = self.staged_alias();
        let aliases = call(&self.client, "qdrant list aliases", || {
            self.client.list_aliases()
        })
        .await?;
        Ok(aliases
            .aliases
            .into_iter()
            .find(|a| a.alias_name == staged)
            .map(|a| a.collection_name))
    }

    /// The collection behind our name: the alias's target, or the collection of that name.
    async fn resolve(&self) -> Result<Option<String>, IndexError> {
        let aliases = call(&self.client, "qdrant list aliases", || {
            self.client.list_aliases()
        })
        .await?;
        if let Some(alias) = aliases
            .aliases
            .into_iter()
            .find(|a| a.alias_name == self.collection)
        {
            return Ok(Some(alias.collection_name));
        }
        let exists = call(&self.client, "qdrant collection exists", || {
            self.client.collection_exists(&self.collection)
        })
        .await?;
        Ok(exists.then(|| self.collection.clone()))
    }

    /// Shards and copies for the collection, when this index creates it.
    pub fn with_layout(mut self, layout: ClusterLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Reads the vector size of the collection, if it exists, into `dim`.
    async fn read_dim(&self) -> Result<Option<usize>, IndexError> {
        let Some(physical) = self.resolve().await? else {
            return Ok(None);
        };
        let info = self
            .client
            .collection_info(&physical)
            .await
            .map_err(unavailable)?;
        let config = info.result.and_then(|r| r.config);
        let model = config
            .as_ref()
            .map(|c| Value::from(qdrant_client::Payload::from(c.metadata.clone())))
            .and_then(|metadata| metadata.get(MODEL_METADATA).cloned())
            .and_then(|v| serde_json::from_value::<IndexModel>(v).ok());
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = model;
        let params = config.and_then(|c| c.params);
        let keywords = params
            .as_ref()
            .and_then(|p| p.sparse_vectors_config.as_ref())
            .is_some_and(|sparse| sparse.map.contains_key(KEYWORDS));
        *self.keywords.write().unwrap_or_else(|e| e.into_inner()) = keywords;
        let dim = params
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                qdrant_client::qdrant::vectors_config::Config::Params(p) => Some(p.size as usize),
                qdrant_client::qdrant::vectors_config::Config::ParamsMap(_) => None,
            });
        *self.dim.write().unwrap_or_else(|e| e.into_inner()) = dim;
        Ok(dim)
    }

    /// Creates the collection for vectors of `dim` on the first write. One creation per
    /// process at a time; another writer (a second backend, the ETL's) may win the race, and
    /// then its collection is used if its vectors have the same size.
    async fn ensure_collection(&self, dim: usize) -> Result<(), IndexError> {
        self.create(dim, true).await
    }

    /// Creates the collection as made before keyword vectors (dense vectors only), for tests of
    /// the keyword backfill that migrates such collections.
    #[doc(hidden)]
    pub async fn create_without_keywords(&self, dim: usize) -> Result<(), IndexError> {
        self.create(dim, false).await
    }

    async fn create(&self, dim: usize, keywords: bool) -> Result<(), IndexError> {
        if self.dim().is_some() {
            return Ok(());
        }
        let _creating = self.creating.lock().await;
        if self.dim().is_some() {
            return Ok(());
        }
        self.create_collection(&self.collection, dim, keywords, None)
            .await
    }

    /// Creates collection `name` (our name's, or one a model's index is made in) with the
    /// keyword indexes, recording `model` in its metadata; another writer winning the race is
    /// fine when its vectors have the same size.
    async fn create_collection(
        &self,
        name: &str,
        dim: usize,
        keywords: bool,
        model: Option<&IndexModel>,
    ) -> Result<(), IndexError> {
        let mut collection = CreateCollectionBuilder::new(name)
            .vectors_config(VectorParamsBuilder::new(dim as u64, Distance::Cosine));
        if let Some(model) = model {
            collection = collection.metadata(model_metadata(model)?);
        }
        if keywords {
            collection = collection.sparse_vectors_config(keyword_vectors());
        }
        if let Some(shards) = self.layout.shards {
            collection = collection.shard_number(shards);
        }
        if let Some(copies) = self.layout.replication_factor {
            collection = collection.replication_factor(copies);
        }
        if let Some(acks) = self.layout.write_consistency {
            collection = collection.write_consistency_factor(acks);
        }
        let created = self.client.create_collection(collection).await;
        if let Err(error) = created {
            let other = Self::named(self.client.clone(), name, self.tuning);
            return match other.read_dim().await? {
                Some(expected) if expected == dim => Ok(()),
                Some(expected) => Err(IndexError::Dimension { expected, got: dim }),
                None => Err(unavailable(error)),
            };
        }
        let indexes = Filters::FIELDS
            .iter()
            .map(|field| (*field, FieldType::Keyword))
            .chain([(CAPTION, FieldType::Text)]);
        for (field, kind) in indexes {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name, field, kind).wait(true),
                )
                .await
                .map_err(unavailable)?;
        }
        if name == self.collection {
            *self.dim.write().unwrap_or_else(|e| e.into_inner()) = Some(dim);
            *self.keywords.write().unwrap_or_else(|e| e.into_inner()) = keywords;
            *self.model.write().unwrap_or_else(|e| e.into_inner()) = model.cloned();
        }
        Ok(())
    }

    fn ids(ids: &[Uuid]) -> Vec<PointId> {
        ids.iter().map(|u| PointId::from(u.to_string())).collect()
    }
}

#[async_trait::async_trait]
impl VectorIndex for QdrantServerIndex {
    fn dim(&self) -> Option<usize> {
        *self.dim.read().unwrap_or_else(|e| e.into_inner())
    }

    fn has_keywords(&self) -> bool {
        *self.keywords.read().unwrap_or_else(|e| e.into_inner())
    }

    fn model(&self) -> Option<IndexModel> {
        self.model.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server's health check (it answers even before the collection exists: a count would
    /// not reach the server then), then the collection's model and size read again: another
    /// replica may have re-indexed and switched the alias.
    async fn probe(&self) -> Result<(), IndexError> {
        // Ready while any node answers: each that does not passes the turn to the next.
        let mut last = None;
        for _ in 0..self.client.nodes.len() {
            let node = self.client.current();
            match self.client.health_check().await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(error) => {
                    self.client.next(node);
                    last = Some(error);
                }
            }
        }
        if let Some(error) = last {
            return Err(unavailable(error));
        }
        self.read_dim().await.map(drop)
    }

    async fn adopt(&self, model: &IndexModel) -> Result<(), IndexError> {
        let _creating = self.creating.lock().await;
        match self.resolve().await? {
            Some(physical) => {
                let dim = self.read_dim().await?;
                if let Some(dim) = dim
                    && dim != model.dim
                {
                    return Err(IndexError::Dimension {
                        expected: dim,
                        got: model.dim,
                    });
                }
                let update = qdrant_client::qdrant::UpdateCollectionBuilder::new(&physical)
                    .metadata(model_metadata(model)?);
                call(&self.client, "qdrant update collection", || {
                    self.client.update_collection(update.clone())
                })
                .await?;
            }
            None => {
                // A new index: the model's collection, and our name as its alias, so that a
                // re-index later switches it in one step.
                let physical = model.store_name(&self.collection, false);
                self.create_collection(&physical, model.dim, true, Some(model))
                    .await?;
                let alias =
                    qdrant_client::qdrant::CreateAliasBuilder::new(&physical, &self.collection);
                call(&self.client, "qdrant create alias", || {
                    self.client.create_alias(alias.clone())
                })
                .await?;
            }
        }
        self.read_dim().await?;
        Ok(())
    }

    async fn rebuild_target(
        &self,
        model: &IndexModel,
    ) -> Result<std::sync::Arc<dyn VectorIndex>, IndexError> {
        let live = self.resolve().await?.unwrap_or_default();
        let name = model.target_name(&self.collection, &live);
        let mut target = Self::named(self.client.clone(), &name, self.tuning);
        target.layout = self.layout;
        match target.read_dim().await? {
            Some(_) => {
                if let Some(recorded) = target.model()
                    && recorded.fingerprint != model.fingerprint
                {
                    return Err(IndexError::Internal(format!(
                        "collection {name} holds vectors of {recorded}, not of {model}"
                    )));
                }
            }
            None => {
                target
                    .create_collection(&name, model.dim, true, Some(model))
                    .await?
            }
        }
        Ok(std::sync::Arc::new(target))
    }

    async fn promote(&self, model: &IndexModel) -> Result<(), IndexError> {
        let live = self.resolve().await?;
        let name = model.target_name(&self.collection, live.as_deref().unwrap_or_default());
        let alias = qdrant_client::qdrant::CreateAliasBuilder::new(&name, &self.collection);
        if live.as_deref() == Some(self.collection.as_str()) {
            // A collection made before re-indexing carries our name itself: it must go before
            // the name can become an alias (searches fail for that moment; once only).
            call(&self.client, "qdrant delete collection", || {
                self.client.delete_collection(&self.collection)
            })
            .await?;
        }
        // Creating an alias that exists moves it, atomically for every reader.
        call(&self.client, "qdrant switch alias", || {
            self.client.create_alias(alias.clone())
        })
        .await?;
        if let Some(old) = live.filter(|old| *old != self.collection && *old != name) {
            call(&self.client, "qdrant delete collection", || {
                self.client.delete_collection(&old)
            })
            .await?;
        }
        if self.staged_collection().await?.as_deref() == Some(name.as_str()) {
            let staged = self.staged_alias();
            call(&self.client, "qdrant delete alias", || {
                self.client.delete_alias(staged.as_str())
            })
            .await?;
        }
        tracing::info!(collection = %name, alias = %self.collection, "qdrant collection promoted");
        self.read_dim().await?;
        Ok(())
    }

    async fn stage(&self, model: &IndexModel) -> Result<(), IndexError> {
        let live = self.resolve().await?.unwrap_or_default();
        let name = model.target_name(&self.collection, &live);
        let alias = qdrant_client::qdrant::CreateAliasBuilder::new(&name, self.staged_alias());
        call(&self.client, "qdrant stage alias", || {
            self.client.create_alias(alias.clone())
        })
        .await?;
        tracing::info!(collection = %name, alias = %self.staged_alias(), live = %live, "qdrant collection staged beside the live one");
        Ok(())
    }

    async fn staged(&self) -> Result<Option<std::sync::Arc<dyn VectorIndex>>, IndexError> {
        let Some(name) = self.staged_collection().await? else {
            return Ok(None);
        };
        let mut staged = Self::named(self.client.clone(), &name, self.tuning);
        staged.layout = self.layout;
        Ok(match staged.read_dim().await? {
            Some(_) => Some(std::sync::Arc::new(staged)),
            None => None,
        })
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), IndexError> {
        let Some(dim) = points.first().map(|p| p.vector.len()) else {
            return Ok(());
        };
        self.ensure_collection(dim).await?;
        if let Some(expected) = self.dim()
            && let Some(other) = points.iter().find(|p| p.vector.len() != expected)
        {
            return Err(IndexError::Dimension {
                expected,
                got: other.vector.len(),
            });
        }
        let points = points
            .into_iter()
            .map(|p| {
                let payload = serde_json::to_value(&p.payload)
                    .map_err(|e| IndexError::Internal(e.to_string()))
                    .and_then(|v| {
                        qdrant_client::Payload::try_from(v)
                            .map_err(|e| IndexError::Internal(e.to_string()))
                    })?;
                let vectors = if self.has_keywords() {
                    let words = keywords::document(&p.payload.attributes)?;
                    NamedVectors::default()
                        .add_vector("", p.vector)
                        .add_vector(KEYWORDS, Vector::new_sparse(words.indices, words.values))
                } else {
                    NamedVectors::default().add_vector("", p.vector)
                };
                Ok(PointStruct::new(p.id.to_string(), vectors, payload))
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let upsert = UpsertPointsBuilder::new(&self.collection, points).wait(true);
        call(&self.client, "qdrant upsert", || {
            self.client.upsert_points(upsert.clone())
        })
        .await?;
        Ok(())
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<usize, IndexError> {
        if self.dim().is_none() {
            return Ok(0);
        }
        let existing = self.retrieve(ids, false).await?.len();
        let delete = DeletePointsBuilder::new(&self.collection)
            .points(PointsIdsList {
                ids: Self::ids(ids),
            })
            .wait(true);
        call(&self.client, "qdrant delete", || {
            self.client.delete_points(delete.clone())
        })
        .await?;
        Ok(existing)
    }

    async fn retrieve(&self, ids: &[Uuid], with_vector: bool) -> Result<Vec<Record>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        let get = GetPointsBuilder::new(&self.collection, Self::ids(ids))
            .with_payload(true)
            .with_vectors(with_vector);
        let response = call(&self.client, "qdrant retrieve", || {
            self.client.get_points(get.clone())
        })
        .await?;
        response
            .result
            .into_iter()
            .filter_map(|p| point_uuid(p.id.as_ref()).map(|id| (id, p)))
            .map(|(id, p)| {
                // The dense vector (the unnamed one). Servers since 1.16 send it in `vector`, not
                // the deprecated `data` (read alone, that is empty: "expected dim 256, got 0").
                let vector =
                    p.vectors
                        .and_then(|v| v.get_vector_by_name(""))
                        .and_then(|v| match v {
                            qdrant_client::qdrant::vector_output::Vector::Dense(dense) => {
                                Some(dense.data)
                            }
                            _ => None,
                        });
                Ok(Record {
                    id,
                    payload: payload_of(p.payload)?,
                    vector,
                })
            })
            .collect()
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<ScoredPoint>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        let params = SearchParamsBuilder::default()
            .hnsw_ef(self.tuning.hnsw_ef as u64)
            .exact(self.tuning.exact);
        let mut filter = qdrant_filter(&request.filter).unwrap_or_default();
        if !request.exclude.is_empty() {
            filter.must_not.push(Condition::has_id(
                request
                    .exclude
                    .iter()
                    .map(|id| PointId::from(id.to_string())),
            ));
        }
        let filter = (filter != QdrantFilter::default()).then_some(filter);
        let mut builder = QueryPointsBuilder::new(&self.collection)
            .limit(request.limit as u64)
            .offset(request.offset as u64)
            .with_payload(true);
        match request.query {
            IndexQuery::Vector(vector) => {
                builder = builder.query(vector).params(params);
            }
            IndexQuery::Keywords(words) => {
                builder = builder.query(by_keywords(words)).using(KEYWORDS);
            }
            IndexQuery::Hybrid { vector, keywords } => {
                let (meaning_depth, words_depth) =
                    IndexQuery::prefetch_depths(request.limit + request.offset);
                let mut by_meaning = PrefetchQueryBuilder::default()
                    .query(Query::new_nearest(vector))
                    .params(params)
                    .limit(meaning_depth as u64);
                let mut by_words = PrefetchQueryBuilder::default()
                    .query(by_keywords(keywords))
                    .using(KEYWORDS)
                    .limit(words_depth as u64);
                if let Some(filter) = &filter {
                    by_meaning = by_meaning.filter(filter.clone());
                    by_words = by_words.filter(filter.clone());
                }
                builder = builder
                    .add_prefetch(by_meaning)
                    .add_prefetch(by_words)
                    .query(Query::new_fusion(Fusion::Dbsf));
            }
        }
        if let Some(filter) = filter {
            builder = builder.filter(filter);
        }
        if let Some(min) = request.min_score {
            builder = builder.score_threshold(min);
        }
        self.query(builder, |id, score, payload| ScoredPoint {
            id,
            score,
            payload,
        })
        .await
    }

    async fn list(
        &self,
        offset: usize,
        limit: usize,
        filter: &Filter,
    ) -> Result<Vec<Record>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        // No query: points in id order, with a row offset.
        let mut builder = QueryPointsBuilder::new(&self.collection)
            .limit(limit as u64)
            .offset(offset as u64)
            .with_payload(true);
        if let Some(filter) = qdrant_filter(filter) {
            builder = builder.filter(filter);
        }
        self.query(builder, |id, _score, payload| Record {
            id,
            payload,
            vector: None,
        })
        .await
    }

    async fn count(&self, filter: &Filter) -> Result<u64, IndexError> {
        if self.dim().is_none() {
            return Ok(0);
        }
        let mut builder = CountPointsBuilder::new(&self.collection).exact(true);
        if let Some(filter) = qdrant_filter(filter) {
            builder = builder.filter(filter);
        }
        let response = call(&self.client, "qdrant count", || {
            self.client.count(builder.clone())
        })
        .await?;
        Ok(response.result.map_or(0, |r| r.count))
    }

    async fn facet(
        &self,
        field: &'static str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        let facet = FacetCountsBuilder::new(&self.collection, field)
            .limit(limit as u64)
            .exact(true);
        let response = call(&self.client, "qdrant facet", || {
            self.client.facet(facet.clone())
        })
        .await?;
        Ok(response
            .hits
            .into_iter()
            .filter_map(|hit| match hit.value.and_then(|v| v.variant) {
                Some(facet_value::Variant::StringValue(s)) => Some((s, hit.count)),
                _ => None,
            })
            .collect())
    }

    async fn add_keywords(&self) -> Result<(), IndexError> {
        if self.dim().is_none() {
            return Ok(());
        }
        // The caption's text index (word exclusions), for a collection made before it; the
        // server answers at once when it exists.
        self.client
            .create_field_index(
                CreateFieldIndexCollectionBuilder::new(&self.collection, CAPTION, FieldType::Text)
                    .wait(true),
            )
            .await
            .map_err(unavailable)?;
        if self.has_keywords() {
            return Ok(());
        }
        let config = SparseVectorCreationConfigBuilder::default().modifier(Modifier::Idf as i32);
        let added = self
            .client
            .create_vector_name(
                CreateVectorNameRequestBuilder::new(&self.collection, KEYWORDS, config).wait(true),
            )
            .await;
        // Another backend may have added it meanwhile: what the collection says is what counts.
        if let Err(error) = added {
            self.read_dim().await?;
            if !self.has_keywords() {
                return Err(unavailable(error));
            }
        }
        *self.keywords.write().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(())
    }

    async fn missing_keywords(&self, limit: usize) -> Result<Vec<Record>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        let builder = QueryPointsBuilder::new(&self.collection)
            .limit(limit as u64)
            .filter(QdrantFilter::must_not([Condition::has_vector(KEYWORDS)]))
            .with_payload(true);
        self.query(builder, |id, _score, payload| Record {
            id,
            payload,
            vector: None,
        })
        .await
    }

    async fn set_keywords(&self, records: &[Record]) -> Result<(), IndexError> {
        let points = records
            .iter()
            .map(|r| {
                let words = keywords::document(&r.payload.attributes)?;
                let vectors = NamedVectors::default()
                    .add_vector(KEYWORDS, Vector::new_sparse(words.indices, words.values));
                Ok(PointVectors {
                    id: Some(PointId::from(r.id.to_string())),
                    vectors: Some(vectors.into()),
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let update = UpdatePointVectorsBuilder::new(&self.collection, points).wait(true);
        call(&self.client, "qdrant set keywords", || {
            self.client.update_vectors(update.clone())
        })
        .await?;
        Ok(())
    }

    async fn missing_thumbnails(&self, limit: usize) -> Result<Vec<Record>, IndexError> {
        if self.dim().is_none() {
            return Ok(Vec::new());
        }
        let builder = QueryPointsBuilder::new(&self.collection)
            .filter(QdrantFilter::must([Condition::is_empty(THUMBNAIL)]))
            .limit(limit as u64)
            .with_payload(true);
        self.query(builder, |id, _, payload| Record {
            id,
            payload,
            vector: None,
        })
        .await
    }

    async fn set_thumbnail(&self, id: Uuid, thumbnail: &str) -> Result<(), IndexError> {
        let payload = qdrant_client::Payload::try_from(serde_json::json!({ THUMBNAIL: thumbnail }))
            .map_err(|e| IndexError::Internal(e.to_string()))?;
        let update = qdrant_client::qdrant::SetPayloadPointsBuilder::new(&self.collection, payload)
            .points_selector(PointsIdsList {
                ids: Self::ids(&[id]),
            })
            .wait(true);
        call(&self.client, "qdrant set payload", || {
            self.client.set_payload(update.clone())
        })
        .await?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), IndexError> {
        // The server persists acknowledged writes (wait = true) itself.
        Ok(())
    }

    async fn optimize(&self) -> Result<(), IndexError> {
        // The server's optimizers run in the background.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        use qdrant_client::QdrantError;
        let status = |code| QdrantError::ResponseError {
            status: tonic::Status::new(code, "x"),
        };
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Aborted,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
        ] {
            assert!(ServerError(status(code)).is_transient(), "{code:?}");
        }
        let refused = QdrantError::ResponseError {
            status: tonic::Status::new(
                tonic::Code::Internal,
                "Failed to connect to http://127.0.0.1:6334/: tonic::transport::Error(Transport, ConnectError)",
            ),
        };
        assert!(ServerError(refused).is_transient(), "a node down");
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::Internal,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(!ServerError(status(code)).is_transient(), "{code:?}");
        }
        let busy = ServerError(QdrantError::ResourceExhaustedError {
            status: tonic::Status::resource_exhausted("busy"),
            retry_after_seconds: 2,
        });
        assert!(busy.is_transient());
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
        assert!(!ServerError(QdrantError::ConversionError("x".into())).is_transient());
    }

    #[test]
    fn filters_become_must_matches() {
        assert!(qdrant_filter(&Filter::default()).is_none());
        let f = qdrant_filter(&Filter::attributes(Filters {
            colour: Some("Red".into()),
            gender: Some("Women".into()),
            ..Filters::default()
        }))
        .expect("filter");
        assert_eq!(f.must.len(), 2);
        assert_eq!(f.must[0], Condition::matches("gender", "Women".to_string()));
        assert_eq!(f.must[1], Condition::matches("colour", "Red".to_string()));
        assert!(f.must_not.is_empty());
    }

    #[test]
    fn point_ids_round_trip() {
        let id = Uuid::new_v4();
        let pid = PointId::from(id.to_string());
        assert_eq!(point_uuid(Some(&pid)), Some(id));
        assert_eq!(point_uuid(Some(&PointId::from(7u64))), None);
    }
}
