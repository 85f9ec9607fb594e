//! `make bench` for model-serving, on the ViT-B/32-shaped model with real photos:
//!
//! 1. raw ONNX Runtime image throughput in-process at batch 1, 4, 8, 32, and two single-thread
//!    sessions side by side;
//! 2. HTTP service throughput with 1 and 16 concurrent clients sending single images, with dynamic
//!    batching (the default `max_batch`) and with batching disabled (max_batch = 1);
//! 3. the ratios: service at 16 clients / best raw, and the batching gain;
//! 4. preprocessing (decode + CLIP transform) per image against PIL + numpy on the same photos;
//! 5. text-encode latency p50 / p99 through the service;
//! 8. fp32 against int8 (`make quantize`): raw image throughput at batch 1, 8, 32 and text
//!    latency at batch 1, for the ViT-B/32-shaped model and the trained model with their int8
//!    copies (`BENCH_INT8_MODEL_DIR`, `TRAINED_MODEL_DIR`, `TRAINED_INT8_MODEL_DIR`);
//! 6. beside the reference design's own model server (`../shared/bench`, FastAPI under gunicorn,
//!    started here from `REFERENCE_SERVER_DIR` with the gunicorn of `REFERENCE_SERVER_VENV`):
//!    both as separate processes on the same model, driven by the same closed-loop load (1 and
//!    16 clients, single images and single texts), throughput and p50 / p99 side by side.
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
use hostile::process::{self, closed_loop, closed_loop_steady};
use model_serving::api::HttpLimits;
use model_serving::batcher::BatchConfig;
use model_serving::encoder::{ClipEncoder, EncoderConfig};
use model_serving::model::{ModelSpec, TEXT_MODEL, TOKENIZER, VISION_MODEL};
use model_serving::onnx::{TextModel, Threading, VisionGraph, VisionModel, environment};
use model_serving::preprocess::{ImageLimits, Preprocessor};
use model_serving::tokenize::TextTokenizer;
use model_serving_api::ModelServingClient;

struct Settings {
    model_dir: PathBuf,
    ort: PathBuf,
    photos: Vec<PathBuf>,
    python: Option<PathBuf>,
    /// The reference server's folder and the venv that runs it (section 6 needs both).
    reference: Option<(PathBuf, PathBuf)>,
    /// The release binaries (this program's own folder): `model-serving` is started from here.
    bins: PathBuf,
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
        reference: std::env::var_os("REFERENCE_SERVER_DIR")
            .zip(std::env::var_os("REFERENCE_SERVER_VENV"))
            .map(|(dir, venv)| (PathBuf::from(dir), PathBuf::from(venv))),
        bins: std::env::current_exe()?
            .parent()
            .context("no folder for this program")?
            .to_path_buf(),
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

/// The `i`th batch of `batch` tensors, cycling through `tensors`.
fn batch_input(tensors: &[Vec<f32>], batch: usize, i: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|j| tensors[(i * batch + j) % tensors.len()].iter().copied())
        .collect()
}

/// Images per second of raw `Session::run` at `batch`: one warm-up run, then at least 2 timed
/// runs, more while under `time` and `max_runs`.
fn raw_throughput(
    model: &mut VisionModel,
    tensors: &[Vec<f32>],
    batch: usize,
    time: Duration,
    max_runs: usize,
) -> anyhow::Result<f64> {
    let input = |i: usize| batch_input(tensors, batch, i);
    model.run(input(0), batch)?; // warm-up
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || (start.elapsed() < time && runs < max_runs) {
        model.run(input(runs + 1), batch)?;
        runs += 1;
    }
    Ok((runs * batch) as f64 / start.elapsed().as_secs_f64())
}

/// One raw way of running the model, as section 1 measured it.
#[derive(Clone, Copy)]
struct RawWay {
    batch: usize,
    /// Two single-thread sessions side by side, or one session of two threads.
    paired: bool,
    images_per_second: f64,
}

