//! Extractors and their rejections: the route's query (unknown keys refused against the
//! route's list and [`Filters::FIELDS`]), path ids, JSON and multipart bodies, the write key.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Multipart, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use backend_api::{
    CompareQuery, ErrorKind, Filters, RecommendQuery, RefineQuery, SearchMode, SearchParams,
    TextQuery,
};
use http_edge::reject::{self, JsonOrMultipart};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{ApiError, AppState};

pub(super) fn json_error(rejection: JsonRejection) -> ApiError {
    reject::json(rejection).into()
}

pub(super) fn path_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id).map_err(|e| {
        reject::path(
            e,
            ErrorKind::InvalidId.code(),
            "the image id must be a UUID",
        )
        .into()
    })
}

pub(super) fn multipart_error(e: MultipartError) -> ApiError {
    reject::multipart_field(e).into()
}

/// Layer of the write routes: the key is checked before the handler, and so before the body is
/// read.
pub(super) async fn require_write_key(
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
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.api_key else {
        return Err(ApiError::of(ErrorKind::WritesDisabled));
    };
    let given = headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::of(ErrorKind::Unauthorized))
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
            return Err(ApiError::new(
                ErrorKind::InvalidQuery,
                format!(
                    "unknown query parameter {key:?}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        // Checked as given: a value just over 1 (1.0000000000000002) is 1.0 once it is an f32.
        let over = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "min_score")
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .any(|v| !(-1.0..=1.0).contains(&v));
        if over {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "min_score must be between -1 and 1",
            ));
        }
        T::parse(&parts.uri)
            .map(Params)
            .map_err(|e| reject::query(e).into())
    }
}

impl RouteQuery for SearchParams {
    const KEYS: &'static [&'static str] = SearchParams::KEYS;

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        Query::try_from_uri(uri).map(|Query(params)| params)
    }
}

/// `GET /v1/search`: the text, how to match it, words to leave out, and [`SearchParams`].
pub struct TextSearch {
    pub q: String,
    pub mode: SearchMode,
    /// The `not` parameter as given (the engine splits and bounds it).
    pub not: Vec<String>,
    pub params: SearchParams,
}

/// A comma-separated list, its blanks dropped.
fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

impl RouteQuery for TextSearch {
    const KEYS: &'static [&'static str] =
        &["q", "mode", "not", "k", "offset", "min_score", "model"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        let Query(TextQuery { q, mode, not }) = Query::try_from_uri(uri)?;
        Ok(Self {
            q: q.unwrap_or_default(),
            mode: mode.unwrap_or_default(),
            not: not.into_iter().collect(),
            params: SearchParams::parse(uri)?,
        })
    }
}

/// `POST /v1/search/image`: words refining the photo, words to leave out, [`SearchParams`].
pub struct ImageSearch {
    pub refine: Option<String>,
    pub not: Vec<String>,
    pub params: SearchParams,
}

impl RouteQuery for ImageSearch {
    const KEYS: &'static [&'static str] = &["q", "not", "k", "offset", "min_score", "model"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        let Query(RefineQuery { q, not }) = Query::try_from_uri(uri)?;
        Ok(Self {
            refine: q,
            not: not.into_iter().collect(),
            params: SearchParams::parse(uri)?,
        })
    }
}

/// `GET /v1/search/recommend`: the items liked and disliked (ids, checked by the handler), and
/// [`SearchParams`].
pub struct Recommend {
    pub like: Vec<String>,
    pub dislike: Vec<String>,
    pub params: SearchParams,
}

impl RouteQuery for Recommend {
    const KEYS: &'static [&'static str] = &["like", "dislike", "k", "offset", "min_score", "model"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        let Query(RecommendQuery { like, dislike }) = Query::try_from_uri(uri)?;
        Ok(Self {
            like: list(like),
            dislike: list(dislike),
            params: SearchParams::parse(uri)?,
        })
    }
}

impl RouteQuery for CompareQuery {
    const KEYS: &'static [&'static str] = &["a", "b"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        Query::try_from_uri(uri).map(|Query(ids)| ids)
    }
}

/// `GET /v1/images` parameters (and the filters of [`Filters`]).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page (1..=100, default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Items to skip (default 0; limit + offset at most 1000).
    #[param(minimum = 0, maximum = 999)]
    pub offset: Option<usize>,
    #[serde(flatten)]
    #[param(ignore)]
    pub filters: Filters,
}

impl RouteQuery for ListQuery {
    const KEYS: &'static [&'static str] = &["limit", "offset"];

    fn parse(uri: &Uri) -> Result<Self, QueryRejection> {
        Query::try_from_uri(uri).map(|Query(list)| list)
    }
}

/// Most multipart parts read from one upload: the file and a few attributes. Parsing is work
/// too; 20,000 tiny parts took 11 s before this bound (`make hostile`).
pub(super) const MAX_PARTS: usize = 32;

pub(super) fn too_many_parts() -> ApiError {
    ApiError::new(
        ErrorKind::TooManyParts,
        format!("at most {MAX_PARTS} multipart parts per request"),
    )
}

/// The next multipart part, counting it against [`MAX_PARTS`].
pub(super) async fn next_part<'a>(
    multipart: &'a mut Multipart,
    parts: &mut usize,
) -> Result<Option<Field<'a>>, ApiError> {
    let Some(field) = multipart.next_field().await.map_err(multipart_error)? else {
        return Ok(None);
    };
    *parts += 1;
    if *parts > MAX_PARTS {
        return Err(too_many_parts());
    }
    Ok(Some(field))
}

pub(super) fn missing_file() -> ApiError {
    ApiError::new(
        ErrorKind::MissingFile,
        "send the image as a multipart file field named \"file\"",
    )
}

pub(super) async fn first_file(mut multipart: Multipart) -> Result<Vec<u8>, ApiError> {
    let mut parts = 0;
    while let Some(field) = next_part(&mut multipart, &mut parts).await? {
        if field.file_name().is_some() || field.name() == Some("file") {
            return Ok(field.bytes().await.map_err(multipart_error)?.to_vec());
        }
    }
    Err(missing_file())
}

/// The body of an endpoint that takes either a multipart upload or JSON, chosen by
/// `Content-Type` (anything else is a 415 before the body is read).
pub(super) async fn upload_or_json<T: DeserializeOwned>(
    request: Request,
    state: &AppState,
) -> Result<JsonOrMultipart<T>, ApiError> {
    Ok(JsonOrMultipart::from_request(request, state).await?)
}
