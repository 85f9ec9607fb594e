//! The shop's search page: a Leptos app rendered on the server (no wasm), calling the backend
//! through its typed client. Plain links and forms carry every interaction, so it works with
//! JavaScript off; the query lives in the URL, so results are shareable and the back button works.

mod calls;
pub mod config;
pub mod metrics;
mod notices;
pub mod pages;
mod query;
mod upload;
pub mod views;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use backend_api::BackendClient;
use http_edge::rate_limit::RateLimit;
use telemetry::ops::{Probe, Readiness};
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
    let state = calls::AppState {
        backend,
        facets: moka::future::Cache::builder()
            .max_capacity(1)
            .time_to_live(Duration::from_secs(30))
            .build(),
        page_size: config.page_size,
        max_upload_bytes: config.max_upload_bytes,
        timeout: config.search_timeout(),
    };
    // Pages still render a friendly message when the backend is down, but a frontend whose
    // backend is not ready cannot search: readiness follows the backend's, so a load balancer
    // can send shoppers to a frontend that can.
    let readiness = Readiness::new();
    readiness.set_ready("pages");
    let interval = config.ready_probe_interval();
    readiness
        .watch(
            vec![backend_probe(&config.backend_url)?],
            interval,
            interval.min(Duration::from_secs(1)),
        )
        .detach();
    let per_client = RateLimit::per_client(
        SERVICE,
        config.search_rate(),
        config.trusted_proxies.0.clone(),
    );
    let searching = per_client.apply(
        Router::new()
            .route("/", get(pages::search))
            .route(
                "/search/image",
                post(pages::search_image)
                    .layer(DefaultBodyLimit::max(config.max_upload_bytes + 64 * 1024)),
            )
            .route("/similar/{id}", get(pages::similar))
            .route("/taste", get(pages::taste)),
    );
    let pages = Router::new()
        .merge(searching)
        .route("/product/{id}", get(pages::product))
        .route("/go/{id}", get(pages::go))
        .route("/static/app.css", get(pages::stylesheet))
        .route("/static/app.js", get(pages::script))
        .fallback(pages::fallback)
        .with_state(state)
        // The shopper each page calls the backend for (forwarded as X-Forwarded-For).
        .layer(http_edge::rate_limit::client_address(
            config.trusted_proxies.0.clone(),
        ));
    Ok(Router::new()
        .merge(http_edge::protect(pages, SERVICE, &config.edge_limits()))
        .merge(telemetry::ops_router(metrics_handle, readiness))
        .layer(http_edge::panic::catch_panic_with(error_page))
        .layer(middleware::from_fn_with_state(
            SERVICE,
            telemetry::http::track_requests,
        )))
}

/// What a shopper sees when a page handler panicked (the panic is logged by the layer).
fn error_page() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::response::Html("<!DOCTYPE html><title>Error</title><h1>Something went wrong</h1><p><a href=\"/\">Back to the start</a></p>"),
    )
        .into_response()
}

/// Readiness check "backend": the backend's own `/health/ready` answers 200.
fn backend_probe(backend_url: &str) -> anyhow::Result<Probe> {
    let url = format!("{}/health/ready", backend_url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    Ok(Probe::new("backend", move || {
        let request = http.get(&url);
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("backend not ready ({})", response.status())),
                Err(_) => Err("backend unreachable".to_owned()),
            }
        }
    }))
}

/// Serves until `shutdown`, then drains in-flight requests (request heads within the default
/// deadline; see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let header_timeout = Duration::from_secs(http_edge::limits::DEFAULT_HEADER_TIMEOUT_SECS);
    serve_with(listener, app, header_timeout, shutdown).await
}

/// Serves until `shutdown`, then drains in-flight requests; a request head must arrive within
/// `header_timeout`.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    http_edge::serve(listener, app, header_timeout, shutdown).await?;
    tracing::info!("frontend stopped");
    Ok(())
}
