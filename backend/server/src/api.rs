//! HTTP: extract, call the engine, map. Every error is `{"error": {"code", "message"}}`; engine
//! errors become statuses in [`ApiError::into_response`] alone. OpenAPI at `/openapi.json`,
//! interactive docs at `/docs`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use backend_api::{
    DeleteResponse, ErrorBody, ErrorDetail, ExistsRequest, ExistsResponse, FacetsResponse, Filters,
    ImageAttributes, ImageItem, IngestBatchRequest, IngestBatchResponse, ListResponse,
    SearchParams, SearchResponse, StatsResponse, TextQuery, TextSearchRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use telemetry::edge::EdgeLimits;
use telemetry::rate_limit::RateLimit;
use telemetry::{PrometheusHandle, Readiness};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::encoder::EncoderError;
use crate::fetch::{FetchError, ImageFetcher};
use crate::index::IndexError;
use crate::search::{SearchEngine, SearchError};
use crate::storage::StorageError;

pub const SERVICE: &str = "backend";

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<SearchEngine>,
    pub api_key: Option<Arc<SecretString>>,
    pub timeout: Duration,
    /// Add-by-URL downloads, under the rules of [`crate::fetch`].
    pub fetcher: Arc<ImageFetcher>,
    pub max_body_bytes: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "fashion search", description = "Text and image search over a fashion catalogue."),
    paths(
        search_text, search_image, search_reference, similar, get_image, delete_image,
        list_images, stats, facets, ingest_batch, exists, add_image
    ),
    components(schemas(
        SearchResponse, backend_api::SearchHit, ImageItem, ImageAttributes, ListResponse,
        StatsResponse, FacetsResponse, backend_api::FacetValue, IngestBatchRequest,
        backend_api::IngestItem, IngestBatchResponse, ExistsRequest, ExistsResponse, ErrorBody,
        ErrorDetail, TextSearchRequest, AddImageUrl, DeleteResponse
    )),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// What the edge admits ([`telemetry::edge`]): timeouts and load shedding on every API route,
/// rate limits per client on the searches and per API key on the writes.
#[derive(Clone)]
pub struct Edge {
    pub limits: EdgeLimits,
    pub per_client: RateLimit,
    pub per_key: RateLimit,
}

pub fn router(
    state: AppState,
    metrics: PrometheusHandle,
    readiness: Readiness,
    edge: &Edge,
) -> Router {
    let body_limit = state.max_body_bytes;
    // Writes check the key before anything reads the body (a 32 MiB batch is not parsed for
    // an anonymous caller).
    let writer = middleware::from_fn_with_state(state.clone(), require_write_key);
    let search = edge.per_client.layer();
    let write = edge.per_key.layer();
    let api = Router::new()
        .route(
            "/search-image",
            post(search_reference).route_layer(search.clone()),
        )
        .route("/v1/search", get(search_text).route_layer(search.clone()))
        .route(
            "/v1/search/image",
            post(search_image).route_layer(search.clone()),
        )
        .route(
            "/v1/images",
            get(list_images).merge(
                post(add_image)
                    .route_layer(writer.clone())
                    .route_layer(write.clone()),
            ),
        )
        .route(
            "/v1/images:batch",
            post(ingest_batch)
                .route_layer(writer.clone())
                .route_layer(write.clone()),
        )
        .route("/v1/images:exists", post(exists))
        .route(
            "/v1/images/{id}",
            get(get_image).merge(delete(delete_image).route_layer(writer).route_layer(write)),
        )
        .route("/v1/images/{id}/similar", get(similar).route_layer(search))
        .route("/v1/stats", get(stats))
        .route("/v1/facets", get(facets))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .with_state(state)
        // Swagger UI from the crate's vendored copy: the docs work on machines with no CDN access.
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json")),
        );
    Router::new()
        .merge(telemetry::edge::protect(api, SERVICE, &edge.limits))
        // Outside the edge limits: probes and scrapes answer while the API sheds load.
        .merge(telemetry::ops_router(metrics, readiness))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(middleware::from_fn_with_state(
            SERVICE,
            telemetry::http::track_requests,
        ))
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal.into_response()
}

