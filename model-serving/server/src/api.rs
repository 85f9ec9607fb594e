//! HTTP: extract, call the engine, map. Every error is `{"error": {"code", "message"}}`; the
//! mapping from engine errors to statuses lives in [`ApiError::into_response`] alone.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use base64::Engine as _;
use bytes::Bytes;
use http_edge::reject::{self, JsonOrMultipart};
use http_edge::{EdgeLimits, ErrorResponse};
use model_serving_api::{EmbeddingsResponse, EncodeImageRequest, EncodeTextRequest, ModelInfo};
use telemetry::PrometheusHandle;
use telemetry::Readiness;

use crate::batcher::BatchError;
use crate::encoder::{ClipEncoder, EncodeError};
use crate::preprocess::ImageError;

pub const SERVICE: &str = "model-serving";

#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Deadline for a whole request body from its head (408 beyond: slow uploads).
    pub body_timeout: Duration,
    /// Deadline for a request head (the connection is closed beyond).
    pub header_timeout: Duration,
    /// Encode requests handled at once; more are refused at once with 503. 0: unlimited.
    pub max_concurrent: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        let edge = EdgeLimits::new(Duration::from_secs(30));
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout: edge.request_timeout,
            body_timeout: edge.body_timeout,
            header_timeout: edge.header_timeout,
            max_concurrent: edge.max_concurrent,
        }
    }
}

