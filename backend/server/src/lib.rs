//! The fashion-search backend: query → embedding (model-serving) → vector search (Qdrant,
//! embedded or server) → pre-signed URLs (S3, embedded or external).
//!
//! - [`search::SearchEngine`]: the engine, no HTTP; [`api`]: the handlers and OpenAPI.
//! - [`index`]: the [`index::VectorIndex`] trait and its two implementations.
//! - [`storage`]: S3 through `aws-sdk-s3`; [`embedded_s3`]: the in-process S3 server.
//! - [`encoder`]: model-serving calls with retries, a circuit breaker and a query cache.

pub mod api;
pub mod canary;
pub mod catalogue_check;
pub mod config;
pub mod embedded_s3;
pub mod encoder;
pub mod fetch;
pub mod index;
pub mod metrics;
pub mod queries;
pub mod search;
pub mod thumbnails;
/// Object storage is the catalog's, shared with the ETL.
pub use catalog::store as storage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderName;
use http_edge::rate_limit::RateLimit;
use model_serving_api::ModelServingClient;
use secrecy::ExposeSecret;
use telemetry::Readiness;
use telemetry::ops::{Probe, ProbeTask};
use tokio::net::TcpListener;

use crate::config::BackendConfig;
use crate::embedded_s3::EmbeddedS3;
use crate::encoder::{EncoderSettings, QueryEncoder};
use crate::index::edge::EdgeIndex;
use crate::index::server::{ClusterLayout, QdrantServerIndex};
use crate::index::{SearchTuning, VectorIndex};
use crate::search::SearchEngine;
use crate::storage::{ObjectStore, PresignSettings, StorageSettings};

/// How often the thumbnail task looks for points without one when no write woke it.
const THUMBNAIL_SWEEP: Duration = Duration::from_secs(300);

/// A built backend: its router, its engine and what it started.
pub struct Backend {
    pub app: axum::Router,
    pub engine: Arc<SearchEngine>,
    pub embedded_s3: Option<EmbeddedS3>,
    /// Keeps `/health/ready` current; stopped when the backend stops.
    pub probes: ProbeTask,
    pub header_timeout: Duration,
}