#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        code: &'static str,
        message: String,
    },
    Unauthorized,
    WritesDisabled,
    NotFound(String),
    PayloadTooLarge(String),
    Unsupported(String),
    Conflict {
        code: &'static str,
        message: String,
    },
    Upstream {
        status: StatusCode,
        code: String,
        message: String,
    },
    Unavailable {
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    Internal,
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid(message) => Self::BadRequest {
                code: "invalid_request",
                message,
            },
            SearchError::NotFound(id) => Self::NotFound(format!("no image with id {id}")),
            SearchError::ObjectGone(key) => Self::Conflict {
                code: "object_missing",
                message: format!("object {key} was deleted meanwhile; store it again, then retry"),
            },
            SearchError::Encoder(EncoderError::Unavailable {
                message,
                retry_after,
            }) => {
                tracing::warn!(%message, "model-serving unavailable");
                Self::Unavailable {
                    code: "model_unavailable",
                    message: "the model service is unavailable; retry shortly".into(),
                    retry_after: retry_after.as_secs().max(1),
                }
            }
            SearchError::Encoder(EncoderError::Busy { retry_after }) => Self::Unavailable {
                code: "model_overloaded",
                message: "the model service is at capacity; retry after the delay given".into(),
                retry_after: retry_after.as_secs().max(1),
            },
            SearchError::Encoder(EncoderError::Rejected {
                status,
                code,
                message,
            }) => Self::Upstream {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                code,
                message,
            },
            SearchError::Index(IndexError::Dimension { expected, got }) => Self::BadRequest {
                code: "dimension_mismatch",
                message: format!("vector has {got} dimensions; the index holds {expected}"),
            },
            SearchError::Index(IndexError::Unavailable(message)) => {
                tracing::warn!(%message, "index unavailable");
                Self::Unavailable {
                    code: "index_unavailable",
                    message: "the index is unavailable; retry shortly".into(),
                    retry_after: 1,
                }
            }
            SearchError::Storage(StorageError::Unavailable(message)) => {
                tracing::warn!(%message, "object storage unavailable");
                Self::Unavailable {
                    code: "storage_unavailable",
                    message: "image storage is unavailable; retry shortly".into(),
                    retry_after: 1,
                }
            }
            SearchError::Index(IndexError::Internal(message)) => {
                tracing::error!(%message, "index error");
                Self::Internal
            }
            SearchError::Storage(error) => {
                tracing::error!(%error, "storage error");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, retry_after) = match self {
            Self::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code.to_owned(), message, None)
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized".into(),
                "a valid x-api-key header is required for writes".into(),
                None,
            ),
            Self::WritesDisabled => (
                StatusCode::FORBIDDEN,
                "writes_disabled".into(),
                "writes are disabled: the backend has no API_KEY configured".into(),
                None,
            ),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, "not_found".into(), message, None),
            Self::PayloadTooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large".into(),
                message,
                None,
            ),
            Self::Conflict { code, message } => {
                (StatusCode::CONFLICT, code.to_owned(), message, None)
            }
            Self::Unsupported(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type".into(),
                message,
                None,
            ),
            Self::Upstream {
                status,
                code,
                message,
            } => (status, code, message, None),
            Self::Unavailable {
                code,
                message,
                retry_after,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                code.to_owned(),
                message,
                Some(retry_after),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal".into(),
                "internal error".into(),
                None,
            ),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response();
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(rejection.body_text()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::Unsupported("expected Content-Type: application/json".into())
        }
        _ => ApiError::BadRequest {
            code: "invalid_json",
            message: rejection.body_text(),
        },
    }
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        message: rejection.body_text(),
    }
}

fn path_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::BadRequest {
        code: "invalid_id",
        message: "the image id must be a UUID".into(),
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(e.body_text())
    } else {
        ApiError::BadRequest {
            code: "invalid_multipart",
            message: e.body_text(),
        }
    }
}

