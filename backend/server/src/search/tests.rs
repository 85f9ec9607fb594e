//! Unit tests of the engine over fakes of its two traits: an in-memory [`VectorIndex`] that
//! counts its facet scans, and an [`Embedder`] that counts its calls. Object storage is the real
//! client: presigning is local signing, no call is made. (The breaker's open / half-open states
//! are unit-tested in `encoder.rs`, next to it.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use backend_api::{Filters, ImageAttributes, SearchMode, SearchParams};
use secrecy::SecretString;

use super::*;
use crate::encoder::Embedded;
use crate::index::{
    IndexModel, IndexQuery, Point, Record, ScoredPoint, SearchRequest, StoredPayload, keywords,
};
use crate::storage::{PresignSettings, StorageSettings};

#[test]
fn timestamps_are_rfc3339_utc() {
    let now = now_rfc3339();
    assert_eq!(now.len(), 24);
    assert!(now.starts_with("20") && now.ends_with('Z'));
}

#[derive(Default)]
struct FakeIndex {
    points: Mutex<Vec<Point>>,
    facet_calls: AtomicUsize,
    /// Every search's query, in order.
    searches: Mutex<Vec<IndexQuery>>,
    /// An index made before keyword vectors.
    without_keywords: bool,
    model: Mutex<Option<IndexModel>>,
}

