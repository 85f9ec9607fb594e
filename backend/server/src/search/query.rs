//! Searches: a [`SearchPlan`] is made once from the parameters (paging, score floor, filters),
//! then the query vector (embedded, or stored for "more like this") is found once the filters
//! pass the facet snapshot (or while a cold snapshot is scanned), then one index search, then
//! pre-signed URLs.

use std::time::Instant;

use backend_api::{SearchHit, SearchMode, SearchParams, SearchResponse};
use tracing::Instrument;
use uuid::Uuid;

use super::compose::{Negated, REFINE_WEIGHT, combine, negated};
use super::models::Serving;
use super::{DEFAULT_K, MAX_DEPTH, MAX_K, MAX_QUERY_CHARS, SearchEngine, SearchError};
use crate::index::{Filter, IndexQuery, SearchRequest, VectorIndex, keywords};
use crate::metrics;

/// A checked search: what to fetch from the index, made once per request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub k: usize,
    pub offset: usize,
    pub filter: Filter,
    pub min_score: Option<f32>,
    /// Left out of the results (the source image of "more like this", the items of a
    /// recommendation).
    pub exclude: Vec<Uuid>,
}

impl SearchPlan {
    /// Checks paging and the score floor. Filter values are checked against the facet
    /// snapshot separately ([`SearchEngine::with_checked_filters`]).
    pub fn new(params: &SearchParams) -> Result<Self, SearchError> {
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
        Ok(Self {
            k,
            offset,
            filter: Filter::attributes(params.filters.clone()),
            min_score: params.min_score,
            exclude: Vec::new(),
        })
    }

    pub fn excluding(self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            exclude: ids.into_iter().collect(),
            ..self
        }
    }

    fn request(&self, query: IndexQuery) -> SearchRequest {
        SearchRequest {
            query,
            limit: self.k,
            offset: self.offset,
            filter: self.filter.clone(),
            min_score: self.min_score,
            exclude: self.exclude.clone(),
        }
    }
}

/// What a search ranks by, and what it says of itself.
pub(super) struct Query {
    pub kind: &'static str,
    pub mode: SearchMode,
    pub query: IndexQuery,
    pub embedded_text: Option<String>,
}

impl SearchEngine {
    #[tracing::instrument(skip(self, params), fields(q.chars = q.chars().count()))]
    pub async fn search_text(
        &self,
        q: &str,
        mode: SearchMode,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        self.search_text_without(q, &[], mode, params).await
    }

