//! The operators' query summary (`BACKEND_QUERY_SUMMARY`, `GET /v1/admin/queries`): off by
//! default, behind the write key, normalised and bounded, and never a metric label.

use backend_api::QuerySummaryResponse;
use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn top_and_zero_result_queries_behind_the_write_key() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let on = backend::config::BackendConfig {
        query_summary: true,
        ..config(data.path(), ms.addr)
    };
    let backend = start_backend(&on).await.expect("backend");
    let summary_url = backend.url("/v1/admin/queries");
    let summary = |query: &'static str| {
        backend
            .http
            .get(format!("{summary_url}{query}"))
            .header("x-api-key", API_KEY)
            .send()
    };

    // Without the key, or with another: refused before anything is read.
    let anonymous = backend.http.get(&summary_url).send().await.expect("send");
    assert_eq!(error_of(anonymous).await.0, StatusCode::UNAUTHORIZED);
    let wrong = backend
        .http
        .get(&summary_url)
        .header("x-api-key", "not-the-key")
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(wrong).await.0, StatusCode::UNAUTHORIZED);

    // On an empty catalogue a search finds nothing.
    let search = |q: &str, extra: &str| {
        backend
            .http
            .get(backend.url(&format!("/v1/search?q={q}{extra}")))
            .send()
    };
    assert!(
        search("nothing+yet", "")
            .await
            .expect("search")
            .status()
            .is_success()
    );
    ingest(&backend, ms.addr, &products(12)).await;
    for q in ["Red+Dress", "red++dress", "RED+DRESS+", "blue+jeans"] {
        assert!(search(q, "").await.expect("search").status().is_success());
    }
    // A second page is the same question asked once; a refused query is not counted.
    assert!(
        search("red+dress", "&offset=4")
            .await
            .expect("search")
            .status()
            .is_success()
    );
    assert_eq!(
        search("", "").await.expect("search").status(),
        StatusCode::BAD_REQUEST
    );
    let long = "x".repeat(300);
    assert!(
        search(&long, "")
            .await
            .expect("search")
            .status()
            .is_success()
    );

    let got: QuerySummaryResponse = summary("")
        .await
        .expect("summary")
        .error_for_status()
        .expect("200")
        .json()
        .await
        .expect("json");
    assert_eq!((got.searches, got.distinct, got.not_kept), (6, 4, 0));
    assert_eq!(got.top[0].query, "red dress");
    assert_eq!(got.top[0].searches, 3);
    assert_eq!(got.zero_results.len(), 1);
    assert_eq!(got.zero_results[0].query, "nothing yet");
    let cut = got
        .top
        .iter()
        .find(|q| q.query.starts_with("xxx"))
        .expect("the long query, cut");
    assert_eq!(
        cut.query.chars().count(),
        backend_api::MAX_SUMMARY_QUERY_CHARS
    );
    let one: QuerySummaryResponse = summary("?limit=1")
        .await
        .expect("summary")
        .json()
        .await
        .expect("json");
    assert_eq!(one.top.len(), 1);
    for bad in ["?limit=0", "?limit=501", "?limit=many", "?q=red"] {
        let (status, code, _) = error_of(summary(bad).await.expect("send")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {code}");
    }
    // What shoppers typed is never a metric label.
    let metrics = backend.metrics().await;
    assert!(!metrics.contains("red dress") && !metrics.contains("nothing yet"));
    backend.stop().await;

    // Off (the default): a clear 404, and nothing is kept.
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let off = backend
        .http
        .get(backend.url("/v1/admin/queries"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(off).await.0, StatusCode::NOT_FOUND);
    backend.stop().await;
    ms.stop().await.expect("model-serving stops");
}
