//! The backend's wire types and a typed client, shared with its callers (frontend, etl), so no
//! caller re-declares a JSON shape.

mod error;

pub use error::ErrorKind;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Attributes stored with each image; the filterable ones are keyword-indexed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageAttributes {
    /// Which dataset the image came from, e.g. `fashion-product-images`.
    pub dataset: String,
    /// A human caption, e.g. the product's display name.
    #[serde(default)]
    pub caption: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// One indexed image as the API shows it, with a short-lived pre-signed URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageItem {
    pub id: Uuid,
    pub s3_key: String,
    /// RFC 3339, when the image was indexed.
    pub created_at: String,
    #[serde(flatten)]
    pub attributes: ImageAttributes,
    /// Pre-signed GET URL for the image bytes.
    pub url: String,
    /// Pre-signed GET URL of a card-size JPEG thumbnail (at most 256 px a side), once the backend
    /// has made it (in the background after the image is indexed); grids show it, a product
    /// page the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

/// How a text query is matched: by meaning (the model's vectors), by its words (BM25 over the
/// caption and attributes), or both, their rankings fused (each ranking's scores normalised,
/// then summed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    #[default]
    Hybrid,
    Vector,
    Keyword,
}

impl SearchMode {
    pub const ALL: [SearchMode; 3] = [Self::Hybrid, Self::Vector, Self::Keyword];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hybrid => "hybrid",
            Self::Vector => "vector",
            Self::Keyword => "keyword",
        }
    }
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SearchHit {
    /// How well the item matches, higher is closer, on the scale of the search's `mode`:
    /// cosine similarity (vector, photo and "more like this" searches), BM25 (keyword), or the
    /// sum of the two rankings' normalised scores (hybrid, 0 to 2).
    pub score: f32,
    #[serde(flatten)]
    pub item: ImageItem,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
    pub k: usize,
    pub offset: usize,
    /// The caption the text query was embedded as (prompt template applied), if a text query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_text: Option<String>,
    /// How the query was matched (photo and "more like this" searches: `vector`).
    pub mode: SearchMode,
    /// The model's relevance floor, when a text search applied one: a product found by meaning
    /// alone is at least this similar (cosine); below it, nothing is shown as a match (so a
    /// query that matches nothing well answers no hits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_floor: Option<f32>,
    /// Words left out (`-floral` in the query, or `not`): no hit's caption has one, and the
    /// query's meaning was moved away from theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without: Vec<String>,
    pub model: String,
    pub took_ms: f64,
}

/// Deepest result reachable by paging: `k + offset` (or `limit + offset`) at most this.
pub const MAX_RESULT_DEPTH: usize = 1000;
/// Most results per page (`k` or `limit`).
pub const MAX_PAGE: usize = 100;

/// Exact-match filters on the keyword-indexed attributes, one field per indexed attribute. The
/// backend's extractors, its engine and both index implementations read the field list from here
/// ([`Filters::FIELDS`]); callers build the query string from it. A blank value is no filter.
#[derive(
    Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash, IntoParams, ToSchema,
)]
#[into_params(parameter_in = Query)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
}

impl Filters {
    /// Every filterable field: the attributes with a keyword index, in query-string spelling.
    pub const FIELDS: &'static [&'static str] = &[
        "dataset",
        "gender",
        "category",
        "article_type",
        "colour",
        "season",
        "usage",
    ];

    fn slot(&self, field: &str) -> Option<&Option<String>> {
        Some(match field {
            "dataset" => &self.dataset,
            "gender" => &self.gender,
            "category" => &self.category,
            "article_type" => &self.article_type,
            "colour" => &self.colour,
            "season" => &self.season,
            "usage" => &self.usage,
            _ => return None,
        })
    }

    fn slot_mut(&mut self, field: &str) -> Option<&mut Option<String>> {
        Some(match field {
            "dataset" => &mut self.dataset,
            "gender" => &mut self.gender,
            "category" => &mut self.category,
            "article_type" => &mut self.article_type,
            "colour" => &mut self.colour,
            "season" => &mut self.season,
            "usage" => &mut self.usage,
            _ => return None,
        })
    }

    /// The value of `field`, trimmed; `None` when unset, blank or not a filter field.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.slot(field)?
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// Sets `field`; `false` (and nothing set) when it is not one of [`Filters::FIELDS`].
    pub fn set(&mut self, field: &str, value: Option<String>) -> bool {
        match self.slot_mut(field) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// The filters in force, as `(field, trimmed value)`, in [`Filters::FIELDS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        Self::FIELDS
            .iter()
            .filter_map(|field| self.get(field).map(|value| (*field, value)))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Filters and paging shared by every search endpoint. On the wire the filters are flat query
/// parameters (`?k=10&gender=Women`); the OpenAPI document lists them from [`Filters`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Results per page (1..=100, default 20).
    #[param(minimum = 1, maximum = 100)]
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Results to skip (default 0; k + offset at most 1000).
    #[param(minimum = 0, maximum = 999)]
    #[schema(minimum = 0, maximum = 999)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// Hide hits scoring below this (-1..=1).
    #[param(minimum = -1.0, maximum = 1.0)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Search with this model, by name or fingerprint: the live one (the default) or the one
    /// staged beside it (`GET /v1/models`), to try a new model on live traffic.
    #[param(max_length = 200)]
    #[schema(max_length = 200)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    pub filters: Filters,
}

