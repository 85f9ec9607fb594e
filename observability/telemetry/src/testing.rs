//! A stand-in OTLP/HTTP collector for tests (feature `testing`): it decodes every protobuf export
//! and forwards the spans, so a test can check trace ids and parent links across services.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

/// Starts the receiver on a free loopback port; point `OTEL_EXPORTER_OTLP_ENDPOINT` at
/// `http://{addr}`. Each span arrives with its resource's `service.name`.
pub async fn otlp_receiver()
-> std::io::Result<(SocketAddr, mpsc::UnboundedReceiver<(String, Span)>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, rx))
}

async fn export(
    State(tx): State<mpsc::UnboundedSender<(String, Span)>>,
    body: Bytes,
) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| string_value(kv.value.as_ref()))
            .unwrap_or_default()
            .to_owned();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let _ = tx.send((service.clone(), span));
            }
        }
    }
    axum::http::StatusCode::OK
}

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<&str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// A span's string attribute.
pub fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    string_value(
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()),
    )
}

/// Trace and span ids as the logs and `traceparent` write them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