/// A thread that busy-loops 30 ms of every 100 on whatever core it gets, until dropped.
struct Neighbour {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Neighbour {
    fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let busy = Instant::now();
                while busy.elapsed() < Duration::from_millis(30) {
                    std::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_millis(70));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Images per second of sessions side by side (two single-thread ones): [`raw_throughput`] in a
/// thread each, at the same time, their rates added.
fn side_by_side(
    models: &mut [VisionModel],
    tensors: &[Vec<f32>],
    batch: usize,
    time: Duration,
    max_runs: usize,
) -> anyhow::Result<f64> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = models
            .iter_mut()
            .map(|model| scope.spawn(move || raw_throughput(model, tensors, batch, time, max_runs)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a session thread panicked"))?
            })
            .sum()
    })
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

/// One subcommand of `tools/reference.py`, whose answer is a JSON object on stdout.
fn reference_py(python: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/reference.py");
    let out = Command::new(python).arg(script).args(args).output()?;
    if !out.status.success() {
        bail!(
            "reference.py {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn python_preprocess_seconds(python: &Path, photos: &[PathBuf]) -> anyhow::Result<f64> {
    let mut args = vec!["timing", "--size", "224", "--rounds", "3"];
    args.extend(photos.iter().filter_map(|p| p.to_str()));
    reference_py(python, &args)?["seconds_per_image"]
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
    // BENCH_ONLY=raw, =footprint, =precision or =reference: that section alone (1, 7, 8 or 6;
    // raw after the preprocessing figures, which it needs); =service: sections 4, 1, 2, 3 and 5.
    let only = std::env::var("BENCH_ONLY").ok();
    if let Some(only) = only.as_deref().filter(|o| !matches!(*o, "raw" | "service")) {
        let photos: Vec<Vec<u8>> = s
            .photos
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()?;
        return match only {
            "footprint" => footprints(&s, &photos).await,
            "precision" => precisions(&s),
            "reference" => {
                let (dir, venv) = s.reference.as_ref().context(
                    "BENCH_ONLY=reference needs REFERENCE_SERVER_DIR and REFERENCE_SERVER_VENV",
                )?;
                beside_reference(&s, dir, venv, &photos).await
            }
            other => bail!("BENCH_ONLY={other}: raw, service, footprint, precision or reference"),
        };
    }
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
    let photos: Vec<Vec<u8>> = s
        .photos
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    let (mut decode, mut transform) = (f64::INFINITY, f64::INFINITY);
    let mut out = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let decoded: Vec<_> = photos
            .iter()
            .map(|b| model_serving::preprocess::decode_rgb(b, &pre.limits))
            .collect::<Result<_, _>>()?;
        decode = decode.min(start.elapsed().as_secs_f64() / photos.len() as f64);
        let start = Instant::now();
        for rgb in &decoded {
            out.clear();
            pre.transform(rgb, &mut out)?;
        }
        transform = transform.min(start.elapsed().as_secs_f64() / photos.len() as f64);
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
    let (mut model, mut pair) = {
        // One rewrite of the graph for the session of two threads and the two of one thread.
        let graph = VisionGraph::prepare(&s.model_dir.join(VISION_MODEL), true)?;
        let mut model =
            VisionModel::load_graph(&env, &graph, spec.image_size, Threading::default())?;
        println!(
            "\n(1) raw ONNX Runtime image throughput, in process (the graph as served: the last \
             layer for the class token only)"
        );
        for batch in [1, 4, 8, 32] {
            let ips = raw_throughput(&mut model, &tensors, batch, s.budget, 50)?;
            println!("    batch {batch:>2}        {ips:>8.2} img/s");
            raw.push(RawWay {
                batch,
                paired: false,
                images_per_second: ips,
            });
        }
        // The file's graph as it is against the graph as served, at batch 4, in alternating
        // turns (this machine's speed drifts by minutes): what the narrowing gains.
        let mut whole = VisionModel::load(
            &env,
            &s.model_dir.join(VISION_MODEL),
            spec.image_size,
            Threading::default(),
            false,
        )?;
        let turn = s.budget / 2;
        let mut ratios = Vec::new();
        let (mut as_is, mut narrowed) = (0.0, 0.0);
        for _ in 0..3 {
            let a = raw_throughput(&mut whole, &tensors, 4, turn, 50)?;
            let b = raw_throughput(&mut model, &tensors, 4, turn, 50)?;
            (as_is, narrowed) = (as_is + a / 3.0, narrowed + b / 3.0);
            ratios.push(b / a);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "    batch  4, the file's graph as it is {as_is:>6.2} img/s, class token only \
             {narrowed:.2} (3 turns each; median ratio {:.3}, turns {})",
            ratios[1],
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        drop(whole);
        let single = Threading {
            intra: 1,
            ..Threading::default()
        };
        let mut pair = (0..2)
            .map(|_| VisionModel::load_graph(&env, &graph, spec.image_size, single))
            .collect::<Result<Vec<_>, _>>()?;
        drop(graph);
        // The two ways again, at batch 4, with and without a neighbour that takes one core 30 ms of
        // every 100 (15% of the machine), as the other tenants of a shared host do: a run whose two
        // threads meet at every operator stalls whole when one of them is kept waiting.
        {
            let turn = s.budget / 2;
            let mut rates = [[0.0; 2]; 2]; // [without, with][1 x 2 threads, 2 x 1 thread]
            for (with, row) in rates.iter_mut().enumerate() {
                let _neighbour = (with == 1).then(Neighbour::start);
                row[0] = raw_throughput(&mut model, &tensors, 4, turn, 50)?;
                row[1] = side_by_side(&mut pair, &tensors, 4, turn, 50)?;
            }
            let loss = |i: usize| 100.0 * (1.0 - rates[1][i] / rates[0][i]);
            println!(
                "    batch  4 with a neighbour taking one core 30 ms in 100: 1 session x 2 threads \
                 {:.2} -> {:.2} img/s ({:+.0}%), 2 sessions x 1 thread {:.2} -> {:.2} ({:+.0}%)",
                rates[0][0],
                rates[1][0],
                -loss(0),
                rates[0][1],
                rates[1][1],
                -loss(1)
            );
        }
        // Two single-thread sessions side by side (one per core), each running its own batches:
        // no operator waits for the other core, at the price of each run taking twice as long.
        for batch in [1, 2, 4] {
            let ips = side_by_side(&mut pair, &tensors, batch, s.budget, 50)?;
            println!("    2 sessions x 1 thread, batch {batch:>2} each  {ips:>8.2} img/s");
            // Another way to run the same model on the same cores: the best raw rate counts it.
            raw.push(RawWay {
                batch,
                paired: true,
                images_per_second: ips,
            });
        }
        (model, pair)
    };
    if only.as_deref() == Some("raw") {
        return Ok(());
    }
    // Each way's best batch in section 1, run again in turns with the service below: the best of
    // seven measurements taken minutes apart is a high draw on a machine whose speed moves by
    // minutes, and the service's ratio to it would fall with each draw.
    let best_of = |paired: bool| {
        raw.iter()
            .filter(|r| r.paired == paired)
            .max_by(|a, b| a.images_per_second.total_cmp(&b.images_per_second))
            .map_or(1, |r| r.batch)
    };
    let (single_batch, pair_batch) = (best_of(false), best_of(true));
    let first_best = raw.iter().map(|r| r.images_per_second).fold(0.0, f64::max);

    // (2) Through HTTP, with and without dynamic batching.
    println!(
        "\n(2) HTTP service throughput, single-image requests (16 clients: in 3 turns with each \
         raw way at its best batch in section 1, and with the raw way the service without \
         batching has, 2 sessions x 1 thread at batch 1)"
    );
    let batched = start_service(&s, model_serving::encoder::DEFAULT_MAX_BATCH).await?;
    let one = service_throughput(&batched.client, &photos, 1, 16, s.budget).await?;
    println!("    1 client,  batching      {one:>8.2} img/s");
    let unbatched = start_service(&s, 1).await?;
    // Each is measured in turn, 3 times, for a third of the budget each time, and its rates
    // averaged: a change in the machine's speed then falls on all five.
    const ROUNDS: u32 = 3;
    let turn = s.budget / ROUNDS;
    // Images per second, averaged over the turns: 1 x 2 threads, 2 x 1 thread, 2 x 1 thread at
    // batch 1, the service with batching and without.
    let mut rates = [0.0; 5];
    let mut turns = Vec::new();
    for _ in 0..ROUNDS {
        // The raw runs block this runtime thread (the services' tasks are idle meanwhile).
        let (single, paired, b1) = tokio::task::block_in_place(|| {
            anyhow::Ok((
                raw_throughput(&mut model, &tensors, single_batch, turn, usize::MAX)?,
                side_by_side(&mut pair, &tensors, pair_batch, turn, usize::MAX)?,
                side_by_side(&mut pair, &tensors, 1, turn, usize::MAX)?,
            ))
        })?;
        let on = service_throughput(&batched.client, &photos, 16, 1 << 20, turn).await?;
        let off = service_throughput(&unbatched.client, &photos, 16, 1 << 20, turn).await?;
        turns.push(format!(
            "{:.2}/{:.2}",
            on / single.max(paired).max(b1),
            on / off
        ));
        for (rate, turn_rate) in rates.iter_mut().zip([single, paired, b1, on, off]) {
            *rate += turn_rate / f64::from(ROUNDS);
        }
    }
    let [single, paired, raw_b1, sixteen, sixteen_unbatched] = rates;
    let best_raw = single.max(paired).max(raw_b1);
    println!("    16 clients, batching     {sixteen:>8.2} img/s");
    println!("    16 clients, no batching  {sixteen_unbatched:>8.2} img/s");
    println!(
        "    raw, 1 session x 2 threads, batch {single_batch:>2}          {single:>8.2} img/s"
    );
    println!("    raw, 2 sessions x 1 thread, batch {pair_batch:>2} each     {paired:>8.2} img/s");
    println!("    raw, 2 sessions x 1 thread, batch  1 each     {raw_b1:>8.2} img/s");
    println!(
        "    best raw in the turns {best_raw:.2} img/s; the best draw of section 1 was {first_best:.2}"
    );
    unbatched.stop().await?;

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
    drop((model, pair));

    println!("\n(3) ratios (turn by turn: service / best raw, batching gain)");
    println!(
        "    service (16 clients) / best raw   {:>6.2}   (target >= 0.9; turns {})",
        sixteen / best_raw,
        turns.join(", ")
    );
    // Without batching the service runs the pool's two single-thread sessions at batch 1: a
    // batcher can gain at most what the best raw way makes of the same cores over that.
    let ceiling = best_raw / raw_b1;
    let gain = sixteen / sixteen_unbatched;
    println!(
        "    batching gain at 16 clients       {gain:>6.2}x  ({:.2} of the ceiling below; target: at it)",
        gain / ceiling
    );
    println!(
        "    ceiling: best raw / raw batch 1 of the unbatched way   {ceiling:>6.2}x  (no batcher \
         can gain more on this machine)"
    );

    // The same texts, tokenized and run in process on one session (what the service adds is
    // HTTP, JSON and the batcher's hand-off).
    let mut raw_text = Vec::new();
    {
        let mut model = TextModel::load(&env, &s.model_dir.join(TEXT_MODEL), Threading::default())?;
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

    if only.is_some() {
        return Ok(());
    }
    precisions(&s)?;
    footprints(&s, &photos).await?;
    match &s.reference {
        Some((dir, venv)) => beside_reference(&s, dir, venv, &photos).await?,
        None => println!(
            "\n(6) beside the reference stack: skipped (set REFERENCE_SERVER_DIR and \
             REFERENCE_SERVER_VENV; make bench does)"
        ),
    }
    Ok(())
}

/// Section 8: each model folder in fp32 and its int8 copy, raw, one after the other.
fn precisions(s: &Settings) -> anyhow::Result<()> {
    let pairs: Vec<(&str, PathBuf, PathBuf)> = [
        (
            "ViT-B/32-shaped",
            Some(s.model_dir.clone()),
            "BENCH_INT8_MODEL_DIR",
        ),
        (
            "trained",
            std::env::var_os("TRAINED_MODEL_DIR").map(PathBuf::from),
            "TRAINED_INT8_MODEL_DIR",
        ),
    ]
    .into_iter()
    .filter_map(|(name, fp32, int8)| {
        Some((name, fp32?, std::env::var_os(int8).map(PathBuf::from)?))
    })
    .collect();
    if pairs.is_empty() {
        println!(
            "\n(8) fp32 against int8: skipped (set BENCH_INT8_MODEL_DIR or TRAINED_MODEL_DIR and \
             TRAINED_INT8_MODEL_DIR; make bench does, after make quantize)"
        );
        return Ok(());
    }
    let env = environment(&s.ort)?;
    println!(
        "\n(8) fp32 against int8 (make quantize), raw ONNX Runtime in process, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "    | model | precision | img/s batch 1 | batch 8 | batch 32 | best | text ms batch 1 (p50) |"
    );
    println!("    |---|---|---:|---:|---:|---:|---:|");
    for (name, fp32, int8) in pairs {
        let mut best = Vec::new();
        for dir in [&fp32, &int8] {
            let spec = ModelSpec::load(dir)?;
            let pre = Preprocessor {
                image_size: spec.image_size,
                mean: spec.image_mean,
                std: spec.image_std,
                limits: ImageLimits::default(),
            };
            let tensors = preprocess_all(&pre, &s.photos)?;
            let mut model = VisionModel::load(
                &env,
                &dir.join(VISION_MODEL),
                spec.image_size,
                Threading::default(),
                true,
            )?;
            let rates = [1, 8, 32]
                .into_iter()
                // 2 s each, however fast: the trained model runs thousands a second.
                .map(|batch| {
                    raw_throughput(
                        &mut model,
                        &tensors,
                        batch,
                        s.budget.min(Duration::from_secs(2)),
                        usize::MAX,
                    )
                })
                .collect::<anyhow::Result<Vec<f64>>>()?;
            drop(model);
            let mut text = TextModel::load(&env, &dir.join(TEXT_MODEL), Threading::default())?;
            let tokenizer =
                TextTokenizer::load(&dir.join(TOKENIZER), spec.context_length, spec.pad_token_id)?;
            let mut times = Vec::new();
            for i in 0..105 {
                let ids = tokenizer.encode(&format!("a photo of a red summer dress number {i}"))?;
                let batch = tokenizer.pad(&[&ids]);
                let t = Instant::now();
                text.run(batch.ids, batch.mask, batch.rows, batch.len)?;
                if i >= 5 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let top = rates.iter().copied().fold(0.0, f64::max);
            best.push(top);
            println!(
                "    | {name} | {} | {:.1} | {:.1} | {:.1} | {top:.1} | {:.2} |",
                if dir == &fp32 { "fp32" } else { "int8" },
                rates[0],
                rates[1],
                rates[2],
                percentile(&times, 50.0) * 1e3
            );
        }
        println!(
            "    {name}: int8 / fp32 image throughput at the best batch {:.2}x   (target >= 1.6x; \
             retrieval figures: make eval)",
            best[1] / best[0]
        );
    }
    Ok(())
}

/// Section 7: the release binary's cold start (process start to ready) and resident memory at
/// idle and at its peak under 16 clients (half single images, half single texts), for each
/// model folder: `TINY_MODEL_DIR`, `TRAINED_MODEL_DIR` and the benchmark model.
async fn footprints(s: &Settings, photos: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut models: Vec<(String, PathBuf)> = ["TINY_MODEL_DIR", "TRAINED_MODEL_DIR"]
        .iter()
        .filter_map(|var| std::env::var_os(var).map(PathBuf::from))
        .map(|dir| {
            (
                dir.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                dir,
            )
        })
        .collect();
    models.push(("ViT-B/32-shaped".to_owned(), s.model_dir.clone()));
    let logs = std::env::temp_dir().join(format!("model-serving-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    let load_secs = s.budget.min(Duration::from_secs(10));
    println!(
        "\n(7) cold start and memory of the release binary (defaults: two single-thread vision \
         sessions and a rest session with every core, text on every core, arena on; 16 clients \
         for {} s, half images, half texts)",
        load_secs.as_secs()
    );
    println!(
        "    | model | files MB | start to ready ms | idle RSS MB | peak RSS MB under load | requests/s |"
    );
    println!("    |---|---:|---:|---:|---:|---:|");
    for (name, dir) in models {
        let files_mb: u64 = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>()
            >> 20;
        let mut service = process::Service::start(
            "model-serving",
            &s.bins.join("model-serving"),
            &["serve"],
            Some("MODEL_SERVING_ADDR"),
            &[
                ("MODEL_DIR", dir.display().to_string()),
                ("ORT_DYLIB_PATH", s.ort.display().to_string()),
                ("RUST_LOG", "warn".to_owned()),
            ],
            &logs,
        )?;
        let ready = service.wait_healthy(&http).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = service.rss_mb();
        service.reset_peak();
        let [image, _] = image_requests(photos);
        let [text, _] = text_requests();
        let (client, base) = (http.clone(), service.url(""));
        let stats = closed_loop(16, 100_000, load_secs, move |i| {
            if i % 2 == 0 {
                image(&client, &base, i / 2)
            } else {
                text(&client, &base, i / 2)
            }
        })
        .await;
        if stats.failed > 0 {
            bail!("{name}: {} requests failed under load", stats.failed);
        }
        println!(
            "    | {name} | {files_mb} | {:.0} | {idle:.0} | {:.0} | {:.1} |",
            ready.as_secs_f64() * 1e3,
            service.peak_mb(),
            stats.per_second()
        );
    }
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}

/// One request of a load: what to send to a server, given the request's number.
type MakeRequest =
    Box<dyn Fn(&reqwest::Client, &str, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// The two servers' requests for the same input: ours, then the reference's.
fn image_requests(photos: &[Vec<u8>]) -> [MakeRequest; 2] {
    let photos: Arc<Vec<bytes::Bytes>> =
        Arc::new(photos.iter().cloned().map(bytes::Bytes::from).collect());
    // Both servers read a multipart form with the images in `files` parts.
    let make = move |http: &reqwest::Client, base: &str, i: u64| {
        let photo = photos[i as usize % photos.len()].clone();
        let part = reqwest::multipart::Part::stream_with_length(photo.clone(), photo.len() as u64)
            .file_name("photo.jpg");
        http.post(format!("{base}/encode_image"))
            .multipart(reqwest::multipart::Form::new().part("files", part))
    };
    let make = Arc::new(make);
    let reference = make.clone();
    [
        Box::new(move |http, base, i| make(http, base, i)),
        Box::new(move |http, base, i| reference(http, base, i)),
    ]
}

fn text_requests() -> [MakeRequest; 2] {
    // Every text new, so neither server can answer from a cache.
    let text = |i: u64| format!("a photo of a red summer dress number {i}");
    [
        Box::new(move |http, base, i| {
            http.post(format!("{base}/encode_text"))
                .json(&serde_json::json!({ "texts": [text(i)] }))
        }),
        // The reference's /encode_text takes a bare JSON list.
        Box::new(move |http, base, i| {
            http.post(format!("{base}/encode_text"))
                .json(&serde_json::json!([text(i)]))
        }),
    ]
}

/// Section 6: model-serving's release binary and the reference server as processes on the same
/// model folder, each driven in turn by the same closed-loop load.
async fn beside_reference(
    s: &Settings,
    reference_dir: &Path,
    venv: &Path,
    photos: &[Vec<u8>],
) -> anyhow::Result<()> {
    let logs = std::env::temp_dir().join(format!("model-serving-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    // Absolute: the reference server runs in its own folder.
    let model_dir = std::fs::canonicalize(&s.model_dir)?.display().to_string();
    let mut ours = process::Service::start(
        "model-serving",
        &s.bins.join("model-serving"),
        &["serve"],
        Some("MODEL_SERVING_ADDR"),
        &[
            ("MODEL_DIR", model_dir.clone()),
            ("ORT_DYLIB_PATH", s.ort.display().to_string()),
            ("RUST_LOG", "warn".to_owned()),
        ],
        &logs,
    )?;
    let ours_ready = ours.wait_healthy(&http).await?;
    // The reference's documented best setting on 2 cores: one worker per core, one ONNX Runtime
    // thread each (its docstring).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut reference = process::Service::start(
        "reference",
        &venv.join("bin/gunicorn"),
        &[
            "-k",
            "uvicorn.workers.UvicornWorker",
            "-w",
            &workers.to_string(),
            "-b",
            "{addr}",
            "--chdir",
            &reference_dir.display().to_string(),
            "reference_model_server:app",
        ],
        None,
        &[("MODEL_DIR", model_dir), ("ORT_THREADS", "1".to_owned())],
        &logs,
    )?;
    let reference_ready = reference
        .wait_ready(|r| {
            http.post(r.url("/encode_text"))
                .json(&serde_json::json!(["ready"]))
        })
        .await
        .with_context(|| format!("reference server: see {}/reference.log", logs.display()))?;
    // Turns each server takes per load (BENCH_ROUNDS, 1-10).
    let rounds: u64 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .clamp(1, 10);
    // Each load is measured in its steady state, after the clients have run this long.
    let warmup = Duration::from_secs(
        std::env::var("BENCH_WARMUP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    println!(
        "\n(6) beside the reference stack (FastAPI + gunicorn, {workers} workers x 1 ONNX Runtime \
         thread), same model, same load, one run, the servers taking {rounds} turns at each load, \
         each turn measured after {}s of it; logs in {}",
        warmup.as_secs(),
        logs.display()
    );
    println!(
        "    | load | clients | ours req/s | p50 ms | p99 ms | reference req/s | p50 ms | p99 ms | req/s ratio | p99 ratio |"
    );
    println!("    |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = [ours.rss_mb(), reference.rss_mb()];
    ours.reset_peak();
    reference.reset_peak();
    let servers = [ours.url(""), reference.url("")];
    let mut summary = Vec::new();
    // BENCH_LOADS (e.g. "image16,text1"): only those loads.
    let only = std::env::var("BENCH_LOADS").ok();
    // A p99 needs a few thousand requests' worth of batches: of 320 images it is the 4th
    // slowest, and batches of 8 make one slow batch run the p99 by itself. The image load at 16
    // clients therefore runs 1,200 requests (about 150 batches), given the time it needs.
    for (load, clients, requests, budget) in [
        ("image", 1, 40_u64, s.budget),
        ("image", 16, 1200, s.budget.max(Duration::from_secs(90))),
        ("text", 1, 400, s.budget),
        ("text", 16, 2000, s.budget),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|l| l == format!("{load}{clients}")))
        {
            continue;
        }
        let makers = if load == "image" {
            image_requests(photos)
        } else {
            text_requests()
        };
        // The two servers take turns, `rounds` times, each round a share of the requests: a
        // change in the machine's speed during the load (it moved by a quarter within an hour
        // on this machine) then falls on both, not on whichever ran second.
        let makers: Vec<Arc<MakeRequest>> = makers.into_iter().map(Arc::new).collect();
        for (base, make) in servers.iter().zip(&makers) {
            // Warm-up: a few requests each, untimed.
            for i in 0..4 {
                make(&http, base, i).send().await?.error_for_status()?;
            }
        }
        let mut stats = [process::LoadStats::default(), process::LoadStats::default()];
        let mut round_ratios = Vec::new();
        for _ in 0..rounds {
            let mut rates = Vec::new();
            for ((base, make), pooled) in servers.iter().zip(&makers).zip(&mut stats) {
                let (http, base, make) = (http.clone(), base.clone(), make.clone());
                let round = closed_loop_steady(
                    clients,
                    warmup,
                    requests.div_ceil(rounds),
                    budget / rounds as u32,
                    move |i| make(&http, &base, i),
                )
                .await;
                rates.push(round.per_second());
                pooled.absorb(round);
            }
            round_ratios.push(format!("{:.2}", rates[0] / rates[1]));
        }
        let [a, b] = &stats;
        if a.failed + b.failed > 0 {
            bail!(
                "{load} at {clients} clients: {} of ours and {} of the reference's requests failed",
                a.failed,
                b.failed
            );
        }
        println!(
            "    | {load} | {clients} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} |",
            a.per_second(),
            a.percentile(50.0) * 1e3,
            a.percentile(99.0) * 1e3,
            b.per_second(),
            b.percentile(50.0) * 1e3,
            b.percentile(99.0) * 1e3,
            a.per_second() / b.per_second(),
            a.percentile(99.0) / b.percentile(99.0),
        );
        if rounds > 1 {
            println!(
                "      req/s ratio round by round: {}",
                round_ratios.join(", ")
            );
        }
        // The slowest requests of each server, to see whether a tail is one moment (every
        // client held up at once) or requests spread over the run: whenever a server's p99 is
        // over 1.2x its p50, and always with BENCH_TAIL=1.
        let wide = [a, b]
            .iter()
            .any(|s| s.percentile(99.0) > 1.2 * s.percentile(50.0));
        if wide || std::env::var_os("BENCH_TAIL").is_some() {
            for (who, stats) in [("ours", a), ("reference", b)] {
                let slowest: Vec<String> = stats
                    .slowest
                    .iter()
                    .map(|(at, latency)| format!("{:.0} ms at {at:.2} s", latency * 1e3))
                    .collect();
                println!("      slowest {who}: {}", slowest.join(", "));
            }
        }
        summary.push((
            load,
            clients,
            a.per_second(),
            b.per_second(),
            a.percentile(99.0),
            b.percentile(99.0),
        ));
    }
    println!(
        "    start to ready: ours {:.0} ms, reference {:.0} ms; RSS idle: ours {:.0} MB, reference \
         {:.0} MB (all workers); peak over the loads: ours {:.0} MB, reference {:.0} MB",
        ours_ready.as_secs_f64() * 1e3,
        reference_ready.as_secs_f64() * 1e3,
        idle[0],
        idle[1],
        ours.peak_mb(),
        reference.peak_mb()
    );
    // The machine's own limit for this model (reference.py ceiling), measured with both servers
    // idle: its multiply-adds at ONNX Runtime's best GEMM rate here, every other operator free.
    let ceiling = match &s.python {
        Some(python) if summary.iter().any(|(load, ..)| *load == "image") => {
            let threads = workers.to_string();
            Some(reference_py(
                python,
                &[
                    "ceiling",
                    "--model",
                    &s.model_dir.display().to_string(),
                    "--ort-threads",
                    &threads,
                ],
            )?)
        }
        _ => None,
    };
    for (load, clients, ours, theirs, p99, their_p99) in summary {
        if clients != 16 {
            continue;
        }
        let target = if load == "image" {
            "targets: throughput >= 1.1x, p99 <= 0.8x"
        } else {
            "targets: throughput >= 1.5x, lower p99"
        };
        println!(
            "    {load} at 16 clients: {:.2}x the reference's throughput, p99 {:.2}x   ({target})",
            ours / theirs,
            p99 / their_p99
        );
        // Little's law: under a closed loop the mean latency is clients / throughput, and a p99
        // cannot be below the mean; a p99 target therefore asks for a throughput.
        if load == "image" {
            println!(
                "      our p99 cannot be below the mean latency, {clients} / throughput = {:.0} ms; \
                 0.8x the reference's p99 ({:.0} ms) needs at least {:.1} req/s ({:.2}x its \
                 throughput)",
                clients as f64 / ours * 1e3,
                0.8 * their_p99 * 1e3,
                clients as f64 / (0.8 * their_p99),
                clients as f64 / (0.8 * their_p99) / theirs
            );
            if let Some(c) = &ceiling {
                let most = c["images_per_second"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "      this machine's ceiling for the model: {most:.1} img/s ({:.2} GFLOP an \
                     image at ONNX Runtime's own {:.0} GFLOP/s on its biggest MatMul {}, {} \
                     threads, every other operator free); the reference runs at {:.2} of it, \
                     ours at {:.2}, and 0.8x the reference's p99 needs {:.2} of it",
                    c["gflop_per_image"].as_f64().unwrap_or(f64::NAN),
                    c["gemm_gflops"].as_f64().unwrap_or(f64::NAN),
                    c["gemm_shape"],
                    c["threads"],
                    theirs / most,
                    ours / most,
                    clients as f64 / (0.8 * their_p99) / most
                );
            }
        }
    }
    drop(reference);
    drop(ours);
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}
