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
    HasVectorCondition, JsonPath, Match, MatchText, Modifier, NamedQuery, OperationError, Payload,
    PayloadFieldSchema, PayloadOps, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStructPersisted, PointVectorsPersisted, PrefetchBuilder, QueryEnum,
    QueryRequestBuilder, RetrieveRequestBuilder, ScoringQuery, SearchParams, SetPayloadOp,
    UpdateOperation, UpdateVectorsOp, VectorInternal, VectorNameOperations, VectorOperations,
    VectorPersisted, VectorStructInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::Value;
use uuid::Uuid;

use super::keywords::{self, KEYWORDS, SparseVector};
use super::{
    CAPTION, Filter, IndexError, IndexModel, IndexQuery, Point, Record, ScoredPoint, SearchRequest,
    SearchTuning, StoredPayload, THUMBNAIL, VectorIndex,
};

pub struct EdgeIndex {
    /// `DATA_DIR/index`: the lock, the pointer to the live store, the stores and their models.
    root: PathBuf,
    tuning: SearchTuning,
    live: RwLock<Live>,
    /// The process's hold on the folder; a re-index target shares its parent's.
    _owner: Option<File>,
    /// The re-index target made by [`VectorIndex::rebuild_target`], until promoted.
    target: std::sync::Mutex<Option<Arc<EdgeIndex>>>,
    /// The staged store ([`VectorIndex::stage`]), once staged or opened.
    staged: std::sync::Mutex<Option<Arc<EdgeIndex>>>,
}

/// The live store: its folder under the root, its engine (created on the first write when the
/// store is new: the vector size comes with it) and the model that made its vectors.
struct Live {
    name: String,
    shard: Option<Arc<EdgeShard>>,
    model: Option<IndexModel>,
}

/// The store of an index made before re-indexing existed; later stores are named by model.
const FIRST_STORE: &str = "shard";
/// The file naming the live store; replaced whole (written beside, then renamed) on promotion.
const POINTER: &str = "current";
/// The file naming the staged store, searched beside the live one when a request names its model.
const STAGED: &str = "staged";

/// The store a pointer file names, checked to be a plain name under the root.
fn pointed_store(pointer: &Path, name: &str) -> Result<String, IndexError> {
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(IndexError::Internal(format!(
            "{} names no store: {name:?}",
            pointer.display()
        )));
    }
    Ok(name.to_owned())
}

fn unavailable_at(path: &Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(format!("{}: {e}", path.display()))
}

fn model_file(root: &Path, store: &str) -> PathBuf {
    root.join(format!("{store}.model.json"))
}

fn read_model(root: &Path, store: &str) -> Result<Option<IndexModel>, IndexError> {
    let path = model_file(root, store);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IndexError::Internal(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable_at(&path, e)),
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old file or the new one,
/// never a part: a temporary file beside it, synced, renamed over it, the folder synced. Each
/// write has its own temporary file, so two writers of one path never rename each other's.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = File::create(&tmp).map_err(|e| unavailable_at(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| unavailable_at(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| unavailable_at(path, e))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| unavailable_at(parent, e))?;
    }
    Ok(())
}