impl SearchParams {
    /// Query keys besides [`Filters::FIELDS`].
    pub const KEYS: &'static [&'static str] = &["k", "offset", "min_score", "model"];
}

/// `GET /v1/search?q=...` = a text query plus [`SearchParams`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TextQuery {
    /// What the shopper typed, e.g. "red summer dress": required, not blank, at most 500
    /// characters.
    #[param(required = true, min_length = 1, max_length = 500, pattern = r"\S")]
    pub q: Option<String>,
    /// `hybrid` (default: words and meaning, fused), `vector` (meaning only) or `keyword`
    /// (words only; no model call).
    #[serde(default)]
    #[param(inline)]
    pub mode: Option<SearchMode>,
    /// Words to leave out, separated by commas (as `-word` in `q`): no hit's caption has one,
    /// and the query's meaning is moved away from theirs. At most 8.
    #[param(max_length = 400)]
    pub not: Option<String>,
}

/// `POST /v1/search/image?q=...`: words refining the photo ("in red": the photo's embedding
/// plus theirs), and words to leave out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RefineQuery {
    /// Words refining the photo, e.g. "in red"; `-word` leaves a word out. At most 500
    /// characters.
    #[param(max_length = 500)]
    pub q: Option<String>,
    /// Words to leave out, separated by commas.
    #[param(max_length = 400)]
    pub not: Option<String>,
}

/// `GET /v1/search/recommend`: items to find more like and less like, by id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecommendQuery {
    /// Ids of items to find more like, separated by commas (1 to 16).
    #[param(required = true)]
    pub like: Option<String>,
    /// Ids of items to find less like, separated by commas (at most 16).
    pub dislike: Option<String>,
}

/// `GET /v1/compare?a=&b=`: two indexed items (for `POST`, either may be an uploaded file
/// part of the same name instead).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareQuery {
    pub a: Option<Uuid>,
    pub b: Option<Uuid>,
}

/// `POST /search-image` (reference-design compatible) JSON form.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TextSearchRequest {
    /// Not blank, at most 500 characters.
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    pub text: String,
    /// Results (1..=100, default 20).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<usize>,
}

/// One item of `POST /v1/images:batch`, the ETL's path. Upserts are idempotent by id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IngestItem {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub s3_key: String,
    #[serde(flatten)]
    pub attributes: ImageAttributes,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngestBatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<IngestItem>,
    /// The fingerprint of the model that made the vectors (model-serving's `GET /v1/model`).
    /// When given it must be the model the backend's model-serving serves; when absent, the
    /// vectors are taken to be that model's. Either way that model must be the index's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "sha256:0123456789abcdef")]
    pub model: Option<String>,
}

/// One point as a backup holds it: id, vector, object key and attributes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StoredPoint {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub s3_key: String,
    pub created_at: String,
    #[serde(flatten)]
    pub attributes: ImageAttributes,
}

/// `GET /v1/admin/points?offset=&limit=`: points with their vectors in id order, for backups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PointsPage {
    pub points: Vec<StoredPoint>,
    pub offset: usize,
    pub limit: usize,
    /// Points in the index.
    pub total: u64,
    /// The fingerprint of the model that made the vectors (`None`: not recorded).
    pub fingerprint: Option<String>,
}

/// Most points per `GET /v1/admin/points` page.
pub const MAX_POINTS_PAGE: usize = 1000;

