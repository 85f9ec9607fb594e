//! Page handlers: read the URL or the upload, call the backend through its typed client (bounded
//! by a timeout), render a view. Every state a shopper can meet renders a whole page; a backend
//! fault is a friendly message with 503 + `Retry-After`, never a hang or a bare error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use backend_api::{BackendClient, ClientError, FacetsResponse, SearchParams, SearchResponse};
use telemetry::rate_limit::ClientIp;
use uuid::Uuid;

use crate::metrics;
use crate::views::{self, Filters, Notice, NoticeKind, ResultsPage, SearchState, url_with};

/// The backend accepts k + offset up to 1000.
const MAX_RESULTS: usize = 1000;
/// Similar items under a product.
const SIMILAR_ON_PRODUCT: usize = 12;

#[derive(Clone)]
pub struct AppState {
    pub backend: BackendClient,
    pub facets: moka::future::Cache<(), Arc<FacetsResponse>>,
    pub page_size: usize,
    pub max_upload_bytes: usize,
    pub timeout: Duration,
}

/// Why a backend call gave nothing to show.
#[derive(Debug)]
enum Trouble {
    Slow,
    Down,
    Rejected { status: u16, message: String },
}

impl AppState {
    /// The backend client for one request: on behalf of the shopper the edge resolved, so the
    /// backend's per-client limits see shoppers rather than this frontend.
    fn backend_for(&self, client: Option<Extension<ClientIp>>) -> BackendClient {
        match client {
            Some(Extension(ClientIp(ip))) => self.backend.on_behalf_of(ip),
            None => self.backend.clone(),
        }
    }

    /// Runs one backend call under the page's timeout, counting it by outcome.
    async fn call<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Trouble> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, future).await {
            Err(_) => Err(Trouble::Slow),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ClientError::Transport(e))) if e.is_timeout() => Err(Trouble::Slow),
            Ok(Err(ClientError::Rejected {
                status, message, ..
            })) => Err(Trouble::Rejected { status, message }),
            // The backend's per-shopper limit (the frontend calls on the shopper's behalf).
            Ok(Err(ClientError::RateLimited { message, .. })) => Err(Trouble::Rejected {
                status: 429,
                message,
            }),
            Ok(Err(error)) => {
                tracing::warn!(call, error = %error, "backend call failed");
                Err(Trouble::Down)
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Trouble::Slow) => "timeout",
            Err(Trouble::Down) => "unavailable",
            Err(Trouble::Rejected { .. }) => "rejected",
        };
        if matches!(result, Err(Trouble::Slow)) {
            tracing::warn!(
                call,
                timeout_ms = self.timeout.as_millis() as u64,
                "backend call timed out"
            );
        }
        metrics::backend_call(call, outcome, started.elapsed());
        result
    }

    /// The filter values, cached briefly; a page renders without filters when they fail.
    async fn facets(&self) -> Option<FacetsResponse> {
        if let Some(cached) = self.facets.get(&()).await {
            return Some((*cached).clone());
        }
        let facets = self.call("facets", self.backend.facets()).await.ok()?;
        self.facets.insert((), Arc::new(facets.clone())).await;
        Some(facets)
    }
}

/// A rendered page with its status; 503s say when to retry.
fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn problem(title: &str, detail: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Problem,
        title: title.to_owned(),
        detail: detail.into(),
    }
}

fn info(title: impl Into<String>, detail: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Info,
        title: title.into(),
        detail: detail.into(),
    }
}

/// What a shopper is told when a backend call fails, and the page's status.
fn trouble_notice(trouble: Trouble, timeout: Duration, subject: &str) -> (StatusCode, Notice) {
    match trouble {
        Trouble::Slow => (
            StatusCode::SERVICE_UNAVAILABLE,
            problem(
                "Search is taking longer than usual",
                format!(
                    "We stopped waiting after {:.0} seconds. Please try again in a moment.",
                    timeout.as_secs_f64()
                ),
            ),
        ),
        Trouble::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            problem(
                "Search is temporarily unavailable",
                "We could not reach the search service. Please try again in a moment.",
            ),
        ),
        Trouble::Rejected { status: 404, .. } => (
            StatusCode::NOT_FOUND,
            problem(
                "We could not find that product",
                "It may have been removed from the catalogue.",
            ),
        ),
        Trouble::Rejected { status: 413, .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            problem("That photo is too large", "Please try a smaller photo."),
        ),
        Trouble::Rejected { status: 429, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            problem(
                "Too many searches at once",
                "Please wait a few seconds and try again.",
            ),
        ),
        Trouble::Rejected { status, message } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            problem(&format!("We could not use that {subject}"), message),
        ),
    }
}

