//! The search handlers (text, image, reference-design, similar), facets and stats.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Multipart, Path, Request, State};
use backend_api::{
    ErrorKind, FacetsResponse, Filters, SearchMode, SearchParams, SearchResponse, StatsResponse,
    TextQuery, TextSearchRequest,
};
use uuid::Uuid;

use super::error::{BodyRefused, Faults, InvalidInput, NotFound, RateLimited};
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
    Ok(Json(state.engine.search_text(&q, mode, &params).await?))
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
