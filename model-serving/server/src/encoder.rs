//! The CLIP encoder engine: validates input, decodes and preprocesses images, tokenizes texts,
//! and runs both towers through the dynamic batchers. It knows nothing of HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use model_serving_api::ModelInfo;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::batcher::{BatchConfig, BatchError, Batcher, Sessions};
use crate::metrics;
use crate::model::{ModelFolderError, ModelSpec, TEXT_MODEL, TOKENIZER, VISION_MODEL};
use crate::onnx::{self, OnnxError, TextModel, Threading, VisionGraph, VisionModel};
use crate::preprocess::{ImageError, ImageHeader, ImageLimits, Preprocessor};
use crate::tokenize::{TextTokenizer, TokenizerError};

#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub model_dir: PathBuf,
    pub ort_library: PathBuf,
    /// ONNX Runtime intra-op threads per session; 0 = the cores shared out among the vision
    /// sessions (at least one each), and all cores for the text session. The rest session
    /// always has every core.
    pub threads: usize,
    /// Vision sessions, each with its own batch worker taking from the one image queue.
    pub vision_sessions: usize,
    /// With two or more vision sessions, one more with every core that runs a batch finding the
    /// service idle, alone (the others wait while it runs): latency at rest of one session with
    /// every core, throughput under load of the sessions side by side.
    pub rest_session: bool,
    /// With the smallest weight worth sharing ([`onnx::SHARED_WEIGHT_MIN_BYTES`]; tests share a
    /// small model's): several vision sessions share one copy of the graph's weights and of their
    /// packed forms ([`onnx::SharedWeights`]; the others load side by side after the first,
    /// which packs them). `None`: each reads its own.
    pub share_weights: Option<usize>,
    /// Whether ONNX Runtime's idle intra-op threads spin waiting for work.
    pub spin: bool,
    /// Whether the vision graph computes its last layer for the pooled class token only
    /// ([`crate::prune`]: the same embeddings, less work); false runs the file's graph as it is.
    pub class_token_only: bool,
    pub batch: BatchConfig,
    pub max_items_per_request: usize,
    pub max_image_pixels: u64,
    /// Longest side over shortest side an image may have.
    pub max_image_aspect_ratio: u32,
    /// Most pixels all the images of one request may have together.
    pub max_request_pixels: u64,
    /// Images decoded at once across all requests; 0 = one per core.
    pub decode_threads: usize,
    pub max_text_chars: usize,
}

