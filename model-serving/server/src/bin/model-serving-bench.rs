//! `make bench` for model-serving, on the ViT-B/32-shaped model with real photos:
//!
//! 1. raw ONNX Runtime image throughput in-process at batch 1, 8, 32;
//! 2. HTTP service throughput with 1 and 16 concurrent clients sending single images, with dynamic
//!    batching and with batching disabled (max_batch = 1);
//! 3. the ratios: service at 16 clients / best raw, and the batching gain;
//! 4. preprocessing (decode + CLIP transform) per image against PIL + numpy on the same photos;
//! 5. text-encode latency p50 / p99 through the service.
//!
//! Every loop is bounded in count and time. Traffic goes to loopback only.

// Per-image tensors (600 KB at 224 px) are allocated and freed at a high rate; mimalloc reuses
// the pages instead of faulting fresh ones in for each.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use model_serving::api::HttpLimits;
use model_serving::batcher::BatchConfig;
use model_serving::encoder::{ClipEncoder, EncoderConfig};
use model_serving::model::{ModelSpec, TEXT_MODEL, TOKENIZER, VISION_MODEL};
use model_serving::onnx::{TextModel, VisionModel, environment};
use model_serving::preprocess::{ImageLimits, Preprocessor};
use model_serving::tokenize::TextTokenizer;
use model_serving_api::ModelServingClient;

struct Settings {
    model_dir: PathBuf,
    ort: PathBuf,
    photos: Vec<PathBuf>,
    python: Option<PathBuf>,
    /// Upper bound on the time one measurement may take.
    budget: Duration,
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `make bench`)"))
}