    /// A text search; words after `-` in `q`, and those in `not`, are left out: no product whose
    /// caption has one is shown, and the query's meaning is moved away from theirs.
    #[tracing::instrument(skip_all, fields(q.chars = q.chars().count()))]
    pub async fn search_text_without(
        &self,
        q: &str,
        not: &[String],
        mode: SearchMode,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        if q.trim().is_empty() {
            return Err(SearchError::Invalid("the query is empty".into()));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(SearchError::Invalid(format!(
                "the query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let Negated { positive, without } = negated(q, not)?;
        if positive.is_empty() {
            return Err(SearchError::Invalid(
                "the query has only words to leave out (-word): say what to find too".into(),
            ));
        }
        let q = positive.as_str();
        let mut plan = SearchPlan::new(params)?;
        plan.filter.without_words = without.clone();
        let serving = self
            .serving(params.model.as_deref(), mode != SearchMode::Keyword)
            .await?;
        let mode = mode_for(&serving, mode)?;
        // With another model's index, meanings cannot be compared: a hybrid search matches by
        // words alone, and says so in its `mode` (vector and image searches are refused).
        let mode = if mode == SearchMode::Hybrid && serving.serving_another_model() {
            metrics::model_mismatch();
            SearchMode::Keyword
        } else {
            mode
        };
        let words = match mode {
            SearchMode::Vector => None,
            SearchMode::Hybrid | SearchMode::Keyword => Some(keywords::query(q)?),
        };
        if let (SearchMode::Keyword, Some(words)) = (mode, &words) {
            let query = Query {
                kind: "text",
                mode,
                query: IndexQuery::Keywords(words.clone()),
                embedded_text: None,
            };
            self.with_checked_filters(&plan.filter.attributes, async { Ok(()) })
                .await?;
            let mut response = self.run(&serving, query, &plan, started).await?;
            metrics::search_outcome("text", response.hits.len(), false, serving.staged);
            response.without = without;
            return Ok(response);
        }
        let embed = async {
            let encode = Instant::now();
            let embedded = serving
                .encoder
                .embed_query(q)
                .instrument(tracing::info_span!("encode"))
                .await?;
            metrics::stage("encode", encode.elapsed());
            serving.check_model(&embedded.model)?;
            let (caption, vector) = embedded.value;
            let vector = self.moved_away(&serving, vector, &without).await?;
            Ok::<_, SearchError>((caption, vector))
        };
        let (caption, vector) = self
            .with_checked_filters(&plan.filter.attributes, embed)
            .await?;
        // A query of stop words and punctuation has no words to match: meaning alone.
        let (mode, query) = match words {
            Some(keywords) if !keywords.is_empty() => {
                (mode, IndexQuery::Hybrid { vector, keywords })
            }
            _ => (SearchMode::Vector, IndexQuery::Vector(vector)),
        };
        // A query is matched by meaning only when something is at least as near as the model's
        // relevance floor; by words when any product has one of them. A query that reaches
        // neither (gibberish) answers no hits rather than the least unlike products.
        // Each mode has its floor, calibrated apart (`make eval-search`): hybrid's, where words
        // rescue what meaning alone would miss, is higher; vector mode's is lower (hybrid's
        // answered nothing for "red dress" by meaning alone).
        let encoder = &serving.encoder;
        let floor = match mode {
            SearchMode::Hybrid => encoder.relevance_floor(),
            SearchMode::Vector => encoder.vector_floor(),
            SearchMode::Keyword => None,
        };
        let probed = floor.map(|floor| (query.clone(), floor));
        let query = Query {
            kind: "text",
            mode,
            query,
            embedded_text: Some(caption),
        };
        let mut response = self.run(&serving, query, &plan, started).await?;
        // Most queries show that they match in their own page (a hit near enough, or with one
        // of the words): no probe. Only the others (gibberish, a far page) pay for two
        // one-result searches, after the page rather than beside every search.
        let matched = match &probed {
            None => true,
            Some((query, floor)) if shows_a_match(query, *floor, &response.hits)? => true,
            Some((query, floor)) => {
                reaches(serving.index.as_ref(), query, *floor, &plan.filter).await?
            }
        };
        let below_floor = !matched && !response.hits.is_empty();
        if !matched {
            response.hits.clear();
        }
        metrics::search_outcome("text", response.hits.len(), below_floor, serving.staged);
        response.relevance_floor = floor;
        response.without = without;
        // The probes, when they ran, are part of the answer's time.
        response.took_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(response)
    }

    pub async fn search_image(
        &self,
        image: Vec<u8>,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        self.search_image_refined(image, None, &[], params).await
    }

    /// A photo search, refined by words when `refine` is given ("this photo, but red": the
    /// photo's embedding plus the words', as rclip composes them) and with words left out
    /// (`-floral` in `refine`, or `not`).
    #[tracing::instrument(skip_all, fields(bytes = image.len()))]
    pub async fn search_image_refined(
        &self,
        image: Vec<u8>,
        refine: Option<&str>,
        not: &[String],
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        if image.is_empty() {
            return Err(SearchError::NotAnImage(
                "the uploaded file is empty: not an image".into(),
            ));
        }
        let refine = refine.map(str::trim).filter(|r| !r.is_empty());
        let Negated { positive, without } = negated(refine.unwrap_or_default(), not)?;
        let mut plan = SearchPlan::new(params)?;
        plan.filter.without_words = without.clone();
        let serving = self.serving(params.model.as_deref(), true).await?;
        let embed = async {
            let encode = Instant::now();
            let embedded = serving
                .encoder
                .embed_images(vec![image])
                .instrument(tracing::info_span!("encode"))
                .await?;
            metrics::stage("encode", encode.elapsed());
            serving.check_model(&embedded.model)?;
            let mut vector = embedded
                .value
                .into_iter()
                .next()
                .ok_or_else(|| SearchError::Invalid("no embedding for the image".into()))?;
            let mut caption = None;
            if !positive.is_empty() {
                let words = serving.encoder.embed_query(&positive).await?;
                serving.check_model(&words.model)?;
                let (embedded_as, words) = words.value;
                vector = combine(&[(&vector, 1.0), (&words, REFINE_WEIGHT)])?;
                caption = Some(embedded_as);
            }
            let vector = self.moved_away(&serving, vector, &without).await?;
            Ok::<_, SearchError>((vector, caption))
        };
        let (vector, caption) = self
            .with_checked_filters(&plan.filter.attributes, embed)
            .await?;
        let query = Query {
            kind: "image",
            mode: SearchMode::Vector,
            query: IndexQuery::Vector(vector),
            embedded_text: caption,
        };
        let mut response = self.run(&serving, query, &plan, started).await?;
        metrics::search_outcome("image", response.hits.len(), false, serving.staged);
        response.without = without;
        Ok(response)
    }

    /// More like this: the stored vector of `id` as the query, `id` itself left out. No model
    /// is called.
    #[tracing::instrument(skip(self, params))]
    pub async fn similar(
        &self,
        id: Uuid,
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        let plan = SearchPlan::new(params)?.excluding([id]);
        let serving = self.serving(params.model.as_deref(), false).await?;
        let stored = async {
            let record = serving
                .index
                .retrieve(&[id], true)
                .await?
                .into_iter()
                .next();
            record
                .and_then(|r| r.vector)
                .ok_or(SearchError::NotFound(id))
        };
        let vector = self
            .with_checked_filters(&plan.filter.attributes, stored)
            .await?;
        let query = Query {
            kind: "similar",
            mode: SearchMode::Vector,
            query: IndexQuery::Vector(vector),
            embedded_text: None,
        };
        let response = self.run(&serving, query, &plan, started).await?;
        metrics::search_outcome("similar", response.hits.len(), false, serving.staged);
        Ok(response)
    }

    pub(super) async fn run(
        &self,
        serving: &Serving,
        query: Query,
        plan: &SearchPlan,
        started: Instant,
    ) -> Result<SearchResponse, SearchError> {
        let search = Instant::now();
        let hits = serving
            .index
            .search(plan.request(query.query.clone()))
            .instrument(tracing::info_span!(
                "index_search",
                mode = query.mode.as_str(),
                k = plan.k,
                offset = plan.offset
            ))
            .await?;
        let hits = self.as_live(serving, hits).await?;
        metrics::stage("index_search", search.elapsed());
        let presign = Instant::now();
        let (scores, records): (Vec<f32>, Vec<_>) = hits
            .into_iter()
            .map(|hit| (hit.score, (hit.id, hit.payload)))
            .unzip();
        let hits = scores
            .into_iter()
            .zip(self.items(records)?)
            .map(|(score, item)| SearchHit { score, item })
            .collect();
        metrics::stage("presign", presign.elapsed());
        Ok(answer(serving, hits, query, plan, started))
    }
}

/// Whether a page of a text query's results shows that it matches: a hit at least `floor` near
/// in meaning (a vector search's scores are similarities), or one with a word of the query (a
/// hybrid search's scores are fused, so only its words tell).
fn shows_a_match(query: &IndexQuery, floor: f32, hits: &[SearchHit]) -> Result<bool, SearchError> {
    match query {
        IndexQuery::Vector(_) => Ok(hits.iter().any(|hit| hit.score >= floor)),
        IndexQuery::Hybrid {
            keywords: words, ..
        } => {
            for hit in hits {
                let document = keywords::document(&hit.item.attributes)?;
                if words.indices.iter().any(|t| document.indices.contains(t)) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        IndexQuery::Keywords(_) => Ok(true),
    }
}

/// Whether a text query matches anything: a product at least `floor` near in meaning, or
/// (hybrid) one with a word of it. Two one-result index searches, at once.
async fn reaches(
    index: &dyn VectorIndex,
    query: &IndexQuery,
    floor: f32,
    filter: &Filter,
) -> Result<bool, SearchError> {
    let probe = |query: IndexQuery, min_score: Option<f32>| SearchRequest {
        query,
        limit: 1,
        offset: 0,
        filter: filter.clone(),
        min_score,
        exclude: Vec::new(),
    };
    let (vector, words) = match query {
        IndexQuery::Hybrid { vector, keywords } => (vector, Some(keywords)),
        IndexQuery::Vector(vector) => (vector, None),
        IndexQuery::Keywords(_) => return Ok(true),
    };
    let near = index.search(probe(IndexQuery::Vector(vector.clone()), Some(floor)));
    let worded = async {
        match words {
            Some(words) => {
                index
                    .search(probe(IndexQuery::Keywords(words.clone()), None))
                    .await
            }
            None => Ok(Vec::new()),
        }
    };
    let (near, worded) = tokio::try_join!(near, worded)?;
    Ok(!near.is_empty() || !worded.is_empty())
}

/// The mode a text search can run in here: an index made before keyword vectors matches
/// by meaning alone (a hybrid search says so in its `mode`; a keyword search is refused).
fn mode_for(serving: &Serving, asked: SearchMode) -> Result<SearchMode, SearchError> {
    if asked == SearchMode::Vector || serving.index.has_keywords() {
        return Ok(asked);
    }
    match asked {
        SearchMode::Keyword => Err(SearchError::Invalid(
            "this catalogue has no keyword index yet; search with mode=vector".into(),
        )),
        _ => Ok(SearchMode::Vector),
    }
}

fn answer(
    serving: &Serving,
    hits: Vec<SearchHit>,
    query: Query,
    plan: &SearchPlan,
    started: Instant,
) -> SearchResponse {
    metrics::stage("total", started.elapsed());
    metrics::search(query.kind);
    SearchResponse {
        hits,
        k: plan.k,
        offset: plan.offset,
        embedded_text: query.embedded_text,
        mode: query.mode,
        relevance_floor: None,
        without: Vec::new(),
        // The identity model-serving last reported: no call per search.
        model: serving.model_name(),
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}
