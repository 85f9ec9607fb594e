//! The search handlers (text, image, reference-design, similar), facets and stats.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Multipart, Path, Request, State};
use backend_api::{
    CompareQuery, CompareResponse, ErrorKind, FacetsResponse, Filters, ModelsResponse, PointsPage,
    QuerySummaryResponse, RecommendQuery, RefineQuery, ReindexRequest, ReindexStatus, SearchMode,
    SearchParams, SearchResponse, StatsResponse, TextQuery, TextSearchRequest,
};
use uuid::Uuid;

use super::error::{BodyRefused, Faults, InvalidInput, NotFound, RateLimited, WriteRefused};
use super::extract::{
    ImageSearch, Params, Recommend, TextSearch, first_file, multipart_error, next_part, path_id,
    upload_or_json,
};
use super::images::ImageUpload;
use crate::search::compose::{MAX_LIKES, Side};
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
    Params(TextSearch {
        q,
        mode,
        not,
        params,
    }): Params<TextSearch>,
) -> Result<Json<SearchResponse>, ApiError> {
    let response = state
        .engine
        .search_text_without(&q, &not, mode, &params)
        .await?;
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
/// switch. With `stage: true` there is no switch: the new index stays beside the live one and
/// searches that name its model (`model=`, `GET /v1/models`) use it, to try a model on live
/// traffic; running it again without `stage` brings it up to date and switches. Answers at once
/// (202) with the run's status; a run under way is answered, not started twice. Running it
/// again after a failure resumes. Needs the write key.
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
    let status = state.engine.start_reindex(body.model, body.stage).await?;
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

/// Points with their vectors, in id order, for backups (`etl dump`). Needs the write key.
#[utoipa::path(get, path = "/v1/admin/points", params(PointsQuery), security(("api_key" = [])),
    responses(
        (status = 200, body = PointsPage),
        InvalidInput,
        WriteRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn points_page(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<PointsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PointsPage>, ApiError> {
    let axum::extract::Query(PointsQuery { offset, limit }) =
        query.map_err(|e| ApiError::from(http_edge::reject::query(e)))?;
    Ok(Json(
        state
            .engine
            .points_page(offset.unwrap_or(0), limit.unwrap_or(500))
            .await?,
    ))
}

/// `GET /v1/admin/points?offset=&limit=`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PointsQuery {
    /// Points to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<usize>,
    /// Points in the page (1..=1000, default 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
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

/// Image search: a multipart upload (field `file`), same filters as text search. `q` refines it
/// with words ("in red": the photo's embedding plus theirs); `-word` in `q`, or `not`, leaves
/// words out.
#[utoipa::path(post, path = "/v1/search/image", params(RefineQuery, SearchParams, Filters),
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
    Params(ImageSearch {
        refine,
        not,
        params,
    }): Params<ImageSearch>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    if refine
        .as_deref()
        .is_some_and(|q| q.chars().count() > crate::search::MAX_QUERY_CHARS)
    {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "q is longer than {} characters",
                crate::search::MAX_QUERY_CHARS
            ),
        ));
    }
    let multipart =
        multipart.map_err(|e| ApiError::new(ErrorKind::UnsupportedMediaType, e.body_text()))?;
    let image = first_file(multipart).await?;
    Ok(Json(
        state
            .engine
            .search_image_refined(image, refine.as_deref(), &not, &params)
            .await?,
    ))
}

/// Ids of a `like` / `dislike` list: UUIDs, at most [`MAX_LIKES`] of them.
fn ids(list: &[String], name: &str) -> Result<Vec<Uuid>, ApiError> {
    if list.len() > MAX_LIKES {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{name} names more than {MAX_LIKES} items"),
        ));
    }
    list.iter()
        .map(|id| {
            id.parse::<Uuid>().map_err(|_| {
                let shown: String = id.chars().take(40).collect();
                ApiError::new(
                    ErrorKind::InvalidId,
                    format!("{name}: {shown:?} is not an item id (a UUID)"),
                )
            })
        })
        .collect()
}

