//! Telemetry shared by every fashion-search binary.
//!
//! - [`init`]: logs (JSON by default, with `trace_id` / `span_id`), traces (OTLP/HTTP export only
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; W3C trace context always), and the Prometheus
//!   recorder. Returns a [`TelemetryGuard`] that flushes spans when dropped.
//! - [`http::track_requests`]: the axum middleware that gives every request a span and metrics.
//! - [`ops_router`]: `/metrics`, `/health/live`, `/health/ready`.
//! - [`ops::Readiness::watch`]: readiness kept current by periodic dependency probes.
//!
//! The HTTP edge (error body, limits, rate limits, serving, outgoing calls with `traceparent`)
//! is the `http-edge` crate; this one holds only telemetry.

mod logs;
pub mod metrics;

pub mod http;
pub mod ops;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub use logs::time_rfc3339;
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use ops::{Readiness, ops_router};

/// Buckets for request and stage latencies: millisecond APIs, with room for slow model runs.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for counts of items (batch sizes, request sizes).
pub const ITEM_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets for byte sizes (uploads): 1 KiB .. 64 MiB.
pub const BYTE_BUCKETS: &[f64] = &[
    1024.0, 8192.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("cannot install the Prometheus recorder: {0}")]
    Metrics(String),
}

/// Keeps the tracer provider alive; dropping it flushes and shuts down the span exporter.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            eprintln!("telemetry: span flush failed: {error}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry: span exporter shutdown failed: {error}");
        }
    }
}

/// Settings read from the environment (`RUST_LOG`, `LOG_FORMAT`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub filter: String,
    pub json: bool,
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    pub fn from_env() -> Self {
        let nonempty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            filter: nonempty("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            json: !matches!(nonempty("LOG_FORMAT").as_deref(), Some("pretty" | "text")),
            otlp_endpoint: nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"),
        }
    }
}

impl TelemetryConfig {
    /// For benchmarks and other tools whose output is their report: JSON logs at `RUST_LOG`
    /// (default `warn`, so nothing interleaves with the figures), no trace export.
    pub fn quiet() -> Self {
        Self {
            filter: std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "warn".to_owned()),
            json: true,
            otlp_endpoint: None,
        }
    }
}

/// Installs logging, tracing and metrics for this process, configured from the environment.
pub fn init(service: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    init_with(service, TelemetryConfig::from_env())
}

/// Warnings of the embedded Qdrant engine (qdrant-edge) about server-only set-up it has no API
/// for: "Feature flags not initialized!" on every segment it opens, and "MULTI_MMAP_SUPPORT_CHECK_RESULT
/// should be initialized" once per process (Qdrant's `main` runs that check; the embedded engine
/// cannot, the cell is private). Errors from those modules still pass.
const QUIETED: [&str; 2] = [
    "qdrant_edge::common::flags=error",
    "qdrant_edge::common::mmap::ops=error",
];

pub fn init_with(
    service: &'static str,
    config: TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Spans always get real trace and span ids (the logs carry them); they leave the process only
    // when an OTLP endpoint is configured.
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url)
            .with_timeout(std::time::Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);

    let mut filter =
        EnvFilter::try_new(&config.filter).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    for directive in QUIETED {
        filter = filter.add_directive(directive.parse().map_err(
            |e: tracing_subscriber::filter::ParseError| TelemetryError::Filter(e.to_string()),
        )?);
    }
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_error_records_to_exceptions(true);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if config.json {
        let (capture, format) = logs::JsonFormat::new(service);
        registry
            .with(capture)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout))
            .try_init()
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;

    install_metrics(service)?;
    Ok(TelemetryGuard {
        provider,
        exporting: config.otlp_endpoint.is_some(),
    })
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process), declares the HTTP metrics and sets
/// `build_info` for `service`. [`init`] calls it; tests that need only metrics call it alone.
pub fn install_metrics(service: &'static str) -> Result<PrometheusHandle, TelemetryError> {
    let handle = metrics_handle()?;
    metrics::describe();
    ::metrics::gauge!(metrics::BUILD_INFO, "service" => service, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    Ok(handle)
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Histogram buckets follow the metric's unit suffix, so every crate gets sensible buckets
/// without registering them here.
pub fn metrics_handle() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let err = |e: metrics_exporter_prometheus::BuildError| TelemetryError::Metrics(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Suffix("_items".into()), ITEM_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTE_BUCKETS)
        .map_err(err)?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first caller installs; a racing second one keeps the installed handle.
    if PROMETHEUS.set(handle.clone()).is_ok() {
        ::metrics::set_global_recorder(recorder)
            .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
        spawn_upkeep(handle.clone())?;
        return Ok(handle);
    }
    PROMETHEUS
        .get()
        .cloned()
        .ok_or_else(|| TelemetryError::Metrics("recorder not installed".into()))
}

/// How often the recorder's upkeep runs. `build_recorder` (unlike the exporter's own HTTP
/// listener) starts none: without it, histogram samples pile up between scrapes, without bound
/// when nothing scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The upkeep interval: `METRICS_UPKEEP_SECS` (whole seconds) or [`UPKEEP_INTERVAL`]. `0` turns
/// the upkeep off; that exists only to measure what it prevents (`make hostile`), never to run.
fn upkeep_interval() -> Result<Option<Duration>, TelemetryError> {
    match std::env::var("METRICS_UPKEEP_SECS") {
        Err(_) => Ok(Some(UPKEEP_INTERVAL)),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => Err(TelemetryError::Metrics(format!(
                "METRICS_UPKEEP_SECS must be whole seconds (0 turns the upkeep off), not {text:?}"
            ))),
        },
    }
}

static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// How many times the upkeep has run in this process.
pub fn upkeep_runs() -> u64 {
    UPKEEP_RUNS.load(Ordering::Relaxed)
}

/// A plain thread, so the upkeep runs whether or not (and whichever) async runtime is up.
fn spawn_upkeep(handle: PrometheusHandle) -> Result<(), TelemetryError> {
    let Some(interval) = upkeep_interval()? else {
        tracing::warn!("METRICS_UPKEEP_SECS=0: the metrics upkeep is off (for measurements only)");
        return Ok(());
    };
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                handle.run_upkeep();
                UPKEEP_RUNS.fetch_add(1, Ordering::Relaxed);
            }
        })
        .map(drop)
        .map_err(|e| TelemetryError::Metrics(format!("cannot start the upkeep thread: {e}")))
}
