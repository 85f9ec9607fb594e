//! Card-size thumbnails with the real parts, over the embedded engine and a Qdrant server
//! (`QDRANT_BIN` / `QDRANT_URL`, else one "skipped" line): real photos indexed, thumbnails made
//! in the background, grids pre-sign them (fewer bytes per results page), a delete removes them.

use std::time::{Duration, Instant};

use backend::config::BackendConfig;
use backend_api::SearchParams;
use uuid::Uuid;

use crate::helpers::*;
use crate::qdrant_live::qdrant_server;

async fn bytes_of(http: &reqwest::Client, url: &str) -> (reqwest::StatusCode, usize) {
    let response = http.get(url).send().await.expect("GET");
    let status = response.status();
    (status, response.bytes().await.expect("body").len())
}

async fn thumbnails_on(config: impl Fn(&std::path::Path, std::net::SocketAddr) -> BackendConfig) {
    let model = start_model_serving(free_addr()).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), model.addr))
        .await
        .expect("backend");
    // Catalogue photos at a full-size shop's size: the dataset's 60 x 80 photos scaled to
    // 1200 x 1600 (the small dataset's own photos are their own thumbnails, checked below).
    let products = products(31);
    for product in &products[..30] {
        let small = image::open(&product.photo).expect("photo");
        let large = small.resize_exact(1200, 1600, image::imageops::FilterType::Triangle);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&large.into_rgb8())
            .expect("jpeg");
        backend
            .engine
            .add_image(jpeg, product.attributes.clone(), Some(point_id(product)))
            .await
            .expect("add");
    }
    ingest(&backend, model.addr, &products[30..]).await;

    // Made in the background, soon after the writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let params = SearchParams {
        k: Some(24),
        ..SearchParams::default()
    };
    let page = loop {
        let page = backend
            .client
            .search_text("shirt", &params)
            .await
            .expect("search");
        if page.hits.iter().all(|h| h.item.thumbnail_url.is_some()) {
            break page;
        }
        assert!(Instant::now() < deadline, "thumbnails not made within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(page.hits.len(), 24);
    let (mut originals, mut thumbnails) = (0, 0);
    for hit in &page.hits {
        let (status, original) = bytes_of(&backend.http, &hit.item.url).await;
        assert!(status.is_success());
        let thumb_url = hit.item.thumbnail_url.as_deref().expect("thumbnail");
        let (status, thumbnail) = bytes_of(&backend.http, thumb_url).await;
        assert!(status.is_success());
        let bytes = backend
            .http
            .get(thumb_url)
            .send()
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("body");
        let image = image::load_from_memory(&bytes).expect("a JPEG");
        assert!(image.width() <= 256 && image.height() <= 256);
        originals += original;
        thumbnails += thumbnail;
    }
    println!(
        "a results page of 24: originals {originals} bytes, thumbnails {thumbnails} bytes ({:.2}x)",
        thumbnails as f64 / originals as f64
    );
    assert!(thumbnails * 5 < originals, "{thumbnails} vs {originals}");
    let small = backend
        .client
        .get_image(point_id(&products[30]))
        .await
        .expect("the small photo");
    assert_eq!(
        small.thumbnail_url.as_deref().map(|u| u.split('?').next()),
        Some(small.url.split('?').next()),
        "a 60 x 80 photo is its own thumbnail"
    );
    let metrics = backend.metrics().await;
    for outcome in ["made", "original"] {
        assert!(
            !metrics.contains(&format!(
                "backend_thumbnails_total{{outcome=\"{outcome}\"}} 0"
            )),
            "{outcome}"
        );
    }

    // A product page's item keeps its original; a delete removes the thumbnail too.
    let id: Uuid = page.hits[0].item.id;
    let item = backend.client.get_image(id).await.expect("item");
    let thumb_url = item.thumbnail_url.clone().expect("thumbnail");
    let shared = page
        .hits
        .iter()
        .filter(|h| h.item.s3_key == item.s3_key)
        .count();
    backend.client.delete_image(id).await.expect("delete");
    if shared == 1 {
        let (status, _) = bytes_of(&backend.http, &thumb_url).await;
        assert_eq!(status.as_u16(), 404, "the thumbnail went with its original");
    }
    backend.stop().await;
    model.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_made_presigned_and_deleted_embedded() {
    thumbnails_on(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_made_presigned_and_deleted_on_a_qdrant_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((url, _process)) = qdrant_server(dir.path()).await else {
        return;
    };
    let collection = format!("fashion_search_it_{}", Uuid::new_v4().simple());
    thumbnails_on(|data, model| BackendConfig {
        qdrant_url: Some(url.clone()),
        qdrant_collection: collection.clone(),
        ..config(data, model)
    })
    .await;
}
