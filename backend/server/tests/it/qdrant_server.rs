//! The Qdrant server implementation against a live server. Runs only when `QDRANT_URL` is set
//! (e.g. `QDRANT_URL=http://127.0.0.1:6334 cargo nextest run -p backend qdrant_server`); no Qdrant
//! server can be installed on the development machines.

use backend::index::server::QdrantServerIndex;
use backend::index::{Filter, Point, SearchRequest, SearchTuning, StoredPayload, VectorIndex};
use backend_api::ImageAttributes;
use uuid::Uuid;

#[tokio::test]
async fn live_qdrant_server_round_trip() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: the live Qdrant server test does not run here");
        return;
    };
    let collection = format!("fashion_search_it_{}", Uuid::new_v4().simple());
    let index = QdrantServerIndex::connect(
        &url,
        std::env::var("QDRANT_API_KEY").ok(),
        &collection,
        SearchTuning {
            hnsw_ef: 64,
            exact: true,
        },
    )
    .await
    .expect("connect");
    assert_eq!(index.dim(), None);
    let point = |i: u128, colour: &str| Point {
        id: Uuid::from_u128(i),
        vector: (0..8)
            .map(|d| if d as u128 == i % 8 { 1.0 } else { 0.1 })
            .collect(),
        payload: StoredPayload {
            s3_key: format!("images/{i}.jpg"),
            created_at: "2026-11-21T00:00:00Z".into(),
            attributes: ImageAttributes {
                dataset: "it".into(),
                colour: Some(colour.into()),
                ..Default::default()
            },
        },
    };
    index
        .upsert(vec![point(1, "Red"), point(2, "Blue"), point(3, "Red")])
        .await
        .expect("upsert");
    assert_eq!(index.dim(), Some(8));
    assert_eq!(index.count(&Filter::default()).await.expect("count"), 3);
    let red = Filter::attributes(backend_api::Filters {
        colour: Some("Red".into()),
        ..Default::default()
    });
    assert_eq!(index.count(&red).await.expect("count"), 2);
    let hits = index
        .search(SearchRequest {
            vector: point(2, "").vector,
            limit: 3,
            offset: 0,
            filter: Filter::default(),
            min_score: None,
            exclude: None,
        })
        .await
        .expect("search");
    assert_eq!(hits[0].id, Uuid::from_u128(2));
    let facet = index.facet("colour", 10).await.expect("facet");
    assert_eq!(facet[0], ("Red".to_owned(), 2));
    assert_eq!(
        index.delete(&[Uuid::from_u128(1)]).await.expect("delete"),
        1
    );
    assert_eq!(index.count(&Filter::default()).await.expect("count"), 2);
    let records = index
        .retrieve(&[Uuid::from_u128(3)], true)
        .await
        .expect("retrieve");
    assert_eq!(records[0].payload.attributes.colour.as_deref(), Some("Red"));
    assert!(records[0].vector.is_some());
}
