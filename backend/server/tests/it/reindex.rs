//! Model identity and re-indexing with the real parts, over the embedded engine (always) and a
//! Qdrant server (`QDRANT_BIN` / `QDRANT_URL`; else one "skipped" line): real photos indexed with
//! the generated tiny model, then moved to the project's trained model with no downtime (the old
//! index serves until the new one is complete), refused when the models disagree, and a stopped
//! re-index resumed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use backend::config::BackendConfig;
use backend::index::{IndexModel, Point};
use backend_api::{
    ImageAttributes, ModelRole, ReindexModel, ReindexState, ReindexStatus, SearchMode, SearchParams,
};
use model_serving_api::ModelServingClient;
use uuid::Uuid;

use crate::helpers::*;
use crate::qdrant_live::qdrant_server;

/// Enough that the re-index outlasts the writes made while it runs (about 1 s here).
const PRODUCTS: usize = 150;

async fn served(addr: SocketAddr) -> IndexModel {
    let info = ModelServingClient::new(format!("http://{addr}"), Duration::from_secs(10))
        .expect("client")
        .model_info()
        .await
        .expect("model info");
    backend::encoder::model_of(&info)
}

/// Follows the re-index until it is no longer running (at most two minutes).
async fn finished(backend: &TestBackend) -> ReindexStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = backend.client.reindex_status().await.expect("status");
        if status.state != ReindexState::Running {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "re-index still running: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics"))
}