/// Builds every part from the configuration. `s3_listener` is where the embedded S3 server
/// listens when no `S3_ENDPOINT` is configured (tests pass port 0).
pub async fn build(
    config: &BackendConfig,
    s3_listener: Option<TcpListener>,
) -> anyhow::Result<Backend> {
    config.validate().map_err(anyhow::Error::msg)?;
    let metrics = telemetry::install_metrics(api::SERVICE).context("metrics")?;
    metrics::describe();

    let tuning = SearchTuning {
        hnsw_ef: config.hnsw_ef,
        exact: config.exact,
        threads: config.index_search_threads,
    };
    let index: Arc<dyn VectorIndex> = match &config.qdrant_url {
        Some(url) => {
            let key = config
                .qdrant_api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned());
            Arc::new(
                QdrantServerIndex::connect(url, key, &config.qdrant_collection, tuning)
                    .await
                    .with_context(|| format!("Qdrant at {url}"))?
                    .with_layout(ClusterLayout {
                        shards: config.qdrant_shards,
                        replication_factor: config.qdrant_replication_factor,
                        write_consistency: config.qdrant_write_consistency,
                    }),
            )
        }
        None => {
            let dir = config.data_dir.join("index");
            let index = tokio::task::spawn_blocking(move || EdgeIndex::open(&dir, tuning))
                .await
                .context("index open task")??;
            Arc::new(index)
        }
    };

    let (endpoint, public, access, secret, embedded_s3) = match &config.s3_endpoint {
        Some(endpoint) => {
            let access = config
                .s3_access_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .unwrap_or_default();
            let secret = config
                .s3_secret_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .unwrap_or_default();
            let public = config
                .s3_public_endpoint
                .clone()
                .unwrap_or_else(|| endpoint.clone());
            (endpoint.clone(), public, access, secret, None)
        }
        None => {
            // The embedded server's keys: configured, or fresh per process (only this process signs).
            let access = config.s3_access_key.as_ref().map_or_else(
                || format!("fs{}", uuid::Uuid::new_v4().simple()),
                |k| k.expose_secret().to_owned(),
            );
            let secret = config.s3_secret_key.as_ref().map_or_else(
                || uuid::Uuid::new_v4().simple().to_string(),
                |k| k.expose_secret().to_owned(),
            );
            let listener = match s3_listener {
                Some(listener) => listener,
                None => TcpListener::bind(config.s3_embedded_addr)
                    .await
                    .with_context(|| {
                        format!("embedded S3 cannot listen on {}", config.s3_embedded_addr)
                    })?,
            };
            let s3 =
                EmbeddedS3::start(listener, &config.data_dir.join("objects"), &access, &secret)
                    .context("embedded S3")?;
            let endpoint = format!("http://{}", s3.addr);
            let public = config
                .s3_public_endpoint
                .clone()
                .unwrap_or_else(|| endpoint.clone());
            (endpoint, public, access, secret, Some(s3))
        }
    };
    let store = ObjectStore::new(&StorageSettings {
        endpoint: endpoint.clone(),
        region: config.s3_region.clone(),
        bucket: config.s3_bucket.clone(),
        access_key: access,
        secret_key: secret.into(),
        presign: Some(PresignSettings {
            public_endpoint: public.clone(),
            ttl: Duration::from_secs(config.presign_ttl_secs),
        }),
    })?
    .on_unavailable(|| metrics::upstream_error("storage"));
    store.ensure_bucket().await.context("S3 bucket")?;

    let client =
        ModelServingClient::new(config.model_serving_url.clone(), Duration::from_secs(20))?;
    let model_serving = client.clone();
    let encoder = QueryEncoder::new(
        client,
        EncoderSettings {
            cache_entries: config.query_cache_entries,
            ..EncoderSettings::default()
        },
    );
    let readiness = Readiness::new();
    match encoder.model_info().await {
        Ok(info) => {
            readiness.set_ready("model_serving");
            tracing::info!(model = %info.name, dim = info.dim, "model-serving reachable")
        }
        Err(error) => {
            readiness.set_not_ready("model_serving", "not reachable yet");
            tracing::warn!(%error, "model-serving not reachable yet; searches answer 503 until it is")
        }
    }
    // The index's model must be the one model-serving serves. An index made before models
    // were recorded takes it when the vector sizes agree; a mismatch is logged here and
    // refused per request (searches by words still work), until a re-index or the right model.
    if let Ok(info) = encoder.model_info().await {
        let serving = encoder::model_of(&info);
        match (index.model(), index.dim()) {
            (Some(recorded), _) if recorded.fingerprint != serving.fingerprint => {
                tracing::error!(
                    index_model = %recorded,
                    serving_model = %serving,
                    "the index was made by another model than model-serving serves: searches by meaning and writes are refused; re-index (etl reindex) or serve the index's model"
                );
            }
            (None, Some(dim)) if dim != serving.dim => anyhow::bail!(
                "the index holds {dim}-dimensional vectors but model {serving} makes {}-dimensional ones; use another DATA_DIR or collection, or re-index",
                serving.dim
            ),
            (None, Some(_)) => {
                tracing::warn!(
                    model = %serving,
                    "the index records no model (made before models were recorded); it is taken to be model-serving's"
                );
                index
                    .adopt(&serving)
                    .await
                    .context("recording the index's model")?;
            }
            _ => {}
        }
    }

    let engine = SearchEngine::new(
        index,
        store,
        Arc::new(encoder),
        Duration::from_secs(config.optimize_after_secs),
    );
    if let Some(url) = &config.model_serving_next_url {
        let next = QueryEncoder::new(
            ModelServingClient::new(url.clone(), Duration::from_secs(20))?,
            EncoderSettings::default(),
        );
        engine.set_next_model(Arc::new(next));
        tracing::info!(next = %url, "a next model is configured for re-indexing");
    }
    // An index made before keyword vectors gets them in the background; until then text
    // searches match by meaning (and say so).
    if engine.index().dim().is_some() {
        let engine = Arc::downgrade(&engine);
        tokio::spawn(async move {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            match engine.backfill_keywords().await {
                Ok(0) => {}
                Ok(written) => tracing::info!(written, "keyword backfill done"),
                Err(error) => {
                    tracing::warn!(%error, "keyword backfill stopped; it resumes at the next start")
                }
            }
        });
    }
    engine.start_thumbnails(THUMBNAIL_SWEEP);
    canary::Canary::spawn(
        &engine,
        canary::CanarySettings {
            interval: Duration::from_secs(config.canary_interval_secs),
            captions: config.canary_captions as usize,
            ..canary::CanarySettings::default()
        },
    );
    catalogue_check::CatalogueCheck::spawn(
        &engine,
        catalogue_check::CheckSettings {
            interval: Duration::from_secs(config.catalogue_check_interval_secs),
            sample: config.catalogue_check_sample as usize,
            ..catalogue_check::CheckSettings::default()
        },
    )?;
    readiness.set_ready("index");
    readiness.set_ready("storage");
    let interval = config.edge.ready_probe_interval();
    let probes = readiness.watch(
        dependency_probes(&engine, model_serving),
        interval,
        interval.min(Duration::from_secs(1)),
    );
    let edge = api::Edge {
        limits: config.edge.limits(config.timeout()),
        per_client: RateLimit::per_client(
            api::SERVICE,
            config.edge.search_rate(),
            config.edge.trusted_proxies.0.clone(),
        ),
        per_key: RateLimit::per_header(
            api::SERVICE,
            config.edge.write_rate(),
            HeaderName::from_static("x-api-key"),
        ),
    };
    let state = api::AppState {
        engine: engine.clone(),
        api_key: config.api_key.clone().map(Arc::new),
        timeout: config.timeout(),
        fetcher: Arc::new(fetch::ImageFetcher::new(config.fetch_settings())),
        max_body_bytes: config.max_body_bytes,
        queries: config
            .query_summary
            .then(|| Arc::new(queries::QuerySummary::new(backend_api::MAX_SUMMARY_QUERIES))),
    };
    tracing::info!(
        index = if config.qdrant_url.is_some() { "qdrant-server" } else { "embedded" },
        s3_endpoint = %endpoint,
        s3_public_endpoint = %public,
        bucket = %config.s3_bucket,
        writes = config.api_key.is_some(),
        "backend ready"
    );
    Ok(Backend {
        app: api::router(state, metrics, readiness, &edge),
        engine,
        embedded_s3,
        probes,
        header_timeout: edge.limits.header_timeout,
    })
}