/// Layer of the write routes: the key is checked before the handler, and so before the body is
/// read.
async fn require_write_key(
    State(state): State<AppState>,
    request: Request,
    next: middleware::Next,
) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Writes need the configured key, compared in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.api_key else {
        return Err(ApiError::WritesDisabled);
    };
    let given = headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// A route's query parameters. The keys are checked against the route's list before parsing, so a
/// misspelt filter is a 400 naming the allowed keys rather than a filter silently ignored.
pub struct Params<T>(pub T);

/// A route's query type: the keys it takes besides [`Filters::FIELDS`], and how it parses.
pub trait RouteQuery: Sized {
    const KEYS: &'static [&'static str];
    fn parse(uri: &Uri) -> Result<Self, QueryRejection>;
}

impl<S: Send + Sync, T: RouteQuery> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let known = |key: &str| T::KEYS.contains(&key) || Filters::FIELDS.contains(&key);
        if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| !known(k)) {
            let key: String = key.chars().take(40).collect();
            let allowed: Vec<&str> = T::KEYS.iter().chain(Filters::FIELDS).copied().collect();
            return Err(ApiError::BadRequest {
                code: "invalid_query",
                message: format!(
                    "unknown query parameter {key:?}; allowed: {}",
                    allowed.join(", ")
                ),
            });
        }
        T::parse(&parts.uri).map(Params).map_err(query_error)
    }
}

impl RouteQuery for SearchParams {
    const KEYS: &'static [&'static str] = SearchParams::KEYS;

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        Query::try_from_uri(uri).map(|Query(params)| params)
    }
}

/// `GET /v1/search`: the text and [`SearchParams`].
pub struct TextSearch {
    pub q: String,
    pub params: SearchParams,
}

impl RouteQuery for TextSearch {
    const KEYS: &'static [&'static str] = &["q", "k", "offset", "min_score"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        let Query(TextQuery { q }) = Query::try_from_uri(uri)?;
        Ok(Self {
            q: q.unwrap_or_default(),
            params: SearchParams::parse(uri)?,
        })
    }
}

/// `GET /v1/images` parameters (and the filters of [`Filters`]).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page (1..=100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Items to skip (default 0; limit + offset at most 1000).
    #[param(minimum = 0, maximum = 999)]
    offset: Option<usize>,
    #[serde(flatten)]
    #[param(ignore)]
    filters: Filters,
}

impl RouteQuery for ListQuery {
    const KEYS: &'static [&'static str] = &["limit", "offset"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        Query::try_from_uri(uri).map(|Query(list)| list)
    }
}

/// Text search with the model's prompt template.
#[utoipa::path(get, path = "/v1/search", params(TextQuery, SearchParams, Filters),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn search_text(
    State(state): State<AppState>,
    Params(TextSearch { q, params }): Params<TextSearch>,
) -> Result<Json<SearchResponse>, ApiError> {
    Ok(Json(state.engine.search_text(&q, &params).await?))
}

/// Most multipart parts read from one upload: the file and a few attributes. Parsing is work
/// too; 20,000 tiny parts took 11 s before this bound (`make hostile`).
const MAX_PARTS: usize = 32;

fn too_many_parts() -> ApiError {
    ApiError::BadRequest {
        code: "too_many_parts",
        message: format!("at most {MAX_PARTS} multipart parts per request"),
    }
}

async fn first_file(mut multipart: Multipart) -> Result<Vec<u8>, ApiError> {
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(too_many_parts());
        }
        if field.file_name().is_some() || field.name() == Some("file") {
            return Ok(field.bytes().await.map_err(multipart_error)?.to_vec());
        }
    }
    Err(ApiError::BadRequest {
        code: "missing_file",
        message: "send the image as a multipart file field named \"file\"".into(),
    })
}

