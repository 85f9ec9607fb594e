//! A handler panic becomes a 500 (the connection survives), logged once with its message.

use std::any::Any;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;

use crate::ErrorResponse;

/// The layer that catches panics and answers the shared JSON error body (500 `internal`).
pub fn catch_panic() -> CatchPanicLayer<PanicResponse> {
    catch_panic_with(|| ErrorResponse::internal().into_response())
}

/// The same, with the service's own answer (the shop renders an HTML page).
pub fn catch_panic_with(
    render: impl Fn() -> Response + Send + Sync + 'static,
) -> CatchPanicLayer<PanicResponse> {
    CatchPanicLayer::custom(PanicResponse(Arc::new(render)))
}

/// What [`catch_panic`] answers with: the service's response, after logging the panic.
#[derive(Clone)]
pub struct PanicResponse(Arc<dyn Fn() -> Response + Send + Sync>);

impl tower_http::catch_panic::ResponseForPanic for PanicResponse {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(
        &mut self,
        payload: Box<dyn Any + Send + 'static>,
    ) -> http::Response<Self::ResponseBody> {
        tracing::error!(panic = %message(payload.as_ref()), "handler panicked");
        (self.0)()
    }
}

fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_error_body() {
        #[allow(clippy::unreachable)]
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = Router::new().route("/", get(boom)).layer(catch_panic());
        let response = app
            .oneshot(Request::get("/").body(Body::empty()).expect("request"))
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["error"]["code"], "internal");
    }
}