fn matches(filter: &Filter, payload: &StoredPayload) -> bool {
    let json = serde_json::to_value(payload).unwrap_or_default();
    filter
        .must()
        .all(|(field, value)| json[field].as_str() == Some(value))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[async_trait::async_trait]
impl VectorIndex for FakeIndex {
    fn dim(&self) -> Option<usize> {
        self.points
            .lock()
            .expect("lock")
            .first()
            .map(|p| p.vector.len())
    }
    async fn upsert(&self, points: Vec<Point>) -> Result<(), IndexError> {
        let mut all = self.points.lock().expect("lock");
        for point in points {
            all.retain(|p| p.id != point.id);
            all.push(point);
        }
        Ok(())
    }
    async fn delete(&self, ids: &[Uuid]) -> Result<usize, IndexError> {
        let mut all = self.points.lock().expect("lock");
        let before = all.len();
        all.retain(|p| !ids.contains(&p.id));
        Ok(before - all.len())
    }
    async fn retrieve(&self, ids: &[Uuid], with_vector: bool) -> Result<Vec<Record>, IndexError> {
        let all = self.points.lock().expect("lock");
        Ok(all
            .iter()
            .filter(|p| ids.contains(&p.id))
            .map(|p| Record {
                id: p.id,
                payload: p.payload.clone(),
                vector: with_vector.then(|| p.vector.clone()),
            })
            .collect())
    }
    fn has_keywords(&self) -> bool {
        !self.without_keywords
    }
    fn model(&self) -> Option<IndexModel> {
        self.model.lock().expect("lock").clone()
    }
    async fn adopt(&self, model: &IndexModel) -> Result<(), IndexError> {
        *self.model.lock().expect("lock") = Some(model.clone());
        Ok(())
    }
    /// Re-indexing runs over the real engines (`tests/it/reindex.rs`).
    async fn rebuild_target(
        &self,
        _model: &IndexModel,
    ) -> Result<Arc<dyn VectorIndex>, IndexError> {
        Err(IndexError::Internal(
            "the fake index does not re-index".into(),
        ))
    }
    async fn promote(&self, _model: &IndexModel) -> Result<(), IndexError> {
        Err(IndexError::Internal(
            "the fake index does not re-index".into(),
        ))
    }
    async fn stage(&self, _model: &IndexModel) -> Result<(), IndexError> {
        Err(IndexError::Internal(
            "the fake index does not re-index".into(),
        ))
    }
    async fn staged(&self) -> Result<Option<Arc<dyn VectorIndex>>, IndexError> {
        Ok(None)
    }
    /// Vectors by cosine; words by the number of the query's terms in the document (a stand-in
    /// for BM25); hybrid by the vector alone (fusion is the engines' part, tested over both in
    /// the `engines` integration suite).
    async fn search(&self, request: SearchRequest) -> Result<Vec<ScoredPoint>, IndexError> {
        self.searches
            .lock()
            .expect("lock")
            .push(request.query.clone());
        let all = self.points.lock().expect("lock");
        let score = |p: &Point| match &request.query {
            IndexQuery::Vector(vector) | IndexQuery::Hybrid { vector, .. } => {
                cosine(vector, &p.vector)
            }
            IndexQuery::Keywords(words) => {
                let doc = keywords::document(&p.payload.attributes).expect("document");
                words
                    .indices
                    .iter()
                    .filter(|t| doc.indices.contains(t))
                    .count() as f32
            }
        };
        let keyword = matches!(request.query, IndexQuery::Keywords(_));
        let mut hits: Vec<ScoredPoint> = all
            .iter()
            .filter(|p| !request.exclude.contains(&p.id) && matches(&request.filter, &p.payload))
            .map(|p| ScoredPoint {
                id: p.id,
                score: score(p),
                payload: p.payload.clone(),
            })
            .filter(|h| !keyword || h.score > 0.0)
            .filter(|h| request.min_score.is_none_or(|min| h.score >= min))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(hits
            .into_iter()
            .skip(request.offset)
            .take(request.limit)
            .collect())
    }
    async fn list(
        &self,
        offset: usize,
        limit: usize,
        filter: &Filter,
    ) -> Result<Vec<Record>, IndexError> {
        let all = self.points.lock().expect("lock");
        let mut records: Vec<Record> = all
            .iter()
            .filter(|p| matches(filter, &p.payload))
            .map(|p| Record {
                id: p.id,
                payload: p.payload.clone(),
                vector: None,
            })
            .collect();
        records.sort_by_key(|r| r.id);
        Ok(records.into_iter().skip(offset).take(limit).collect())
    }
    async fn count(&self, filter: &Filter) -> Result<u64, IndexError> {
        let all = self.points.lock().expect("lock");
        Ok(all.iter().filter(|p| matches(filter, &p.payload)).count() as u64)
    }
    async fn facet(
        &self,
        field: &'static str,
        _limit: usize,
    ) -> Result<Vec<(String, u64)>, IndexError> {
        self.facet_calls.fetch_add(1, Ordering::SeqCst);
        // A scan takes a while: concurrent callers overlap.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let all = self.points.lock().expect("lock");
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for p in all.iter() {
            let json = serde_json::to_value(&p.payload).unwrap_or_default();
            if let Some(value) = json[field].as_str() {
                *counts.entry(value.to_owned()).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
    /// Keyword vectors are made from payloads on the fly here: nothing to add or backfill.
    async fn add_keywords(&self) -> Result<(), IndexError> {
        Ok(())
    }
    async fn missing_keywords(&self, _limit: usize) -> Result<Vec<Record>, IndexError> {
        Ok(Vec::new())
    }
    async fn set_keywords(&self, _records: &[Record]) -> Result<(), IndexError> {
        Ok(())
    }
    /// Thumbnails run over the real engines (`tests/it/thumbnails.rs`); the fake has none to
    /// make (the engine's tests start no thumbnail task).
    async fn missing_thumbnails(&self, _limit: usize) -> Result<Vec<Record>, IndexError> {
        Ok(Vec::new())
    }
    async fn set_thumbnail(&self, _id: Uuid, _key: &str) -> Result<(), IndexError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), IndexError> {
        Ok(())
    }
    async fn optimize(&self) -> Result<(), IndexError> {
        Ok(())
    }
}

#[derive(Default)]
struct FakeEmbedder {
    calls: AtomicUsize,
    down: bool,
    floor: Option<f32>,
    vector_floor: Option<f32>,
    /// The fingerprint it reports (`fake-a` when not set).
    fingerprint: Option<&'static str>,
}

impl FakeEmbedder {
    fn served(&self) -> IndexModel {
        IndexModel {
            name: "fake-model".into(),
            fingerprint: self.fingerprint.unwrap_or("fake-a").into(),
            dim: 3,
        }
    }
}

#[async_trait::async_trait]
impl Embedder for FakeEmbedder {
    async fn embed_query(&self, query: &str) -> Result<Embedded<(String, Vec<f32>)>, EncoderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(EncoderError::Unavailable {
                message: "down".into(),
                retry_after: Duration::from_secs(2),
            });
        }
        Ok(Embedded {
            value: (format!("a photo of {query}"), vec![1.0, 0.0, 0.0]),
            model: self.served(),
        })
    }
    async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<Embedded<Vec<Vec<f32>>>, EncoderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Embedded {
            value: images.iter().map(|_| vec![0.0, 1.0, 0.0]).collect(),
            model: self.served(),
        })
    }
    fn model(&self) -> Option<IndexModel> {
        Some(self.served())
    }
    async fn describe(&self) -> Result<IndexModel, EncoderError> {
        Ok(self.served())
    }
    fn relevance_floor(&self) -> Option<f32> {
        self.floor
    }
    fn vector_floor(&self) -> Option<f32> {
        self.vector_floor
    }
    fn breaker_open(&self) -> bool {
        false
    }
}