/// Image search: a multipart upload (field `file`), same filters as text search.
#[utoipa::path(post, path = "/v1/search/image", params(SearchParams, Filters),
    request_body(content = inline(ImageUpload), content_type = "multipart/form-data"),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request body was not sent in time", body = ErrorBody),
        (status = 413, description = "body or image too large", body = ErrorBody),
        (status = 415, description = "wrong content type or not an image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn search_image(
    State(state): State<AppState>,
    Params(params): Params<SearchParams>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let multipart = multipart.map_err(|e| ApiError::Unsupported(e.body_text()))?;
    let image = first_file(multipart).await?;
    Ok(Json(state.engine.search_image(image, &params).await?))
}

/// The reference design's endpoint: JSON `{"text": ..., "k": ...}` or a multipart image.
#[utoipa::path(post, path = "/search-image", request_body(content(
        (TextSearchRequest = "application/json"),
        (inline(ImageUpload) = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request body was not sent in time", body = ErrorBody),
        (status = 413, description = "body or image too large", body = ErrorBody),
        (status = 415, description = "wrong content type or not an image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn search_reference(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<SearchResponse>, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_multipart",
                message: e.body_text(),
            })?;
        let image = first_file(multipart).await?;
        return Ok(Json(
            state
                .engine
                .search_image(image, &SearchParams::default())
                .await?,
        ));
    }
    let Json(body) = Json::<TextSearchRequest>::from_request(request, &state)
        .await
        .map_err(json_error)?;
    let params = SearchParams {
        k: body.k,
        ..Default::default()
    };
    Ok(Json(state.engine.search_text(&body.text, &params).await?))
}

/// More like this: the images nearest to an indexed one.
#[utoipa::path(get, path = "/v1/images/{id}/similar", params(("id" = Uuid, Path,), SearchParams, Filters),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 404, description = "no such image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn similar(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
    Params(params): Params<SearchParams>,
) -> Result<Json<SearchResponse>, ApiError> {
    let id = path_id(id)?;
    Ok(Json(state.engine.similar(id, &params).await?))
}