/// Cheap checks of what searches need: the index counts, the bucket answers `HEAD`,
/// model-serving is ready. They hold the engine weakly, so a stopped backend is released.
fn dependency_probes(engine: &Arc<SearchEngine>, model_serving: ModelServingClient) -> Vec<Probe> {
    let gone = || Err("the backend is stopping".to_owned());
    let index = Arc::downgrade(engine);
    let storage = Arc::downgrade(engine);
    vec![
        Probe::new("index", move || {
            let engine = index.upgrade();
            async move {
                let Some(engine) = engine else { return gone() };
                engine.index().probe().await.map_err(|e| e.to_string())
            }
        }),
        Probe::new("storage", move || {
            let engine = storage.upgrade();
            async move {
                let Some(engine) = engine else { return gone() };
                engine.store().probe().await.map_err(|e| e.to_string())
            }
        }),
        Probe::new("model_serving", move || {
            let client = model_serving.clone();
            async move {
                if client.ready().await {
                    Ok(())
                } else {
                    Err(format!("{} is not ready", client.base_url()))
                }
            }
        }),
    ]
}

/// Serves until `shutdown`, drains in-flight requests, flushes the index, stops embedded S3.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Backend {
        app,
        engine,
        embedded_s3,
        probes,
        header_timeout,
    } = backend;
    http_edge::serve(listener, app, header_timeout, shutdown).await?;
    drop(probes);
    engine.shutdown().await.context("index flush")?;
    if let Some(s3) = embedded_s3 {
        s3.stop().await;
    }
    tracing::info!("backend stopped; index flushed");
    Ok(())
}