fn store() -> ObjectStore {
    ObjectStore::new(&StorageSettings {
        endpoint: "http://127.0.0.1:9".into(),
        region: "us-east-1".into(),
        bucket: "images".into(),
        access_key: "test".into(),
        secret_key: SecretString::from("test-secret"),
        presign: Some(PresignSettings {
            public_endpoint: "http://127.0.0.1:9".into(),
            ttl: Duration::from_secs(60),
        }),
    })
    .expect("store")
}

/// An engine over `n` points: point `i` at angle `i` degrees from the x axis (so scores fall
/// with `i`), even ones "Women", odd ones "Men".
async fn engine(
    n: usize,
    embedder: FakeEmbedder,
) -> (Arc<SearchEngine>, Arc<FakeIndex>, Arc<FakeEmbedder>) {
    engine_over(FakeIndex::default(), n, embedder).await
}

async fn engine_over(
    index: FakeIndex,
    n: usize,
    embedder: FakeEmbedder,
) -> (Arc<SearchEngine>, Arc<FakeIndex>, Arc<FakeEmbedder>) {
    let index = Arc::new(index);
    let points = (0..n)
        .map(|i| {
            let angle = (i as f32).to_radians();
            Point {
                id: Uuid::from_u128(i as u128 + 1),
                vector: vec![angle.cos(), angle.sin(), 0.0],
                payload: StoredPayload {
                    s3_key: format!("images/{i}.jpg"),
                    created_at: now_rfc3339(),
                    thumbnail: None,
                    attributes: ImageAttributes {
                        dataset: "test".into(),
                        gender: Some(if i % 2 == 0 { "Women" } else { "Men" }.into()),
                        season: Some("Summer".into()),
                        ..ImageAttributes::default()
                    },
                },
            }
        })
        .collect();
    index.upsert(points).await.expect("upsert");
    let embedder = Arc::new(embedder);
    let engine = SearchEngine::new(
        index.clone(),
        store(),
        embedder.clone(),
        Duration::from_secs(3600),
    );
    (engine, index, embedder)
}

fn params(k: usize, offset: usize) -> SearchParams {
    SearchParams {
        k: Some(k),
        offset: Some(offset),
        ..SearchParams::default()
    }
}

#[test]
fn a_plan_checks_paging_and_the_score_floor_once() {
    let invalid =
        |params: SearchParams| matches!(SearchPlan::new(&params), Err(SearchError::Invalid(_)));
    assert!(invalid(params(0, 0)), "k = 0");
    assert!(invalid(params(MAX_K + 1, 0)), "k too large");
    assert!(invalid(params(10, MAX_DEPTH - 9)), "past the deepest page");
    assert!(invalid(params(10, usize::MAX)), "no overflow");
    assert!(invalid(SearchParams {
        min_score: Some(1.5),
        ..SearchParams::default()
    }));
    let plan = SearchPlan::new(&SearchParams {
        k: None,
        offset: Some(MAX_DEPTH - DEFAULT_K),
        min_score: Some(0.5),
        model: None,
        filters: Filters {
            season: Some(" Summer ".into()),
            ..Filters::default()
        },
    })
    .expect("plan");
    assert_eq!(
        (plan.k, plan.offset, plan.min_score),
        (DEFAULT_K, 980, Some(0.5))
    );
    assert_eq!(
        plan.filter.must().collect::<Vec<_>>(),
        [("season", "Summer")]
    );
    assert!(plan.exclude.is_empty());
}