impl EncoderConfig {
    /// The service's defaults for a model folder: default batching and limits, ONNX Runtime
    /// choosing its thread count. Override fields with struct update syntax.
    pub fn new(model_dir: PathBuf, ort_library: PathBuf) -> Self {
        Self {
            model_dir,
            ort_library,
            threads: 0,
            vision_sessions: DEFAULT_VISION_SESSIONS,
            rest_session: DEFAULT_REST_SESSION,
            share_weights: DEFAULT_SHARE_WEIGHTS.then_some(onnx::SHARED_WEIGHT_MIN_BYTES),
            spin: DEFAULT_SPIN,
            class_token_only: true,
            batch: default_batch(),
            max_items_per_request: DEFAULT_MAX_ITEMS,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_image_aspect_ratio: DEFAULT_MAX_IMAGE_ASPECT_RATIO,
            max_request_pixels: DEFAULT_MAX_REQUEST_PIXELS,
            decode_threads: 0,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Folder(#[from] ModelFolderError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    Config(String),
    #[error("model check failed: {0}")]
    Check(String),
    #[error("cannot start batch worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// Why an encode call failed. Handlers map each variant to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("no items given")]
    Empty,
    #[error("{given} items given; at most {max} per request")]
    TooManyItems { given: usize, max: usize },
    #[error("text {index} is empty")]
    EmptyText { index: usize },
    #[error("text {index} has {chars} characters; at most {max}")]
    TextTooLong {
        index: usize,
        chars: usize,
        max: usize,
    },
    #[error("the images have {pixels} pixels together; at most {limit} per request")]
    RequestTooLarge { pixels: u64, limit: u64 },
    #[error("image {index}: {source}")]
    Image {
        index: usize,
        #[source]
        source: ImageError,
    },
    #[error("text {index}: {source}")]
    Tokenize {
        index: usize,
        #[source]
        source: TokenizerError,
    },
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl EncodeError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty_batch",
            Self::TooManyItems { .. } => "too_many_items",
            Self::EmptyText { .. } => "empty_text",
            Self::TextTooLong { .. } => "text_too_long",
            Self::RequestTooLarge { .. }
            | Self::Image {
                source: ImageError::TooManyPixels { .. },
                ..
            } => "image_too_large",
            Self::Image {
                source: ImageError::AspectRatio { .. },
                ..
            } => "image_aspect_ratio",
            Self::Image {
                source: ImageError::UnsupportedFormat | ImageError::Empty,
                ..
            } => "unsupported_image",
            Self::Image { .. } => "invalid_image",
            Self::Tokenize { .. } => "tokenize",
            Self::Batch(BatchError::Overloaded { .. }) => "overloaded",
            Self::Batch(BatchError::Stopped(_)) => "stopped",
            Self::Batch(BatchError::Inference(_)) => "inference",
        }
    }
}

pub struct ClipEncoder {
    spec: ModelSpec,
    /// [`crate::model::fingerprint`] of the loaded folder.
    fingerprint: String,
    preprocessor: Arc<Preprocessor>,
    tokenizer: Arc<TextTokenizer>,
    images: Batcher<Vec<f32>>,
    texts: Batcher<Vec<u32>>,
    /// Decoding permits: at most this many images are decoded at once, whatever the load.
    decode_permits: Arc<Semaphore>,
    /// [`ClipEncoder::shared_weights`].
    shared_weights: usize,
    config: EncoderConfig,
}

impl ClipEncoder {
    /// Loads the model folder and starts the two batch workers. Runs one item through each tower
    /// so a wrong export fails here, not on the first request.
    pub fn load(config: EncoderConfig) -> Result<Self, LoadError> {
        if config.max_items_per_request == 0 || config.batch.max_batch == 0 {
            return Err(LoadError::Config(
                "max_batch and max_items_per_request must be at least 1".into(),
            ));
        }
        if config.max_items_per_request > config.batch.max_queued {
            return Err(LoadError::Config(format!(
                "max_items_per_request ({}) exceeds the queue capacity ({})",
                config.max_items_per_request, config.batch.max_queued
            )));
        }
        let dir = &config.model_dir;
        let spec = ModelSpec::load(dir)?;
        // The fingerprint reads every byte of the models: beside the session loads, not before.
        let fingerprinting = {
            let (dir, spec) = (dir.clone(), spec.clone());
            std::thread::Builder::new()
                .name("model-fingerprint".into())
                .spawn(move || crate::model::fingerprint(&dir, &spec))?
        };
        let env = onnx::environment(&config.ort_library)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions = config.vision_sessions.max(1);
        let vision_threading = Threading {
            intra: match config.threads {
                0 => (cores / sessions).max(1),
                n => n,
            },
            spin: config.spin,
            stop_spinning: false,
        };
        // Its pool threads stop spinning when its run ends: the pool's sessions use those cores
        // next.
        let rest_threading = Threading {
            intra: cores,
            spin: config.spin,
            stop_spinning: true,
        };
        let text_threading = Threading {
            intra: config.threads,
            spin: config.spin,
            stop_spinning: false,
        };
        let with_rest = config.rest_session && sessions >= 2;
        // The sessions load side by side: ONNX Runtime builds a session on one thread, and the
        // three vision sessions and the text one took 7.5 s one after another (ViT-B/32 shapes).
        let (text_path, vision_path) = (dir.join(TEXT_MODEL), dir.join(VISION_MODEL));
        let ((mut visions, mut rest, shared_weights), mut text) = std::thread::scope(|scope| {
            let text = scope.spawn(|| TextModel::load(&env, &text_path, text_threading));
            let visions = load_visions(
                &env,
                &vision_path,
                config.class_token_only,
                spec.image_size,
                (sessions, vision_threading),
                with_rest.then_some(rest_threading),
                config.share_weights,
            );
            let text = joined(text)?;
            visions.map(|visions| (visions, text))
        })?;
        let tokenizer = Arc::new(TextTokenizer::load(
            &dir.join(TOKENIZER),
            spec.context_length,
            spec.pad_token_id,
        )?);
        let preprocessor = Arc::new(Preprocessor {
            image_size: spec.image_size,
            mean: spec.image_mean,
            std: spec.image_std,
            limits: ImageLimits {
                max_pixels: config.max_image_pixels,
                max_aspect_ratio: config.max_image_aspect_ratio,
            },
        });

        for vision in visions.iter_mut().chain(rest.as_mut()) {
            check_dim(
                "vision",
                &vision.run(vec![0.0; preprocessor.tensor_len()], 1)?,
                spec.embedding_dim,
            )?;
        }
        let probe = tokenizer.encode("a photo").map_err(LoadError::Tokenizer)?;
        let batch = tokenizer.pad(&[&probe]);
        check_dim(
            "text",
            &text.run(batch.ids, batch.mask, 1, batch.len)?,
            spec.embedding_dim,
        )?;

        let encode = |mut vision: VisionModel| {
            move |items: Vec<Vec<f32>>| {
                let rows = items.len();
                let pixels = items.concat();
                vision.run(pixels, rows).map_err(|e| e.to_string())
            }
        };
        let rest_threads = rest.is_some().then_some(rest_threading.intra);
        let vision_runs = Sessions {
            pool: visions.into_iter().map(encode).collect(),
            rest: rest.map(encode),
        };
        let images = Batcher::start_sessions("image", config.batch, vision_runs)?;
        let padder = tokenizer.clone();
        let texts = Batcher::start("text", config.batch, move |items: Vec<Vec<u32>>| {
            let rows: Vec<&[u32]> = items.iter().map(Vec::as_slice).collect();
            let batch = padder.pad(&rows);
            text.run(batch.ids, batch.mask, batch.rows, batch.len)
                .map_err(|e| e.to_string())
        })?;
        let fingerprint = fingerprinting
            .join()
            .map_err(|_| LoadError::Check("the fingerprint thread panicked".into()))??;
        tracing::info!(
            model = %spec.name,
            %fingerprint,
            dim = spec.embedding_dim,
            image_size = spec.image_size,
            folder = %dir.display(),
            vision_sessions = sessions,
            vision_threads = vision_threading.intra,
            rest_session_threads = rest_threads,
            shared_weights,
            text_threads = text_threading.intra,
            spin = config.spin,
            "model loaded"
        );
        let decode_threads = match config.decode_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Self {
            spec,
            fingerprint,
            preprocessor,
            tokenizer,
            images,
            texts,
            decode_permits: Arc::new(Semaphore::new(decode_threads)),
            shared_weights,
            config,
        })
    }