#[utoipa::path(get, path = "/v1/images/{id}", params(("id" = Uuid, Path,)),
    responses(
        (status = 200, body = ImageItem),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 404, description = "no such image", body = ErrorBody),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn get_image(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<ImageItem>, ApiError> {
    Ok(Json(state.engine.get(path_id(id)?).await?))
}

#[utoipa::path(delete, path = "/v1/images/{id}", params(("id" = Uuid, Path,)), security(("api_key" = [])),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "x-api-key missing or wrong", body = ErrorBody),
        (status = 403, description = "writes disabled (no API_KEY configured)", body = ErrorBody),
        (status = 404, description = "no such image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn delete_image(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let id = path_id(id)?;
    state.engine.delete(id).await?;
    Ok(Json(DeleteResponse { deleted: id }))
}

/// Indexed images in a stable order, filtered.
#[utoipa::path(get, path = "/v1/images", params(ListQuery, Filters),
    responses(
        (status = 200, body = ListResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn list_images(
    State(state): State<AppState>,
    Params(query): Params<ListQuery>,
) -> Result<Json<ListResponse>, ApiError> {
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(20);
    Ok(Json(
        state.engine.list(offset, limit, &query.filters).await?,
    ))
}

#[utoipa::path(get, path = "/v1/stats",
    responses(
        (status = 200, body = StatsResponse),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn stats(State(state): State<AppState>) -> Result<Json<StatsResponse>, ApiError> {
    Ok(Json(state.engine.stats().await?))
}

#[utoipa::path(get, path = "/v1/facets",
    responses(
        (status = 200, body = FacetsResponse),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn facets(State(state): State<AppState>) -> Result<Json<FacetsResponse>, ApiError> {
    Ok(Json(state.engine.facets().await?))
}

/// The ETL's path: idempotent upsert of vectors with payloads.
#[utoipa::path(post, path = "/v1/images:batch", request_body = IngestBatchRequest, security(("api_key" = [])),
    responses(
        (status = 200, body = IngestBatchResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "x-api-key missing or wrong", body = ErrorBody),
        (status = 403, description = "writes disabled (no API_KEY configured)", body = ErrorBody),
        (status = 408, description = "the request body was not sent in time", body = ErrorBody),
        (status = 409, description = "an item's object was deleted meanwhile; store it again", body = ErrorBody),
        (status = 413, description = "body or image too large", body = ErrorBody),
        (status = 415, description = "wrong content type or not an image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn ingest_batch(
    State(state): State<AppState>,
    body: Result<Json<IngestBatchRequest>, JsonRejection>,
) -> Result<Json<IngestBatchResponse>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let upserted = state.engine.ingest(body.items).await?;
    Ok(Json(IngestBatchResponse { upserted }))
}

#[utoipa::path(post, path = "/v1/images:exists", request_body = ExistsRequest,
    responses(
        (status = 200, body = ExistsResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request body was not sent in time", body = ErrorBody),
        (status = 413, description = "body or image too large", body = ErrorBody),
        (status = 415, description = "wrong content type or not an image", body = ErrorBody),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn exists(
    State(state): State<AppState>,
    body: Result<Json<ExistsRequest>, JsonRejection>,
) -> Result<Json<ExistsResponse>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    Ok(Json(ExistsResponse {
        existing: state.engine.existing(&body.ids).await?,
    }))
}

/// `POST /v1/images` JSON form: fetch the image from a URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddImageUrl {
    /// An http(s) URL on a public address (see `BACKEND_FETCH_ALLOW`).
    #[schema(min_length = 1)]
    pub url: String,
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(flatten)]
    pub attributes: ImageAttributes,
}

/// A multipart image upload (documentation only; handlers read the parts themselves).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ImageUpload {
    /// The image: JPEG, PNG, WebP or GIF.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `POST /v1/images` multipart form: the image and its attributes (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AddImageUpload {
    /// The image: JPEG, PNG, WebP or GIF.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Default: derived from the dataset and the bytes (adding the same image again is
    /// idempotent).
    id: Option<Uuid>,
    #[schema(min_length = 1, pattern = r"\S")]
    dataset: String,
    caption: Option<String>,
    gender: Option<String>,
    category: Option<String>,
    article_type: Option<String>,
    colour: Option<String>,
    season: Option<String>,
    usage: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
}

/// Adds one image, by multipart upload (`file` plus attribute fields) or JSON with a URL.
#[utoipa::path(post, path = "/v1/images", request_body(content(
        (AddImageUrl = "application/json"),
        (inline(AddImageUpload) = "multipart/form-data"),
    )), security(("api_key" = [])),
    responses(
        (status = 200, body = ImageItem),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "x-api-key missing or wrong", body = ErrorBody),
        (status = 403, description = "writes disabled (no API_KEY configured)", body = ErrorBody),
        (status = 408, description = "the request body was not sent in time", body = ErrorBody),
        (status = 413, description = "body or image too large", body = ErrorBody),
        (status = 415, description = "wrong content type or not an image", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 500, description = "internal error", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable or busy, or the request timed out", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
    )
)]
async fn add_image(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<ImageItem>, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (bytes, attributes, id) = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_multipart",
                message: e.body_text(),
            })?;
        let mut fields = serde_json::Map::new();
        let mut bytes = None;
        let mut parts = 0;
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            parts += 1;
            if parts > MAX_PARTS {
                return Err(too_many_parts());
            }
            let name = field.name().unwrap_or_default().to_owned();
            if name == "file" || field.file_name().is_some() {
                bytes = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
            } else {
                let text = field.text().await.map_err(multipart_error)?;
                let value = match name.as_str() {
                    "width" | "height" => text
                        .parse::<u32>()
                        .map(serde_json::Value::from)
                        .map_err(|_| ApiError::BadRequest {
                            code: "invalid_field",
                            message: format!("{name} must be an integer"),
                        })?,
                    _ => serde_json::Value::from(text),
                };
                fields.insert(name, value);
            }
        }
        let bytes = bytes.ok_or_else(|| ApiError::BadRequest {
            code: "missing_file",
            message: "send the image as a multipart file field named \"file\"".into(),
        })?;
        let id = fields
            .remove("id")
            .and_then(|v| v.as_str().map(str::to_owned))
            .map(|s| s.parse::<Uuid>())
            .transpose()
            .map_err(|_| ApiError::BadRequest {
                code: "invalid_id",
                message: "id must be a UUID".into(),
            })?;
        let attributes: ImageAttributes = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_field",
                message: e.to_string(),
            })?;
        (bytes, attributes, id)
    } else {
        let Json(body) = Json::<AddImageUrl>::from_request(request, &state)
            .await
            .map_err(json_error)?;
        let bytes = state
            .fetcher
            .fetch(&body.url)
            .await
            .map_err(|e| fetch_error(&state.fetcher, e))?;
        (bytes, body.attributes, body.id)
    };
    Ok(Json(state.engine.add_image(bytes, attributes, id).await?))
}

