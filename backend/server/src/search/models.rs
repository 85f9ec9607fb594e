//! Several models side by side: beside the live index, a re-index can leave the index of
//! another model staged ([`VectorIndex::stage`]). A search that names that model (`model=`)
//! runs on it, with its model-serving (`MODEL_SERVING_NEXT_URL`); every other search stays on
//! the live one. So a new model is tried on live traffic before it replaces the old one.
//!
//! The staged index is a copy of the catalogue as it was when staged: writes go to the live
//! index only. Its hits are checked against the live index (an item deleted since is left out;
//! the payload shown is the live one), and staging again brings it up to date (only what
//! changed is embedded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_api::{ModelRole, ModelsResponse, ServedModel};

use super::{SearchEngine, SearchError};
use crate::encoder::Embedder;
use crate::index::{Filter, IndexModel, ScoredPoint, VectorIndex};
use crate::metrics;

/// How long the staged index found is used before looking again (another replica may have
/// staged or promoted one meanwhile).
const STAGED_TTL: Duration = Duration::from_secs(2);
/// The longest `model=` value taken.
const MAX_MODEL_CHARS: usize = 200;

/// The index and the model-serving one search runs on.
#[derive(Clone)]
pub(super) struct Serving {
    pub index: Arc<dyn VectorIndex>,
    pub encoder: Arc<dyn Embedder>,
    /// The staged index: its hits are checked against the live one.
    pub staged: bool,
}