    /// How many weights the vision sessions share ([`EncoderConfig::share_weights`]; 0 when
    /// each holds its own).
    pub fn shared_weights(&self) -> usize {
        self.shared_weights
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn model_dir(&self) -> &Path {
        &self.config.model_dir
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.spec.name.clone(),
            fingerprint: self.fingerprint.clone(),
            dim: self.spec.embedding_dim,
            image_size: self.spec.image_size,
            context_length: self.spec.context_length,
            prompt_template: self.spec.prompt_template.clone(),
            max_batch: self.config.batch.max_batch,
            max_items_per_request: self.config.max_items_per_request,
            relevance_floor: self.spec.relevance_floor,
            relevance_floor_vector: self.spec.relevance_floor_vector,
        }
    }

    fn check_count(&self, n: usize) -> Result<(), EncodeError> {
        if n == 0 {
            return Err(EncodeError::Empty);
        }
        if n > self.config.max_items_per_request {
            return Err(EncodeError::TooManyItems {
                given: n,
                max: self.config.max_items_per_request,
            });
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(items = texts.len()))]
    pub async fn encode_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let result = self.encode_texts_inner(texts).await;
        if let Err(e) = &result {
            metrics::error("text", e.kind());
        }
        result
    }

    async fn encode_texts_inner(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.check_count(texts.len())?;
        // Room in the queue first: nothing is tokenized for a request the queue cannot take.
        let reservation = self.texts.reserve(texts.len())?;
        let started = Instant::now();
        let mut rows = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                return Err(EncodeError::EmptyText { index });
            }
            let chars = text.chars().count();
            if chars > self.config.max_text_chars {
                return Err(EncodeError::TextTooLong {
                    index,
                    chars,
                    max: self.config.max_text_chars,
                });
            }
            rows.push(
                self.tokenizer
                    .encode(text)
                    .map_err(|source| EncodeError::Tokenize { index, source })?,
            );
        }
        metrics::preprocess("text", started.elapsed() / texts.len() as u32);
        let out = reservation
            .submit(rows)
            .instrument(tracing::info_span!("queue_and_infer", modality = "text"))
            .await?;
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(items = images.len()))]
    pub async fn encode_images(&self, images: Vec<Bytes>) -> Result<Vec<Vec<f32>>, EncodeError> {
        let result = self.encode_images_inner(images).await;
        if let Err(e) = &result {
            metrics::error("image", e.kind());
        }
        result
    }

    async fn encode_images_inner(&self, images: Vec<Bytes>) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.check_count(images.len())?;
        // Admission, cheapest first: every header (no pixels decoded) within the per-image limits
        // and the request's pixel budget, then room in the queue. Only then is anything decoded.
        let images = Arc::new(images);
        let headers = {
            let (images, limits) = (images.clone(), self.preprocessor.limits);
            tokio::task::spawn_blocking(move || {
                images
                    .iter()
                    .enumerate()
                    .map(|(index, bytes)| {
                        ImageHeader::read(bytes, &limits)
                            .map_err(|source| EncodeError::Image { index, source })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|_| EncodeError::Image {
                index: 0,
                source: ImageError::Unprocessable,
            })??
        };
        let pixels = headers
            .iter()
            .fold(0u64, |sum, h| sum.saturating_add(h.pixels()));
        if pixels > self.config.max_request_pixels {
            return Err(EncodeError::RequestTooLarge {
                pixels,
                limit: self.config.max_request_pixels,
            });
        }
        let reservation = self.images.reserve(images.len())?;

        // Decoding and resizing are CPU work on blocking threads, at most one image per decode
        // permit at a time across all requests, so memory is bounded by the permits, not the load.
        // A permit moves into its task: an abandoned request frees it when that image is done.
        let span = tracing::info_span!("decode_and_preprocess", items = headers.len());
        let tasks = headers.into_iter().enumerate().map(|(index, header)| {
            let (images, pre) = (images.clone(), self.preprocessor.clone());
            let permits = self.decode_permits.clone();
            async move {
                let image_error = |source| EncodeError::Image { index, source };
                let permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| EncodeError::Batch(BatchError::Stopped("image")))?;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    preprocess_one(&pre, &images[index], header)
                })
                .await
                // A panic while decoding is this input's doing: the same bytes fail the same way.
                .map_err(|_| image_error(ImageError::Unprocessable))?
                .map_err(image_error)
            }
        });
        let tensors = futures::future::try_join_all(tasks)
            .instrument(span)
            .await?;
        let out = reservation
            .submit(tensors)
            .instrument(tracing::info_span!("queue_and_infer", modality = "image"))
            .await?;
        Ok(out)
    }

    /// Items each queue admits before refusing.
    pub fn queue_capacity(&self) -> usize {
        self.config.batch.max_queued
    }

    /// Items waiting in the image and text queues.
    pub fn queued(&self) -> (usize, usize) {
        (self.images.queued(), self.texts.queued())
    }
}