/// A fetch error as the caller sees it: what is wrong with the URL itself, or else one
/// message for every refused or failed fetch, so the answers cannot map the inside network (the
/// reason goes to the log).
fn fetch_error(fetcher: &ImageFetcher, error: FetchError) -> ApiError {
    match error {
        FetchError::InvalidUrl(message) => ApiError::BadRequest {
            code: "invalid_url",
            message,
        },
        error => {
            tracing::info!(reason = %error, "image url refused or not fetched");
            let settings = fetcher.settings();
            ApiError::BadRequest {
                code: "fetch_failed",
                message: format!(
                    "the image could not be fetched from that URL (public http(s) addresses only, at most {} bytes, within {} s)",
                    settings.max_bytes,
                    settings.total_timeout.as_secs()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds and error statuses the handlers enforce are in the document.
    #[test]
    fn the_openapi_document_states_bounds_and_errors() {
        let spec = serde_json::to_value(ApiDoc::openapi()).expect("spec");
        let param = |path: &str, method: &str, name: &str| {
            spec["paths"][path][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
        };
        let k = param("/v1/search", "get", "k");
        assert_eq!(
            (
                k["schema"]["minimum"].as_f64(),
                k["schema"]["maximum"].as_f64()
            ),
            (Some(1.0), Some(100.0)),
            "{k}"
        );
        let offset = param("/v1/images/{id}/similar", "get", "offset");
        assert_eq!(
            offset["schema"]["maximum"].as_f64(),
            Some(999.0),
            "{offset}"
        );
        let q = param("/v1/search", "get", "q");
        assert_eq!(q["required"], true, "{q}");
        assert_eq!(q["schema"]["minLength"], 1, "{q}");
        assert_eq!(q["schema"]["maxLength"], 500, "{q}");
        let limit = param("/v1/images", "get", "limit");
        assert_eq!(limit["schema"]["maximum"].as_f64(), Some(100.0), "{limit}");
        let statuses = |path: &str, method: &str| -> Vec<String> {
            spec["paths"][path][method]["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        for (path, method, expected) in [
            ("/v1/search", "get", &["200", "400", "429", "503"][..]),
            ("/v1/images/{id}", "get", &["200", "400", "404", "503"]),
            ("/v1/images/{id}/similar", "get", &["200", "400", "404"]),
            (
                "/v1/images/{id}",
                "delete",
                &["200", "400", "401", "403", "404"],
            ),
            (
                "/v1/images:batch",
                "post",
                &["200", "400", "401", "403", "413", "415"],
            ),
            (
                "/v1/images",
                "post",
                &["200", "400", "401", "413", "415", "429", "503"],
            ),
            (
                "/v1/search/image",
                "post",
                &["200", "400", "408", "413", "415", "503"],
            ),
        ] {
            let got = statuses(path, method);
            for status in expected {
                assert!(
                    got.iter().any(|s| s == status),
                    "{method} {path} does not document {status}: {got:?}"
                );
            }
        }
        let retry = &spec["paths"]["/v1/search"]["get"]["responses"]["503"]["headers"];
        assert!(retry["Retry-After"].is_object(), "{retry}");
    }
}
