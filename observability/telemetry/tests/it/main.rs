//! Integration tests: trace continuation across two in-process services, checked against a
//! local OTLP/HTTP receiver; request metrics in `/metrics`.
//!
//! Each test installs process-wide telemetry, so each runs in its own process (cargo nextest).

mod ops;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Router, middleware};
use telemetry::testing::{attribute, hex, otlp_receiver};
use telemetry::{Readiness, TelemetryConfig, http::track_requests, ops_router};
use tokio::net::TcpListener;

/// `GET http://{addr}{path}`, which must be answered.
async fn fetch(client: &reqwest::Client, addr: SocketAddr, path: &str) -> reqwest::Response {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

#[test]
fn trace_continues_across_two_services() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (receiver, mut spans) = runtime.block_on(otlp_receiver()).expect("receiver");

    // Telemetry is installed outside the runtime, as the binaries do.
    let guard = Arc::new(
        telemetry::init_with(
            "telemetry-it",
            TelemetryConfig {
                filter: "info".into(),
                json: true,
                otlp_endpoint: Some(format!("http://{receiver}")),
            },
        )
        .expect("telemetry init"),
    );
    assert!(guard.exporting());

    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_parent = "00f067aa0ba902b7";
    let flush = guard.clone();
    let (root, leaf) = runtime.block_on(async move {
        let leaf = Router::new()
            .route("/leaf/{item}", get(|| async { "leaf" }))
            .layer(middleware::from_fn_with_state("leaf", track_requests));
        let leaf_addr = serve(leaf).await;

        let client = reqwest::Client::new();
        let root = Router::new()
            .route(
                "/root",
                get(move || {
                    let client = client.clone();
                    async move {
                        let request = client.get(format!("http://{leaf_addr}/leaf/42"));
                        http_edge::client::inject(request)
                            .send()
                            .await
                            .expect("leaf call")
                            .text()
                            .await
                            .expect("leaf body")
                    }
                }),
            )
            .layer(middleware::from_fn_with_state("root", track_requests));
        let root_addr = serve(root).await;

        let body = reqwest::Client::new()
            .get(format!("http://{root_addr}/root"))
            .header(
                "traceparent",
                format!("00-{incoming_trace}-{incoming_parent}-01"),
            )
            .send()
            .await
            .expect("root call")
            .text()
            .await
            .expect("root body");
        assert_eq!(body, "leaf");

        tokio::task::spawn_blocking(move || flush.flush())
            .await
            .expect("flush");
        let mut root_span = None;
        let mut leaf_span = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while root_span.is_none() || leaf_span.is_none() {
            let (_, span) = tokio::time::timeout_at(deadline, spans.recv())
                .await
                .expect("both spans exported within 10 s")
                .expect("receiver open");
            match attribute(&span, "http.route") {
                Some("/root") => root_span = Some(span),
                Some("/leaf/{item}") => leaf_span = Some(span),
                _ => {}
            }
        }
        (root_span.expect("root"), leaf_span.expect("leaf"))
    });

    // The incoming traceparent is continued by the first service ...
    assert_eq!(hex(&root.trace_id), incoming_trace);
    assert_eq!(hex(&root.parent_span_id), incoming_parent);
    // ... and the second service's span is the first one's child in the same trace.
    assert_eq!(leaf.trace_id, root.trace_id);
    assert_eq!(leaf.parent_span_id, root.span_id);
    assert_ne!(leaf.span_id, root.span_id);
    // Semantic-convention attributes, with the route template rather than the raw path.
    assert_eq!(attribute(&root, "http.request.method"), Some("GET"));
    assert_eq!(attribute(&leaf, "url.path"), Some("/leaf/42"));
    assert_eq!(root.name, "GET /root");
    assert_eq!(root.kind, 2, "server span kind");
    drop(runtime);
}

#[test]
fn declared_metrics_appear_after_a_request() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let handle = telemetry::install_metrics("metrics-it").expect("metrics");
    runtime.block_on(async move {
        let readiness = Readiness::new();
        readiness.set_not_ready("model", "loading");
        let app = Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .merge(ops_router(handle, readiness.clone()))
            .layer(middleware::from_fn_with_state("metrics-it", track_requests));
        let addr = serve(app).await;
        let client = reqwest::Client::new();

        let ready = fetch(&client, addr, "/health/ready").await;
        assert_eq!(ready.status(), 503, "not ready while a check fails");
        readiness.set_ready("model");
        let ready = fetch(&client, addr, "/health/ready").await;
        assert_eq!(ready.status(), 200);

        for path in ["/items/1", "/items/2", "/nope"] {
            fetch(&client, addr, path).await;
        }
        let text = fetch(&client, addr, "/metrics")
            .await
            .text()
            .await
            .expect("metrics body");

        for declared in [
            "# HELP http_requests_total ",
            "# TYPE http_requests_total counter",
            "# HELP http_request_duration_seconds ",
            "# TYPE http_request_duration_seconds histogram",
            "# HELP http_requests_in_flight ",
            "# HELP build_info ",
        ] {
            assert!(text.contains(declared), "missing {declared:?} in:\n{text}");
        }
        // Route templates, never raw paths; unmatched requests share one label value.
        let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
        let items = line(r#"http_requests_total{service="metrics-it",method="GET",route="/items/{id}",status="2xx"}"#)
            .expect("items counter");
        assert!(items.ends_with(" 2"), "{items}");
        assert!(line(r#"route="unmatched",status="4xx""#).is_some());
        assert!(!text.contains("/items/1"));
        assert!(line(r#"http_request_duration_seconds_bucket{service="metrics-it",method="GET",route="/items/{id}",status="2xx",le="0.005"}"#).is_some());

        // Process metrics, read from /proc at the scrape: this test's own memory and CPU.
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
        };
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(text.contains("# HELP process_resident_memory_bytes "));
        let rss = value("process_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 1e11, "resident memory {rss} bytes");
        // A counter, so whole seconds (metrics-rs counters are integers): present, maybe still 0.
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 2.0);
    });
}
