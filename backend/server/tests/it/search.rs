//! Searching end to end: ingest, search, filters, paging, presigned URLs, delete; bad input.

use std::collections::HashSet;
use std::time::Duration;

use backend_api::{ClientError, ErrorBody, Filters, SearchMode, SearchParams};
use reqwest::StatusCode;

use crate::helpers::*;

/// The first `k` results, no filters.
fn top(k: usize) -> SearchParams {
    SearchParams {
        k: Some(k),
        ..Default::default()
    }
}

#[tokio::test]
async fn ingest_search_presign_filter_delete() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let products = products(40);
    let stored = ingest(&backend, ms.addr, &products).await;

    let stats = backend.client.stats().await.expect("stats");
    assert_eq!(stats.total, 40);
    assert_eq!(stats.by_dataset.get("fashion-product-images"), Some(&40));

    // Text search: k hits, each with a pre-signed URL that serves the exact image bytes.
    let page = backend
        .client
        .search_text("red summer dress", &top(10))
        .await
        .expect("text search");
    assert_eq!(page.hits.len(), 10);
    assert_eq!(
        page.embedded_text.as_deref(),
        Some("a photo of red summer dress")
    );
    assert!(
        page.hits.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted by score"
    );
    for hit in &page.hits {
        let bytes = reqwest::get(&hit.item.url)
            .await
            .expect("GET url")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(
            &bytes[..],
            &stored[&hit.item.id][..],
            "pre-signed URL serves the image"
        );
    }

    // A tampered URL and an expired one are refused by the S3 server.
    let url = &page.hits[0].item.url;
    // Flip one hex digit of the signature, keeping its length.
    let sig_at = url.find("X-Amz-Signature=").expect("signed URL") + "X-Amz-Signature=".len();
    let mut tampered = url.clone();
    let flipped = if &url[sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    assert_eq!(
        reqwest::get(&tampered).await.expect("GET").status(),
        StatusCode::FORBIDDEN
    );
    let other_key = url.replacen("/images/", "/images/x", 1);
    assert_eq!(
        reqwest::get(&other_key).await.expect("GET").status(),
        StatusCode::FORBIDDEN
    );
    // Signatures count whole seconds: 3 s leaves a busy machine time for the first GET.
    let expiring = backend
        .engine
        .store()
        .presign_for(&page.hits[0].item.s3_key, Duration::from_secs(3))
        .expect("presign");
    assert_eq!(
        reqwest::get(&expiring).await.expect("GET").status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(
        reqwest::get(&expiring).await.expect("GET").status(),
        StatusCode::FORBIDDEN
    );

    // Image search: the photo itself comes first; "more like this" leaves it out.
    let first = &products[0];
    let by_image = backend
        .client
        .search_image(std::fs::read(&first.photo).expect("photo"), &top(5))
        .await
        .expect("image search");
    assert_eq!(by_image.hits[0].item.id, point_id(first));
    assert!(by_image.hits[0].score > 0.999);
    let similar = backend
        .client
        .similar(point_id(first), &top(5))
        .await
        .expect("similar");
    assert_eq!(similar.hits.len(), 5);
    assert!(similar.hits.iter().all(|h| h.item.id != point_id(first)));
    assert_eq!(similar.hits[0].item.id, by_image.hits[1].item.id);
    // A like list of one is "more like this" by the same vector (normalised again, so near
    // ties may swap): the same five.
    let liked = backend
        .client
        .recommend(&[point_id(first)], &[], &top(5))
        .await
        .expect("recommend");
    let sorted = |r: &backend_api::SearchResponse| {
        let mut ids: Vec<_> = r.hits.iter().map(|h| h.item.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&liked), sorted(&similar));

    // Filters restrict results to matching payloads.
    let facets = backend.client.facets().await.expect("facets");
    let genders = &facets.facets["gender"];
    assert!(genders.len() >= 2, "{genders:?}");
    let gender = genders[0].value.clone();
    let filtered = backend
        .client
        .search_text(
            "shirt",
            &SearchParams {
                filters: Filters {
                    gender: Some(gender.clone()),
                    ..Filters::default()
                },
                ..top(40)
            },
        )
        .await
        .expect("filtered");
    assert_eq!(filtered.hits.len() as u64, genders[0].count);
    assert!(
        filtered
            .hits
            .iter()
            .all(|h| h.item.attributes.gender.as_deref() == Some(gender.as_str()))
    );
    // Every indexed field filters, season and usage too.
    let season = &facets.facets["season"][0];
    let by_season = backend
        .client
        .search_text(
            "shirt",
            &SearchParams {
                filters: Filters {
                    season: Some(season.value.clone()),
                    ..Filters::default()
                },
                ..top(40)
            },
        )
        .await
        .expect("filtered by season");
    assert_eq!(by_season.hits.len() as u64, season.count);
    let usage = &facets.facets["usage"][0];
    let listed = backend
        .client
        .list_images(
            0,
            40,
            &Filters {
                usage: Some(usage.value.clone()),
                ..Filters::default()
            },
        )
        .await
        .expect("listed by usage");
    assert_eq!(listed.total, usage.count);
    // The floor is on cosine similarity: by meaning alone, every hit is above it (a rounding's
    // width below the fifth score, which the index may compute a hair differently).
    let by_meaning = backend
        .client
        .search_text_as("shirt", SearchMode::Vector, &top(40))
        .await
        .expect("by meaning");
    let floor = by_meaning.hits[4].score - 1e-5;
    let min = backend
        .client
        .search_text_as(
            "shirt",
            SearchMode::Vector,
            &SearchParams {
                min_score: Some(floor),
                ..top(40)
            },
        )
        .await
        .expect("min score");
    assert!(
        min.hits.len() >= 5 && min.hits.len() < 40,
        "{}",
        min.hits.len()
    );
    assert!(min.hits.iter().all(|h| h.score >= floor));

    // Pagination is stable: two pages are disjoint and equal the first 20 of one page of 20.
    let p1 = backend
        .client
        .search_text("shirt", &top(10))
        .await
        .expect("p1");
    let p2 = backend
        .client
        .search_text(
            "shirt",
            &SearchParams {
                offset: Some(10),
                ..top(10)
            },
        )
        .await
        .expect("p2");
    let all = backend
        .client
        .search_text("shirt", &top(20))
        .await
        .expect("all");
    let ids = |hits: &[backend_api::SearchHit]| hits.iter().map(|h| h.item.id).collect::<Vec<_>>();
    assert_eq!([ids(&p1.hits), ids(&p2.hits)].concat(), ids(&all.hits));
    let l1 = backend
        .client
        .list_images(0, 15, &Filters::default())
        .await
        .expect("list");
    let l2 = backend
        .client
        .list_images(15, 30, &Filters::default())
        .await
        .expect("list");
    assert_eq!(l1.total, 40);
    let listed: HashSet<_> = l1.items.iter().chain(&l2.items).map(|i| i.id).collect();
    assert_eq!(listed.len(), 40, "every image once across pages");

    // Get, delete, gone.
    let item = backend
        .client
        .get_image(point_id(first))
        .await
        .expect("get");
    assert_eq!(item.attributes.caption, first.attributes.caption);
    backend
        .client
        .delete_image(point_id(first))
        .await
        .expect("delete");
    let gone = backend
        .client
        .get_image(point_id(first))
        .await
        .expect_err("deleted");
    assert!(
        matches!(gone, ClientError::Rejected { status: 404, .. }),
        "{gone}"
    );
    assert_eq!(backend.client.stats().await.expect("stats").total, 39);
    assert_eq!(
        reqwest::get(&item.url).await.expect("GET").status(),
        StatusCode::NOT_FOUND,
        "object removed"
    );
    let again = backend
        .client
        .search_image(
            std::fs::read(&first.photo).expect("photo"),
            &SearchParams::default(),
        )
        .await
        .expect("search");
    assert!(again.hits.iter().all(|h| h.item.id != point_id(first)));

    // Every declared metric is exported after this traffic.
    let metrics = backend.metrics().await;
    for name in [
        "backend_search_stage_seconds",
        "backend_searches_total",
        "backend_search_outcomes_total",
        "backend_query_cache_total",
        "backend_index_points",
        "backend_ingested_items_total",
        "backend_index_operation_seconds",
        "backend_model_breaker_open",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} missing"
        );
    }
    // Shopper signals: every kind and outcome exists from the start; this traffic's text, image
    // and "more like this" searches all found something.
    let count = |kind: &str, outcome: &str| -> f64 {
        let series =
            format!("backend_search_outcomes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    for kind in backend::metrics::SEARCH_KINDS {
        for outcome in backend::metrics::SEARCH_OUTCOMES {
            count(kind, outcome);
        }
        assert!(count(kind, "hits") >= 1.0, "{kind} searches with hits");
    }
    for stage in ["encode", "index_search", "presign", "total"] {
        assert!(
            metrics.contains(&format!(
                "backend_search_stage_seconds_count{{stage=\"{stage}\"}}"
            )),
            "{stage}"
        );
    }
    for upstream in backend::metrics::UPSTREAMS {
        assert!(
            metrics.contains(&format!(
                "backend_upstream_errors_total{{upstream=\"{upstream}\"}}"
            )),
            "error series for {upstream} exists before any error"
        );
    }
    assert!(
        metrics.contains(r#"backend_query_cache_total{result="hit"}"#),
        "repeated query served from cache"
    );
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    ingest(&backend, ms.addr, &products(6)).await;
    let get = |path: &str| backend.http.get(backend.url(path)).send();
    let cases: Vec<(&str, StatusCode, &str)> = vec![
        ("/v1/search?q=", StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/search", StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "/v1/search?q=dress&k=0",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/search?q=dress&k=100000",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/search?q=dress&k=-1",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/search?q=dress&offset=995",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/search?q=dress&gender=Martian",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/search?q=dress&colr=Red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/search?q=dress&min_score=7",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Over 1 as given, though 1.0 once it is an f32 (schemathesis found it accepted).
        (
            "/v1/images/00000000-0000-0000-0000-000000000001/similar?min_score=1.0000000000000002",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/images/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/images/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/images/00000000-0000-0000-0000-000000000000/similar",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/images?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("/nope", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, got_code, _) = error_of(get(path).await.expect("send")).await;
        assert_eq!((got, got_code.as_str()), (status, code), "{path}");
    }
    // An unknown key is refused with the allowed keys named.
    let response = get("/v1/images/00000000-0000-0000-0000-000000000000/similar?colr=Red")
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: ErrorBody = response.json().await.expect("JSON error body");
    assert_eq!(body.error.code, "invalid_query");
    let message = body.error.message;
    for key in ["\"colr\"", "k", "offset", "min_score"]
        .into_iter()
        .chain(Filters::FIELDS.iter().copied())
    {
        assert!(message.contains(key), "{key} not in {message}");
    }
    let long = format!("/v1/search?q={}", "a".repeat(600));
    assert_eq!(
        error_of(get(&long).await.expect("send")).await.0,
        StatusCode::BAD_REQUEST
    );

    // Uploads: not an image, oversized.
    let upload = |bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("q"),
        );
        backend
            .http
            .post(backend.url("/v1/search/image"))
            .multipart(form)
            .send()
    };
    let (status, code, _) = error_of(
        upload(b"%PDF-1.7 definitely not an image".to_vec())
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image")
    );
    let (status, code, _) = error_of(upload(vec![0xFF; 3 << 20]).await.expect("send")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (status, code, _) = error_of(
        backend
            .http
            .post(backend.url("/v1/search/image"))
            .body("raw")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    // Writes: key missing or wrong → 401; malformed JSON → 400; wrong dimension → 400.
    let batch = |key: Option<&str>, body: &str| {
        let mut request = backend
            .http
            .post(backend.url("/v1/images:batch"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let item = |dims: usize| {
        serde_json::json!({"items": [{
            "id": "6f0c2a52-5d43-4a7c-9d1e-000000000001", "vector": vec![0.1f32; dims],
            "s3_key": "images/x.jpg", "dataset": "test"
        }]})
        .to_string()
    };
    let cases: Vec<(Option<&str>, String, StatusCode, &str)> = vec![
        (None, item(32), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("wrong-key-wrong-key"),
            item(32),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Some(API_KEY),
            "{\"items\": [".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Some(API_KEY),
            "{\"items\": []}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some(API_KEY),
            item(31),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some(API_KEY),
            item(0),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got, got_code, _) = error_of(batch(key, &body).await.expect("send")).await;
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{key:?} {}",
            &body[..body.len().min(40)]
        );
    }
    let delete = backend
        .http
        .delete(backend.url(&format!("/v1/images/{}", point_id(&products(1)[0]))))
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(delete).await.0, StatusCode::UNAUTHORIZED);
    let post_json = backend
        .http
        .post(backend.url("/search-image"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(post_json).await.0, StatusCode::BAD_REQUEST);

    // The reference-design endpoint answers the text form, and the docs are served.
    let reference = backend
        .http
        .post(backend.url("/search-image"))
        .json(&serde_json::json!({"text": "white shirt", "k": 3}))
        .send()
        .await
        .expect("send");
    assert_eq!(reference.status(), StatusCode::OK);
    let body: backend_api::SearchResponse = reference.json().await.expect("json");
    assert_eq!(body.hits.len(), 3);
    let spec: serde_json::Value = get("/openapi.json")
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    assert!(spec["paths"]["/v1/search"].is_object());
    // The docs page and everything it loads come from the backend itself (no CDN), and it
    // shows this service's OpenAPI document.
    let docs = get("/docs").await.expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("://"),
        "the docs page loads nothing from elsewhere:\n{html}"
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let response = get(&format!("/docs/{asset}")).await.expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let text = response.text().await.expect("text");
        assert!(text.len() > 100, "{asset} is empty");
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/openapi.json"), "{text}");
        }
    }
    assert_eq!(
        backend.client.stats().await.expect("stats").total,
        6,
        "nothing was written by bad requests"
    );
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}
