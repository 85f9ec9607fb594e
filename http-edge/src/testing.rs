//! Test helpers (feature `testing`): a router served on a loopback port, the two behaviours of a
//! file server that download code must cope with (answering `Range` requests, dropping a
//! connection mid-transfer), and waiting for a service's readiness to turn.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// Serves `app` on `127.0.0.1:0` for the rest of the test; returns its address.
pub async fn serve_local(app: axum::Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "test server stopped");
        }
    });
    Ok(addr)
}

/// The answer to a `Range: bytes=N-` request for `bytes` (206 with the rest, or 416 past the
/// end); `None` when the request asks for no range.
pub fn ranged(bytes: &[u8], headers: &HeaderMap) -> Option<Response> {
    let start = headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .trim_end_matches('-')
        .parse::<usize>()
        .ok()?;
    if start >= bytes.len() {
        return Some(StatusCode::RANGE_NOT_SATISFIABLE.into_response());
    }
    let range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
    Some(
        (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_RANGE, range)],
            bytes[start..].to_vec(),
        )
            .into_response(),
    )
}

/// A response that announces all of `bytes`, sends the first half, then drops the connection
/// (after a pause, so the half reaches the client first).
pub fn cut_halfway(bytes: &[u8]) -> Response {
    let half = bytes[..bytes.len() / 2].to_vec();
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
        futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(std::io::Error::other("connection reset"))
        }),
    );
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    response
}

/// Polls `http://{addr}/health/ready` until it answers `status`, and returns that answer's body;
/// panics (it is a test helper) when it has not within `within`.
pub async fn wait_for_ready(
    addr: std::net::SocketAddr,
    status: u16,
    within: Duration,
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + within;
    loop {
        let response = http
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
            .expect("/health/ready answers");
        let now = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON readiness body");
        if now == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/health/ready still {now} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
