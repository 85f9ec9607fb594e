//! Page handlers: read the URL or the upload ([`crate::query`], [`crate::upload`]), call the
//! backend ([`crate::calls`]), render a view. Every state a shopper can meet renders a whole page; a
//! backend fault is a friendly message with 503 + `Retry-After` ([`crate::notices`]), never a hang
//! or a bare error.

use axum::Extension;
use axum::extract::{Multipart, Path, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use backend_api::{FacetsResponse, SearchMode, SearchResponse};
use http_edge::rate_limit::ClientIp;
use uuid::Uuid;

use crate::calls::AppState;
use crate::metrics;
use crate::notices::{info, page, problem, trouble_notice};
use crate::query::{pager, params, parse_listing, parse_query, parse_refinement};
use crate::upload::{looks_like_image, read_upload};
use crate::views::{self, CardLinks, MAX_TASTE, Notice, Refinement, ResultsPage, SearchState};

/// Similar items under a product.
const SIMILAR_ON_PRODUCT: usize = 12;

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

fn summary(response: &SearchResponse) -> String {
    let shown = response.hits.len();
    let noun = if shown == 1 { "match" } else { "matches" };
    let mut line = format!("{shown} {noun} shown");
    if let Some(text) = &response.embedded_text {
        line.push_str(&format!(" · searched as “{text}”"));
    }
    if !response.without.is_empty() {
        let words: Vec<String> = response.without.iter().map(|w| format!("“{w}”")).collect();
        line.push_str(&format!(" · without {}", words.join(", ")));
    }
    line.push_str(&format!(" · {:.0} ms", response.took_ms));
    line
}

/// A list page (text results, photo results, "more like this"): the grid or its empty notice,
/// or the trouble's page; counted by what it showed.
fn list_page(
    page_name: &'static str,
    title: &str,
    view_state: &SearchState,
    facets: Option<&FacetsResponse>,
    shown: Result<(ResultsPage, Notice), (StatusCode, Notice)>,
) -> Response {
    match shown {
        Ok((results, empty)) => {
            let shown = if results.hits.is_empty() {
                "empty"
            } else {
                "ok"
            };
            metrics::page(page_name, shown);
            let main = views::results(results, empty);
            page(
                StatusCode::OK,
                views::document(title, view_state, facets, main),
            )
        }
        Err((status, notice)) => {
            metrics::page(page_name, "error");
            let main = views::notice(notice);
            page(status, views::document(title, view_state, facets, main))
        }
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
    let (refinement, page_no) = match parse_listing(&fields, state.page_size) {
        Ok(listing) => listing,
        Err(notice) => return bad_listing("results", "Search", &view_state, notice),
    };
    view_state.refinement = refinement.clone();
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
    let search_params = params(&refinement, state.page_size, offset);
    // A minimum score is a similarity ("Minimum similarity" on the form): it asks for a search
    // by meaning; else the shopper's words and their meaning both count.
    let mode = if search_params.min_score.is_some() {
        SearchMode::Vector
    } else {
        SearchMode::Hybrid
    };
    let search = state.call(
        "search_text",
        backend.search_text_as(&q, mode, &search_params),
    );
    let (facets, found) = tokio::join!(state.facets(), search);
    let shown = found
        .map(|response| {
            let mut base = vec![("q", q.clone())];
            base.extend(refinement.pairs());
            let (previous, next) = pager("/", &base, page_no, state.page_size, response.hits.len());
            let results = ResultsPage {
                source: "text",
                first_position: offset + 1,
                heading: format!("Results for “{q}”"),
                detail: Some(summary(&response)),
                hits: response.hits,
                previous,
                next,
                links: CardLinks::Similar,
            };
            let empty = if response.relevance_floor.is_some() && refinement.is_empty() {
                // The backend shows nothing below the model's relevance floor: nothing in the
                // catalogue is like these words. Offer what it does hold.
                info(
                    format!("No good matches for “{q}”"),
                    "Nothing in the catalogue is close enough to it. Try one of these, or search with a photo.",
                )
                .suggesting(views::suggestions(facets.as_ref()))
            } else {
                info(
                    format!("No results for “{q}”"),
                    if refinement.is_empty() {
                        "Try other words, or search with a photo."
                    } else {
                        "Try fewer filters or a lower minimum score."
                    },
                )
            };
            (results, empty)
        })
        .map_err(|trouble| trouble_notice(trouble, state.timeout, "query"));
    let title = format!("“{q}”");
    list_page("results", &title, &view_state, facets.as_ref(), shown)
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
    let refinement = match parse_refinement(&upload.fields) {
        Ok(refinement) => refinement,
        Err(notice) => return fail(StatusCode::BAD_REQUEST, notice, &view_state),
    };
    let view_state = SearchState {
        refinement: refinement.clone(),
        ..view_state
    };
    if !looks_like_image(&upload.image) {
        let notice = problem(
            "That file is not a photo we can read",
            "Please upload a JPEG, PNG, WebP or GIF image.",
        );
        return fail(StatusCode::UNSUPPORTED_MEDIA_TYPE, notice, &view_state);
    }
    let search_params = params(&refinement, state.page_size, 0);
    // Words typed beside the photo refine it ("in red", "-floral").
    let refine = upload.fields.get("q").map(String::as_str);
    let search = state.call(
        "search_image",
        backend.search_image_refined(upload.image, refine, &search_params),
    );
    let (facets, found) = tokio::join!(state.facets(), search);
    let shown = found
        .map(|response| {
            let results = ResultsPage {
                source: "image",
                first_position: 1,
                heading: "Items like your photo".into(),
                detail: Some(summary(&response)),
                hits: response.hits,
                ..ResultsPage::default()
            };
            let empty = info(
                "Nothing close to your photo",
                "Try another photo or fewer filters.",
            );
            (results, empty)
        })
        .map_err(|trouble| trouble_notice(trouble, state.timeout, "photo"));
    list_page(
        "image_results",
        "Photo search",
        &view_state,
        facets.as_ref(),
        shown,
    )
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
    let (refinement, page_no) = match parse_listing(&fields, state.page_size) {
        Ok(listing) => listing,
        Err(notice) => return bad_listing("similar", "More like this", &view_state, notice),
    };
    view_state.refinement = refinement.clone();
    let offset = (page_no - 1) * state.page_size;
    let search_params = params(&refinement, state.page_size, offset);
    let (facets, source, found) = tokio::join!(
        state.facets(),
        state.call("get_image", backend.get_image(id)),
        state.call("similar", backend.similar(id, &search_params)),
    );
    let shown = found
        .map(|response| {
            let (previous, next) = pager(
                &format!("/similar/{id}"),
                &refinement.pairs(),
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
            let results = ResultsPage {
                source: "similar",
                first_position: offset + 1,
                heading,
                detail: Some(summary(&response)),
                hits: response.hits,
                previous,
                next,
                links: CardLinks::Taste {
                    like: vec![id],
                    dislike: Vec::new(),
                    refinement: Box::new(refinement.clone()),
                },
            };
            let empty = info(
                "Nothing similar found",
                "Try fewer filters or a lower minimum score.",
            );
            (results, empty)
        })
        .map_err(|trouble| trouble_notice(trouble, state.timeout, "product"));
    list_page(
        "similar",
        "More like this",
        &view_state,
        facets.as_ref(),
        shown,
    )
}

/// A comma-separated list of item ids from the URL; `None` when one is not an id or there are
/// more than [`MAX_TASTE`].
fn id_list(raw: Option<&String>) -> Option<Vec<Uuid>> {
    let ids: Vec<Uuid> = raw
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(parse_id)
        .collect::<Option<_>>()?;
    (ids.len() <= MAX_TASTE).then_some(ids)
}

/// `GET /taste?like=..&dislike=..`: more like the liked items, less like the disliked ones,
/// paged and filterable; every card adds itself to either list (the lists live in the URL, so
/// the page can be shared).
pub async fn taste(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let backend = state.backend_for(client);
    let fields = parse_query(raw.as_deref());
    let mut view_state = SearchState {
        filter_action: "/taste".into(),
        ..SearchState::default()
    };
    let lists = id_list(fields.get("like")).zip(id_list(fields.get("dislike")));
    let Some((like, dislike)) = lists.filter(|(like, _)| !like.is_empty()) else {
        let notice = problem(
            "That list of items does not work",
            format!(
                "Pick up to {MAX_TASTE} items with “More like this” (and “Less like this”) on the results."
            ),
        );
        return bad_listing("taste", "Your picks", &view_state, notice);
    };
    let (refinement, page_no) = match parse_listing(&fields, state.page_size) {
        Ok(listing) => listing,
        Err(notice) => return bad_listing("taste", "Your picks", &view_state, notice),
    };
    view_state.refinement = refinement.clone();
    // The filter form keeps the lists.
    view_state.filter_action = views::taste_url(&like, &dislike, &views::Refinement::default());
    let offset = (page_no - 1) * state.page_size;
    let search_params = params(&refinement, state.page_size, offset);
    let (facets, found) = tokio::join!(
        state.facets(),
        state.call(
            "recommend",
            backend.recommend(&like, &dislike, &search_params)
        ),
    );
    let shown = found
        .map(|response| {
            let here = views::taste_url(&like, &dislike, &views::Refinement::default());
            let (path, query) = here.split_once('?').unwrap_or((here.as_str(), ""));
            let mut base: Vec<(&'static str, String)> = parse_query(Some(query))
                .into_iter()
                .filter_map(|(k, v)| match k.as_str() {
                    "like" => Some(("like", v)),
                    "dislike" => Some(("dislike", v)),
                    _ => None,
                })
                .collect();
            base.sort();
            base.extend(refinement.pairs());
            let (previous, next) =
                pager(path, &base, page_no, state.page_size, response.hits.len());
            let picks = match like.len() {
                1 => "More like your pick".to_owned(),
                n => format!("More like your {n} picks"),
            };
            let heading = match dislike.len() {
                0 => picks,
                1 => format!("{picks}, less like 1 other"),
                n => format!("{picks}, less like {n} others"),
            };
            let results = ResultsPage {
                source: "taste",
                first_position: offset + 1,
                heading,
                detail: Some(summary(&response)),
                hits: response.hits,
                previous,
                next,
                links: CardLinks::Taste {
                    like: like.clone(),
                    dislike: dislike.clone(),
                    refinement: Box::new(refinement.clone()),
                },
            };
            let empty = info(
                "Nothing like your picks",
                "Try fewer filters or other picks.",
            );
            (results, empty)
        })
        .map_err(|trouble| trouble_notice(trouble, state.timeout, "product"));
    list_page("taste", "Your picks", &view_state, facets.as_ref(), shown)
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
    let similar_params = params(&Refinement::default(), SIMILAR_ON_PRODUCT + 1, 0);
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

#[derive(Debug, serde::Deserialize)]
pub struct Click {
    from: Option<String>,
    pos: Option<String>,
}

/// `GET /go/{id}?from=&pos=`: a click on a result card. Counted (where the card was shown and
/// its position; never the query or the shopper), then a 303 to the product page. Only a
/// product of this shop is a target: the id must be a UUID, so the link cannot redirect
/// elsewhere.
pub async fn go(Path(raw_id): Path<String>, Query(click): Query<Click>) -> Response {
    let view_state = SearchState {
        filter_action: "/".into(),
        ..SearchState::default()
    };
    let Some(id) = parse_id(&raw_id) else {
        return not_found("product", &view_state);
    };
    let source = click
        .from
        .as_deref()
        .and_then(|from| metrics::CLICK_SOURCES.iter().find(|s| **s == from).copied());
    let position = click
        .pos
        .as_deref()
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| (1..=backend_api::MAX_RESULT_DEPTH).contains(p));
    let (Some(source), Some(position)) = (source, position) else {
        metrics::page("click", "error");
        let notice = problem(
            "This link is broken",
            "It does not say where the product was shown. Open the product from the results.",
        );
        let html = views::document("Broken link", &view_state, None, views::notice(notice));
        return page(StatusCode::BAD_REQUEST, html);
    };
    metrics::click(source, position);
    axum::response::Redirect::to(&format!("/product/{id}")).into_response()
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
