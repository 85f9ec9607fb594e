//! One suite, two engines: the same checks of the [`VectorIndex`] contract over the embedded
//! engine (always) and a Qdrant server: the one at `QDRANT_URL`, or one this test starts from
//! `QDRANT_BIN`; with neither set, the server half prints one "skipped" line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::config::BackendConfig;

use backend::index::edge::EdgeIndex;
use backend::index::keywords;
use backend::index::server::{ClusterLayout, QdrantServerIndex};
use backend::index::{
    Filter, IndexError, IndexModel, IndexQuery, Point, SearchRequest, SearchTuning, StoredPayload,
    VectorIndex,
};
use backend_api::{Filters, ImageAttributes, SearchMode, SearchParams};
use uuid::Uuid;

use crate::helpers;
use crate::qdrant_live::qdrant_server;

const DIM: usize = 8;
const TUNING: SearchTuning = SearchTuning {
    hnsw_ef: 64,
    exact: false,
    threads: 1,
};

/// Point `i`: a unit vector at angle `i` degrees in the first plane (so similarity to point 0
/// falls with `i`), a distinctive value in the last coordinate (so a vector read back with the
/// wrong layout shows), colour Red for even `i`, Blue for odd. Every fourth is a "Puma", its
/// caption longer the larger `i` (so the word weighs less in it, and ranks follow `i`).
fn point(i: u128) -> Point {
    let angle = (i as f32).to_radians();
    let mut vector = vec![0.0; DIM];
    vector[0] = angle.cos();
    vector[1] = angle.sin();
    vector[DIM - 1] = 0.001 * i as f32;
    Point {
        id: Uuid::from_u128(i + 1),
        vector,
        payload: StoredPayload {
            s3_key: format!("images/{i}.jpg"),
            created_at: "2026-12-02T00:00:00Z".into(),
            thumbnail: None,
            attributes: ImageAttributes {
                dataset: "engines".into(),
                caption: if i.is_multiple_of(4) {
                    format!("Puma sneaker{}", " sport".repeat(i as usize / 4))
                } else {
                    "Nike sneaker".into()
                },
                colour: Some(if i.is_multiple_of(2) { "Red" } else { "Blue" }.into()),
                ..ImageAttributes::default()
            },
        },
    }
}

fn colour(value: &str) -> Filter {
    Filter::attributes(Filters {
        colour: Some(value.into()),
        ..Filters::default()
    })
}

fn nearest(to: u128, limit: usize, offset: usize) -> SearchRequest {
    SearchRequest {
        query: IndexQuery::Vector(point(to).vector),
        limit,
        offset,
        filter: Filter::default(),
        min_score: None,
        exclude: Vec::new(),
    }
}

fn ids(hits: &[backend::index::ScoredPoint]) -> Vec<Uuid> {
    hits.iter().map(|h| h.id).collect()
}

