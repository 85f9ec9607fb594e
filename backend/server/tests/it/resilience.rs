//! Outages and restarts: a dependency down is a 503 with Retry-After, then the backend recovers;
//! what was written survives a restart.

use std::time::Duration;

use backend_api::SearchParams;
use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn survives_restart_and_owns_its_store() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = config(data.path(), ms.addr);
    let backend = start_backend(&cfg).await.expect("backend");
    let products = products(12);
    ingest(&backend, ms.addr, &products).await;
    let before = backend
        .client
        .search_text("blue jeans", &SearchParams::default())
        .await
        .expect("search");

    // A second backend on the same data directory fails fast with a clear message.
    let err = start_backend(&cfg)
        .await
        .err()
        .expect("second owner refused");
    assert!(
        format!("{err:#}").contains("in use by another process"),
        "{err:#}"
    );

    backend.stop().await;
    let backend = start_backend(&cfg).await.expect("restart");
    assert_eq!(backend.client.stats().await.expect("stats").total, 12);
    let after = backend
        .client
        .search_text("blue jeans", &SearchParams::default())
        .await
        .expect("search");
    let ids =
        |r: &backend_api::SearchResponse| r.hits.iter().map(|h| h.item.id).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    // Objects survived too: the URLs signed by the new process serve the photos.
    for hit in &after.hits {
        assert_eq!(
            reqwest::get(&hit.item.url).await.expect("GET").status(),
            StatusCode::OK
        );
    }
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

#[tokio::test]
async fn model_serving_outage_is_503_then_recovers() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let addr = ms.addr;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), addr))
        .await
        .expect("backend");
    ingest(&backend, addr, &products(8)).await;
    ms.stop().await.expect("model-serving stops cleanly");

    let response = backend
        .http
        .get(backend.url("/v1/search?q=green+kurta"))
        .send()
        .await
        .expect("send");
    let (status, code, retry) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "model_unavailable")
    );
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));
    // Reads that need no model keep working.
    assert_eq!(backend.client.stats().await.expect("stats").total, 8);

    // Model-serving comes back on the same address: searches recover without a restart.
    let ms = start_model_serving(addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match backend
            .client
            .search_text("green kurta", &SearchParams::default())
            .await
        {
            Ok(page) => {
                assert_eq!(page.hits.len(), 8);
                break;
            }
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("search did not recover: {e}"),
        }
    }
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

#[tokio::test]
async fn object_storage_outage_is_503_then_recovers() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    // An external S3 (the same server the backend embeds, run on its own).
    let objects = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let s3_addr = listener.local_addr().expect("addr");
    let s3 = backend::embedded_s3::EmbeddedS3::start(
        listener,
        objects.path(),
        "outside-key",
        "outside-secret-123",
    )
    .expect("s3");
    let data = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(data.path(), ms.addr);
    cfg.s3_endpoint = Some(format!("http://{s3_addr}"));
    cfg.s3_access_key = Some("outside-key".to_owned().into());
    cfg.s3_secret_key = Some("outside-secret-123".to_owned().into());
    let backend = start_backend(&cfg).await.expect("backend");
    let photo = std::fs::read(&products(1)[0].photo).expect("photo");
    let add = |photo: Vec<u8>| {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(photo).file_name("p.jpg"),
            )
            .text("dataset", "uploads");
        backend
            .http
            .post(backend.url("/v1/images"))
            .header("x-api-key", API_KEY)
            .multipart(form)
            .send()
    };
    assert_eq!(
        add(photo.clone()).await.expect("send").status(),
        StatusCode::OK
    );

    s3.stop().await;
    let (status, code, retry) = error_of(add(photo.clone()).await.expect("send")).await;
    assert_eq!(
        (status, code.as_str(), retry.as_deref()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            Some("1")
        )
    );

    let listener = tokio::net::TcpListener::bind(s3_addr)
        .await
        .expect("rebind");
    let s3 = backend::embedded_s3::EmbeddedS3::start(
        listener,
        objects.path(),
        "outside-key",
        "outside-secret-123",
    )
    .expect("s3 again");
    assert_eq!(
        add(photo).await.expect("send").status(),
        StatusCode::OK,
        "recovered without a restart"
    );
    backend.stop().await;
    s3.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}