/// `GET /v1/compare`, `POST /v1/compare`: how alike two images are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CompareResponse {
    /// Cosine similarity of the two embeddings, -1 to 1 (1: the same image).
    pub similarity: f32,
    /// The model whose embeddings were compared.
    pub model: String,
}

/// `POST /v1/admin/reindex`: which model the new index is made with.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReindexModel {
    /// The model model-serving serves now (rebuilds the index: keyword vectors, a model
    /// changed in place).
    #[default]
    Current,
    /// The model at `MODEL_SERVING_NEXT_URL`: the old index keeps serving with the old model
    /// until the new one is complete, then both switch together.
    Next,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexRequest {
    #[serde(default)]
    pub model: ReindexModel,
    /// Keep the new index beside the live one instead of switching to it: searches that name
    /// its model (`model=`) use it, the others stay on the live one. A later re-index of the
    /// same model without `stage` resumes it (only what changed is embedded) and switches.
    #[serde(default)]
    pub stage: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReindexState {
    Running,
    Done,
    Failed,
}

/// A re-index: every stored image embedded again into a new index, then one switch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReindexStatus {
    pub state: ReindexState,
    /// Whether the new index is staged beside the live one rather than switched to.
    #[serde(default)]
    pub stage: bool,
    /// The model the new index is made with, and its fingerprint.
    pub model: String,
    pub fingerprint: String,
    /// The live index's model when the re-index began (`None`: not recorded).
    pub from_fingerprint: Option<String>,
    /// Items in the live index when the re-index began.
    pub total: u64,
    /// Items handled so far (embedded + kept + dropped).
    pub handled: u64,
    /// Re-embedded from their objects into the new index.
    pub embedded: u64,
    /// Already in the new index (a resumed re-index).
    pub kept: u64,
    /// Left out: the object is gone, or the model refused it (each is logged).
    pub dropped: u64,
    /// Deleted from the live index while the re-index ran, so left out of the new one.
    pub removed: u64,
    pub started_at: String,
    pub seconds: f64,
    /// Items embedded per second of the run so far.
    pub embedded_per_second: f64,
    /// Why it failed; run it again to resume.
    pub error: Option<String>,
}

/// What a model's index is to searches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// Searched by default, written by every write.
    Live,
    /// Searched only when a request names it (`model=`): a copy of the catalogue as it was
    /// when staged, made by another model.
    Staged,
}

/// A model whose index the backend can search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServedModel {
    pub role: ModelRole,
    pub name: String,
    pub fingerprint: String,
    pub dim: usize,
    /// Items in its index.
    pub points: u64,
    /// Whether a model-serving of this model is connected (`MODEL_SERVING_URL`, or
    /// `MODEL_SERVING_NEXT_URL` for a staged one): without it, only searches that embed
    /// nothing ("more like this") can use the index.
    pub encoder: bool,
}

/// `GET /v1/models`: the live model and the staged one, if any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ModelsResponse {
    pub models: Vec<ServedModel>,
}

/// `DELETE /v1/images/{id}`: the id that was removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeleteResponse {
    pub deleted: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IngestBatchResponse {
    pub upserted: usize,
}

/// Which of the given ids are already indexed (lets the ETL skip work cheaply).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExistsRequest {
    #[schema(max_items = 1000)]
    pub ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExistsResponse {
    pub existing: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ListResponse {
    pub items: Vec<ImageItem>,
    pub offset: usize,
    pub limit: usize,
    /// Items matching the filters.
    pub total: u64,
}

/// `GET /v1/admin/queries`: what shoppers typed, for operators (opt-in, behind the write key).
/// Queries are normalised (trimmed, lower case, spaces collapsed) and cut to
/// [`MAX_SUMMARY_QUERY_CHARS`]; at most [`MAX_SUMMARY_QUERIES`] distinct ones are kept since the
/// backend started, later new ones are only counted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct QuerySummaryResponse {
    /// Text searches counted.
    pub searches: u64,
    /// Distinct queries kept.
    pub distinct: usize,
    /// Searches for queries not kept (the summary was full).
    pub not_kept: u64,
    /// The most asked queries, most first.
    pub top: Vec<QueryCount>,
    /// The most asked queries that found nothing (no hits, or none at the relevance floor).
    pub zero_results: Vec<QueryCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct QueryCount {
    pub query: String,
    pub searches: u64,
}

pub const MAX_SUMMARY_QUERIES: usize = 2000;
pub const MAX_SUMMARY_QUERY_CHARS: usize = 80;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StatsResponse {
    pub total: u64,
    /// The model that made the index's vectors, as `name (fingerprint, N dimensions)`; `None`
    /// while the index is empty or made before models were recorded.
    #[serde(default)]
    pub model: Option<String>,
    /// That model's fingerprint (model-serving's `GET /v1/model` names the one it serves).
    #[serde(default)]
    pub fingerprint: Option<String>,
    pub by_dataset: BTreeMap<String, u64>,
    pub by_category: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FacetValue {
    pub value: String,
    pub count: u64,
}

/// Values and counts of each filterable field, most frequent first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FacetsResponse {
    pub facets: BTreeMap<String, Vec<FacetValue>>,
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// An [`ErrorKind`] code.
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: kind.code().to_owned(),
                message: message.into(),
            },
        }
    }

    /// The kind of this error, if this version knows its code.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_code(&self.error.code)
    }
}