/// The contract, on a new empty index. `one_shard`: BM25's IDF is each shard's own (Qdrant
/// weighs a term by the shard's statistics), so across shards keyword scores of equal texts
/// differ and only the set of keyword matches is the contract, not their exact order.
async fn contract(index: Arc<dyn VectorIndex>, one_shard: bool) {
    // Empty: no collection yet, and every read says so plainly.
    assert_eq!(index.dim(), None);
    assert!(
        index
            .search(nearest(0, 5, 0))
            .await
            .expect("search")
            .is_empty()
    );
    assert_eq!(index.count(&Filter::default()).await.expect("count"), 0);
    assert!(
        index
            .retrieve(&[Uuid::from_u128(1)], true)
            .await
            .expect("retrieve")
            .is_empty()
    );
    index.probe().await.expect("probe");

    // Concurrent first writes: whoever creates the collection, every write lands.
    let writes = (0..8u128).map(|w| {
        let index = index.clone();
        async move { index.upsert((w * 5..w * 5 + 5).map(point).collect()).await }
    });
    for written in futures::future::join_all(writes).await {
        written.expect("a concurrent first write");
    }
    assert_eq!(index.dim(), Some(DIM));
    assert_eq!(index.count(&Filter::default()).await.expect("count"), 40);

    // Concurrent records of the model (the first batches of an ETL each admit it): every one
    // succeeds, and the model is recorded.
    let model = IndexModel {
        name: "engines".into(),
        fingerprint: "sha256:00112233445566778899aabbccddeeff".into(),
        dim: DIM,
    };
    let adopts = (0..8).map(|_| {
        let (index, model) = (index.clone(), model.clone());
        async move { index.adopt(&model).await }
    });
    for adopted in futures::future::join_all(adopts).await {
        adopted.expect("a concurrent record of the model");
    }
    assert_eq!(index.model(), Some(model));
    assert_eq!(index.count(&colour("Red")).await.expect("count"), 20);

    // A stored vector comes back whole ("more like this" searches with it).
    let stored = index
        .retrieve(&[Uuid::from_u128(8)], true)
        .await
        .expect("retrieve");
    assert_eq!(stored.len(), 1);
    let vector = stored[0].vector.as_ref().expect("the vector was asked for");
    assert_eq!(vector.len(), DIM, "the whole vector");
    let expected = point(7).vector;
    let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (got, want) in vector.iter().zip(&expected) {
        // Cosine collections may store the vector normalised.
        assert!(
            (got - want).abs() < 1e-4 || (got - want / norm).abs() < 1e-4,
            "{vector:?}"
        );
    }
    assert_eq!(stored[0].payload, point(7).payload);
    let without = index
        .retrieve(&[Uuid::from_u128(8)], false)
        .await
        .expect("retrieve");
    assert_eq!(without[0].vector, None);

    // Nearest first; pages are disjoint and follow each other; filters, exclusion, floor.
    let top = index.search(nearest(0, 10, 0)).await.expect("search");
    assert_eq!(ids(&top), (1..=10).map(Uuid::from_u128).collect::<Vec<_>>());
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    let page2 = index.search(nearest(0, 5, 5)).await.expect("page 2");
    assert_eq!(ids(&page2), ids(&top)[5..]);
    let red = index
        .search(SearchRequest {
            filter: colour("Red"),
            ..nearest(0, 5, 0)
        })
        .await
        .expect("filtered");
    assert!(
        red.iter()
            .all(|h| h.payload.attributes.colour.as_deref() == Some("Red"))
    );
    assert_eq!(red.len(), 5);
    let similar = index
        .search(SearchRequest {
            exclude: vec![Uuid::from_u128(1)],
            ..nearest(0, 3, 1)
        })
        .await
        .expect("excluding");
    assert_eq!(
        ids(&similar),
        ids(&top)[2..5],
        "the source left out, then paged"
    );
    // Several left out (a recommendation's items), then paged.
    let several = index
        .search(SearchRequest {
            exclude: vec![Uuid::from_u128(1), Uuid::from_u128(3)],
            ..nearest(0, 3, 1)
        })
        .await
        .expect("excluding several");
    assert_eq!(
        ids(&several),
        [4, 5, 6].map(Uuid::from_u128),
        "points 1 and 3 left out, then one skipped"
    );
    // Words left out: no caption with "puma" (any case, whole word), in every ranking.
    let without_puma = Filter {
        without_words: vec!["puma".into()],
        ..Filter::default()
    };
    for query in [
        IndexQuery::Vector(point(0).vector),
        IndexQuery::Keywords(keywords::query("puma sneaker").expect("words")),
    ] {
        let hits = index
            .search(SearchRequest {
                filter: without_puma.clone(),
                ..SearchRequest {
                    query,
                    ..nearest(0, 20, 0)
                }
            })
            .await
            .expect("without a word");
        assert!(!hits.is_empty());
        assert!(
            hits.iter()
                .all(|h| !h.payload.attributes.caption.to_lowercase().contains("puma")),
            "{hits:?}"
        );
    }
    assert_eq!(
        index.count(&without_puma).await.expect("count"),
        index.count(&Filter::default()).await.expect("count") - 10,
        "every fourth of 40 is a Puma"
    );
    // A rounding's width below the fifth score: the index may compute it a hair differently.
    let floor = top[4].score - 1e-5;
    let above = index
        .search(SearchRequest {
            min_score: Some(floor),
            ..nearest(0, 20, 0)
        })
        .await
        .expect("floor");
    assert!(above.len() >= 5, "{above:?}");
    assert!(above.iter().all(|h| h.score >= floor), "{floor} {above:?}");

    // Words: exactly the products that have them, the shorter text first (BM25).
    assert!(index.has_keywords());
    let puma: Vec<Uuid> = (0..40u128)
        .filter(|i| i.is_multiple_of(4))
        .map(|i| Uuid::from_u128(i + 1))
        .collect();
    let words = keywords::query("PUMA").expect("keywords");
    let by_words = index
        .search(SearchRequest {
            query: IndexQuery::Keywords(words.clone()),
            ..nearest(0, 20, 0)
        })
        .await
        .expect("keyword search");
    let mut matched = ids(&by_words);
    if one_shard {
        assert_eq!(matched, puma, "the shorter text first");
    }
    matched.sort();
    assert_eq!(matched, puma, "exactly the products with the word");
    assert!(by_words.windows(2).all(|w| w[0].score >= w[1].score));
    // Both rankings fused: what has the word and is nearest first; the word lifts a product
    // above slightly nearer ones without it; far products with the word still come in.
    let hybrid = |limit, offset| SearchRequest {
        query: IndexQuery::Hybrid {
            vector: point(0).vector,
            keywords: words.clone(),
        },
        ..nearest(0, limit, offset)
    };
    let fused = index.search(hybrid(20, 0)).await.expect("hybrid");
    assert_eq!(fused.len(), 20);
    if one_shard {
        assert_eq!(fused[0].id, puma[0], "has the word, and nearest");
        assert_eq!(
            fused[1].id, puma[1],
            "point 4 (the word) above points 1 to 3 (nearer)"
        );
    } else {
        assert!(
            puma.contains(&fused[0].id) && puma.contains(&fused[1].id),
            "the word lifts products above nearer ones without it"
        );
    }
    let by_meaning = index.search(nearest(0, 20, 0)).await.expect("vector");
    let lifted = ids(&fused)
        .into_iter()
        .filter(|id| puma.contains(id))
        .count();
    let near = ids(&by_meaning)
        .into_iter()
        .filter(|id| puma.contains(id))
        .count();
    assert!(
        lifted > near,
        "{lifted} vs {near} products with the word in the top 20"
    );
    assert!(fused.windows(2).all(|w| w[0].score >= w[1].score));
    let fused_page2 = index.search(hybrid(10, 10)).await.expect("hybrid page 2");
    assert_eq!(ids(&fused_page2), ids(&fused)[10..]);
    let blue = index
        .search(SearchRequest {
            filter: colour("Blue"),
            ..hybrid(10, 0)
        })
        .await
        .expect("hybrid, filtered");
    assert_eq!(blue.len(), 10);
    assert!(
        blue.iter()
            .all(|h| h.payload.attributes.colour.as_deref() == Some("Blue"))
    );
    let excluding = index
        .search(SearchRequest {
            exclude: vec![fused[0].id],
            ..hybrid(5, 0)
        })
        .await
        .expect("hybrid, excluding");
    assert_eq!(ids(&excluding), ids(&fused)[1..6]);

    // Listing in a stable order, paged; facets counted.
    let first = index.list(0, 15, &Filter::default()).await.expect("list");
    let second = index.list(15, 100, &Filter::default()).await.expect("list");
    let mut listed: Vec<Uuid> = first.iter().chain(&second).map(|r| r.id).collect();
    assert_eq!(listed.len(), 40);
    listed.dedup();
    assert_eq!(listed.len(), 40, "pages do not overlap");
    let facet = index.facet("colour", 10).await.expect("facet");
    assert_eq!(facet.len(), 2);
    assert!(facet.iter().all(|(_, count)| *count == 20), "{facet:?}");

    // A vector of another size is refused as such.
    let mut wrong = point(99);
    wrong.vector.truncate(DIM - 1);
    match index.upsert(vec![wrong]).await {
        Err(IndexError::Dimension { expected, got }) => assert_eq!((expected, got), (DIM, DIM - 1)),
        other => panic!("expected a dimension error, got {other:?}"),
    }

    // Deleting says how many existed; the rest stay.
    let gone = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(999)];
    assert_eq!(index.delete(&gone).await.expect("delete"), 2);
    assert_eq!(index.count(&Filter::default()).await.expect("count"), 38);
    assert!(
        index
            .retrieve(&gone, false)
            .await
            .expect("retrieve")
            .is_empty()
    );
    index.flush().await.expect("flush");
    index.optimize().await.expect("optimize");
    let after = index
        .search(nearest(0, 3, 0))
        .await
        .expect("search after optimize");
    assert_eq!(
        ids(&after),
        (3..=5).map(Uuid::from_u128).collect::<Vec<_>>()
    );
}

