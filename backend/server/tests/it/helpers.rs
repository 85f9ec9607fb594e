use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backend::config::BackendConfig;
use backend_api::{BackendClient, ImageAttributes, IngestItem};
use local_stack::Running;
use model_serving::HttpLimits;
use model_serving_api::ModelServingClient;
use tokio::net::TcpListener;
use uuid::Uuid;

pub const API_KEY: &str = "test-api-key-0123456789";

pub fn dataset_dir() -> PathBuf {
    let dir = local_stack::dataset_dir();
    assert!(
        dir.join("styles.csv").is_file(),
        "no dataset at {} (set DATASET_DIR)",
        dir.display()
    );
    dir
}

/// A real catalogue row: id, attributes, photo path.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub attributes: ImageAttributes,
    pub photo: PathBuf,
}

/// The first `n` products of styles.csv that have a photo.
pub fn products(n: usize) -> Vec<Product> {
    let dir = dataset_dir();
    let csv = std::fs::read_to_string(dir.join("styles.csv")).expect("styles.csv");
    let mut out = Vec::new();
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.splitn(10, ',').collect();
        if cols.len() < 10 {
            continue;
        }
        let photo = dir.join("images").join(format!("{}.jpg", cols[0]));
        if !photo.is_file() {
            continue;
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        out.push(Product {
            id: cols[0].to_owned(),
            attributes: ImageAttributes {
                dataset: "fashion-product-images".into(),
                caption: cols[9].to_owned(),
                gender: opt(cols[1]),
                category: opt(cols[2]),
                article_type: opt(cols[4]),
                colour: opt(cols[5]),
                season: opt(cols[6]),
                usage: opt(cols[8]),
                width: None,
                height: None,
            },
            photo,
        });
        if out.len() == n {
            break;
        }
    }
    assert_eq!(out.len(), n, "not enough products with photos");
    out
}

pub fn point_id(product: &Product) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("fashion-product-images/{}", product.id).as_bytes(),
    )
}

/// Starts model-serving with the test model on `addr` (port 0 for any).
pub async fn start_model_serving(addr: SocketAddr) -> Running<()> {
    start_model_serving_with(addr, local_stack::test_model_dir()).await
}

/// As [`start_model_serving`], serving the model folder `model_dir`.
pub async fn start_model_serving_with(addr: SocketAddr, model_dir: PathBuf) -> Running<()> {
    let listener = TcpListener::bind(addr).await.expect("bind model-serving");
    local_stack::start_model_serving(
        listener,
        local_stack::encoder_config(model_dir, local_stack::ort_library()),
        HttpLimits {
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            ..HttpLimits::default()
        },
    )
    .await
    .expect("model loads (run `make models`)")
}

pub fn config(data_dir: &Path, model_serving: SocketAddr) -> BackendConfig {
    BackendConfig {
        max_body_bytes: 2 << 20,
        timeout_secs: 30,
        ..local_stack::backend_config(data_dir, model_serving, API_KEY)
    }
}

pub struct TestBackend {
    pub addr: SocketAddr,
    pub client: BackendClient,
    pub http: reqwest::Client,
    pub engine: Arc<backend::search::SearchEngine>,
    backend: local_stack::Backend,
}

impl TestBackend {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The backend's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Graceful stop: drain, flush the index, release the data directory.
    pub async fn stop(self) {
        let Self {
            engine, backend, ..
        } = self;
        drop(engine);
        backend.stop().await.expect("clean stop");
    }
}

pub async fn start_backend(config: &BackendConfig) -> anyhow::Result<TestBackend> {
    let s3 = TcpListener::bind("127.0.0.1:0").await?;
    start_backend_with(config, s3).await
}

/// As [`start_backend`], with the embedded S3 server on a listener the test chose.
pub async fn start_backend_with(
    config: &BackendConfig,
    s3: TcpListener,
) -> anyhow::Result<TestBackend> {
    let backend = local_stack::start_backend(config, s3).await?;
    let addr = backend.addr();
    let client = BackendClient::new(format!("http://{addr}"), Duration::from_secs(30))?
        .with_api_key(API_KEY);
    Ok(TestBackend {
        addr,
        client,
        http: reqwest::Client::new(),
        engine: backend.engine.clone(),
        backend,
    })
}

/// What the ETL does: embed the photos, store them in S3, upsert through the batch API.
pub async fn ingest(
    backend: &TestBackend,
    model_serving: SocketAddr,
    products: &[Product],
) -> HashMap<Uuid, Vec<u8>> {
    let encoder =
        ModelServingClient::new(format!("http://{model_serving}"), Duration::from_secs(30))
            .expect("client");
    let mut stored = HashMap::new();
    for chunk in products.chunks(16) {
        let bytes: Vec<Vec<u8>> = chunk
            .iter()
            .map(|p| std::fs::read(&p.photo).expect("photo"))
            .collect();
        let encoded = encoder.encode_images(bytes.clone()).await.expect("encode");
        let (vectors, model) = (encoded.embeddings, encoded.fingerprint);
        let mut items = Vec::new();
        for ((product, bytes), vector) in chunk.iter().zip(bytes).zip(vectors) {
            let key = backend::search::content_key(&bytes, "jpg");
            backend
                .engine
                .store()
                .put(&key, bytes.clone(), "image/jpeg")
                .await
                .expect("put");
            let id = point_id(product);
            stored.insert(id, bytes);
            items.push(IngestItem {
                id,
                vector,
                s3_key: key,
                attributes: product.attributes.clone(),
            });
        }
        let n = items.len();
        let response = backend
            .client
            .ingest_batch_made_by(items, Some(model))
            .await
            .expect("ingest");
        assert_eq!(response.upserted, n);
    }
    stored
}

/// The status, error code and Retry-After of an error answer (its body must be an error body).
pub async fn error_of(
    response: reqwest::Response,
) -> (reqwest::StatusCode, String, Option<String>) {
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body: backend_api::ErrorBody = response.json().await.expect("JSON error body");
    assert!(!body.error.message.is_empty());
    (status, body.error.code, retry)
}

pub use http_edge::testing::wait_for_ready;

/// A binary of this workspace beside the test executable (`make test` builds them with the
/// tests: `cargo build --bins --tests`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `make test` does)",
        path.display()
    );
    path
}

/// Polls `url` until it answers with a success status, at most `within`; panics otherwise, or
/// at once when `alive` says the process behind it has exited.
pub async fn wait_until_up(url: &str, within: Duration, mut alive: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    loop {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        assert!(alive(), "the process behind {url} exited");
        assert!(started.elapsed() < within, "{url} not up in {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port (bound, read and released: a test starting a process on it races only
/// with other processes of the machine).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// The `p` quantile (0..1) of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
