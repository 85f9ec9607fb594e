//! `make bench` for the ETL, on the ViT-B/32-shaped model with real photos, in one run:
//!
//! 1. raw ONNX Runtime image throughput in process at the ETL's batch size (images already
//!    decoded and preprocessed: the ceiling of any pipeline on this machine);
//! 2. the ETL end to end at the same batch size: read from disk → model-serving over HTTP (decode,
//!    preprocess, batch, infer) → embedded S3 put → backend batch upsert into the embedded Qdrant
//!    engine, all in this process on loopback;
//! 3. the ratio ETL / raw (target ≥ 0.9: everything but inference overlapped with it).
//!
//! Every loop is bounded in count and time.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use backend_api::BackendClient;
use catalog::store::{ObjectStore, StorageSettings};
use etl::datasets::DatasetKind;
use etl::{Clients, LoadOptions};
use model_serving::batcher::BatchConfig;
use model_serving::encoder::EncoderConfig;
use model_serving::model::{ModelSpec, VISION_MODEL};
use model_serving::onnx::{Threading, VisionModel, environment};
use model_serving::preprocess::{ImageLimits, Preprocessor};
use model_serving_api::ModelServingClient;

const API_KEY: &str = "etl-bench-api-key-0123456789";
const S3_KEY: &str = "etl-bench-access";
const S3_SECRET: &str = "etl-bench-secret-0123456789";

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `make bench`)"))
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Settings {
    model_dir: PathBuf,
    ort: PathBuf,
    dataset: PathBuf,
    items: usize,
    batch: usize,
    budget: Duration,
}

fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init_with("etl-bench", telemetry::TelemetryConfig::quiet())?;
    let settings = Settings {
        model_dir: env_path("BENCH_MODEL_DIR")?,
        ort: env_path("ORT_DYLIB_PATH")?,
        dataset: env_path("DATASET_DIR")?,
        items: env_number("INGEST_ITEMS", 320),
        batch: env_number("INGEST_BATCH", 32),
        budget: Duration::from_secs(env_number("BENCH_SECONDS", 20) as u64),
    };
    if settings.items < 2 * settings.batch {
        bail!("INGEST_ITEMS must be at least two batches");
    }
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

/// Images per second of raw `Session::run` at `batch`, over at least three runs after a warm-up.
fn raw_throughput(s: &Settings, spec: &ModelSpec) -> anyhow::Result<f64> {
    let pre = Preprocessor {
        image_size: spec.image_size,
        mean: spec.image_mean,
        std: spec.image_std,
        limits: ImageLimits::default(),
    };
    let mut photos: Vec<PathBuf> = std::fs::read_dir(s.dataset.join("images"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(s.batch * 2);
    let tensors = photos
        .iter()
        .map(|p| {
            let mut out = Vec::with_capacity(pre.tensor_len());
            pre.preprocess(&std::fs::read(p)?, &mut out)?;
            Ok(out)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let env = environment(&s.ort)?;
    let mut model = VisionModel::load(
        &env,
        &s.model_dir.join(VISION_MODEL),
        spec.image_size,
        Threading::default(),
        true,
    )?;
    let input = |i: usize| -> Vec<f32> {
        (0..s.batch)
            .flat_map(|j| tensors[(i * s.batch + j) % tensors.len()].iter().copied())
            .collect()
    };
    model.run(input(0), s.batch)?; // warm-up
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < s.budget && runs < 40) {
        model.run(input(runs + 1), s.batch)?;
        runs += 1;
    }
    Ok((runs * s.batch) as f64 / start.elapsed().as_secs_f64())
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let spec = ModelSpec::load(&s.model_dir)?;
    println!(
        "ETL benchmark — model {} (dim {}, image {}), {} real photos, batch {}, {} cores",
        spec.name,
        spec.embedding_dim,
        spec.image_size,
        s.items,
        s.batch,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let raw = raw_throughput(&s, &spec)?;
    println!(
        "\n(1) raw ONNX Runtime, batch {:>2}      {raw:>8.2} img/s",
        s.batch
    );

    // model-serving, in process, batching up to the ETL's batch size.
    let defaults = EncoderConfig::new(s.model_dir.clone(), s.ort.clone());
    let config = EncoderConfig {
        batch: BatchConfig {
            max_batch: s.batch,
            max_queued: 4 * s.batch,
            ..defaults.batch
        },
        max_items_per_request: s.batch,
        ..defaults
    };
    let limits = model_serving::HttpLimits {
        max_body_bytes: 32 << 20,
        request_timeout: Duration::from_secs(300),
        ..model_serving::HttpLimits::default()
    };
    let model =
        local_stack::start_model_serving(local_stack::loopback().await?, config, limits).await?;
    let ms_addr = model.addr;

    // The backend, in process: embedded Qdrant engine and embedded S3 with known keys.
    let data = tempfile::tempdir()?;
    let s3_listener = local_stack::loopback().await?;
    let s3_addr = s3_listener.local_addr()?;
    let config = backend::config::BackendConfig {
        optimize_after_secs: 3600,
        s3_access_key: Some(S3_KEY.to_owned().into()),
        s3_secret_key: Some(S3_SECRET.to_owned().into()),
        max_body_bytes: 64 << 20,
        timeout_secs: 120,
        ..local_stack::backend_config(data.path(), ms_addr, API_KEY)
    };
    let backend = local_stack::start_backend(&config, s3_listener).await?;
    let addr = backend.addr();

    let clients = Clients {
        backend: BackendClient::new(format!("http://{addr}"), Duration::from_secs(300))?
            .with_api_key(API_KEY),
        model: ModelServingClient::new(format!("http://{ms_addr}"), Duration::from_secs(300))?,
        store: ObjectStore::new(&StorageSettings {
            endpoint: format!("http://{s3_addr}"),
            region: "us-east-1".into(),
            bucket: "fashion-images".into(),
            access_key: S3_KEY.into(),
            secret_key: S3_SECRET.into(),
            presign: None,
        })?,
    };
    let options = LoadOptions {
        dataset: DatasetKind::FashionProductImages,
        source: s.dataset.clone(),
        limit: Some(s.items),
        batch_size: s.batch,
        concurrency: 2,
        dry_run: false,
        progress: false,
        max_request_pixels: etl::DEFAULT_MAX_REQUEST_PIXELS,
    };
    let summary = tokio::time::timeout(Duration::from_secs(1800), etl::load(&options, &clients))
        .await
        .context("the ETL run took over 30 minutes")??;
    let ingest = summary.throughput();
    println!(
        "(2) ETL end to end, batch {:>2}       {ingest:>8.2} img/s   ({} loaded, {} failed, {:.1} s)",
        s.batch,
        summary.loaded,
        summary.failed.len(),
        summary.elapsed.as_secs_f64()
    );
    println!(
        "(3) ETL / raw                      {:>8.2}   (target >= 0.9)",
        ingest / raw
    );
    let stats = clients.backend.stats().await?;
    if stats.total as usize != summary.loaded {
        bail!(
            "index holds {} points, ETL loaded {}",
            stats.total,
            summary.loaded
        );
    }

    backend.stop().await?;
    model.stop().await?;
    Ok(())
}
