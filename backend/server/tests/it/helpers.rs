use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backend::config::BackendConfig;
use backend_api::{BackendClient, ImageAttributes, IngestItem};
use model_serving::encoder::{EncoderConfig, default_batch};
use model_serving_api::ModelServingClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const API_KEY: &str = "test-api-key-0123456789";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

pub fn dataset_dir() -> PathBuf {
    let dir = env_path(
        "DATASET_DIR",
        workspace().join("../shared/datasets/fashion-product-images-small"),
    );
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

pub struct ModelServing {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ModelServing {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts model-serving with the tiny model on `addr` (port 0 for any).
pub async fn start_model_serving(addr: SocketAddr) -> ModelServing {
    let model_dir = env_path("TEST_MODEL_DIR", workspace().join("var/models/tiny"));
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let ort = env_path(
        "ORT_DYLIB_PATH",
        home.join(".cache/fashion-search/onnxruntime-1.31.1/libonnxruntime.so.1.31.1"),
    );
    let config = EncoderConfig {
        model_dir,
        ort_library: ort,
        threads: 1,
        batch: default_batch(),
        max_items_per_request: 64,
        max_image_pixels: 40_000_000,
        max_text_chars: 1000,
    };
    let encoder = tokio::task::spawn_blocking(move || model_serving::ClipEncoder::load(config))
        .await
        .expect("join")
        .expect("model loads (run `make models`)");
    let listener = TcpListener::bind(addr).await.expect("bind model-serving");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(model_serving::serve(
        listener,
        Arc::new(encoder),
        model_serving::HttpLimits {
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
        },
        async move {
            let _ = rx.await;
        },
    ));
    ModelServing {
        addr,
        shutdown: Some(tx),
        task,
    }
}

pub fn config(data_dir: &Path, model_serving: SocketAddr) -> BackendConfig {
    BackendConfig {
        addr: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.to_owned(),
        model_serving_url: format!("http://{model_serving}"),
        qdrant_url: None,
        qdrant_api_key: None,
        qdrant_collection: "fashion_images".into(),
        hnsw_ef: 128,
        exact: false,
        optimize_after_secs: 1,
        s3_endpoint: None,
        s3_public_endpoint: None,
        s3_embedded_addr: "127.0.0.1:0".parse().expect("addr"),
        s3_bucket: "fashion-images".into(),
        s3_region: "us-east-1".into(),
        s3_access_key: None,
        s3_secret_key: None,
        presign_ttl_secs: 300,
        api_key: Some(API_KEY.to_owned().into()),
        max_body_bytes: 2 << 20,
        timeout_secs: 30,
        query_cache_entries: 1000,
    }
}

pub struct TestBackend {
    pub addr: SocketAddr,
    pub client: BackendClient,
    pub http: reqwest::Client,
    pub engine: Arc<backend::search::SearchEngine>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestBackend {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful stop: drain, flush the index, release the data directory.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let engine = self.engine;
        drop(engine);
        (&mut self.task).await.expect("join").expect("clean stop");
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
    let built = backend::build(config, Some(s3)).await?;
    let engine = built.engine.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(backend::serve(listener, built, async move {
        let _ = rx.await;
    }));
    let client = BackendClient::new(format!("http://{addr}"), Duration::from_secs(30))?
        .with_api_key(API_KEY);
    Ok(TestBackend {
        addr,
        client,
        http: reqwest::Client::new(),
        engine,
        shutdown: Some(tx),
        task,
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
        let vectors = encoder
            .encode_images(bytes.clone())
            .await
            .expect("encode")
            .embeddings;
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
        let response = backend.client.ingest_batch(items).await.expect("ingest");
        assert_eq!(response.upserted, n);
    }
    stored
}