/// The last value of each query-string key; never fails, whatever the URL holds.
fn parse_query(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn parse_filters(fields: &HashMap<String, String>) -> Result<Filters, Notice> {
    let min_score = match fields.get("min_score") {
        None => None,
        Some(raw) => match raw.parse::<f32>() {
            Ok(score) if (-1.0..=1.0).contains(&score) => Some(score),
            _ => {
                return Err(problem(
                    "That minimum score does not work",
                    "The minimum score must be a number between -1 and 1.",
                ));
            }
        },
    };
    Ok(Filters {
        gender: fields.get("gender").cloned(),
        article_type: fields.get("article_type").cloned(),
        colour: fields.get("colour").cloned(),
        min_score,
    })
}

fn parse_page(fields: &HashMap<String, String>, page_size: usize) -> Result<usize, Notice> {
    let last = (MAX_RESULTS / page_size).max(1);
    match fields.get("page") {
        None => Ok(1),
        Some(raw) => match raw.parse::<usize>() {
            Ok(page) if (1..=last).contains(&page) => Ok(page),
            _ => Err(problem(
                "There is no such page",
                format!("Pages go from 1 to {last}."),
            )),
        },
    }
}

/// The filters and page of a paged list (text results, "more like this").
fn parse_listing(
    fields: &HashMap<String, String>,
    page_size: usize,
) -> Result<(Filters, usize), Notice> {
    Ok((parse_filters(fields)?, parse_page(fields, page_size)?))
}

/// The 400 page for a list whose filters or page cannot work.
fn bad_listing(
    page_name: &'static str,
    title: &str,
    view_state: &SearchState,
    notice: Notice,
) -> Response {
    metrics::page(page_name, "error");
    let html = views::document(title, view_state, None, views::notice(notice));
    page(StatusCode::BAD_REQUEST, html)
}

fn params(filters: &Filters, k: usize, offset: usize) -> SearchParams {
    SearchParams {
        k: Some(k),
        offset: Some(offset),
        gender: filters.gender.clone(),
        article_type: filters.article_type.clone(),
        colour: filters.colour.clone(),
        min_score: filters.min_score,
        ..SearchParams::default()
    }
}

/// Links to the neighbouring pages of a paged result, keeping the query and filters.
fn pager(
    path: &str,
    base: &[(&'static str, String)],
    page: usize,
    page_size: usize,
    shown: usize,
) -> (Option<String>, Option<String>) {
    let link = |p: usize| {
        let mut pairs = base.to_vec();
        if p > 1 {
            pairs.push(("page", p.to_string()));
        }
        url_with(path, &pairs)
    };
    let previous = (page > 1).then(|| link(page - 1));
    let more = shown == page_size && (page + 1) * page_size <= MAX_RESULTS;
    (previous, more.then(|| link(page + 1)))
}

fn summary(response: &SearchResponse) -> String {
    let shown = response.hits.len();
    let noun = if shown == 1 { "match" } else { "matches" };
    match &response.embedded_text {
        Some(text) => format!(
            "{shown} {noun} shown · searched as “{text}” · {:.0} ms",
            response.took_ms
        ),
        None => format!("{shown} {noun} shown · {:.0} ms", response.took_ms),
    }
}

/// `GET /`: the start page without a query, the results with one.
pub async fn search(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let backend = state.backend_for(client);
    let fields = parse_query(raw.as_deref());
    let q = fields.get("q").cloned().unwrap_or_default();
    let mut view_state = SearchState {
        q: q.clone(),
        filter_action: "/".into(),
        ..SearchState::default()
    };
    let (filters, page_no) = match parse_listing(&fields, state.page_size) {
        Ok(listing) => listing,
        Err(notice) => return bad_listing("results", "Search", &view_state, notice),
    };
    view_state.filters = filters.clone();
    if q.is_empty() {
        let (facets, stats) = tokio::join!(state.facets(), state.call("stats", backend.stats()));
        metrics::page("home", "ok");
        let html = views::document(
            "",
            &view_state,
            facets.as_ref(),
            views::home(stats.ok().map(|s| s.total)),
        );
        return page(StatusCode::OK, html);
    }
    let offset = (page_no - 1) * state.page_size;
    let search_params = params(&filters, state.page_size, offset);
    let search = state.call("search_text", backend.search_text(&q, &search_params));
    let (facets, found) = tokio::join!(state.facets(), search);
    let title = format!("“{q}”");
    match found {
        Ok(response) => {
            let mut base = vec![("q", q.clone())];
            base.extend(filters.pairs());
            let (previous, next) = pager("/", &base, page_no, state.page_size, response.hits.len());
            let shown = if response.hits.is_empty() {
                "empty"
            } else {
                "ok"
            };
            metrics::page("results", shown);
            let results = ResultsPage {
                heading: format!("Results for “{q}”"),
                detail: Some(summary(&response)),
                hits: response.hits,
                previous,
                next,
            };
            let empty = info(
                format!("No results for “{q}”"),
                if filters.is_empty() {
                    "Try other words, or search with a photo."
                } else {
                    "Try fewer filters or a lower minimum score."
                },
            );
            let html = views::document(
                &title,
                &view_state,
                facets.as_ref(),
                views::results(results, empty),
            );
            page(StatusCode::OK, html)
        }
        Err(trouble) => {
            metrics::page("results", "error");
            let (status, notice) = trouble_notice(trouble, state.timeout, "query");
            let html = views::document(&title, &view_state, facets.as_ref(), views::notice(notice));
            page(status, html)
        }
    }
}

/// Image formats the model can read, by their first bytes.
fn looks_like_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(b"GIF87a")
        || bytes.starts_with(b"GIF89a")
        || (bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
}

/// What an upload form carried.
struct Upload {
    image: Vec<u8>,
    fields: HashMap<String, String>,
}

async fn read_upload(
    mut multipart: Multipart,
    limit: usize,
) -> Result<Upload, (StatusCode, Notice)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            problem(
                "That photo is too large",
                format!(
                    "Photos up to {} MB work; please try a smaller one.",
                    limit / (1024 * 1024)
                ),
            ),
        )
    };
    let unreadable = |status: StatusCode| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            (
                StatusCode::BAD_REQUEST,
                problem(
                    "We could not read that upload",
                    "Please choose a photo and try again.",
                ),
            )
        }
    };
    let mut image = None;
    let mut fields = HashMap::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => return Err(unreadable(error.status())),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" {
            let mut bytes = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if bytes.len() + chunk.len() > limit {
                            return Err(too_large());
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(error) => return Err(unreadable(error.status())),
                }
            }
            image = Some(bytes);
        } else {
            let value = field.text().await.map_err(|e| unreadable(e.status()))?;
            let value = value.trim();
            if !value.is_empty() && value.len() <= 200 {
                fields.insert(name, value.to_owned());
            }
        }
    }
    match image {
        Some(image) if !image.is_empty() => Ok(Upload { image, fields }),
        _ => Err((
            StatusCode::BAD_REQUEST,
            problem(
                "Please choose a photo",
                "Pick a JPEG, PNG, WebP or GIF photo, then press “Find similar”.",
            ),
        )),
    }
}

