//! Typed configuration: command-line flags, each overridable by its environment variable
//! (documented in `.env.example`). Validated at start-up and logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http_edge::limits as edge;

use crate::api::HttpLimits;
use crate::batcher::BatchConfig;
use crate::encoder::{self, EncoderConfig};

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Model folder (model.json, vision_model.onnx, text_model.onnx, tokenizer.json).
    #[arg(long, env = "MODEL_DIR")]
    pub model_dir: PathBuf,
    /// libonnxruntime.so to load (`make ort` fetches one).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: PathBuf,
    #[arg(long, env = "MODEL_SERVING_ADDR", default_value = "127.0.0.1:8001")]
    pub addr: SocketAddr,
    /// Most items in one ONNX Runtime run; 1 disables dynamic batching.
    #[arg(long, env = "MODEL_SERVING_MAX_BATCH", default_value_t = encoder::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Under load, the longest a batch waits (from its first request) for more requests; a
    /// request that finds the worker idle never waits.
    #[arg(long, env = "MODEL_SERVING_MAX_WAIT_MS", default_value_t = encoder::DEFAULT_MAX_WAIT_MS)]
    pub max_wait_ms: u64,
    /// Under load, the run a batch is sized for: the items whose run at the recent runs' time per
    /// item comes nearest it, a cap that holds against run-to-run noise (at least 1, at most
    /// max_batch); 0 = max_batch alone.
    #[arg(long, env = "MODEL_SERVING_MAX_RUN_MS", default_value_t = encoder::DEFAULT_MAX_RUN_MS)]
    pub max_run_ms: u64,
    /// Items admitted to each queue before requests are refused with 503.
    #[arg(long, env = "MODEL_SERVING_QUEUE_ITEMS", default_value_t = encoder::DEFAULT_QUEUE_ITEMS)]
    pub queue_items: usize,
    /// Most texts or images in one request.
    #[arg(long, env = "MODEL_SERVING_MAX_ITEMS", default_value_t = encoder::DEFAULT_MAX_ITEMS)]
    pub max_items: usize,
    #[arg(long, env = "MODEL_SERVING_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Decompression-bomb guard: most pixels in one image.
    #[arg(
        long,
        env = "MODEL_SERVING_MAX_IMAGE_PIXELS",
        default_value_t = encoder::DEFAULT_MAX_IMAGE_PIXELS
    )]
    pub max_image_pixels: u64,
    /// Longest side over shortest side an image may have (a wider one is refused with 400).
    #[arg(
        long,
        env = "MODEL_SERVING_MAX_IMAGE_ASPECT_RATIO",
        default_value_t = encoder::DEFAULT_MAX_IMAGE_ASPECT_RATIO
    )]
    pub max_image_aspect_ratio: u32,
    /// Most pixels of all the images in one request together (more is refused with 413).
    #[arg(
        long,
        env = "MODEL_SERVING_MAX_REQUEST_PIXELS",
        default_value_t = encoder::DEFAULT_MAX_REQUEST_PIXELS
    )]
    pub max_request_pixels: u64,
    /// Images decoded at once across all requests; 0 = one per core.
    #[arg(long, env = "MODEL_SERVING_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
    #[arg(long, env = "MODEL_SERVING_MAX_TEXT_CHARS", default_value_t = encoder::DEFAULT_MAX_TEXT_CHARS)]
    pub max_text_chars: usize,
    /// ONNX Runtime intra-op threads per session; 0 = the cores shared out among the vision
    /// sessions (the text session gets all cores). The rest session always has every core.
    #[arg(long, env = "MODEL_SERVING_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Vision sessions running batches side by side, each with its own worker.
    #[arg(long, env = "MODEL_SERVING_VISION_SESSIONS", default_value_t = encoder::DEFAULT_VISION_SESSIONS)]
    pub vision_sessions: usize,
    /// With two or more vision sessions, one more with every core that runs a request finding
    /// the service idle, alone (true/false).
    #[arg(long, env = "MODEL_SERVING_REST_SESSION", default_value_t = encoder::DEFAULT_REST_SESSION, action = clap::ArgAction::Set)]
    pub rest_session: bool,
    /// Whether several vision sessions share one copy of the weights (less memory, and a
    /// quicker start: none reads the weights while it loads) (true/false).
    #[arg(long, env = "MODEL_SERVING_SHARE_WEIGHTS", default_value_t = encoder::DEFAULT_SHARE_WEIGHTS, action = clap::ArgAction::Set)]
    pub share_weights: bool,
    /// Whether ONNX Runtime's idle intra-op threads spin waiting for work (true/false).
    #[arg(long, env = "MODEL_SERVING_SPIN", default_value_t = encoder::DEFAULT_SPIN, action = clap::ArgAction::Set)]
    pub spin: bool,
    /// Whether the vision graph computes its last layer for the pooled class token only (the
    /// same embeddings, less work; false runs the file's graph as it is).
    #[arg(long, env = "MODEL_SERVING_CLASS_TOKEN_ONLY", default_value_t = true, action = clap::ArgAction::Set)]
    pub class_token_only: bool,
    #[arg(long, env = "MODEL_SERVING_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Deadline for a whole request body (a slower upload is refused with 408).
    #[arg(long, env = "MODEL_SERVING_BODY_TIMEOUT_SECS", default_value_t = edge::DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
    /// Deadline for a request head (the connection is closed beyond it).
    #[arg(long, env = "MODEL_SERVING_HEADER_TIMEOUT_SECS", default_value_t = edge::DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// Encode requests handled at once; more are refused at once with 503. 0 = unlimited.
    #[arg(
        long,
        env = "MODEL_SERVING_MAX_CONCURRENT_REQUESTS",
        default_value_t = edge::DEFAULT_MAX_CONCURRENT_REQUESTS
    )]
    pub max_concurrent_requests: usize,
}

impl ServeConfig {
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            model_dir: self.model_dir.clone(),
            ort_library: self.ort_dylib_path.clone(),
            threads: self.threads,
            vision_sessions: self.vision_sessions,
            rest_session: self.rest_session,
            share_weights: self
                .share_weights
                .then_some(crate::onnx::SHARED_WEIGHT_MIN_BYTES),
            spin: self.spin,
            class_token_only: self.class_token_only,
            batch: BatchConfig {
                max_batch: self.max_batch,
                max_wait: Duration::from_millis(self.max_wait_ms),
                max_run: Duration::from_millis(self.max_run_ms),
                max_queued: self.queue_items,
            },
            max_items_per_request: self.max_items,
            max_image_pixels: self.max_image_pixels,
            max_image_aspect_ratio: self.max_image_aspect_ratio,
            max_request_pixels: self.max_request_pixels,
            decode_threads: self.decode_threads,
            max_text_chars: self.max_text_chars,
        }
    }

    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            max_concurrent: self.max_concurrent_requests,
        }
    }
}