/// The whole story on one engine; `engine` turns a data directory and model-serving into the
/// backend's configuration (the same collection each time, for the server).
async fn model_change(engine: impl Fn(&Path, SocketAddr, Option<SocketAddr>) -> BackendConfig) {
    let tiny = start_model_serving(free_addr()).await;
    let trained = start_model_serving_with(free_addr(), local_stack::trained_model_dir()).await;
    let (old, new) = (served(tiny.addr).await, served(trained.addr).await);
    assert_ne!(old.fingerprint, new.fingerprint);
    let data = tempfile::tempdir().expect("tempdir");
    let products = products(PRODUCTS + 1);
    let (loaded, later) = products.split_at(PRODUCTS);

    // Indexed with the tiny model: the index records it.
    let backend = start_backend(&engine(data.path(), tiny.addr, Some(trained.addr)))
        .await
        .expect("backend");
    let stored = ingest(&backend, tiny.addr, loaded).await;
    let stats = backend.client.stats().await.expect("stats");
    assert_eq!(stats.fingerprint.as_deref(), Some(old.fingerprint.as_str()));
    assert!(
        stats
            .model
            .as_deref()
            .is_some_and(|m| m.contains(&old.name))
    );

    // A batch made by another model is refused, naming both.
    let (id, bytes) = stored.iter().next().expect("a product");
    let item = backend_api::IngestItem {
        id: *id,
        vector: vec![0.5; old.dim],
        s3_key: backend::search::content_key(bytes, "jpg"),
        attributes: ImageAttributes {
            dataset: "reindex".into(),
            ..ImageAttributes::default()
        },
    };
    let response = backend
        .http
        .post(backend.url("/v1/images:batch"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"items": [item], "model": new.fingerprint}))
        .send()
        .await
        .expect("batch");
    let (status, code, retry) = error_of(response).await;
    assert_eq!((status.as_u16(), code.as_str()), (503, "model_mismatch"));
    assert!(retry.is_some());
    let refused = backend
        .client
        .ingest_batch_made_by(vec![item], Some(new.fingerprint.clone()))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        refused.contains(&old.fingerprint) && refused.contains(&new.fingerprint),
        "{refused}"
    );

    // The change: the new index is built beside the live one, which keeps answering with the
    // old model; a product added and one deleted meanwhile are in the new index as they should.
    let started = backend
        .client
        .start_reindex(ReindexModel::Next, false)
        .await
        .expect("start");
    assert_eq!(started.fingerprint, new.fingerprint);
    assert_eq!(
        started.from_fingerprint.as_deref(),
        Some(old.fingerprint.as_str())
    );
    assert_eq!(started.total, PRODUCTS as u64);
    let again = backend
        .client
        .start_reindex(ReindexModel::Next, false)
        .await
        .expect("asked twice");
    assert_eq!(again.started_at, started.started_at, "one run, not two");
    let during = backend
        .client
        .search_text_as("shirt", SearchMode::Vector, &SearchParams::default())
        .await
        .expect("the old index serves during the re-index");
    assert_eq!(during.model, old.name);
    let added = &later[0];
    ingest(&backend, tiny.addr, std::slice::from_ref(added)).await;
    let deleted = point_id(&loaded[1]);
    backend.client.delete_image(deleted).await.expect("delete");
    let done = finished(&backend).await;
    assert_eq!(done.state, ReindexState::Done, "{done:?}");
    assert_eq!(done.dropped, 0, "{done:?}");
    assert!(done.embedded >= PRODUCTS as u64 - 1, "{done:?}");
    println!(
        "re-index: {} items in {:.2} s, {:.0} embedded/s ({} kept, {} removed)",
        done.embedded, done.seconds, done.embedded_per_second, done.kept, done.removed
    );

    let stats = backend.client.stats().await.expect("stats");
    assert_eq!(stats.fingerprint.as_deref(), Some(new.fingerprint.as_str()));
    assert_eq!(stats.total, PRODUCTS as u64, "one added, one deleted");
    backend
        .client
        .get_image(point_id(added))
        .await
        .expect("the product added during the re-index is there");
    assert!(backend.client.get_image(deleted).await.is_err());
    // Searches moved to the trained model with the index: a product's caption finds it.
    let params = SearchParams {
        k: Some(10),
        ..SearchParams::default()
    };
    let mut found = 0;
    for product in &loaded[2..12] {
        let response = backend
            .client
            .search_text_as(&product.attributes.caption, SearchMode::Vector, &params)
            .await
            .expect("search");
        assert_eq!(response.model, new.name);
        found += usize::from(response.hits.iter().any(|h| h.item.id == point_id(product)));
    }
    assert!(found >= 7, "the trained model found {found} of 10 captions");
    let more = backend
        .client
        .similar(point_id(&loaded[3]), &params)
        .await
        .expect("more like this on the new index");
    assert_eq!(more.hits.len(), 10);
    let metrics = backend.metrics().await;
    assert!(
        metric(
            &metrics,
            "backend_reindex_items_total{outcome=\"embedded\"}"
        ) >= PRODUCTS as f64 - 1.0
    );
    assert_eq!(metric(&metrics, "backend_reindex_running"), 0.0);
    assert_eq!(metric(&metrics, "backend_reindex_progress_ratio"), 1.0);
    backend.stop().await;

    // Started again with the old model: searches by meaning and writes are refused naming both
    // models; a hybrid search matches by words alone and says so.
    let backend = start_backend(&engine(data.path(), tiny.addr, None))
        .await
        .expect("backend restarts");
    let response = backend
        .http
        .get(backend.url("/v1/search?q=shirt&mode=vector"))
        .send()
        .await
        .expect("search");
    let body = response.text().await.expect("body");
    assert!(
        body.contains("model_mismatch")
            && body.contains(&old.fingerprint)
            && body.contains(&new.fingerprint),
        "{body}"
    );
    let words = backend
        .client
        .search_text_as("shirt", SearchMode::Hybrid, &SearchParams::default())
        .await
        .expect("words still match");
    assert_eq!(words.mode, SearchMode::Keyword);
    assert!(
        backend
            .client
            .search_image(stored.values().next().expect("photo").clone(), &params)
            .await
            .is_err()
    );
    let metrics = backend.metrics().await;
    assert!(metric(&metrics, "backend_model_mismatch_total") >= 2.0);

    // A re-index back to the tiny model that stopped after 10 items (its target left behind)
    // resumes: those are kept, not embedded again.
    let target = backend
        .engine
        .index()
        .rebuild_target(&old)
        .await
        .expect("target");
    let first: Vec<_> = loaded[2..12].to_vec();
    let vectors = ModelServingClient::new(format!("http://{}", tiny.addr), Duration::from_secs(30))
        .expect("client")
        .encode_images(
            first
                .iter()
                .map(|p| std::fs::read(&p.photo).expect("photo"))
                .collect(),
        )
        .await
        .expect("encode")
        .embeddings;
    let records = backend
        .engine
        .index()
        .retrieve(&first.iter().map(point_id).collect::<Vec<Uuid>>(), false)
        .await
        .expect("records");
    assert_eq!(records.len(), 10);
    let points = records
        .into_iter()
        .map(|r| {
            let at = first
                .iter()
                .position(|p| point_id(p) == r.id)
                .expect("ours");
            Point {
                id: r.id,
                vector: vectors[at].clone(),
                payload: r.payload,
            }
        })
        .collect();
    target.upsert(points).await.expect("partial target");
    drop(target);
    backend
        .client
        .start_reindex(ReindexModel::Current, false)
        .await
        .expect("resume");
    let done = finished(&backend).await;
    assert_eq!(done.state, ReindexState::Done, "{done:?}");
    assert_eq!(
        (done.kept, done.embedded),
        (10, PRODUCTS as u64 - 10),
        "{done:?}"
    );
    let back = backend
        .client
        .search_text_as("shirt", SearchMode::Vector, &SearchParams::default())
        .await
        .expect("the tiny model's index serves the tiny model again");
    assert_eq!(back.model, old.name);
    assert_eq!(
        backend.client.stats().await.expect("stats").total,
        PRODUCTS as u64
    );
    backend.stop().await;
    tiny.stop().await.expect("stop");
    trained.stop().await.expect("stop");
}

