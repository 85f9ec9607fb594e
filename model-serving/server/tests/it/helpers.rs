use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use model_serving::ClipEncoder;
use model_serving::api::HttpLimits;
use model_serving::encoder::EncoderConfig;
use model_serving_api::ModelServingClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fashion-search")
}

/// The generated tiny model (`make models`).
pub fn model_dir() -> PathBuf {
    let dir = env_path("TEST_MODEL_DIR", workspace().join("var/models/tiny"));
    assert!(
        dir.join("model.json").is_file(),
        "no test model at {} — run `make models` (or `make test`)",
        dir.display()
    );
    dir
}

pub fn ort_library() -> PathBuf {
    let lib = env_path(
        "ORT_DYLIB_PATH",
        cache().join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1"),
    );
    assert!(
        lib.is_file(),
        "no ONNX Runtime at {} — run `make ort`",
        lib.display()
    );
    lib
}

/// The Python with numpy, Pillow and onnxruntime (`make venv`).
pub fn python() -> PathBuf {
    let python = env_path("REFERENCE_PYTHON", cache().join("venv/bin/python"));
    assert!(
        python.is_file(),
        "no reference Python at {} — run `make venv`",
        python.display()
    );
    python
}

pub fn reference_script() -> PathBuf {
    workspace().join("model-serving/tools/reference.py")
}

pub fn bpe_vocab() -> PathBuf {
    workspace().join("model-serving/assets/clip-tokenizer/bpe_simple_vocab_16e6.txt.gz")
}

/// The development photos: `DATASET_DIR`, else `shared/datasets` beside the checkout
/// (`make test` passes the one it found).
pub fn dataset_dir() -> PathBuf {
    let beside = workspace().join("../shared/datasets/fashion-product-images-small");
    let dir = env_path("DATASET_DIR", beside);
    assert!(
        dir.join("styles.csv").is_file(),
        "no dataset at {} (set DATASET_DIR to the fashion-product-images-small folder)",
        dir.display()
    );
    dir
}

/// The trained model, committed (`model-serving/models/fashion-clip-mini`).
pub fn trained_model_dir() -> PathBuf {
    workspace().join("model-serving/models/fashion-clip-mini")
}

/// The first `n` real photos of the development split, in a stable order.
pub fn sample_photos(n: usize) -> Vec<PathBuf> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dataset_dir().join("images"))
        .expect("images folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(n);
    assert_eq!(photos.len(), n, "not enough photos");
    photos
}

/// The service's defaults for the test model, with one ONNX thread per model.
pub fn encoder_config() -> EncoderConfig {
    EncoderConfig {
        threads: 1,
        ..EncoderConfig::new(model_dir(), ort_library())
    }
}

pub fn limits() -> HttpLimits {
    HttpLimits {
        max_body_bytes: 8 * 1024 * 1024,
        request_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: ModelServingClient,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts a graceful shutdown; in-flight requests still complete.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

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
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(encoder_config(), limits()).await
}

pub async fn spawn_app_with(config: EncoderConfig, limits: HttpLimits) -> TestApp {
    let encoder = tokio::task::spawn_blocking(move || ClipEncoder::load(config))
        .await
        .expect("join")
        .expect("model loads");
    let local = model_serving::start_local(Arc::new(encoder), limits)
        .await
        .expect("serves");
    let client = ModelServingClient::new(format!("http://{}", local.addr), Duration::from_secs(30))
        .expect("client");
    TestApp {
        addr: local.addr,
        client,
        http: reqwest::Client::new(),
        shutdown: Some(local.shutdown),
        server: local.task,
    }
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The largest difference between two sets of embeddings, row by row.
pub fn max_rows_diff(got: &[Vec<f32>], expected: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), expected.len(), "row count mismatch");
    got.iter()
        .zip(expected)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Loads the service's encoder for `dir` twice, two pool sessions and the rest session each
/// time: with every weight shared (the tiny models have none of the size the service shares)
/// and with none. Returns how many weights the first shares and the largest difference between
/// the two's embeddings of three photos, sent as three requests at once (under load: the pool).
pub async fn shared_against_own(dir: &Path) -> (usize, f32) {
    let photos: Vec<bytes::Bytes> = sample_photos(3).iter().map(|p| read(p).into()).collect();
    let load = |share_weights: Option<usize>| {
        ClipEncoder::load(EncoderConfig {
            model_dir: dir.to_owned(),
            vision_sessions: 2,
            rest_session: true,
            share_weights,
            ..encoder_config()
        })
        .expect("load")
    };
    let (shared, own) = (load(Some(0)), load(None));
    assert_eq!(own.shared_weights(), 0);
    let encode = |encoder: ClipEncoder| {
        let photos = photos.clone();
        async move {
            let requests = photos
                .iter()
                .map(|p| encoder.encode_images(vec![p.clone()]));
            let embeddings = futures::future::try_join_all(requests)
                .await
                .expect("encode");
            (embeddings.concat(), encoder.shared_weights())
        }
    };
    let ((a, shared), (b, _)) = (encode(shared).await, encode(own).await);
    assert_eq!(a.len(), photos.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max);
    (shared, worst)
}