/// Every client call fails with the shared error of the services' JSON calls.
pub use http_edge::CallError as ClientError;

/// A typed client for the backend. Cheap to clone; connections are pooled. Its `Debug` output
/// masks the API key.
#[derive(Debug, Clone)]
pub struct BackendClient {
    base: String,
    http: reqwest::Client,
    api_key: Option<SecretString>,
    /// Sent as `X-Forwarded-For`: the shopper a caller (the frontend) calls for.
    on_behalf_of: Option<std::net::IpAddr>,
}

impl BackendClient {
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
            api_key: None,
            on_behalf_of: None,
        })
    }

    /// The same client, calling on behalf of `client`: every request says `X-Forwarded-For:
    /// client`, which the backend believes when the caller is one of its `BACKEND_TRUSTED_PROXIES`
    /// (so its per-client search limits count shoppers, not the frontend).
    pub fn on_behalf_of(&self, client: std::net::IpAddr) -> Self {
        Self {
            on_behalf_of: Some(client),
            ..self.clone()
        }
    }

    /// The key sent as `x-api-key` on writes.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn write(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.header("x-api-key", key.expose_secret()),
            None => request,
        }
    }

    pub async fn search_text(
        &self,
        q: &str,
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        self.search_text_as(q, SearchMode::default(), params).await
    }

    /// A text search matched as `mode` says.
    pub async fn search_text_as(
        &self,
        q: &str,
        mode: SearchMode,
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/search", self.base))
            .query(&[("q", q), ("mode", mode.as_str())])
            .query(params);
        self.send(request).await
    }

    pub async fn search_image(
        &self,
        image: Vec<u8>,
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        self.search_image_refined(image, None, params).await
    }

    /// A photo search refined by words ("in red"; `-word` leaves one out).
    pub async fn search_image_refined(
        &self,
        image: Vec<u8>,
        refine: Option<&str>,
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(image).file_name("query"),
        );
        let mut request = self
            .http
            .post(format!("{}/v1/search/image", self.base))
            .query(params);
        if let Some(words) = refine.map(str::trim).filter(|w| !w.is_empty()) {
            request = request.query(&[("q", words)]);
        }
        self.send(request.multipart(form)).await
    }

    /// More like the `like` items, less like the `dislike` ones.
    pub async fn recommend(
        &self,
        like: &[Uuid],
        dislike: &[Uuid],
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        let join = |ids: &[Uuid]| {
            ids.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut request = self
            .http
            .get(format!("{}/v1/search/recommend", self.base))
            .query(&[("like", join(like))]);
        if !dislike.is_empty() {
            request = request.query(&[("dislike", join(dislike))]);
        }
        self.send(request.query(params)).await
    }

    pub async fn similar(
        &self,
        id: Uuid,
        params: &SearchParams,
    ) -> Result<SearchResponse, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/images/{id}/similar", self.base))
            .query(params);
        self.send(request).await
    }

    pub async fn get_image(&self, id: Uuid) -> Result<ImageItem, ClientError> {
        self.send(self.http.get(format!("{}/v1/images/{id}", self.base)))
            .await
    }

    pub async fn delete_image(&self, id: Uuid) -> Result<(), ClientError> {
        let request = self.write(self.http.delete(format!("{}/v1/images/{id}", self.base)));
        self.send::<serde_json::Value>(request).await.map(|_| ())
    }

    pub async fn list_images(
        &self,
        offset: usize,
        limit: usize,
        filters: &Filters,
    ) -> Result<ListResponse, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/images", self.base))
            .query(&[("offset", offset), ("limit", limit)])
            .query(filters);
        self.send(request).await
    }

    pub async fn ingest_batch(
        &self,
        items: Vec<IngestItem>,
    ) -> Result<IngestBatchResponse, ClientError> {
        self.ingest_batch_made_by(items, None).await
    }

    /// A batch whose vectors the model with fingerprint `model` made: refused with 503
    /// `model_mismatch` when that is not the backend's and the index's model.
    pub async fn ingest_batch_made_by(
        &self,
        items: Vec<IngestItem>,
        model: Option<String>,
    ) -> Result<IngestBatchResponse, ClientError> {
        let request = self
            .write(self.http.post(format!("{}/v1/images:batch", self.base)))
            .json(&IngestBatchRequest { items, model });
        self.send(request).await
    }

    /// A page of points with their vectors (a backup's reads; needs the write key).
    pub async fn points_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<PointsPage, ClientError> {
        let request = self
            .write(self.http.get(format!("{}/v1/admin/points", self.base)))
            .query(&[("offset", offset), ("limit", limit)]);
        self.send(request).await
    }

    /// Starts a re-index (or answers the one under way).
    /// With `stage`, the new index is kept beside the live one ([`ReindexRequest::stage`]).
    pub async fn start_reindex(
        &self,
        model: ReindexModel,
        stage: bool,
    ) -> Result<ReindexStatus, ClientError> {
        let request = self
            .write(self.http.post(format!("{}/v1/admin/reindex", self.base)))
            .json(&ReindexRequest { model, stage });
        self.send(request).await
    }

    /// The live model and the staged one (`GET /v1/models`).
    pub async fn models(&self) -> Result<ModelsResponse, ClientError> {
        self.send(self.http.get(format!("{}/v1/models", self.base)))
            .await
    }

    /// The re-index under way or last run.
    pub async fn reindex_status(&self) -> Result<ReindexStatus, ClientError> {
        let request = self.write(self.http.get(format!("{}/v1/admin/reindex", self.base)));
        self.send(request).await
    }

    pub async fn existing(&self, ids: Vec<Uuid>) -> Result<Vec<Uuid>, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/images:exists", self.base))
            .json(&ExistsRequest { ids });
        self.send::<ExistsResponse>(request)
            .await
            .map(|r| r.existing)
    }

    pub async fn stats(&self) -> Result<StatsResponse, ClientError> {
        self.send(self.http.get(format!("{}/v1/stats", self.base)))
            .await
    }

    pub async fn facets(&self) -> Result<FacetsResponse, ClientError> {
        self.send(self.http.get(format!("{}/v1/facets", self.base)))
            .await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let request = match self.on_behalf_of {
            Some(client) => request.header("x-forwarded-for", client.to_string()),
            None => request,
        };
        http_edge::send_json(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_a_slot_and_params_serialise_flat() {
        let mut filters = Filters::default();
        for field in Filters::FIELDS {
            assert!(
                filters.set(field, Some(format!(" {field}-value "))),
                "{field}"
            );
        }
        assert!(!filters.set("s3_key", Some("x".into())));
        let fields: Vec<&str> = filters.iter().map(|(f, _)| f).collect();
        assert_eq!(fields, Filters::FIELDS);
        assert_eq!(filters.get("usage"), Some("usage-value"));
        let blank = Filters {
            gender: Some("  ".into()),
            ..Filters::default()
        };
        assert!(blank.is_empty());
        let params = SearchParams {
            k: Some(5),
            filters: Filters {
                season: Some("Summer".into()),
                ..Filters::default()
            },
            ..SearchParams::default()
        };
        let url = reqwest::Url::parse_with_params("http://x/", &[("q", "a")]).expect("url");
        let request = reqwest::Client::new()
            .get(url)
            .query(&params)
            .build()
            .expect("request");
        assert_eq!(request.url().query(), Some("q=a&k=5&season=Summer"));
    }

    #[test]
    fn debug_output_masks_the_api_key() {
        let client = BackendClient::new("http://127.0.0.1:1", Duration::from_secs(1))
            .expect("client")
            .with_api_key("very-secret-key-0123456789");
        let debug = format!("{client:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
    }
}