fn next(config: BackendConfig, next: Option<SocketAddr>) -> BackendConfig {
    BackendConfig {
        model_serving_next_url: next.map(|addr| format!("http://{addr}")),
        ..config
    }
}

/// A backend on the embedded engine in `data`.
fn embedded(data: &Path, model: SocketAddr, upcoming: Option<SocketAddr>) -> BackendConfig {
    next(config(data, model), upcoming)
}

/// A backend on the Qdrant server at `url`, in a collection of this test's own (the same for
/// each backend the test starts).
fn on_server(url: String) -> impl Fn(&Path, SocketAddr, Option<SocketAddr>) -> BackendConfig {
    let collection = format!("fashion_search_it_{}", Uuid::new_v4().simple());
    move |data, model, upcoming| BackendConfig {
        qdrant_url: Some(url.clone()),
        qdrant_collection: collection.clone(),
        ..embedded(data, model, upcoming)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_is_refused_then_reindexed_without_downtime_embedded() {
    model_change(embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_is_refused_then_reindexed_without_downtime_on_a_qdrant_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((url, _process)) = qdrant_server(dir.path()).await else {
        return;
    };
    model_change(on_server(url)).await;
}

/// Two models side by side: the trained model's index staged beside the tiny model's live one,
/// searched only by requests that name it, then promoted; on one engine (as [`model_change`]).
async fn side_by_side(engine: impl Fn(&Path, SocketAddr, Option<SocketAddr>) -> BackendConfig) {
    const ITEMS: usize = 60;
    let tiny = start_model_serving(free_addr()).await;
    let trained = start_model_serving_with(free_addr(), local_stack::trained_model_dir()).await;
    let (old, new) = (served(tiny.addr).await, served(trained.addr).await);
    let data = tempfile::tempdir().expect("tempdir");
    let products = products(ITEMS);
    let backend = start_backend(&engine(data.path(), tiny.addr, Some(trained.addr)))
        .await
        .expect("backend");
    let stored = ingest(&backend, tiny.addr, &products).await;
    let models = backend.client.models().await.expect("models");
    assert_eq!(models.models.len(), 1, "{models:?}");
    assert_eq!(models.models[0].role, ModelRole::Live);
    assert_eq!(models.models[0].fingerprint, old.fingerprint);
    assert_eq!(models.models[0].points, ITEMS as u64);
    let with_model = |model: &str, k: usize| SearchParams {
        k: Some(k),
        model: Some(model.to_owned()),
        ..SearchParams::default()
    };

    // Not staged yet: naming the new model is a 400 that names what is served.
    let response = backend
        .http
        .get(backend.url(&format!("/v1/search?q=shirt&model={}", new.name)))
        .send()
        .await
        .expect("search");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "invalid_request"));
    let refused = backend
        .client
        .search_text_as("shirt", SearchMode::Vector, &with_model(&new.name, 5))
        .await
        .expect_err("not served")
        .to_string();
    assert!(refused.contains(&old.name), "{refused}");

    // The live model cannot be staged beside itself.
    let same = backend
        .client
        .start_reindex(ReindexModel::Current, true)
        .await
        .expect_err("the live model staged")
        .to_string();
    assert!(same.contains("already"), "{same}");

    // Staged: the live index and model are untouched; the new one answers when named.
    let started = backend
        .client
        .start_reindex(ReindexModel::Next, true)
        .await
        .expect("stage");
    assert!(started.stage);
    let done = finished(&backend).await;
    assert_eq!(
        (done.state, done.stage),
        (ReindexState::Done, true),
        "{done:?}"
    );
    assert_eq!(done.embedded, ITEMS as u64, "{done:?}");
    let stats = backend.client.stats().await.expect("stats");
    assert_eq!(stats.fingerprint.as_deref(), Some(old.fingerprint.as_str()));
    let models = backend.client.models().await.expect("models");
    let roles: Vec<_> = models
        .models
        .iter()
        .map(|m| (m.role, m.fingerprint.clone(), m.points, m.encoder))
        .collect();
    assert_eq!(
        roles,
        [
            (ModelRole::Live, old.fingerprint.clone(), ITEMS as u64, true),
            (
                ModelRole::Staged,
                new.fingerprint.clone(),
                ITEMS as u64,
                true
            ),
        ]
    );
    let live = backend
        .client
        .search_text_as("shirt", SearchMode::Hybrid, &SearchParams::default())
        .await
        .expect("default search");
    assert_eq!(live.model, old.name);
    let mut found = 0;
    for product in &products[..10] {
        let response = backend
            .client
            .search_text_as(
                &product.attributes.caption,
                SearchMode::Vector,
                &with_model(&new.name, 10),
            )
            .await
            .expect("search the staged model");
        assert_eq!(response.model, new.name);
        found += usize::from(response.hits.iter().any(|h| h.item.id == point_id(product)));
    }
    assert!(found >= 7, "the staged model found {found} of 10 captions");
    // By fingerprint too, a photo, and "more like this" on the staged vectors.
    let photo = stored[&point_id(&products[4])].clone();
    let by_photo = backend
        .client
        .search_image(photo, &with_model(&new.fingerprint, 3))
        .await
        .expect("photo on the staged model");
    assert_eq!(by_photo.model, new.name);
    assert_eq!(by_photo.hits[0].item.id, point_id(&products[4]));
    let more = backend
        .client
        .similar(point_id(&products[4]), &with_model(&new.name, 5))
        .await
        .expect("more like this on the staged model");
    assert_eq!(more.hits.len(), 5);
    let metrics = backend.metrics().await;
    assert!(
        metric(
            &metrics,
            "backend_staged_searches_total{kind=\"text\",outcome=\"hits\"}"
        ) >= 10.0
    );
    assert_eq!(
        metric(
            &metrics,
            "backend_staged_searches_total{kind=\"similar\",outcome=\"hits\"}"
        ),
        1.0
    );

    // Writes go to the live index only; an item deleted since staging is not shown by the
    // staged one either.
    let gone = &products[2];
    let before = backend
        .client
        .search_text_as(
            &gone.attributes.caption,
            SearchMode::Vector,
            &with_model(&new.name, ITEMS),
        )
        .await
        .expect("search");
    assert!(before.hits.iter().any(|h| h.item.id == point_id(gone)));
    backend
        .client
        .delete_image(point_id(gone))
        .await
        .expect("delete");
    let after = backend
        .client
        .search_text_as(
            &gone.attributes.caption,
            SearchMode::Vector,
            &with_model(&new.name, ITEMS),
        )
        .await
        .expect("search");
    assert!(!after.hits.iter().any(|h| h.item.id == point_id(gone)));
    assert_eq!(after.hits.len(), before.hits.len() - 1);
    backend.stop().await;

    // Without the staged model's model-serving, only searches that embed nothing use it.
    let backend = start_backend(&engine(data.path(), tiny.addr, None))
        .await
        .expect("backend restarts");
    let models = backend.client.models().await.expect("models");
    assert_eq!(
        models.models.iter().map(|m| m.encoder).collect::<Vec<_>>(),
        [true, false]
    );
    let more = backend
        .client
        .similar(point_id(&products[4]), &with_model(&new.name, 5))
        .await
        .expect("more like this on the staged model without its model-serving");
    assert_eq!(more.model, new.name);
    let refused = backend
        .client
        .search_text_as("shirt", SearchMode::Vector, &with_model(&new.name, 5))
        .await
        .expect_err("nothing embeds the query")
        .to_string();
    assert!(refused.contains("MODEL_SERVING_NEXT_URL"), "{refused}");
    backend.stop().await;

    // A restart finds the staged index again; promoting it resumes it (nothing embedded again
    // but what changed) and switches.
    let backend = start_backend(&engine(data.path(), tiny.addr, Some(trained.addr)))
        .await
        .expect("backend restarts");
    let models = backend.client.models().await.expect("models");
    assert_eq!(models.models.len(), 2, "{models:?}");
    let response = backend
        .client
        .search_text_as("shirt", SearchMode::Hybrid, &with_model(&new.name, 5))
        .await
        .expect("the staged model after a restart");
    assert_eq!(response.model, new.name);
    backend
        .client
        .start_reindex(ReindexModel::Next, false)
        .await
        .expect("promote");
    let done = finished(&backend).await;
    assert_eq!(
        (done.state, done.stage),
        (ReindexState::Done, false),
        "{done:?}"
    );
    assert_eq!(
        (done.embedded, done.kept, done.removed),
        (0, ITEMS as u64 - 1, 1),
        "{done:?}"
    );
    let models = backend.client.models().await.expect("models");
    assert_eq!(models.models.len(), 1, "{models:?}");
    assert_eq!(
        (models.models[0].role, models.models[0].fingerprint.as_str()),
        (ModelRole::Live, new.fingerprint.as_str())
    );
    let live = backend
        .client
        .search_text_as("shirt", SearchMode::Hybrid, &SearchParams::default())
        .await
        .expect("default search");
    assert_eq!(live.model, new.name);
    assert!(
        backend
            .client
            .search_text_as("shirt", SearchMode::Hybrid, &with_model(&old.name, 5))
            .await
            .is_err(),
        "the old model is no longer served"
    );
    backend.stop().await;
    tiny.stop().await.expect("stop");
    trained.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_model_is_searched_by_name_beside_the_live_one_then_promoted_embedded() {
    side_by_side(embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_model_is_searched_by_name_beside_the_live_one_then_promoted_on_a_qdrant_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((url, _process)) = qdrant_server(dir.path()).await else {
        return;
    };
    side_by_side(on_server(url)).await;
}