fn write_model(root: &Path, store: &str, model: &IndexModel) -> Result<(), IndexError> {
    let bytes = serde_json::to_vec_pretty(model)
        .map_err(|e| IndexError::Internal(format!("model record: {e}")))?;
    replace_file(&model_file(root, store), &bytes)
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
    let must_not = filter
        .without_words
        .iter()
        .map(|word| {
            Ok(Condition::Field(FieldCondition::new_match(
                key(CAPTION)?,
                Match::Text(MatchText { text: word.clone() }),
            )))
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Ok(Some(EdgeFilter {
        must: (!must.is_empty()).then_some(must),
        must_not: (!must_not.is_empty()).then_some(must_not),
        ..Default::default()
    }))
}

/// The caption's full-text index (word exclusions). Made with the store; a store made before it
/// gets it when it is opened ([`VectorIndex::add_keywords`]).
fn create_text_index(shard: &EdgeShard) -> Result<(), IndexError> {
    shard
        .update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: key(CAPTION)?,
                field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Text)),
            }),
        ))
        .map_err(internal)
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
    /// Opens the live store under `dir`, or prepares a new one there.
    pub fn open(dir: &Path, tuning: SearchTuning) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable_at(dir, e))?;
        let lock_path = dir.join("owner.lock");
        let owner = File::create(&lock_path).map_err(|e| unavailable_at(&lock_path, e))?;
        match owner.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(IndexError::Unavailable(format!(
                    "the index at {} is in use by another process (one process owns an embedded index; stop the other backend or set DATA_DIR)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(unavailable_at(&lock_path, e)),
        }
        let pointer = dir.join(POINTER);
        let name = match std::fs::read_to_string(&pointer) {
            Ok(name) => pointed_store(&pointer, &name)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FIRST_STORE.to_owned(),
            Err(e) => return Err(unavailable_at(&pointer, e)),
        };
        let index = Self::store(dir, &name, tuning, Some(owner))?;
        index.remove_leftovers();
        Ok(index)
    }

    /// The store `name` under `root`: loaded when it exists, else made on the first write.
    fn store(
        root: &Path,
        name: &str,
        tuning: SearchTuning,
        owner: Option<File>,
    ) -> Result<Self, IndexError> {
        let shard_dir = root.join(name);
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
        let model = read_model(root, name)?;
        Ok(Self {
            root: root.to_owned(),
            tuning,
            live: RwLock::new(Live {
                name: name.to_owned(),
                shard,
                model,
            }),
            _owner: owner,
            target: std::sync::Mutex::new(None),
            staged: std::sync::Mutex::new(None),
        })
    }

    /// Stores that a promotion replaced but could not remove (the process stopped first), and
    /// temporary files of writes that a crash stopped before their rename. A re-index target
    /// that was never promoted is kept: the next re-index resumes it.
    fn remove_leftovers(&self) {
        let live = self.live_name();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A write's temporary file that a crash left before its rename ([`replace_file`]).
            if name.ends_with(".tmp") && entry.path().is_file() {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let replaced = self.root.join(format!("{name}.replaced"));
            if name != live && replaced.exists() {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&replaced);
                        let _ = std::fs::remove_file(model_file(&self.root, &name));
                        tracing::info!(store = %name, "replaced embedded index removed");
                    }
                    Err(error) => {
                        tracing::warn!(store = %name, %error, "cannot remove a replaced index")
                    }
                }
            }
        }
    }

    fn live_name(&self) -> String {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone()
    }

    fn current(&self) -> Option<Arc<EdgeShard>> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .shard
            .clone()
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
        let mut guard = self.live.write().unwrap_or_else(|e| e.into_inner());
        if let Some(shard) = guard.shard.as_ref() {
            return Ok(shard.clone());
        }
        let dir = self.root.join(&guard.name);
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
        let shard = EdgeShard::new(&dir, config).map_err(internal)?;
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
        create_text_index(&shard)?;
        tracing::info!(dir = %dir.display(), dim, "embedded index created");
        let shard = Arc::new(shard);
        guard.shard = Some(shard.clone());
        Ok(shard)
    }

    /// The store `name` as a re-index target or the staged store, when this process holds it.
    fn target_for(&self, name: &str) -> Option<Arc<EdgeIndex>> {
        let held = |slot: &std::sync::Mutex<Option<Arc<EdgeIndex>>>| {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|target| target.live_name() == name)
        };
        held(&self.target).or_else(|| held(&self.staged))
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

    fn model(&self) -> Option<IndexModel> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .model
            .clone()
    }

    async fn adopt(&self, model: &IndexModel) -> Result<(), IndexError> {
        if let Some(dim) = self.dim()
            && dim != model.dim
        {
            return Err(IndexError::Dimension {
                expected: dim,
                got: model.dim,
            });
        }
        let shard = self.shard_for(model.dim)?;
        let (root, name, record) = (self.root.clone(), self.live_name(), model.clone());
        tokio::task::spawn_blocking(move || write_model(&root, &name, &record))
            .await
            .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))??;
        drop(shard);
        self.live.write().unwrap_or_else(|e| e.into_inner()).model = Some(model.clone());
        Ok(())
    }

    async fn rebuild_target(&self, model: &IndexModel) -> Result<Arc<dyn VectorIndex>, IndexError> {
        let name = model.target_name("shard", &self.live_name());
        if let Some(target) = self.target_for(&name) {
            return Ok(target);
        }
        let (root, tuning, record) = (self.root.clone(), self.tuning, model.clone());
        let target = tokio::task::spawn_blocking(move || -> Result<EdgeIndex, IndexError> {
            let target = Self::store(&root, &name, tuning, None)?;
            if let Some(recorded) = &target.live.read().unwrap_or_else(|e| e.into_inner()).model
                && recorded.fingerprint != record.fingerprint
            {
                return Err(IndexError::Internal(format!(
                    "{} holds vectors of {recorded}, not of {record}",
                    root.join(&name).display()
                )));
            }
            target.shard_for(record.dim)?;
            write_model(&root, &name, &record)?;
            target.live.write().unwrap_or_else(|e| e.into_inner()).model = Some(record);
            Ok(target)
        })
        .await
        .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))??;
        let target = Arc::new(target);
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
        Ok(target)
    }

    async fn promote(&self, model: &IndexModel) -> Result<(), IndexError> {
        let name = model.target_name("shard", &self.live_name());
        let target = self.target_for(&name).ok_or_else(|| {
            IndexError::Internal(format!("no re-index into {name} is under way to promote"))
        })?;
        target.flush().await?;
        let root = self.root.clone();
        let pointer_to = name.clone();
        tokio::task::spawn_blocking(move || {
            replace_file(&root.join(POINTER), pointer_to.as_bytes())
        })
        .await
        .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))??;
        let (shard, model) = {
            let target = target.live.read().unwrap_or_else(|e| e.into_inner());
            (target.shard.clone(), target.model.clone())
        };
        let old = {
            let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
            let old_name = std::mem::replace(&mut live.name, name.clone());
            live.model = model;
            (old_name, std::mem::replace(&mut live.shard, shard))
        };
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let was_staged = {
            let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            let was = staged.as_ref().is_some_and(|s| s.live_name() == name);
            if was {
                *staged = None;
            }
            was
        };
        let staged_pointer = self.root.join(STAGED);
        let points_here = tokio::fs::read_to_string(&staged_pointer)
            .await
            .is_ok_and(|staged| staged.trim() == name);
        if was_staged || points_here {
            match tokio::fs::remove_file(&staged_pointer).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable_at(&staged_pointer, e)),
            }
        }
        tracing::info!(store = %name, replaced = %old.0, "embedded index promoted");
        // The old store goes once the searches still holding it are done (or at the next start).
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let (old_name, mut held) = old;
            let _ = File::create(root.join(format!("{old_name}.replaced")));
            for _ in 0..600 {
                match held.take().map(Arc::try_unwrap) {
                    None | Some(Ok(_)) => break,
                    Some(Err(still_held)) => {
                        held = Some(still_held);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
            if held.is_some() {
                tracing::warn!(store = %old_name, "the replaced index is still in use; it goes at the next start");
                return;
            }
            match std::fs::remove_dir_all(root.join(&old_name)) {
                Ok(()) => {
                    let _ = std::fs::remove_file(root.join(format!("{old_name}.replaced")));
                    let _ = std::fs::remove_file(model_file(&root, &old_name));
                }
                Err(error) => {
                    tracing::warn!(store = %old_name, %error, "cannot remove the replaced index yet; it goes at the next start")
                }
            }
        });
        Ok(())
    }

    async fn stage(&self, model: &IndexModel) -> Result<(), IndexError> {
        let name = model.target_name("shard", &self.live_name());
        let target = self.target_for(&name).ok_or_else(|| {
            IndexError::Internal(format!("no re-index into {name} is under way to stage"))
        })?;
        target.flush().await?;
        let root = self.root.clone();
        let pointer_to = name.clone();
        tokio::task::spawn_blocking(move || {
            replace_file(&root.join(STAGED), pointer_to.as_bytes())
        })
        .await
        .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))??;
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        tracing::info!(store = %name, live = %self.live_name(), "embedded index staged beside the live one");
        Ok(())
    }

    async fn staged(&self) -> Result<Option<Arc<dyn VectorIndex>>, IndexError> {
        let pointer = self.root.join(STAGED);
        let name = match tokio::fs::read_to_string(&pointer).await {
            Ok(name) => pointed_store(&pointer, &name)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable_at(&pointer, e)),
        };
        if name == self.live_name() {
            return Ok(None);
        }
        if let Some(held) = self.target_for(&name) {
            return Ok(Some(held));
        }
        // Staged before this process started: opened beside the live store.
        let (root, tuning, opening) = (self.root.clone(), self.tuning, name.clone());
        let opened =
            tokio::task::spawn_blocking(move || Self::store(&root, &opening, tuning, None))
                .await
                .map_err(|e| IndexError::Internal(format!("index task failed: {e}")))??;
        if opened.current().is_none() {
            tracing::warn!(store = %name, "the staged index named by {} is gone", pointer.display());
            return Ok(None);
        }
        let opened = Arc::new(opened);
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened.clone());
        Ok(Some(opened))
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
            let (limit, offset) = if request.exclude.is_empty() {
                (request.limit, request.offset)
            } else {
                (request.offset + request.limit + request.exclude.len(), 0)
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
                    let (meaning_depth, words_depth) = IndexQuery::prefetch_depths(limit + offset);
                    let mut by_meaning = PrefetchBuilder::new(meaning_depth)
                        .query(dense(vector))
                        .params(params);
                    let mut by_words =
                        PrefetchBuilder::new(words_depth).query(by_keywords(keywords));
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
                if request.exclude.contains(&id) {
                    continue;
                }
                out.push(ScoredPoint {
                    id,
                    score: hit.score,
                    payload: from_payload(hit.payload.as_ref())?,
                });
            }
            if !request.exclude.is_empty() {
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
            let caption = key(CAPTION)?;
            if !shard
                .info()
                .map_err(internal)?
                .payload_schema
                .contains_key(&caption)
            {
                create_text_index(&shard)?;
                tracing::info!("caption text index added to an embedded index made before it");
            }
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

    async fn missing_thumbnails(&self, limit: usize) -> Result<Vec<Record>, IndexError> {
        let without: Condition = serde_json::from_value(serde_json::json!({
            "is_empty": {"key": THUMBNAIL}
        }))
        .map_err(|e| IndexError::Internal(format!("thumbnail condition: {e}")))?;
        self.blocking(move |shard| {
            let Some(shard) = shard else {
                return Ok(Vec::new());
            };
            let filter = EdgeFilter {
                must: Some(vec![without]),
                ..Default::default()
            };
            scroll(&shard, 0, limit, Some(filter))
        })
        .await
    }

    async fn set_thumbnail(&self, id: Uuid, thumbnail: &str) -> Result<(), IndexError> {
        let payload = Payload(
            [(THUMBNAIL.to_owned(), Value::String(thumbnail.to_owned()))]
                .into_iter()
                .collect(),
        );
        self.blocking(move |shard| {
            let Some(shard) = shard else { return Ok(()) };
            shard
                .update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
                    SetPayloadOp {
                        payload,
                        points: Some(vec![PointId::Uuid(id)]),
                        filter: None,
                        key: None,
                    },
                )))
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