fn preprocess_one(
    pre: &Preprocessor,
    bytes: &[u8],
    header: ImageHeader,
) -> Result<Vec<f32>, ImageError> {
    let started = Instant::now();
    let rgb = crate::preprocess::decode_rgb_checked(bytes, header, &pre.limits)?;
    metrics::decode(started.elapsed());
    let started = Instant::now();
    let mut out = Vec::with_capacity(pre.tensor_len());
    pre.transform(&rgb, &mut out)?;
    metrics::preprocess("image", started.elapsed());
    Ok(out)
}

fn check_dim(tower: &str, rows: &[Vec<f32>], dim: usize) -> Result<(), LoadError> {
    match rows.first() {
        Some(row) if row.len() == dim => Ok(()),
        Some(row) => Err(LoadError::Check(format!(
            "{tower} model returns {}-dimensional embeddings; model.json says {dim}",
            row.len()
        ))),
        None => Err(LoadError::Check(format!("{tower} model returned no rows"))),
    }
}

/// A session load's result from its thread.
fn joined<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, OnnxError>>,
) -> Result<T, LoadError> {
    handle
        .join()
        .map_err(|_| LoadError::Check("a model session's load panicked".into()))?
        .map_err(LoadError::from)
}

/// The vision graph rewritten once (and its weights of at least `share_weights` bytes read once
/// when several sessions share them), then the pool's sessions (`count` with `threading`) and
/// the rest session (with `rest`) loaded from it: side by side, after the first when they share
/// weights. Also returns how many weights they share.
fn load_visions(
    env: &ort::environment::Environment,
    path: &Path,
    class_token_only: bool,
    image_size: u32,
    (count, threading): (usize, Threading),
    rest: Option<Threading>,
    share_weights: Option<usize>,
) -> Result<(Vec<VisionModel>, Option<VisionModel>, usize), LoadError> {
    let share = share_weights.filter(|_| count + usize::from(rest.is_some()) > 1);
    let mut graph = VisionGraph::prepare_sharing(path, class_token_only, share)?;
    // Sessions sharing their weights are handed them, so none reads or copies them while it
    // loads ([`VisionGraph::prepare_sharing`]: they are out of the graph it parses). The first
    // packs them (MatMul's packed B) into the shared container and the others, loaded side by
    // side after it, take those (ViT-B/32 shapes, `model-serving serve` to ready: 2.4-3.1 s at a
    // peak of 1.11 GB, against 5.1-6.1 s at 1.41 GB when each still read the whole file and
    // they loaded one after another). A graph whose kernels cannot share their packed weights
    // (ONNX Runtime refuses the session: the int8 convolutions of a quantised CNN) is loaded
    // again without sharing.
    if graph.shared_weights() > 0 {
        let shared =
            VisionModel::load_graph(env, &graph, image_size, threading).and_then(|first| {
                let (others, rest) =
                    load_side_by_side(env, &graph, image_size, count - 1, threading, rest)?;
                Ok((std::iter::once(first).chain(others).collect(), rest))
            });
        match shared {
            Ok((pool, rest)) => return Ok((pool, rest, graph.shared_weights())),
            Err(error) => {
                tracing::info!(
                    model = %path.display(),
                    %error,
                    "the vision sessions cannot share their weights; each loads its own"
                );
                graph.stop_sharing();
            }
        }
    }
    let (pool, rest) = load_side_by_side(env, &graph, image_size, count, threading, rest)?;
    Ok((pool, rest, 0))
}