fn main() -> anyhow::Result<()> {
    let _telemetry =
        telemetry::init_with("model-serving-bench", telemetry::TelemetryConfig::quiet())?;
    let dataset = env_path("DATASET_DIR")?;
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dataset.join("images"))
        .with_context(|| format!("{}/images", dataset.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(64);
    if photos.len() < 32 {
        bail!("need at least 32 photos in {}", dataset.display());
    }
    let settings = Settings {
        model_dir: env_path("BENCH_MODEL_DIR")?,
        ort: env_path("ORT_DYLIB_PATH")?,
        photos,
        python: std::env::var_os("REFERENCE_PYTHON").map(PathBuf::from),
        budget: Duration::from_secs(
            std::env::var("BENCH_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(20),
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(settings))
}

fn preprocess_all(pre: &Preprocessor, photos: &[PathBuf]) -> anyhow::Result<Vec<Vec<f32>>> {
    photos
        .iter()
        .map(|p| {
            let mut out = Vec::with_capacity(pre.tensor_len());
            pre.preprocess(&std::fs::read(p)?, &mut out)?;
            Ok(out)
        })
        .collect()
}

/// Images per second of raw `Session::run` at `batch`, over at least two runs (one warm-up).
fn raw_throughput(
    model: &mut VisionModel,
    tensors: &[Vec<f32>],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let input = |i: usize| -> Vec<f32> {
        (0..batch)
            .flat_map(|j| tensors[(i * batch + j) % tensors.len()].iter().copied())
            .collect()
    };
    model.run(input(0), batch)?; // warm-up
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || (start.elapsed() < budget && runs < 50) {
        model.run(input(runs + 1), batch)?;
        runs += 1;
    }
    Ok((runs * batch) as f64 / start.elapsed().as_secs_f64())
}

struct Service {
    client: ModelServingClient,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_service(settings: &Settings, max_batch: usize) -> anyhow::Result<Service> {
    let defaults = EncoderConfig::new(settings.model_dir.clone(), settings.ort.clone());
    let config = EncoderConfig {
        batch: BatchConfig {
            max_batch,
            ..defaults.batch
        },
        ..defaults
    };
    let encoder = tokio::task::spawn_blocking(move || ClipEncoder::load(config)).await??;
    let limits = HttpLimits {
        max_body_bytes: 32 << 20,
        request_timeout: Duration::from_secs(300),
        ..HttpLimits::default()
    };
    let local = model_serving::start_local(Arc::new(encoder), limits).await?;
    let client =
        ModelServingClient::new(format!("http://{}", local.addr), Duration::from_secs(300))?;
    Ok(Service {
        client,
        shutdown: local.shutdown,
        server: local.task,
    })
}

impl Service {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.server.await??;
        Ok(())
    }
}

/// Images per second with `clients` concurrent clients, each sending single images in turn.
async fn service_throughput(
    client: &ModelServingClient,
    photos: &[Vec<u8>],
    clients: usize,
    per_client: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    client.encode_images(vec![photos[0].clone()]).await?; // warm-up
    let start = Instant::now();
    let deadline = start + budget;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let photos = photos.to_vec();
            tokio::spawn(async move {
                let mut done = 0usize;
                for i in 0..per_client {
                    if done >= 1 && Instant::now() > deadline {
                        break;
                    }
                    let photo = photos[(c * per_client + i) % photos.len()].clone();
                    client.encode_images(vec![photo]).await?;
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn python_preprocess_seconds(python: &Path, photos: &[PathBuf]) -> anyhow::Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/reference.py");
    let out = Command::new(python)
        .arg(script)
        .args(["timing", "--size", "224", "--rounds", "3"])
        .args(photos)
        .output()?;
    if !out.status.success() {
        bail!(
            "reference timing failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["seconds_per_image"]
        .as_f64()
        .context("no seconds_per_image")
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let spec = ModelSpec::load(&s.model_dir)?;
    println!(
        "model-serving benchmark — model {} (dim {}, image {}), {} real photos, {} cores",
        spec.name,
        spec.embedding_dim,
        spec.image_size,
        s.photos.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let pre = Preprocessor {
        image_size: spec.image_size,
        mean: spec.image_mean,
        std: spec.image_std,
        limits: ImageLimits::default(),
    };

    // (4) Preprocessing: decode + transform, one thread, best of 3 rounds.
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        preprocess_all(&pre, &s.photos)?;
        best = best.min(start.elapsed().as_secs_f64() / s.photos.len() as f64);
    }
    // Where the time goes: decode (with orientation) vs transform, best of 3 each.
    let bytes: Vec<Vec<u8>> = s
        .photos
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    let (mut decode, mut transform) = (f64::INFINITY, f64::INFINITY);
    let mut out = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let decoded: Vec<_> = bytes
            .iter()
            .map(|b| model_serving::preprocess::decode_rgb(b, &pre.limits))
            .collect::<Result<_, _>>()?;
        decode = decode.min(start.elapsed().as_secs_f64() / bytes.len() as f64);
        let start = Instant::now();
        for rgb in &decoded {
            out.clear();
            pre.transform(rgb, &mut out)?;
        }
        transform = transform.min(start.elapsed().as_secs_f64() / bytes.len() as f64);
    }
    let pil = match &s.python {
        Some(python) => Some(python_preprocess_seconds(python, &s.photos)?),
        None => None,
    };
    println!("\n(4) preprocessing per image (JPEG decode + resize + crop + normalise, 1 thread)");
    println!(
        "    rust            {:>8.3} ms   (decode {:.3} ms, transform {:.3} ms)",
        best * 1e3,
        decode * 1e3,
        transform * 1e3
    );
    if let Some(pil) = pil {
        println!("    PIL + numpy     {:>8.3} ms", pil * 1e3);
        println!("    speed-up        {:>8.2}x   (target >= 3x)", pil / best);
    }

    // (1) Raw ONNX Runtime.
    let tensors = preprocess_all(&pre, &s.photos)?;
    let env = environment(&s.ort)?;
    let mut raw = Vec::new();
    {
        let mut model =
            VisionModel::load(&env, &s.model_dir.join(VISION_MODEL), spec.image_size, 0)?;
        println!("\n(1) raw ONNX Runtime image throughput, in process");
        for batch in [1, 8, 32] {
            let ips = raw_throughput(&mut model, &tensors, batch, s.budget)?;
            println!("    batch {batch:>2}        {ips:>8.2} img/s");
            raw.push((batch, ips));
        }
    }
    let best_raw = raw.iter().map(|r| r.1).fold(0.0, f64::max);

    // (2) Through HTTP, with and without dynamic batching.
    let photos: Vec<Vec<u8>> = s
        .photos
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    println!("\n(2) HTTP service throughput, single-image requests");
    let batched = start_service(&s, 32).await?;
    let one = service_throughput(&batched.client, &photos, 1, 16, s.budget).await?;
    println!("    1 client,  batching      {one:>8.2} img/s");
    let sixteen = service_throughput(&batched.client, &photos, 16, 8, s.budget).await?;
    println!("    16 clients, batching     {sixteen:>8.2} img/s");

    // (5) Text latency, sequential single-text requests.
    let mut latencies = Vec::new();
    let start = Instant::now();
    for i in 0..200 {
        if i >= 20 && start.elapsed() > s.budget {
            break;
        }
        let text = format!("a photo of a red summer dress number {i}");
        let t = Instant::now();
        batched.client.encode_text(&[text]).await?;
        latencies.push(t.elapsed().as_secs_f64());
    }
    batched.stop().await?;

    let unbatched = start_service(&s, 1).await?;
    let sixteen_unbatched = service_throughput(&unbatched.client, &photos, 16, 8, s.budget).await?;
    println!("    16 clients, no batching  {sixteen_unbatched:>8.2} img/s");
    unbatched.stop().await?;

    println!("\n(3) ratios");
    println!(
        "    service (16 clients) / best raw   {:>6.2}   (target >= 0.9)",
        sixteen / best_raw
    );
    println!(
        "    batching gain at 16 clients       {:>6.2}x  (target >= 1.5x)",
        sixteen / sixteen_unbatched
    );
    let b1 = raw.first().map_or(f64::NAN, |r| r.1);
    println!(
        "    ceiling: best raw / raw batch 1   {:>6.2}x  (no batcher can gain more on this machine)",
        best_raw / b1
    );

    // The same texts, tokenized and run in process on one session (what the service adds is
    // HTTP, JSON and the batcher's hand-off).
    let mut raw_text = Vec::new();
    {
        let mut model = TextModel::load(&env, &s.model_dir.join(TEXT_MODEL), 0)?;
        let tokenizer = TextTokenizer::load(
            &s.model_dir.join(TOKENIZER),
            spec.context_length,
            spec.pad_token_id,
        )?;
        for i in 0..latencies.len() + 5 {
            let text = format!(
                "a photo of a red summer dress number {}",
                i % latencies.len()
            );
            let t = Instant::now();
            let ids = tokenizer.encode(&text)?;
            let batch = tokenizer.pad(&[&ids]);
            model.run(batch.ids, batch.mask, batch.rows, batch.len)?;
            if i >= 5 {
                raw_text.push(t.elapsed().as_secs_f64());
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    raw_text.sort_by(f64::total_cmp);
    println!(
        "\n(5) text encode latency, one text at a time ({} requests)",
        latencies.len()
    );
    println!(
        "    through HTTP    p50 {:>8.2} ms   p99 {:>8.2} ms",
        percentile(&latencies, 50.0) * 1e3,
        percentile(&latencies, 99.0) * 1e3
    );
    println!(
        "    raw ORT         p50 {:>8.2} ms   p99 {:>8.2} ms",
        percentile(&raw_text, 50.0) * 1e3,
        percentile(&raw_text, 99.0) * 1e3
    );
    println!(
        "    HTTP / raw at p50   {:>6.2}   (target <= 1.15)",
        percentile(&latencies, 50.0) / percentile(&raw_text, 50.0)
    );
    Ok(())
}