/// More like some items and less like others (Qdrant's average-vector recommendation: twice
/// the liked items' mean minus the disliked ones'), the items themselves left out. No model call.
#[utoipa::path(get, path = "/v1/search/recommend", params(RecommendQuery, SearchParams, Filters),
    responses(
        (status = 200, body = SearchResponse),
        InvalidInput,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn recommend(
    State(state): State<AppState>,
    Params(Recommend {
        like,
        dislike,
        params,
    }): Params<Recommend>,
) -> Result<Json<SearchResponse>, ApiError> {
    let (like, dislike) = (ids(&like, "like")?, ids(&dislike, "dislike")?);
    Ok(Json(
        state.engine.recommend(&like, &dislike, &params).await?,
    ))
}

/// How alike two indexed items are: the cosine similarity of their embeddings.
#[utoipa::path(get, path = "/v1/compare", params(CompareQuery),
    responses(
        (status = 200, body = CompareResponse),
        InvalidInput,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn compare_items(
    State(state): State<AppState>,
    Params(CompareQuery { a, b }): Params<CompareQuery>,
) -> Result<Json<CompareResponse>, ApiError> {
    let (Some(a), Some(b)) = (a, b) else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "name two items: ?a=<id>&b=<id> (or POST photos as file parts a and b)",
        ));
    };
    Ok(Json(
        state.engine.compare(Side::Item(a), Side::Item(b)).await?,
    ))
}

/// How alike two images are: file parts `a` and `b` (multipart), or an item id in the query
/// for either side instead of its file.
#[utoipa::path(post, path = "/v1/compare", params(CompareQuery),
    request_body(content = inline(CompareUpload), content_type = "multipart/form-data"),
    responses(
        (status = 200, body = CompareResponse),
        InvalidInput,
        NotFound,
        BodyRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn compare_photos(
    State(state): State<AppState>,
    Params(CompareQuery { a, b }): Params<CompareQuery>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<CompareResponse>, ApiError> {
    let mut multipart =
        multipart.map_err(|e| ApiError::new(ErrorKind::UnsupportedMediaType, e.body_text()))?;
    let (mut photo_a, mut photo_b) = (None, None);
    let mut parts = 0;
    while let Some(field) = next_part(&mut multipart, &mut parts).await? {
        let slot = match field.name() {
            Some("a") => &mut photo_a,
            Some("b") => &mut photo_b,
            _ => continue,
        };
        *slot = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
    }
    let side = |id: Option<Uuid>, photo: Option<Vec<u8>>, name: &str| match (id, photo) {
        (_, Some(photo)) => Ok(Side::Photo(photo)),
        (Some(id), None) => Ok(Side::Item(id)),
        (None, None) => Err(ApiError::new(
            ErrorKind::MissingFile,
            format!(
                "send image {name} as a multipart file part named \"{name}\", or its item id as ?{name}="
            ),
        )),
    };
    let (a, b) = (side(a, photo_a, "a")?, side(b, photo_b, "b")?);
    Ok(Json(state.engine.compare(a, b).await?))
}

/// The multipart body of `POST /v1/compare`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct CompareUpload {
    /// The first image (JPEG, PNG, WebP or GIF), unless `?a=` names an item.
    #[schema(value_type = String, format = Binary)]
    a: Option<Vec<u8>>,
    /// The second image, unless `?b=` names an item.
    #[schema(value_type = String, format = Binary)]
    b: Option<Vec<u8>>,
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

/// The models whose indexes can be searched: the live one, and the one a re-index staged
/// beside it (`POST /v1/admin/reindex` with `stage`), which searches name with `model=`.
#[utoipa::path(get, path = "/v1/models",
    responses(
        (status = 200, body = ModelsResponse),
        Faults,
    )
)]
pub(super) async fn models(
    State(state): State<AppState>,
) -> Result<Json<ModelsResponse>, ApiError> {
    Ok(Json(state.engine.models().await?))
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
