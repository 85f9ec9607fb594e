//! Adding images one at a time: by multipart upload and by URL.

use std::collections::HashSet;

use backend_api::SearchParams;
use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn add_image_by_upload_and_by_url_with_a_public_endpoint() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(data.path(), ms.addr);
    // Browsers reach the object store under another name than the backend does.
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = s3.local_addr().expect("addr").port();
    cfg.s3_public_endpoint = Some(format!("http://localhost:{port}"));
    // Fetching by URL from loopback is refused unless allowlisted; "localhost" may resolve to
    // both loopback addresses, and every address of a name must be allowed.
    cfg.fetch_allow = format!("127.0.0.1:{port},[::1]:{port}")
        .parse()
        .expect("allowlist");
    let backend = start_backend_with(&cfg, s3).await.expect("backend");
    let product = &products(3)[2];
    let photo = std::fs::read(&product.photo).expect("photo");

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(photo.clone()).file_name("p.jpg"),
        )
        .text("dataset", "uploads")
        .text("caption", product.attributes.caption.clone())
        .text("colour", "Navy Blue")
        .text("width", "224");
    let added: backend_api::ImageItem = backend
        .http
        .post(backend.url("/v1/images"))
        .header("x-api-key", API_KEY)
        .multipart(form)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("item");
    assert_eq!(added.attributes.dataset, "uploads");
    assert_eq!(added.attributes.width, Some(224));
    assert!(
        added.url.starts_with(&format!("http://localhost:{port}/")),
        "{}",
        added.url
    );
    let fetched = reqwest::get(&added.url)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        &fetched[..],
        &photo[..],
        "signed for the public endpoint, served by the embedded S3"
    );

    // By URL: the backend fetches the image (here: the URL it just signed).
    let by_url: backend_api::ImageItem = backend
        .http
        .post(backend.url("/v1/images"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"url": added.url, "dataset": "by-url", "caption": "again"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("item");
    assert_eq!(
        by_url.s3_key, added.s3_key,
        "content-addressed: same bytes, same object"
    );
    assert_ne!(by_url.id, added.id);
    let hits = backend
        .client
        .search_image(
            photo,
            &SearchParams {
                k: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("search");
    let ids: HashSet<_> = hits.hits.iter().map(|h| h.item.id).collect();
    assert!(ids.contains(&added.id) && ids.contains(&by_url.id));
    // Deleting one keeps the shared object for the other.
    backend.client.delete_image(added.id).await.expect("delete");
    let other = backend.client.get_image(by_url.id).await.expect("other");
    assert_eq!(
        reqwest::get(&other.url).await.expect("GET").status(),
        StatusCode::OK
    );

    let bad = backend
        .http
        .post(backend.url("/v1/images"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"url": "file:///etc/passwd", "dataset": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(bad).await.1, "invalid_url");
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}