/// `POST /search/image`: a multipart upload (works without JavaScript).
pub async fn search_image(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    multipart: Multipart,
) -> Response {
    let backend = state.backend_for(client);
    let view_state = SearchState {
        filter_action: "/".into(),
        ..SearchState::default()
    };
    let fail = |status: StatusCode, notice: Notice, view_state: &SearchState| {
        metrics::page("image_results", "error");
        page(
            status,
            views::document("Photo search", view_state, None, views::notice(notice)),
        )
    };
    let upload = match read_upload(multipart, state.max_upload_bytes).await {
        Ok(upload) => upload,
        Err((status, notice)) => return fail(status, notice, &view_state),
    };
    let filters = match parse_filters(&upload.fields) {
        Ok(filters) => filters,
        Err(notice) => return fail(StatusCode::BAD_REQUEST, notice, &view_state),
    };
    let view_state = SearchState {
        filters: filters.clone(),
        ..view_state
    };
    if !looks_like_image(&upload.image) {
        let notice = problem(
            "That file is not a photo we can read",
            "Please upload a JPEG, PNG, WebP or GIF image.",
        );
        return fail(StatusCode::UNSUPPORTED_MEDIA_TYPE, notice, &view_state);
    }
    let search_params = params(&filters, state.page_size, 0);
    let search = state.call(
        "search_image",
        backend.search_image(upload.image, &search_params),
    );
    let (facets, found) = tokio::join!(state.facets(), search);
    match found {
        Ok(response) => {
            metrics::page(
                "image_results",
                if response.hits.is_empty() {
                    "empty"
                } else {
                    "ok"
                },
            );
            let results = ResultsPage {
                heading: "Items like your photo".into(),
                detail: Some(summary(&response)),
                hits: response.hits,
                ..ResultsPage::default()
            };
            let empty = info(
                "Nothing close to your photo",
                "Try another photo or fewer filters.",
            );
            let html = views::document(
                "Photo search",
                &view_state,
                facets.as_ref(),
                views::results(results, empty),
            );
            page(StatusCode::OK, html)
        }
        Err(trouble) => {
            let (status, notice) = trouble_notice(trouble, state.timeout, "photo");
            fail(status, notice, &view_state)
        }
    }
}