impl Serving {
    /// Refuses a query vector `model` made when the index holds another model's vectors. An
    /// index with no recorded model (empty, or made before models were recorded) takes any of
    /// the right size.
    pub fn check_model(&self, model: &IndexModel) -> Result<(), SearchError> {
        match self.index.model() {
            Some(index) if index.fingerprint != model.fingerprint => {
                metrics::model_mismatch();
                Err(SearchError::ModelMismatch {
                    index,
                    other: model.to_string(),
                    other_source: if self.staged {
                        "the staged index's model-serving's model"
                    } else {
                        "model-serving's model"
                    },
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether its model-serving (as last reported) serves another model than its index's.
    pub fn serving_another_model(&self) -> bool {
        match (self.index.model(), self.encoder.model()) {
            (Some(index), Some(serving)) => index.fingerprint != serving.fingerprint,
            _ => false,
        }
    }

    /// The name searches report: the model whose vectors were searched (a search that embeds
    /// was refused unless its query vector is that model's); model-serving's while the index
    /// records none.
    pub fn model_name(&self) -> String {
        self.index
            .model()
            .or_else(|| self.encoder.model())
            .map_or_else(|| "unknown".to_owned(), |model| model.name)
    }
}

/// The staged index last found, and when.
#[derive(Default)]
pub(super) struct StagedCache {
    found: Option<(Instant, Option<Arc<dyn VectorIndex>>)>,
}

fn names(model: &IndexModel, asked: &str) -> bool {
    model.name == asked || model.fingerprint == asked
}

impl SearchEngine {
    /// The live index and model-serving.
    pub(super) fn live(&self) -> Serving {
        Serving {
            index: self.index.clone(),
            encoder: self.encoder(),
            staged: false,
        }
    }

    /// The staged index, if any (looked up again every [`STAGED_TTL`]).
    async fn staged_index(&self) -> Result<Option<Arc<dyn VectorIndex>>, SearchError> {
        let mut cache = self.staged.lock().await;
        if let Some((at, index)) = &cache.found
            && at.elapsed() < STAGED_TTL
        {
            return Ok(index.clone());
        }
        let index = self.index.staged().await?;
        cache.found = Some((Instant::now(), index.clone()));
        Ok(index)
    }

    /// Forgets the staged index found (after a stage or a promotion here).
    pub(super) async fn staged_changed(&self) {
        self.staged.lock().await.found = None;
    }

    /// The model-serving for `model`'s vectors: the live one's, or the next model's.
    async fn encoder_for(&self, model: &IndexModel) -> Option<Arc<dyn Embedder>> {
        let mut candidates = vec![self.encoder()];
        candidates.extend(self.next_model());
        for encoder in candidates {
            let serves = match encoder.model() {
                Some(serving) => serving.fingerprint == model.fingerprint,
                // Not asked yet (or down): ask now.
                None => encoder
                    .describe()
                    .await
                    .is_ok_and(|serving| serving.fingerprint == model.fingerprint),
            };
            if serves {
                return Some(encoder);
            }
        }
        None
    }

    /// What a search that asks for `model` (by name or fingerprint) runs on: the live index
    /// when it asks for none or the live one, the staged one when it names that. A search that
    /// `embeds` a query needs the model's model-serving too.
    pub(super) async fn serving(
        &self,
        model: Option<&str>,
        embeds: bool,
    ) -> Result<Serving, SearchError> {
        let live = self.live();
        let Some(asked) = model.map(str::trim).filter(|m| !m.is_empty()) else {
            return Ok(live);
        };
        if asked.chars().count() > MAX_MODEL_CHARS {
            return Err(SearchError::Invalid(format!(
                "model must be at most {MAX_MODEL_CHARS} characters"
            )));
        }
        let live_model = self.index.model().or_else(|| live.encoder.model());
        if live_model.as_ref().is_some_and(|m| names(m, asked)) {
            return Ok(live);
        }
        let staged = self.staged_index().await?;
        let staged_model = staged.as_ref().and_then(|index| index.model());
        if let (Some(index), Some(model)) = (staged, staged_model.as_ref())
            && names(model, asked)
        {
            // A search that embeds nothing ("more like this") needs no model-serving: none is
            // looked for (a call to one not asked yet, or down, on every such search).
            let found = if embeds {
                self.encoder_for(model).await
            } else {
                Some(live.encoder)
            };
            let encoder = match found {
                Some(encoder) => encoder,
                None => {
                    return Err(SearchError::Invalid(format!(
                        "the staged model {model} has no model-serving here (MODEL_SERVING_NEXT_URL): only \"more like this\" can search it"
                    )));
                }
            };
            return Ok(Serving {
                index,
                encoder,
                staged: true,
            });
        }
        let served: Vec<String> = [
            live_model.map(|m| format!("{} (live)", m.name)),
            staged_model.map(|m| format!("{} (staged)", m.name)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Err(SearchError::Invalid(format!(
            "model {asked:?} is not served here; served: {} (GET /v1/models)",
            if served.is_empty() {
                "none yet".to_owned()
            } else {
                served.join(", ")
            }
        )))
    }

    /// Hits of the staged index as the live one has them: an item deleted since is left
    /// out, and each keeps its live payload (its object, thumbnail and attributes now).
    pub(super) async fn as_live(
        &self,
        serving: &Serving,
        hits: Vec<ScoredPoint>,
    ) -> Result<Vec<ScoredPoint>, SearchError> {
        if !serving.staged || hits.is_empty() {
            return Ok(hits);
        }
        let ids: Vec<_> = hits.iter().map(|hit| hit.id).collect();
        let live = self.index.retrieve(&ids, false).await?;
        Ok(hits
            .into_iter()
            .filter_map(|mut hit| {
                let record = live.iter().find(|r| r.id == hit.id)?;
                hit.payload = record.payload.clone();
                Some(hit)
            })
            .collect())
    }

    /// The live model and the staged one.
    pub async fn models(&self) -> Result<ModelsResponse, SearchError> {
        let mut models = Vec::new();
        let sides = [
            (ModelRole::Live, Some(self.index.clone())),
            (ModelRole::Staged, self.staged_index().await?),
        ];
        for (role, index) in sides {
            let Some(index) = index else { continue };
            let Some(model) = index.model() else { continue };
            let points = index.count(&Filter::default()).await?;
            let encoder = match role {
                ModelRole::Live => self
                    .encoder()
                    .model()
                    .is_none_or(|serving| serving.fingerprint == model.fingerprint),
                ModelRole::Staged => self.encoder_for(&model).await.is_some(),
            };
            models.push(ServedModel {
                role,
                name: model.name,
                fingerprint: model.fingerprint,
                dim: model.dim,
                points,
                encoder,
            });
        }
        Ok(ModelsResponse { models })
    }
}
