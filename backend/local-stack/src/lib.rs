//! The search stack in one process, on loopback: model-serving with a model folder of the
//! caller's choice, and the backend with its embedded Qdrant engine and embedded S3 server.
//!
//! Tests and benchmarks all need the same start-up (load the encoder off the async threads, bind,
//! serve until told to stop) and the same orderly stop; this crate is that code, once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backend::config::BackendConfig;
use backend::search::SearchEngine;
use model_serving::encoder::EncoderConfig;
use model_serving::{ClipEncoder, HttpLimits};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Resolves when the server is asked to stop.
pub type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server running on a task until [`Running::stop`] (or until this handle is dropped, which
/// stops it without waiting).
pub struct Running<T> {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<T>>,
}

impl<T: Send + 'static> Running<T> {
    /// Serves `server` (given a shutdown future) on a task.
    fn spawn<F>(addr: SocketAddr, server: impl FnOnce(ShutdownSignal) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server(Box::pin(async move {
            let _ = stopped.await;
        })));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the server to drain and waits for it; its own error, if it failed.
    pub async fn stop(mut self) -> anyhow::Result<T> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task")?
    }
}

impl<T> Running<T> {
    /// Stops the server without waiting for it (what dropping the handle does too).
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The workspace root (this crate is `backend/local-stack`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

/// The project's trained model (committed).
pub fn trained_model_dir() -> PathBuf {
    workspace().join("model-serving/models/fashion-clip-mini")
}

/// A copy of the model folder `model` in `into`, its `model.json` without relevance floors
/// (calibrating them; checking what a floor would hide).
pub fn model_without_floors(model: &Path, into: &Path) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(model)? {
        let entry = entry?;
        std::fs::copy(entry.path(), into.join(entry.file_name()))?;
    }
    let path = into.join("model.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("relevance_floor");
        fields.remove("relevance_floor_vector");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(into.to_owned())
}

/// `TEST_MODEL_DIR`, else the tiny model `make models` generates.
pub fn test_model_dir() -> PathBuf {
    env_path("TEST_MODEL_DIR", workspace().join("var/models/tiny"))
}

/// `ORT_DYLIB_PATH`, else the ONNX Runtime `make` installs under `~/.cache/fashion-search`.
pub fn ort_library() -> PathBuf {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    env_path(
        "ORT_DYLIB_PATH",
        home.join(".cache/fashion-search/onnxruntime-1.31.1/libonnxruntime.so.1.31.1"),
    )
}

/// `DATASET_DIR`, else the development photos in `shared/` beside the checkout.
pub fn dataset_dir() -> PathBuf {
    env_path(
        "DATASET_DIR",
        workspace().join("../shared/datasets/fashion-product-images-small"),
    )
}

/// The service's defaults for `model_dir`, with one ONNX thread per model (tests share 2 cores).
pub fn encoder_config(model_dir: PathBuf, ort_library: PathBuf) -> EncoderConfig {
    EncoderConfig {
        threads: 1,
        ..EncoderConfig::new(model_dir, ort_library)
    }
}

/// HTTP limits generous enough for a batch of real photos.
pub fn http_limits() -> HttpLimits {
    HttpLimits {
        max_body_bytes: 32 << 20,
        request_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    }
}

/// Loads the model (on a blocking thread) and serves model-serving on `listener`.
pub async fn start_model_serving(
    listener: TcpListener,
    config: EncoderConfig,
    limits: HttpLimits,
) -> anyhow::Result<Running<()>> {
    let model_dir = config.model_dir.clone();
    let encoder = tokio::task::spawn_blocking(move || ClipEncoder::load(config))
        .await
        .context("model loading task")?
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let addr = listener.local_addr()?;
    Ok(Running::spawn(addr, |shutdown| async move {
        model_serving::serve(listener, Arc::new(encoder), limits, shutdown)
            .await
            .map_err(anyhow::Error::from)
    }))
}

/// A backend configuration for one process: the embedded Qdrant engine in `data_dir`, the
/// embedded S3 server (on the listener given to [`start_backend`]), writes behind `api_key`.
pub fn backend_config(data_dir: &Path, model_serving: SocketAddr, api_key: &str) -> BackendConfig {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    BackendConfig {
        addr: loopback,
        data_dir: data_dir.to_owned(),
        model_serving_url: format!("http://{model_serving}"),
        s3_embedded_addr: loopback,
        api_key: Some(api_key.to_owned().into()),
        // Tests write and search at once: the graph follows writes within a second.
        optimize_after_secs: 1,
        // Debug builds on two busy cores embed slowly.
        timeout_secs: 60,
        // One process loads the backend from one address: no per-client rate limits.
        edge: backend::config::EdgeConfig::without_rate_limits(),
        // Tests count model-serving calls and cache lookups: the canary runs where asked.
        canary_interval_secs: 0,
        catalogue_check_interval_secs: 0,
        ..BackendConfig::defaults()
    }
}

/// A running backend and its search engine (for what a test or benchmark does behind the API).
pub struct Backend {
    pub server: Running<()>,
    pub engine: Arc<SearchEngine>,
}

impl Backend {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Graceful stop: drain, flush the index, release the data directory.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { server, engine } = self;
        drop(engine);
        server.stop().await
    }
}

/// Builds the backend from `config` and serves it on a free loopback port; the embedded S3
/// server listens on `s3` (bind it first to know its address for the clients).
pub async fn start_backend(config: &BackendConfig, s3: TcpListener) -> anyhow::Result<Backend> {
    let built = backend::build(config, Some(s3)).await?;
    let engine = built.engine.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Running::spawn(addr, |shutdown| backend::serve(listener, built, shutdown));
    Ok(Backend { server, engine })
}

/// A free loopback listener.
pub async fn loopback() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// The write key of a [`Catalogue`]'s backend.
pub const API_KEY: &str = "local-stack-write-key-0123456789";
/// The embedded S3 server's keys in a [`Catalogue`].
pub const S3_KEY: &str = "local-stack-s3-key";
pub const S3_SECRET: &str = "local-stack-s3-secret-0123456789";

/// model-serving and a backend on loopback, ready for a loader (the ETL) and searches: what an
/// evaluation or a load test starts. Stops when dropped (or, orderly, with [`Catalogue::stop`]).
pub struct Catalogue {
    pub model: Running<()>,
    pub backend: Backend,
    /// The backend's embedded S3 server.
    pub s3: SocketAddr,
    _data: tempfile::TempDir,
}

impl Catalogue {
    /// Serves `model_dir` and a backend over a new temporary catalogue.
    pub async fn start(model_dir: PathBuf) -> anyhow::Result<Self> {
        let model = start_model_serving(
            loopback().await?,
            encoder_config(model_dir, ort_library()),
            http_limits(),
        )
        .await?;
        let data = tempfile::tempdir()?;
        let s3_listener = loopback().await?;
        let s3 = s3_listener.local_addr()?;
        let config = BackendConfig {
            s3_access_key: Some(S3_KEY.to_owned().into()),
            s3_secret_key: Some(S3_SECRET.to_owned().into()),
            ..backend_config(data.path(), model.addr, API_KEY)
        };
        let backend = start_backend(&config, s3_listener).await?;
        Ok(Self {
            model,
            backend,
            s3,
            _data: data,
        })
    }

    /// The object store a loader writes the photos to.
    pub fn store(&self) -> anyhow::Result<catalog::store::ObjectStore> {
        Ok(catalog::store::ObjectStore::new(
            &catalog::store::StorageSettings {
                endpoint: format!("http://{}", self.s3),
                region: "us-east-1".into(),
                bucket: "fashion-images".into(),
                access_key: S3_KEY.into(),
                secret_key: S3_SECRET.into(),
                presign: None,
            },
        )?)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.backend.stop().await?;
        self.model.stop().await
    }
}
