//! HTTP: extract, call the engine, map. Every error is `{"error": {"code", "message"}}`, its
//! status chosen in [`error`] alone. OpenAPI at `/openapi.json`, interactive docs at `/docs`.
//!
//! - [`error`]: [`ApiError`], kinds to statuses;
//! - [`extract`]: the query extractor (unknown keys refused), ids, bodies, the write key;
//! - [`search`]: the search handlers, facets and stats;
//! - [`images`]: the catalogue's reads and writes;
//! - [`openapi`]: the document.

mod error;
mod extract;
mod images;
mod openapi;
mod search;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use backend_api::ErrorKind;
use http_edge::EdgeLimits;
use http_edge::rate_limit::RateLimit;
use secrecy::SecretString;
use telemetry::{PrometheusHandle, Readiness};

pub use error::ApiError;
pub use extract::{Params, RouteQuery};
pub use openapi::ApiDoc;

use crate::fetch::ImageFetcher;
use crate::search::SearchEngine;
use extract::require_write_key;
use images::{add_image, delete_image, exists, get_image, ingest_batch, list_images};
use search::{facets, search_image, search_reference, search_text, similar, stats};

pub const SERVICE: &str = "backend";

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<SearchEngine>,
    pub api_key: Option<Arc<SecretString>>,
    pub timeout: Duration,
    /// Add-by-URL downloads, under the rules of [`crate::fetch`].
    pub fetcher: Arc<ImageFetcher>,
    pub max_body_bytes: usize,
    /// The operators' query summary, when `BACKEND_QUERY_SUMMARY` turned it on.
    pub queries: Option<Arc<crate::queries::QuerySummary>>,
}

/// What the edge admits ([`http_edge::limits`]): timeouts and load shedding on every API route,
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
            get(get_image).merge(
                delete(delete_image)
                    .route_layer(writer.clone())
                    .route_layer(write.clone()),
            ),
        )
        .route(
            "/v1/search/recommend",
            get(search::recommend).route_layer(search.clone()),
        )
        .route(
            "/v1/compare",
            get(search::compare_items)
                .post(search::compare_photos)
                .route_layer(search.clone()),
        )
        .route("/v1/images/{id}/similar", get(similar).route_layer(search))
        .route(
            "/v1/admin/queries",
            get(search::query_summary)
                .route_layer(writer.clone())
                .route_layer(write.clone()),
        )
        .route(
            "/v1/admin/points",
            get(search::points_page)
                .route_layer(writer.clone())
                .route_layer(write.clone()),
        )
        .route(
            "/v1/admin/reindex",
            get(search::reindex_status)
                .post(search::start_reindex)
                .route_layer(writer)
                .route_layer(write),
        )
        .route("/v1/stats", get(stats))
        .route("/v1/models", get(search::models))
        .route("/v1/facets", get(facets))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .with_state(state)
        // Swagger UI from the crate's vendored copy: the docs work on machines with no CDN access.
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json")),
        );
    Router::new()
        .merge(http_edge::protect(api, SERVICE, &edge.limits))
        // Outside the edge limits: probes and scrapes answer while the API sheds load.
        .merge(telemetry::ops_router(metrics, readiness))
        .fallback(|| async { ApiError::new(ErrorKind::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(http_edge::panic::catch_panic_with(|| {
            ApiError::of(ErrorKind::Internal).into_response()
        }))
        .layer(middleware::from_fn_with_state(
            SERVICE,
            telemetry::http::track_requests,
        ))
}