/// `count` sessions of `graph` with `threading` and, with `rest`, the rest session, each loaded
/// on a thread of its own, side by side (ONNX Runtime builds a session on one thread).
fn load_side_by_side(
    env: &ort::environment::Environment,
    graph: &VisionGraph,
    image_size: u32,
    count: usize,
    threading: Threading,
    rest: Option<Threading>,
) -> Result<(Vec<VisionModel>, Option<VisionModel>), OnnxError> {
    std::thread::scope(|scope| {
        let load = |threading| {
            scope.spawn(move || VisionModel::load_graph(env, graph, image_size, threading))
        };
        let join = |handle: std::thread::ScopedJoinHandle<'_, _>| {
            handle.join().unwrap_or_else(|_| {
                Err(OnnxError::Model {
                    path: graph.path().to_owned(),
                    message: "a session's load panicked".into(),
                })
            })
        };
        let pool: Vec<_> = (0..count).map(|_| load(threading)).collect();
        let rest = rest.map(load);
        let pool = pool.into_iter().map(join).collect::<Result<Vec<_>, _>>();
        let rest = rest.map(join).transpose();
        Ok((pool?, rest?))
    })
}

// The service's defaults: the `serve` flags' defaults and [`EncoderConfig::new`]'s.
/// Measured with `make bench` (section 6, 16 clients, ViT-B/32 shapes, 2 cores): batches of 32
/// put every request behind one long run (p99 1.04 s, 27 img/s); batches of 8 keep the rate
/// (29 img/s, raw ONNX Runtime peaks at batch 8) and the tail (p99 0.58-0.69 s).
pub const DEFAULT_MAX_BATCH: usize = 8;
/// Two vision sessions of one thread each run batches under load, and a rest session with both
/// cores runs what finds the service idle (measured on 2 cores, ViT-B/32 shapes, 2026-12-03):
/// at rest an image takes as long as with one session of two threads (1-client image
/// throughput 1.87-2.04x the reference's, against 1.01x with the two single-thread sessions
/// alone); under load a core taken by something else slows one single-thread run, not a
/// two-thread run whole (-8% against -20% of raw throughput with a neighbour thread taking 15%
/// of the machine), and the 16-client tail is narrower (p99 1.08-1.17x the p50 against
/// 1.27-1.34x, four alternating pairs). They share one copy of the weights
/// ([`DEFAULT_SHARE_WEIGHTS`]).
pub const DEFAULT_VISION_SESSIONS: usize = 2;
pub const DEFAULT_REST_SESSION: bool = true;
/// Three ViT-B/32-shaped vision sessions sharing their weights: 1,111 MB idle against 1,375 MB,
/// and ready in 2.4-3.1 s against 3.3-3.5 s (`model-serving serve` to `/health/ready`, six runs
/// each, 2026-12-04; 5.1-6.1 s at a start peak of 1.41 GB while each session still parsed the
/// whole file); the same 16-client throughput (four alternating pairs of 12 s, within 2%).
pub const DEFAULT_SHARE_WEIGHTS: bool = true;
pub const DEFAULT_SPIN: bool = true;
pub const DEFAULT_MAX_WAIT_MS: u64 = 5;
/// The run a batch under load is sized for. Under load the pool's sessions run the batches, one
/// thread each: on ViT-B/32 shapes about 115-180 ms an image as this machine's speed drifts, and
/// 275 ms holds image batches at 2 over all of it ([`crate::batcher::batch_cap`]: the nearest
/// size, held from 100 to 220 ms an image). A closed loop of clients waits for whole runs, so
/// short runs make a narrow tail: at 16 clients (2026-12-03, two servers up side by side taking
/// turns of 400 requests) batches of 2 had the lower p99 in 5 of 7 pairs against batches of 4-5
/// (a sixth within 1 ms; p99 1.07-1.27x the p50 against 1.23-1.50x, one pair 1.66x with a stall)
/// for 2-10% less throughput in 6 of 7 (128-131 against 120-125 ms an image); `make bench`
/// section 6, eleven runs: p99 0.61-0.93x the reference's (8 of 11 at or below 0.8x) at
/// 1.13-1.26x its throughput, against 0.76-0.88x (2 of 5) at 1.26-1.33x with batches of 4. Batches of 4 (550
/// ms) had a boundary at 118 ms an image, crossed when the machine ran fast (batches of 5, a
/// wider tail); 500 ms with the cap at the largest size that fits flipped between 3 and 4 from
/// run to run (p99 1.25-1.37x the p50); with the floor, 250 ms fell to batches of one (146 ms an
/// image, the most). With one two-thread session (`MODEL_SERVING_VISION_SESSIONS=1
/// MODEL_SERVING_REST_SESSION=false`, about 50 ms an image) 275 gives batches of 5. Texts (a few
/// ms each) and small models keep `max_batch`.
pub const DEFAULT_MAX_RUN_MS: u64 = 275;
pub const DEFAULT_QUEUE_ITEMS: usize = 256;
pub const DEFAULT_MAX_ITEMS: usize = 64;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = crate::preprocess::DEFAULT_MAX_PIXELS;
pub const DEFAULT_MAX_IMAGE_ASPECT_RATIO: u32 = crate::preprocess::DEFAULT_MAX_ASPECT_RATIO;
/// Eight images at the per-image cap (or 32 at 4 Mpx): a request's decoding stays within a few
/// seconds of CPU.
pub const DEFAULT_MAX_REQUEST_PIXELS: u64 = 8 * DEFAULT_MAX_IMAGE_PIXELS;
pub const DEFAULT_MAX_TEXT_CHARS: usize = 1000;

/// The default dynamic batching.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        max_batch: DEFAULT_MAX_BATCH,
        max_wait: Duration::from_millis(DEFAULT_MAX_WAIT_MS),
        max_run: Duration::from_millis(DEFAULT_MAX_RUN_MS),
        max_queued: DEFAULT_QUEUE_ITEMS,
    }
}
