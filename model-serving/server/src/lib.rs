//! model-serving: CLIP text and image encoders behind HTTP.
//!
//! - [`encoder::ClipEncoder`] is the engine (no HTTP): input checks, image decoding and CLIP
//!   preprocessing ([`preprocess`]), tokenization ([`tokenize`]), ONNX Runtime ([`onnx`]) behind
//!   dynamic batchers ([`batcher`]).
//! - [`api`] maps HTTP to the engine; [`serve`] runs it with graceful shutdown.
//! - [`hub`] downloads real CLIP exports from a Hugging Face-compatible hub.

pub mod api;
pub mod batcher;
pub mod config;
pub mod encoder;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod preprocess;
pub mod prune;
pub mod tokenize;

use std::net::SocketAddr;
use std::sync::Arc;

use telemetry::Readiness;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::{AppState, HttpLimits, router};
pub use encoder::{ClipEncoder, EncoderConfig};

/// Serves `encoder` on a bound listener until `shutdown` completes, then drains in-flight
/// requests. A request head must arrive within `limits.header_timeout`.
pub async fn serve(
    listener: TcpListener,
    encoder: Arc<ClipEncoder>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = telemetry::install_metrics(api::SERVICE)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    metrics::describe();
    for modality in ["image", "text"] {
        metrics::queue_capacity(modality, encoder.queue_capacity());
    }
    let readiness = Readiness::new();
    readiness.set_ready("model");
    let header_timeout = limits.header_timeout;
    let app = router(AppState { encoder, limits }, metrics, readiness);
    http_edge::serve(listener, app, header_timeout, shutdown).await
}

/// A service serving on a loopback port of its own (benchmarks, tests).
pub struct LocalService {
    pub addr: SocketAddr,
    /// Send (or drop) to start a graceful shutdown.
    pub shutdown: oneshot::Sender<()>,
    /// The serve loop; it ends once in-flight requests are drained.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Serves `encoder` on `127.0.0.1:0` in a task of its own.
pub async fn start_local(
    encoder: Arc<ClipEncoder>,
    limits: HttpLimits,
) -> std::io::Result<LocalService> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, encoder, limits, async move {
        let _ = stop.await;
    }));
    Ok(LocalService {
        addr,
        shutdown,
        task,
    })
}