#[tokio::test]
async fn pages_are_disjoint_and_similar_leaves_its_source_out_without_the_model() {
    let (engine, _, embedder) = engine(30, FakeEmbedder::default()).await;
    let ids =
        |r: &backend_api::SearchResponse| r.hits.iter().map(|h| h.item.id).collect::<Vec<_>>();
    let source = Uuid::from_u128(1);
    let all = engine.similar(source, &params(20, 0)).await.expect("all");
    let p1 = engine.similar(source, &params(10, 0)).await.expect("p1");
    let p2 = engine.similar(source, &params(10, 10)).await.expect("p2");
    assert_eq!([ids(&p1), ids(&p2)].concat(), ids(&all));
    assert!(!ids(&all).contains(&source), "the source is left out");
    assert_eq!(ids(&all)[0], Uuid::from_u128(2), "nearest first");
    assert!(
        all.hits
            .iter()
            .all(|h| h.item.url.contains("X-Amz-Signature"))
    );
    assert_eq!(
        all.model, "fake-model",
        "the identity known, not \"unknown\""
    );
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 0, "no model call");
    let missing = engine.similar(Uuid::from_u128(999), &params(10, 0)).await;
    assert!(matches!(missing, Err(SearchError::NotFound(_))));
}

#[tokio::test]
async fn filters_are_checked_against_one_snapshot_scanned_once() {
    let (engine, index, embedder) = engine(10, FakeEmbedder::default()).await;
    // No filter: no scan.
    engine
        .search_text("dress", SearchMode::Hybrid, &params(5, 0))
        .await
        .expect("search");
    assert_eq!(index.facet_calls.load(Ordering::SeqCst), 0);
    // Many concurrent filtered searches on a cold snapshot: one scan (a facet call per field).
    let women = SearchParams {
        k: Some(10),
        filters: Filters {
            gender: Some("Women".into()),
            ..Filters::default()
        },
        ..SearchParams::default()
    };
    let searches = (0..16).map(|_| engine.search_text("dress", SearchMode::Hybrid, &women));
    for result in futures::future::join_all(searches).await {
        let response = result.expect("filtered");
        assert_eq!(response.hits.len(), 5);
        assert!(
            response
                .hits
                .iter()
                .all(|h| h.item.attributes.gender.as_deref() == Some("Women"))
        );
    }
    assert_eq!(
        index.facet_calls.load(Ordering::SeqCst),
        Filters::FIELDS.len()
    );
    // An unknown value is refused, naming no route; the snapshot answers without a scan.
    let martian = SearchParams {
        filters: Filters {
            gender: Some("Martian".into()),
            ..Filters::default()
        },
        ..SearchParams::default()
    };
    match engine
        .search_text("dress", SearchMode::Hybrid, &martian)
        .await
    {
        Err(error @ SearchError::Invalid(_)) => {
            assert_eq!(error.kind(), ErrorKind::InvalidRequest);
            assert!(error.to_string().contains("Martian") && !error.to_string().contains("/v1"));
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(
        index.facet_calls.load(Ordering::SeqCst),
        Filters::FIELDS.len()
    );
    // A write drops the snapshot: a new value is known at once.
    engine
        .ingest(
            vec![backend_api::IngestItem {
                id: Uuid::from_u128(500),
                vector: vec![0.0, 0.0, 1.0],
                s3_key: "images/new.jpg".into(),
                attributes: ImageAttributes {
                    dataset: "test".into(),
                    gender: Some("Martian".into()),
                    ..ImageAttributes::default()
                },
            }],
            None,
        )
        .await
        .expect("ingest");
    let found = engine
        .search_text("dress", SearchMode::Hybrid, &martian)
        .await
        .expect("now known");
    assert_eq!(found.hits.len(), 1);
    assert_eq!(
        index.facet_calls.load(Ordering::SeqCst),
        2 * Filters::FIELDS.len()
    );
    // 1 + 16 + 1 searches embedded; the refused one did not (the snapshot was in memory).
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 18);
}

#[tokio::test]
async fn a_failing_model_is_a_kind_with_a_retry_after() {
    let down = FakeEmbedder {
        down: true,
        ..FakeEmbedder::default()
    };
    let (engine, _, _) = engine(3, down).await;
    let error = engine
        .search_text("dress", SearchMode::Hybrid, &params(5, 0))
        .await
        .expect_err("down");
    assert_eq!(error.kind(), ErrorKind::ModelUnavailable);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn an_empty_upload_is_not_an_image_and_costs_no_model_call() {
    let (engine, _, embedder) = engine(3, FakeEmbedder::default()).await;
    let error = engine
        .search_image(Vec::new(), &params(5, 0))
        .await
        .expect_err("empty");
    assert_eq!(
        error.kind(),
        ErrorKind::UnsupportedImage,
        "as model-serving says"
    );
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn text_modes_choose_what_the_index_ranks_by() {
    let (engine, index, embedder) = engine(10, FakeEmbedder::default()).await;
    let search = |q: &'static str, mode| {
        let engine = engine.clone();
        async move { engine.search_text(q, mode, &params(5, 0)).await }
    };
    let hybrid = search("summer dress", SearchMode::Hybrid)
        .await
        .expect("hybrid");
    assert_eq!(hybrid.mode, SearchMode::Hybrid);
    assert!(hybrid.embedded_text.is_some());
    let calls = embedder.calls.load(Ordering::SeqCst);
    let keyword = search("Summers", SearchMode::Keyword)
        .await
        .expect("keyword");
    assert_eq!(keyword.mode, SearchMode::Keyword);
    assert_eq!(
        keyword.hits.len(),
        5,
        "every product is a summer one (stemmed)"
    );
    assert_eq!(keyword.embedded_text, None);
    assert_eq!(
        embedder.calls.load(Ordering::SeqCst),
        calls,
        "words need no model"
    );
    let none = search("kurta", SearchMode::Keyword).await.expect("keyword");
    assert!(none.hits.is_empty(), "no product has the word");
    let vector = search("summer dress", SearchMode::Vector)
        .await
        .expect("vector");
    assert_eq!(vector.mode, SearchMode::Vector);
    let stop_words = search("the", SearchMode::Hybrid).await.expect("stop words");
    assert_eq!(
        stop_words.mode,
        SearchMode::Vector,
        "no words left to match"
    );
    let seen = index.searches.lock().expect("lock").clone();
    assert!(matches!(&seen[0], IndexQuery::Hybrid { keywords, .. } if keywords.indices.len() == 2));
    assert!(matches!(&seen[1], IndexQuery::Keywords(words) if words.indices.len() == 1));
    assert!(matches!(seen[3], IndexQuery::Vector(_)));
    assert!(matches!(seen[4], IndexQuery::Vector(_)));
}

#[tokio::test]
async fn an_index_without_keyword_vectors_matches_by_meaning() {
    let old = FakeIndex {
        without_keywords: true,
        ..FakeIndex::default()
    };
    let (engine, index, _) = engine_over(old, 5, FakeEmbedder::default()).await;
    let hybrid = engine
        .search_text("summer dress", SearchMode::Hybrid, &params(5, 0))
        .await
        .expect("hybrid");
    assert_eq!(hybrid.mode, SearchMode::Vector, "says how it was matched");
    assert_eq!(hybrid.hits.len(), 5);
    let keyword = engine
        .search_text("summer", SearchMode::Keyword, &params(5, 0))
        .await
        .expect_err("no keyword index");
    assert_eq!(keyword.kind(), ErrorKind::InvalidRequest);
    assert!(keyword.to_string().contains("mode=vector"), "{keyword}");
    assert!(matches!(
        index.searches.lock().expect("lock")[..],
        [IndexQuery::Vector(_)]
    ));
}

#[tokio::test]
async fn a_query_that_reaches_no_match_answers_nothing() {
    // The text query embeds as [1, 0, 0]: point 0 is at similarity 1, and no floor above 1 is
    // ever reached by meaning; words still match.
    let strict = FakeEmbedder {
        floor: Some(1.01),
        ..FakeEmbedder::default()
    };
    let (engine, index, _) = engine(10, strict).await;
    let search = |q: &'static str, mode| {
        let engine = engine.clone();
        async move { engine.search_text(q, mode, &params(10, 0)).await }
    };
    let gibberish = search("qwxzv", SearchMode::Hybrid).await.expect("hybrid");
    assert!(gibberish.hits.is_empty(), "nothing near enough, no word");
    assert_eq!(gibberish.relevance_floor, Some(1.01));
    let by_meaning = search("qwxzv", SearchMode::Vector).await.expect("vector");
    assert_eq!(
        by_meaning.hits.len(),
        10,
        "hybrid's floor is not vector mode's (this model has none for it)"
    );
    assert_eq!(by_meaning.relevance_floor, None);
    let worded = search("summer", SearchMode::Hybrid).await.expect("hybrid");
    assert_eq!(worded.hits.len(), 10, "a word matches: the whole ranking");
    let keyword = search("summer", SearchMode::Keyword)
        .await
        .expect("keyword");
    assert_eq!(keyword.hits.len(), 10);
    // A photo is not a text query: no floor.
    let photo = engine
        .search_image(vec![1, 2, 3], &params(10, 0))
        .await
        .expect("photo");
    assert_eq!(photo.hits.len(), 10);
    assert_eq!(photo.relevance_floor, None);

    // With a floor that the nearest reaches, the ranking is the whole one (the floor decides
    // whether a query matches at all, not where the list ends).
    let searches_before = index.searches.lock().expect("lock").len();
    let lenient = FakeEmbedder {
        floor: Some(0.999),
        ..FakeEmbedder::default()
    };
    let (engine, _, _) = engine_over(FakeIndex::default(), 10, lenient).await;
    let near = engine
        .search_text("qwxzv", SearchMode::Hybrid, &params(10, 0))
        .await
        .expect("hybrid");
    assert_eq!(near.hits.len(), 10);
    assert!(searches_before > 0);

    // Vector mode's own floor gates vector searches alone; no word can rescue them.
    let vector_floored = FakeEmbedder {
        vector_floor: Some(1.01),
        ..FakeEmbedder::default()
    };
    let (engine, _, _) = engine_over(FakeIndex::default(), 10, vector_floored).await;
    let by_meaning = engine
        .search_text("summer", SearchMode::Vector, &params(10, 0))
        .await
        .expect("vector");
    assert!(by_meaning.hits.is_empty(), "nothing near enough by meaning");
    assert_eq!(by_meaning.relevance_floor, Some(1.01));
    let hybrid = engine
        .search_text("qwxzv", SearchMode::Hybrid, &params(10, 0))
        .await
        .expect("hybrid");
    assert_eq!(hybrid.hits.len(), 10, "hybrid has no floor in this model");
}

/// A page that shows its query matches (a hit near enough; a hit with one of the words) is
/// the only index search; a page that does not (gibberish, a page past the near ones) is
/// followed by the probes, which still find a match elsewhere.
#[tokio::test]
async fn a_page_that_shows_a_match_needs_no_probe() {
    // Scores fall from 1 (point 0) by a degree per point: only point 0 reaches 0.99999.
    let floored = FakeEmbedder {
        floor: Some(0.99999),
        vector_floor: Some(0.99999),
        ..FakeEmbedder::default()
    };
    let (engine, index, _) = engine(20, floored).await;
    let searched = |mode, q: &'static str, offset| {
        let (engine, index) = (engine.clone(), index.clone());
        async move {
            index.searches.lock().expect("lock").clear();
            let response = engine
                .search_text(q, mode, &params(5, offset))
                .await
                .expect("search");
            let queries = index.searches.lock().expect("lock").clone();
            let kinds: Vec<&str> = queries
                .iter()
                .map(|q| match q {
                    IndexQuery::Vector(_) => "vector",
                    IndexQuery::Keywords(_) => "keywords",
                    IndexQuery::Hybrid { .. } => "hybrid",
                })
                .collect();
            (response.hits.len(), kinds)
        }
    };
    // Point 0 is on the first page: no probe.
    assert_eq!(
        searched(SearchMode::Vector, "qwxzv", 0).await,
        (5, vec!["vector"])
    );
    // Every point is a "Summer" one: the word shows in the page.
    assert_eq!(
        searched(SearchMode::Hybrid, "summer", 5).await,
        (5, vec!["hybrid"])
    );
    // The second page has nothing near enough: the probe finds point 0, the page is shown.
    assert_eq!(
        searched(SearchMode::Vector, "qwxzv", 5).await,
        (5, vec!["vector", "vector"])
    );
    // No word of the page's: both probes; point 0 is near enough.
    assert_eq!(
        searched(SearchMode::Hybrid, "qwxzv", 5).await,
        (5, vec!["hybrid", "vector", "keywords"])
    );
}