fn parse_id(raw: &str) -> Option<Uuid> {
    Uuid::parse_str(raw).ok()
}

fn not_found(page_name: &'static str, view_state: &SearchState) -> Response {
    metrics::page(page_name, "error");
    let notice = problem(
        "We could not find that product",
        "The link may be mistyped, or the product was removed.",
    );
    page(
        StatusCode::NOT_FOUND,
        views::document("Not found", view_state, None, views::notice(notice)),
    )
}

/// `GET /similar/{id}`: "more like this", paged and filterable.
pub async fn similar(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    Path(raw_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let backend = state.backend_for(client);
    let mut view_state = SearchState {
        filter_action: format!("/similar/{raw_id}"),
        ..SearchState::default()
    };
    let Some(id) = parse_id(&raw_id) else {
        return not_found("similar", &view_state);
    };
    let fields = parse_query(raw.as_deref());
    let (filters, page_no) = match parse_listing(&fields, state.page_size) {
        Ok(listing) => listing,
        Err(notice) => return bad_listing("similar", "More like this", &view_state, notice),
    };
    view_state.filters = filters.clone();
    let offset = (page_no - 1) * state.page_size;
    let search_params = params(&filters, state.page_size, offset);
    let (facets, source, found) = tokio::join!(
        state.facets(),
        state.call("get_image", backend.get_image(id)),
        state.call("similar", backend.similar(id, &search_params)),
    );
    match found {
        Ok(response) => {
            let (previous, next) = pager(
                &format!("/similar/{id}"),
                &filters.pairs(),
                page_no,
                state.page_size,
                response.hits.len(),
            );
            let heading = match source {
                Ok(item) if !item.attributes.caption.is_empty() => {
                    format!("More like “{}”", item.attributes.caption)
                }
                _ => "More like this".to_owned(),
            };
            metrics::page(
                "similar",
                if response.hits.is_empty() {
                    "empty"
                } else {
                    "ok"
                },
            );
            let results = ResultsPage {
                heading,
                detail: Some(summary(&response)),
                hits: response.hits,
                previous,
                next,
            };
            let empty = info(
                "Nothing similar found",
                "Try fewer filters or a lower minimum score.",
            );
            let html = views::document(
                "More like this",
                &view_state,
                facets.as_ref(),
                views::results(results, empty),
            );
            page(StatusCode::OK, html)
        }
        Err(trouble) => {
            metrics::page("similar", "error");
            let (status, notice) = trouble_notice(trouble, state.timeout, "product");
            let html = views::document(
                "More like this",
                &view_state,
                facets.as_ref(),
                views::notice(notice),
            );
            page(status, html)
        }
    }
}

/// `GET /product/{id}`: one product and similar items.
pub async fn product(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    Path(raw_id): Path<String>,
) -> Response {
    let backend = state.backend_for(client);
    let view_state = SearchState {
        filter_action: "/".into(),
        ..SearchState::default()
    };
    let Some(id) = parse_id(&raw_id) else {
        return not_found("product", &view_state);
    };
    let similar_params = params(&Filters::default(), SIMILAR_ON_PRODUCT + 1, 0);
    let (item, similar) = tokio::join!(
        state.call("get_image", backend.get_image(id)),
        state.call("similar", backend.similar(id, &similar_params)),
    );
    match item {
        Ok(item) => {
            metrics::page("product", "ok");
            let title = views::caption_of(&item);
            let similar = similar
                .map(|r| r.hits)
                .map_err(|trouble| trouble_notice(trouble, state.timeout, "product").1);
            let html = views::document(&title, &view_state, None, views::product(item, similar));
            page(StatusCode::OK, html)
        }
        Err(trouble) => {
            metrics::page("product", "error");
            let (status, notice) = trouble_notice(trouble, state.timeout, "product");
            let html = views::document("Product", &view_state, None, views::notice(notice));
            page(status, html)
        }
    }
}

/// Any other path.
pub async fn fallback() -> Response {
    metrics::page("not_found", "error");
    let notice = problem(
        "There is no such page",
        "Start a new search from the box above.",
    );
    page(
        StatusCode::NOT_FOUND,
        views::document(
            "Not found",
            &SearchState::default(),
            None,
            views::notice(notice),
        ),
    )
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("../assets/app.css"))
}

