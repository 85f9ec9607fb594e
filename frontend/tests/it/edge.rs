//! The frontend's edge on a real listener: per-client rate limits on the searching pages, and
//! readiness that follows the backend's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use frontend::FrontendConfig;
use http_edge::testing::wait_for_ready;
use tokio::net::TcpListener;

use crate::helpers::{Stack, free_addr};

async fn serve(config: FrontendConfig) -> SocketAddr {
    let app = frontend::router(&config).expect("router");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(frontend::serve_with(
        listener,
        app,
        config.edge_limits().header_timeout,
        std::future::pending(),
    ));
    addr
}

fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder()
        .local_address(ip)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_shopper_over_the_rate_gets_429_and_others_do_not() {
    // Nothing listens at the backend's address: the pages answer their friendly error, fast.
    let config = FrontendConfig {
        search_rate_per_sec: 1,
        search_rate_burst: 2,
        search_timeout_ms: 500,
        ..FrontendConfig::new(format!("http://{}", free_addr()))
    };
    let addr = serve(config).await;
    let shopper = client_from("127.0.0.1");
    let search = format!("http://{addr}/?q=red+dress");
    for _ in 0..2 {
        let page = shopper.get(&search).send().await.expect("page");
        assert_ne!(page.status(), 429);
    }
    let refused = shopper.get(&search).send().await.expect("page");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Similar-item pages share the budget; assets do not count.
    let similar = shopper
        .get(format!("http://{addr}/similar/{}", uuid::Uuid::nil()))
        .send()
        .await
        .expect("page");
    assert_eq!(similar.status(), 429);
    let css = shopper
        .get(format!("http://{addr}/static/app.css"))
        .send()
        .await
        .expect("css");
    assert_eq!(css.status(), 200);
    // Another shopper is unaffected.
    let other = client_from("127.0.0.2")
        .get(&search)
        .send()
        .await
        .expect("page");
    assert_ne!(other.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_backend() {
    let stack = Stack::start(1).await;
    let config = FrontendConfig {
        ready_probe_interval_ms: 200,
        ..FrontendConfig::new(stack.backend_url())
    };
    let addr = serve(config).await;
    let body = wait_for_ready(addr, 200, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["backend"]["status"], "ready");

    drop(stack);
    let body = wait_for_ready(addr, 503, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["backend"]["status"], "not_ready");
    assert_eq!(body["checks"]["backend"]["reason"], "backend unreachable");
    let live = reqwest::get(format!("http://{addr}/health/live"))
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
}

/// The frontend calls the backend on behalf of each shopper (`X-Forwarded-For`), so a backend
/// that trusts the frontend as a proxy limits searches per shopper: one fast shopper is refused
/// (429 with `Retry-After`, shown as a page), the next shopper is not. Without the header every
/// shopper would share the frontend's one budget at the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_limits_each_shopper_behind_the_frontend() {
    let stack = Stack::start_with(
        1,
        &[
            ("BACKEND_SEARCH_RATE_PER_SEC", "1".to_owned()),
            ("BACKEND_SEARCH_RATE_BURST", "3".to_owned()),
            // The frontend calls from 127.0.0.1 (the ETL too, but it never searches).
            ("BACKEND_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
        ],
    )
    .await;
    let config = FrontendConfig {
        search_rate_per_sec: 0,
        ..FrontendConfig::new(stack.backend_url())
    };
    let addr = serve(config).await;
    let search = format!("http://{addr}/?q=red+dress");

    let fast = client_from("127.0.0.2");
    let mut refused = None;
    for _ in 0..20 {
        let page = fast.get(&search).send().await.expect("page");
        if page.status() == 429 {
            refused = Some(page);
            break;
        }
        let status = page.status();
        assert_eq!(status, 200, "{}", page.text().await.unwrap_or_default());
    }
    let refused = refused.expect("the backend refuses the fast shopper's searches");
    assert!(refused.headers().contains_key("retry-after"));
    let html = refused.text().await.expect("html");
    assert!(html.contains("Too many searches"), "{html}");

    let other = client_from("127.0.0.3")
        .get(&search)
        .send()
        .await
        .expect("page");
    assert_eq!(other.status(), 200, "another shopper is not refused");
    drop(stack);
}