/// A backend started over an index made before keyword vectors adds them, backfills them from
/// the payloads, and then finds the old products by their words. Keyword search needs no model:
/// model-serving is not even running.
async fn old_index_is_migrated_at_start(config: BackendConfig) {
    let backend = helpers::start_backend(&config).await.expect("backend");
    let puma: Vec<Uuid> = (0..40u128)
        .filter(|i| i.is_multiple_of(4))
        .map(|i| Uuid::from_u128(i + 1))
        .collect();
    let params = SearchParams {
        k: Some(20),
        ..SearchParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = backend
            .client
            .search_text_as("puma", SearchMode::Keyword, &params)
            .await;
        match found {
            Ok(response) if response.hits.len() == puma.len() => {
                let mut ids: Vec<Uuid> = response.hits.iter().map(|h| h.item.id).collect();
                ids.sort();
                assert_eq!(ids, puma);
                break;
            }
            // Before the keyword vector exists (400) or while it is being filled (fewer hits).
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("not migrated after 30 s: {other:?}"),
        }
    }
    assert!(backend.engine.index().has_keywords());
    assert!(
        backend
            .engine
            .index()
            .missing_keywords(10)
            .await
            .expect("missing")
            .is_empty()
    );
    backend.stop().await;
}

/// A model-serving address nothing listens on.
fn nobody() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_index_made_before_keyword_vectors_is_migrated() {
    let data = tempfile::tempdir().expect("tempdir");
    let old = EdgeIndex::open_without_keywords(&data.path().join("index"), TUNING, DIM)
        .expect("old store");
    old.upsert((0..40).map(point).collect())
        .await
        .expect("upsert");
    assert!(!old.has_keywords());
    old.flush().await.expect("flush");
    drop(old);
    old_index_is_migrated_at_start(helpers::config(data.path(), nobody())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_collection_made_before_keyword_vectors_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((url, _process)) = qdrant_server(dir.path()).await else {
        return;
    };
    let collection = format!("fashion_search_it_{}", Uuid::new_v4().simple());
    let old = QdrantServerIndex::connect(&url, api_key(), &collection, TUNING)
        .await
        .expect("connect");
    old.create_without_keywords(DIM)
        .await
        .expect("old collection");
    old.upsert((0..40).map(point).collect())
        .await
        .expect("upsert");
    assert!(!old.has_keywords());
    let data = tempfile::tempdir().expect("tempdir");
    old_index_is_migrated_at_start(BackendConfig {
        qdrant_url: Some(url),
        qdrant_collection: collection,
        ..helpers::config(data.path(), nobody())
    })
    .await;
}

fn api_key() -> Option<String> {
    std::env::var("QDRANT_API_KEY").ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_engine_keeps_the_index_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EdgeIndex::open(&dir.path().join("index"), TUNING).expect("open");
    contract(Arc::new(index), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_server_keeps_the_index_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((url, _process)) = qdrant_server(dir.path()).await else {
        return;
    };
    let collection = format!("fashion_search_it_{}", Uuid::new_v4().simple());
    // Two shards even on one node: ranking, fusion, paging and exclusion must not depend on
    // where a point lives (a cluster spreads the shards over its nodes).
    let index = QdrantServerIndex::connect(&url, api_key(), &collection, TUNING)
        .await
        .expect("connect")
        .with_layout(ClusterLayout {
            shards: Some(2),
            replication_factor: Some(1),
            write_consistency: Some(1),
        });
    contract(Arc::new(index), false).await;
}