pub async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_keeps_last_values_and_drops_empty_ones() {
        let fields = parse_query(Some("q=red+dress&gender=&q=blue%20shirt&colour=Red"));
        assert_eq!(fields.get("q").map(String::as_str), Some("blue shirt"));
        assert!(!fields.contains_key("gender"));
        assert_eq!(fields.get("colour").map(String::as_str), Some("Red"));
        assert!(parse_query(Some("%ZZ=%%&&=")).len() <= 1);
    }

    #[test]
    fn bad_min_score_and_page_are_refused() {
        let fields = parse_query(Some("min_score=2"));
        assert!(parse_filters(&fields).is_err());
        let fields = parse_query(Some("min_score=abc"));
        assert!(parse_filters(&fields).is_err());
        let fields = parse_query(Some("min_score=0.25"));
        assert_eq!(parse_filters(&fields).map(|f| f.min_score), Ok(Some(0.25)));
        assert!(parse_page(&parse_query(Some("page=0")), 24).is_err());
        assert!(parse_page(&parse_query(Some("page=42")), 24).is_err());
        assert_eq!(parse_page(&parse_query(Some("page=41")), 24), Ok(41));
    }

    #[test]
    fn pager_links_keep_the_query_and_stop_at_the_backend_limit() {
        let base = vec![("q", "red dress".to_owned())];
        let (prev, next) = pager("/", &base, 1, 24, 24);
        assert_eq!(prev, None);
        assert_eq!(next.as_deref(), Some("/?q=red+dress&page=2"));
        let (prev, next) = pager("/", &base, 2, 24, 10);
        assert_eq!(prev.as_deref(), Some("/?q=red+dress"));
        assert_eq!(next, None);
        let (_, next) = pager("/", &base, 41, 24, 24);
        assert_eq!(next, None, "page 42 would pass the 1000-result limit");
    }

    #[test]
    fn image_sniffing() {
        assert!(looks_like_image(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(looks_like_image(b"\x89PNG\r\n\x1a\n...."));
        assert!(looks_like_image(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(!looks_like_image(b"%PDF-1.7"));
        assert!(!looks_like_image(b""));
    }
}