impl HttpLimits {
    pub fn edge(&self) -> EdgeLimits {
        EdgeLimits {
            request_timeout: self.request_timeout,
            body_timeout: self.body_timeout,
            header_timeout: self.header_timeout,
            max_concurrent: self.max_concurrent,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub encoder: Arc<ClipEncoder>,
    pub limits: HttpLimits,
}

/// The whole service: encode endpoints, model info, metrics and health. The encode endpoints
/// sit behind the shared edge limits ([`http_edge::protect`]); metrics and health do not,
/// so they answer while the encoders are saturated.
pub fn router(state: AppState, metrics: PrometheusHandle, readiness: Readiness) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let edge = state.limits.edge();
    let api = Router::new()
        .route("/encode_text", post(encode_text))
        .route("/encode_image", post(encode_image))
        .route("/v1/model", get(model_info))
        .with_state(state);
    Router::new()
        .merge(http_edge::protect(api, SERVICE, &edge))
        .merge(telemetry::ops_router(metrics, readiness))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(http_edge::panic::catch_panic())
        .layer(middleware::from_fn_with_state(
            SERVICE,
            telemetry::http::track_requests,
        ))
}

#[derive(Debug)]
pub enum ApiError {
    Encode(EncodeError),
    /// A malformed request, refused as the edge crate words it (rejections, bad fields).
    Request(ErrorResponse),
    NotFound,
}

impl From<EncodeError> for ApiError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

impl From<ErrorResponse> for ApiError {
    fn from(e: ErrorResponse) -> Self {
        Self::Request(e)
    }
}

/// The shared error body; every 503 carries `Retry-After: 1`.
fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    let error = ErrorResponse::new(status, code, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return error.retry_after(1).into_response();
    }
    error.into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use StatusCode as S;
        match self {
            ApiError::Encode(e) => {
                let kind = e.kind();
                match e {
                    EncodeError::Empty
                    | EncodeError::TooManyItems { .. }
                    | EncodeError::EmptyText { .. }
                    | EncodeError::TextTooLong { .. }
                    | EncodeError::Tokenize { .. } => {
                        error_response(S::BAD_REQUEST, kind, e.to_string())
                    }
                    EncodeError::RequestTooLarge { .. }
                    | EncodeError::Image {
                        source: ImageError::TooManyPixels { .. },
                        ..
                    } => error_response(S::PAYLOAD_TOO_LARGE, kind, e.to_string()),
                    EncodeError::Image {
                        source: ImageError::UnsupportedFormat | ImageError::Empty,
                        ..
                    } => error_response(S::UNSUPPORTED_MEDIA_TYPE, kind, e.to_string()),
                    EncodeError::Image { .. } => {
                        error_response(S::BAD_REQUEST, kind, e.to_string())
                    }
                    EncodeError::Batch(BatchError::Overloaded { .. }) => error_response(
                        S::SERVICE_UNAVAILABLE,
                        kind,
                        "the encoder is at capacity; retry shortly".into(),
                    ),
                    EncodeError::Batch(BatchError::Stopped(_)) => error_response(
                        S::SERVICE_UNAVAILABLE,
                        kind,
                        "the encoder is shutting down; retry shortly".into(),
                    ),
                    // The cause is logged by the batch worker; the body stays generic.
                    EncodeError::Batch(BatchError::Inference(_)) => error_response(
                        S::INTERNAL_SERVER_ERROR,
                        kind,
                        "the model failed to encode this input".into(),
                    ),
                }
            }
            ApiError::Request(error) => error.into_response(),
            ApiError::NotFound => error_response(S::NOT_FOUND, "not_found", "no such route".into()),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

fn embeddings(encoder: &ClipEncoder, embeddings: Vec<Vec<f32>>) -> Json<EmbeddingsResponse> {
    Json(EmbeddingsResponse {
        model: encoder.spec().name.clone(),
        fingerprint: encoder.fingerprint().to_owned(),
        dim: encoder.spec().embedding_dim,
        embeddings,
    })
}

async fn encode_text(
    State(state): State<AppState>,
    body: Result<Json<EncodeTextRequest>, JsonRejection>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let Json(request) = body.map_err(reject::json)?;
    // The request timeout is the edge's (`http_edge::protect`), for every route alike.
    let out = state.encoder.encode_texts(&request.texts).await?;
    Ok(embeddings(&state.encoder, out))
}

/// Multipart (any number of file fields) or JSON `{"images": [base64, ...]}`.
async fn encode_image(
    State(state): State<AppState>,
    body: JsonOrMultipart<EncodeImageRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let max_items = state.encoder.info().max_items_per_request;
    let images = match body {
        JsonOrMultipart::Multipart(multipart) => read_multipart(multipart, max_items).await?,
        JsonOrMultipart::Json(body) => decode_base64_images(body.images, max_items)?,
    };
    let out = state.encoder.encode_images(images).await?;
    Ok(embeddings(&state.encoder, out))
}

async fn read_multipart(
    mut multipart: Multipart,
    max_items: usize,
) -> Result<Vec<Bytes>, ApiError> {
    let mut images = Vec::new();
    // Parts of any kind are counted: thousands of tiny text parts cost parsing too.
    let max_parts = max_items.saturating_mul(2).max(8);
    let mut parts = 0usize;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(reject::multipart_field(e).into()),
        };
        parts += 1;
        if parts > max_parts {
            return Err(ErrorResponse::bad_request(
                "too_many_parts",
                format!("at most {max_parts} multipart parts per request"),
            )
            .into());
        }
        // Text fields (no file name and a text content type) are not images; skip them.
        if field.file_name().is_none()
            && field
                .content_type()
                .is_some_and(|ct| ct.starts_with("text/"))
        {
            continue;
        }
        if images.len() == max_items {
            return Err(EncodeError::TooManyItems {
                given: max_items + 1,
                max: max_items,
            }
            .into());
        }
        images.push(field.bytes().await.map_err(reject::multipart_field)?);
    }
    Ok(images)
}

fn decode_base64_images(images: Vec<String>, max_items: usize) -> Result<Vec<Bytes>, ApiError> {
    if images.len() > max_items {
        return Err(EncodeError::TooManyItems {
            given: images.len(),
            max: max_items,
        }
        .into());
    }
    let engine = base64::engine::general_purpose::STANDARD;
    images
        .iter()
        .enumerate()
        .map(|(index, text)| {
            // Accept data URLs: "data:image/png;base64,...."
            let payload = match text.split_once(";base64,") {
                Some((prefix, rest)) if prefix.starts_with("data:") => rest,
                _ => text.as_str(),
            };
            engine.decode(payload.trim()).map(Bytes::from).map_err(|e| {
                ErrorResponse::bad_request("invalid_base64", format!("image {index}: {e}")).into()
            })
        })
        .collect()
}

async fn model_info(State(state): State<AppState>) -> Json<ModelInfo> {
    Json(state.encoder.info())
}
