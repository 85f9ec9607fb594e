//! One shopper's search is one trace: the frontend's request span is the parent of the backend's,
//! whose call to model-serving continues the same trace, across real processes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use telemetry::testing::{Span, otlp_receiver};
use tower::ServiceExt;

use crate::helpers::Stack;

#[test]
fn a_search_is_one_trace_from_the_frontend_to_model_serving() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (receiver, mut spans) = runtime.block_on(otlp_receiver()).expect("receiver");
    let endpoint = format!("http://{receiver}");
    // The frontend runs in this process; telemetry is installed outside the runtime, as the
    // binaries do. The backend and model-serving export to the same receiver.
    let guard = Arc::new(
        telemetry::init_with(
            frontend::SERVICE,
            telemetry::TelemetryConfig {
                filter: "info".into(),
                json: true,
                otlp_endpoint: Some(endpoint.clone()),
            },
        )
        .expect("telemetry"),
    );
    let flush = guard.clone();
    let collected: Vec<(String, Span)> = runtime.block_on(async move {
        let stack = Stack::start_with(
            4,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
        .await;
        let app =
            frontend::router(&frontend::FrontendConfig::new(stack.backend_url())).expect("router");
        let response = app
            .oneshot(
                Request::get("/?q=red+summer+dress")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("page");
        assert_eq!(response.status(), 200);
        tokio::task::spawn_blocking(move || flush.flush())
            .await
            .expect("flush");
        let mut collected: Vec<(String, Span)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(span)) = tokio::time::timeout_at(deadline, spans.recv()).await {
            collected.push(span);
            let has = |name: &str| collected.iter().any(|(_, s)| s.name == name);
            if has("GET /") && has("GET /v1/search") && has("POST /encode_text") {
                break;
            }
        }
        drop(stack);
        collected
    });
    let find = |service: &str, name: &str| {
        collected
            .iter()
            .find(|(svc, s)| svc == service && s.name == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no {name} span from {service}"))
    };
    let page = find("frontend", "GET /");
    let search = find("backend", "GET /v1/search");
    let encode = find("model-serving", "POST /encode_text");
    assert_eq!(
        search.trace_id, page.trace_id,
        "the backend continues the page's trace"
    );
    assert_eq!(
        search.parent_span_id, page.span_id,
        "the backend's span is the page's child"
    );
    assert_eq!(
        encode.trace_id, page.trace_id,
        "model-serving continues the same trace"
    );
    drop(runtime);
}
