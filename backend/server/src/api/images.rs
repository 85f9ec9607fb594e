//! The catalogue's handlers: get, list, delete, add (upload or URL), the ETL's batch and exists.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use backend_api::{
    DeleteResponse, ErrorBody, ErrorKind, ExistsRequest, ExistsResponse, Filters, ImageAttributes,
    ImageItem, IngestBatchRequest, IngestBatchResponse, ListResponse,
};
use serde::Deserialize;
use uuid::Uuid;

use super::error::{BodyRefused, Faults, InvalidInput, NotFound, RateLimited, WriteRefused};
use super::extract::{
    ListQuery, Params, json_error, missing_file, multipart_error, next_part, path_id,
    upload_or_json,
};
use http_edge::reject::JsonOrMultipart;

use super::{ApiError, AppState};
use crate::fetch::{FetchError, ImageFetcher};

#[utoipa::path(get, path = "/v1/images/{id}", params(("id" = Uuid, Path,)),
    responses(
        (status = 200, body = ImageItem),
        InvalidInput,
        NotFound,
        Faults,
    )
)]
pub(super) async fn get_image(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<ImageItem>, ApiError> {
    Ok(Json(state.engine.get(path_id(id)?).await?))
}

#[utoipa::path(delete, path = "/v1/images/{id}", params(("id" = Uuid, Path,)), security(("api_key" = [])),
    responses(
        (status = 200, body = DeleteResponse),
        InvalidInput,
        WriteRefused,
        NotFound,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn delete_image(
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
        InvalidInput,
        Faults,
    )
)]
pub(super) async fn list_images(
    State(state): State<AppState>,
    Params(query): Params<ListQuery>,
) -> Result<Json<ListResponse>, ApiError> {
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(20);
    Ok(Json(
        state.engine.list(offset, limit, &query.filters).await?,
    ))
}

/// The ETL's path: idempotent upsert of vectors with payloads.
#[utoipa::path(post, path = "/v1/images:batch", request_body = IngestBatchRequest, security(("api_key" = [])),
    responses(
        (status = 200, body = IngestBatchResponse),
        InvalidInput,
        WriteRefused,
        BodyRefused,
        (status = 409, description = "an item's object was deleted meanwhile; store it again", body = ErrorBody),
        RateLimited,
        Faults,
    )
)]
pub(super) async fn ingest_batch(
    State(state): State<AppState>,
    body: Result<Json<IngestBatchRequest>, JsonRejection>,
) -> Result<Json<IngestBatchResponse>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let upserted = state
        .engine
        .ingest(body.items, body.model.as_deref())
        .await?;
    Ok(Json(IngestBatchResponse { upserted }))
}

#[utoipa::path(post, path = "/v1/images:exists", request_body = ExistsRequest,
    responses(
        (status = 200, body = ExistsResponse),
        InvalidInput,
        BodyRefused,
        Faults,
    )
)]
pub(super) async fn exists(
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
pub(super) struct ImageUpload {
    /// The image: JPEG, PNG, WebP or GIF.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `POST /v1/images` multipart form: the image and its attributes (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct AddImageUpload {
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
        InvalidInput,
        WriteRefused,
        BodyRefused,
        RateLimited,
        Faults,
    )
)]
pub(super) async fn add_image(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<ImageItem>, ApiError> {
    let (bytes, attributes, id) = match upload_or_json::<AddImageUrl>(request, &state).await? {
        JsonOrMultipart::Multipart(mut multipart) => {
            let mut fields = serde_json::Map::new();
            let mut bytes = None;
            let mut parts = 0;
            while let Some(field) = next_part(&mut multipart, &mut parts).await? {
                let name = field.name().unwrap_or_default().to_owned();
                if name == "file" || field.file_name().is_some() {
                    bytes = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
                } else {
                    let text = field.text().await.map_err(multipart_error)?;
                    let value = match name.as_str() {
                        "width" | "height" => text
                            .parse::<u32>()
                            .map(serde_json::Value::from)
                            .map_err(|_| {
                                ApiError::new(
                                    ErrorKind::InvalidField,
                                    format!("{name} must be an integer"),
                                )
                            })?,
                        _ => serde_json::Value::from(text),
                    };
                    fields.insert(name, value);
                }
            }
            let bytes = bytes.ok_or_else(missing_file)?;
            let id = fields
                .remove("id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .map(|s| s.parse::<Uuid>())
                .transpose()
                .map_err(|_| ApiError::new(ErrorKind::InvalidId, "id must be a UUID"))?;
            let attributes: ImageAttributes =
                serde_json::from_value(serde_json::Value::Object(fields))
                    .map_err(|e| ApiError::new(ErrorKind::InvalidField, e.to_string()))?;
            (bytes, attributes, id)
        }
        JsonOrMultipart::Json(body) => {
            let bytes = state
                .fetcher
                .fetch(&body.url)
                .await
                .map_err(|e| fetch_error(&state.fetcher, e))?;
            (bytes, body.attributes, body.id)
        }
    };
    Ok(Json(state.engine.add_image(bytes, attributes, id).await?))
}

/// A fetch error as the caller sees it: what is wrong with the URL itself, or else one
/// message for every refused or failed fetch, so the answers cannot map the inside network (the
/// reason goes to the log).
pub(super) fn fetch_error(fetcher: &ImageFetcher, error: FetchError) -> ApiError {
    match error {
        FetchError::InvalidUrl(message) => ApiError::new(ErrorKind::InvalidUrl, message),
        error => {
            tracing::info!(reason = %error, "image url refused or not fetched");
            let settings = fetcher.settings();
            ApiError::new(
                ErrorKind::FetchFailed,
                format!(
                    "the image could not be fetched from that URL (public http(s) addresses only, at most {} bytes, within {} s)",
                    settings.max_bytes,
                    settings.total_timeout.as_secs()
                ),
            )
        }
    }
}
