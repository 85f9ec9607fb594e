//! The shop's search page: a Leptos app rendered on the server (no wasm), calling the backend
//! through its typed client. Plain links and forms carry every interaction, so it works with
//! JavaScript off; the query lives in the URL, so results are shareable and the back button works.

pub mod config;
pub mod metrics;
pub mod pages;
pub mod views;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use backend_api::BackendClient;
use telemetry::ops::Readiness;
use tokio::net::TcpListener;

pub use config::FrontendConfig;

pub const SERVICE: &str = "frontend";

/// Builds the app: pages, static assets, `/metrics` and health.
pub fn router(config: &FrontendConfig) -> anyhow::Result<Router> {
    config.validate().map_err(anyhow::Error::msg)?;
    let metrics_handle = telemetry::install_metrics(SERVICE)?;
    metrics::describe();
    // The client gives up a little after the page does, so the page's own timeout decides.
    let backend = BackendClient::new(
        config.backend_url.clone(),
        config.search_timeout() + Duration::from_millis(500),
    )?;
    let state = pages::AppState {
        backend,
        facets: moka::future::Cache::builder()
            .max_capacity(1)
            .time_to_live(Duration::from_secs(30))
            .build(),
        page_size: config.page_size,
        max_upload_bytes: config.max_upload_bytes,
        timeout: config.search_timeout(),
    };
    let readiness = Readiness::new();
    // Pages render (with a friendly message) even when the backend is down, so readiness
    // does not follow the backend.
    readiness.set_ready("pages");
    let pages = Router::new()
        .route("/", get(pages::search))
        .route(
            "/search/image",
            post(pages::search_image)
                .layer(DefaultBodyLimit::max(config.max_upload_bytes + 64 * 1024)),
        )
        .route("/similar/{id}", get(pages::similar))
        .route("/product/{id}", get(pages::product))
        .route("/static/app.css", get(pages::stylesheet))
        .route("/static/app.js", get(pages::script))
        .fallback(pages::fallback)
        .with_state(state);
    Ok(Router::new()
        .merge(pages)
        .merge(telemetry::ops_router(metrics_handle, readiness))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(middleware::from_fn_with_state(
            SERVICE,
            telemetry::http::track_requests,
        )))
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::error!("page handler panicked");
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::response::Html("<!DOCTYPE html><title>Error</title><h1>Something went wrong</h1><p><a href=\"/\">Back to the start</a></p>"),
    )
        .into_response()
}

/// Serves until `shutdown`, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("frontend stopped");
    Ok(())
}