/// An index records the model that made its vectors; searches and writes with another model's
/// are refused naming both, a hybrid search falls back to words, and a batch that says which
/// model made it is checked against model-serving's.
#[tokio::test]
async fn another_models_vectors_are_refused_naming_both() {
    let made_by_a = FakeEmbedder::default();
    let (engine, index, _) = engine(5, made_by_a).await;
    let item = |id: u128| backend_api::IngestItem {
        id: Uuid::from_u128(id),
        vector: vec![0.0, 0.0, 1.0],
        s3_key: "images/x.jpg".into(),
        attributes: ImageAttributes {
            dataset: "test".into(),
            ..ImageAttributes::default()
        },
    };
    // The first write records model-serving's model (the fake index was filled directly).
    engine
        .ingest(vec![item(600)], Some("fake-a"))
        .await
        .expect("same model");
    assert_eq!(
        index.model().map(|m| m.fingerprint).as_deref(),
        Some("fake-a")
    );
    match engine.ingest(vec![item(601)], Some("fake-b")).await {
        Err(error @ SearchError::ModelMismatch { .. }) => {
            assert_eq!(error.kind(), ErrorKind::ModelMismatch);
            let message = error.to_string();
            assert!(
                message.contains("fake-a") && message.contains("fake-b"),
                "{message}"
            );
            assert!(error.retry_after().is_some());
        }
        other => panic!("expected a model mismatch, got {other:?}"),
    }

    // model-serving now serves model b: the same index refuses its vectors.
    let served_b = FakeEmbedder {
        fingerprint: Some("fake-b"),
        ..FakeEmbedder::default()
    };
    let engine_b = SearchEngine::new(
        index.clone(),
        store(),
        Arc::new(served_b),
        Duration::from_secs(3600),
    );
    let params = SearchParams::default();
    match engine_b
        .search_text("dress", SearchMode::Vector, &params)
        .await
    {
        Err(error @ SearchError::ModelMismatch { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("fake-a") && message.contains("fake-b"),
                "{message}"
            );
        }
        other => panic!("expected a model mismatch, got {other:?}"),
    }
    assert!(matches!(
        engine_b.search_image(vec![1, 2, 3], &params).await,
        Err(SearchError::ModelMismatch { .. })
    ));
    assert!(matches!(
        engine_b.ingest(vec![item(602)], None).await,
        Err(SearchError::ModelMismatch { .. })
    ));
    // Words need no model: a hybrid search matches by them alone and says so.
    let words = engine_b
        .search_text("dress", SearchMode::Hybrid, &params)
        .await
        .expect("keyword fallback");
    assert_eq!(words.mode, SearchMode::Keyword);
    assert!(
        !index
            .searches
            .lock()
            .expect("lock")
            .iter()
            .any(|q| matches!(q, IndexQuery::Vector(_) | IndexQuery::Hybrid { .. })),
        "no search by meaning ran"
    );
    assert!(
        index
            .points
            .lock()
            .expect("lock")
            .iter()
            .all(|p| p.id != Uuid::from_u128(602))
    );
}
