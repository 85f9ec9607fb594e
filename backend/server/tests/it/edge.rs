//! The backend's edge against the real stack: readiness that follows model-serving, rate limits
//! per client on searches and per key on writes.

use std::net::IpAddr;
use std::time::Duration;

use backend::config::EdgeConfig;

use crate::helpers::{self, API_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_model_serving() {
    let model = helpers::start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let model_addr = model.addr;
    let data = tempfile::tempdir().expect("tempdir");
    let config = backend::config::BackendConfig {
        edge: EdgeConfig {
            ready_probe_interval_ms: 200,
            ..EdgeConfig::without_rate_limits()
        },
        ..helpers::config(data.path(), model_addr)
    };
    let backend = helpers::start_backend(&config).await.expect("backend");
    let http = reqwest::Client::new();

    let body = helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(5)).await;
    for check in ["index", "storage", "model_serving"] {
        assert_eq!(body["checks"][check]["status"], "ready", "{body}");
    }

    model.stop().await.expect("model-serving stops");
    let body = helpers::wait_for_ready(backend.addr, 503, Duration::from_secs(5)).await;
    assert_eq!(body["checks"]["model_serving"]["status"], "not_ready");
    assert_eq!(body["checks"]["index"]["status"], "ready");
    assert_eq!(body["checks"]["storage"]["status"], "ready");
    // Liveness does not follow dependencies.
    let live = http
        .get(backend.url("/health/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);

    // Back on the same address: ready again.
    let model = helpers::start_model_serving(model_addr).await;
    helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(10)).await;

    backend.stop().await;
    model.stop().await.expect("model-serving stops");
}

fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_are_limited_per_client_and_writes_per_key() {
    let model = helpers::start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = backend::config::BackendConfig {
        edge: EdgeConfig {
            search_rate_per_sec: 1,
            search_rate_burst: 3,
            write_rate_per_sec: 1,
            write_rate_burst: 2,
            ..EdgeConfig::default()
        },
        ..helpers::config(data.path(), model.addr)
    };
    let backend = helpers::start_backend(&config).await.expect("backend");
    let search = backend.url("/v1/search?q=red%20dress");

    let shopper = client_from("127.0.0.1");
    for _ in 0..3 {
        let ok = shopper.get(&search).send().await.expect("search");
        assert_eq!(ok.status(), 200);
    }
    let refused = shopper.get(&search).send().await.expect("search");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Similar-image search shares the budget; reads that do not search do not.
    let similar = shopper
        .get(backend.url(&format!("/v1/images/{}/similar", uuid::Uuid::nil())))
        .send()
        .await
        .expect("similar");
    assert_eq!(similar.status(), 429);
    let stats = shopper
        .get(backend.url("/v1/stats"))
        .send()
        .await
        .expect("stats");
    assert_eq!(stats.status(), 200);
    // Another client is unaffected.
    let other = client_from("127.0.0.2")
        .get(&search)
        .send()
        .await
        .expect("search");
    assert_eq!(other.status(), 200);

    // Writes: the key's budget, whatever the answer (an unknown id is 404).
    let http = reqwest::Client::new();
    let delete = |key: &'static str| {
        http.delete(backend.url(&format!("/v1/images/{}", uuid::Uuid::new_v4())))
            .header("x-api-key", key)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(delete(API_KEY).await.expect("delete").status(), 404);
    }
    let refused = delete(API_KEY).await.expect("delete");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Another key has its own budget (and, being wrong, is refused for what it is).
    assert_eq!(
        delete("another-key-0123456789")
            .await
            .expect("delete")
            .status(),
        401
    );

    backend.stop().await;
    model.stop().await.expect("model-serving stops");
}

/// Object storage outside the backend (the production form: an external S3 endpoint, here the
/// in-process S3 server run on its own): readiness turns 503 `storage` while it is down and
/// comes back when it does, while the other checks stay ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_external_storage() {
    use backend::embedded_s3::EmbeddedS3;
    let (access, secret) = ("readiness-access", "readiness-secret-0123456789");
    let objects = tempfile::tempdir().expect("tempdir");
    let s3_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind S3");
    let s3_addr = s3_listener.local_addr().expect("S3 addr");
    let s3 = EmbeddedS3::start(s3_listener, objects.path(), access, secret).expect("S3 starts");

    let model = helpers::start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = backend::config::BackendConfig {
        s3_endpoint: Some(format!("http://{s3_addr}")),
        s3_access_key: Some(access.to_owned().into()),
        s3_secret_key: Some(secret.to_owned().into()),
        edge: EdgeConfig {
            ready_probe_interval_ms: 200,
            ..EdgeConfig::without_rate_limits()
        },
        ..helpers::config(data.path(), model.addr)
    };
    let backend = helpers::start_backend(&config).await.expect("backend");
    let body = helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(5)).await;
    assert_eq!(body["checks"]["storage"]["status"], "ready", "{body}");

    s3.stop().await;
    let body = helpers::wait_for_ready(backend.addr, 503, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["storage"]["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["index"]["status"], "ready", "{body}");
    assert_eq!(body["checks"]["model_serving"]["status"], "ready", "{body}");

    // The same endpoint back, with the same objects: ready again.
    let s3_listener = tokio::net::TcpListener::bind(s3_addr)
        .await
        .expect("rebind S3");
    let s3 = EmbeddedS3::start(s3_listener, objects.path(), access, secret).expect("S3 restarts");
    helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(10)).await;

    backend.stop().await;
    s3.stop().await;
    model.stop().await.expect("model-serving stops");
}
