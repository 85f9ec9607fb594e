//! The search handlers (text, image, reference-design, similar), facets and stats.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Multipart, Path, Request, State};
use backend_api::{
    ErrorKind, FacetsResponse, Filters, QuerySummaryResponse, ReindexRequest, ReindexStatus,
    SearchMode, SearchParams, SearchResponse, StatsResponse, TextQuery, TextSearchRequest,
};
use uuid::Uuid;

use super::error::{BodyRefused, Faults, InvalidInput, NotFound, RateLimited, WriteRefused};
use super::extract::{Params, TextSearch, first_file, path_id, upload_or_json};
use super::images::ImageUpload;
use http_edge::reject::JsonOrMultipart;

use super::{ApiError, AppState};

/// Text search: by meaning (the model's embedding of the text, prompt template applied), by
/// words (BM25 over captions and attributes), or both fused (`mode`, default `hybrid`).
#[utoipa::path(get, path = "/v1/search", params(TextQuery, SearchParams, Filters),
    responses(
        (status = 200, body = SearchResponse),
        InvalidInput,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn search_text(
    State(state): State<AppState>,
    Params(TextSearch { q, mode, params }): Params<TextSearch>,
) -> Result<Json<SearchResponse>, ApiError> {
    let response = state.engine.search_text(&q, mode, &params).await?;
    // Only first pages: a shopper paging through results asked once.
    if let Some(summary) = &state.queries
        && params.offset.unwrap_or(0) == 0
    {
        summary.record(&q, response.hits.is_empty());
    }
    Ok(Json(response))
}

/// What shoppers typed (opt-in, `BACKEND_QUERY_SUMMARY=true`): the most asked text queries and
/// the most asked that found nothing, normalised and cut to 80 characters, at most 2,000
/// distinct ones since the backend started. Needs the write key.
#[utoipa::path(get, path = "/v1/admin/queries", params(SummaryQuery), security(("api_key" = [])),
    responses(
        (status = 200, body = QuerySummaryResponse),
        InvalidInput,
        WriteRefused,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn query_summary(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<SummaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<QuerySummaryResponse>, ApiError> {
    let axum::extract::Query(SummaryQuery { limit }) =
        query.map_err(|e| ApiError::from(http_edge::reject::query(e)))?;
    let summary = state.queries.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "the query summary is off: start the backend with BACKEND_QUERY_SUMMARY=true",
        )
    })?;
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "limit must be between 1 and 500",
        ));
    }
    Ok(Json(summary.snapshot(limit)))
}

/// Re-index: every stored image embedded again into a new index beside the live one (which
/// keeps serving), then one switch. `model: current` re-embeds with the model model-serving
/// serves; `model: next` with `MODEL_SERVING_NEXT_URL`'s, and searches move to it at the
/// switch. Answers at once (202) with the run's status; a run under way is answered, not
/// started twice. Running it again after a failure resumes. Needs the write key.
#[utoipa::path(post, path = "/v1/admin/reindex", request_body = ReindexRequest, security(("api_key" = [])),
    responses(
        (status = 202, body = ReindexStatus),
        InvalidInput,
        WriteRefused,
        BodyRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn start_reindex(
    State(state): State<AppState>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<ReindexStatus>), ApiError> {
    let Json(body) = body.map_err(super::extract::json_error)?;
    // An object only: serde would also read the struct from an array (`[]`).
    if !body.is_object() {
        return Err(ApiError::new(
            ErrorKind::InvalidJson,
            "the body must be a JSON object, e.g. {\"model\": \"current\"}",
        ));
    }
    let body: ReindexRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::new(ErrorKind::InvalidJson, e.to_string()))?;
    let status = state.engine.start_reindex(body.model).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(status)))
}

/// The re-index under way, or the last one since the backend started. Needs the write key.
#[utoipa::path(get, path = "/v1/admin/reindex", security(("api_key" = [])),
    responses(
        (status = 200, body = ReindexStatus),
        WriteRefused,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn reindex_status(
    State(state): State<AppState>,
) -> Result<Json<ReindexStatus>, ApiError> {
    state.engine.reindex_status().map(Json).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no re-index has run since the backend started: POST /v1/admin/reindex starts one",
        )
    })
}

/// `GET /v1/admin/queries?limit=`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SummaryQuery {
    /// Queries in each list (1..=500, default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// Image search: a multipart upload (field `file`), same filters as text search.
#[utoipa::path(post, path = "/v1/search/image", params(SearchParams, Filters),
    request_body(content = inline(ImageUpload), content_type = "multipart/form-data"),
    responses(
        (status = 200, body = SearchResponse),
        InvalidInput,
        BodyRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn search_image(
    State(state): State<AppState>,
    Params(params): Params<SearchParams>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let multipart =
        multipart.map_err(|e| ApiError::new(ErrorKind::UnsupportedMediaType, e.body_text()))?;
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
        InvalidInput,
        BodyRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn search_reference(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<SearchResponse>, ApiError> {
    match upload_or_json::<TextSearchRequest>(request, &state).await? {
        JsonOrMultipart::Multipart(multipart) => {
            let image = first_file(multipart).await?;
            Ok(Json(
                state
                    .engine
                    .search_image(image, &SearchParams::default())
                    .await?,
            ))
        }
        JsonOrMultipart::Json(body) => {
            let params = SearchParams {
                k: body.k,
                ..Default::default()
            };
            let mode = SearchMode::default();
            Ok(Json(
                state.engine.search_text(&body.text, mode, &params).await?,
            ))
        }
    }
}

/// More like this: the images nearest to an indexed one.
#[utoipa::path(get, path = "/v1/images/{id}/similar", params(("id" = Uuid, Path,), SearchParams, Filters),
    responses(
        (status = 200, body = SearchResponse),
        InvalidInput,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn similar(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
    Params(params): Params<SearchParams>,
) -> Result<Json<SearchResponse>, ApiError> {
    let id = path_id(id)?;
    Ok(Json(state.engine.similar(id, &params).await?))
}

#[utoipa::path(get, path = "/v1/stats",
    responses(
        (status = 200, body = StatsResponse),
        Faults,
    )
)]
pub(super) async fn stats(State(state): State<AppState>) -> Result<Json<StatsResponse>, ApiError> {
    Ok(Json(state.engine.stats().await?))
}

#[utoipa::path(get, path = "/v1/facets",
    responses(
        (status = 200, body = FacetsResponse),
        Faults,
    )
)]
pub(super) async fn facets(
    State(state): State<AppState>,
) -> Result<Json<FacetsResponse>, ApiError> {
    Ok(Json(state.engine.facets().await?))
}
