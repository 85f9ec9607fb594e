//! Downloads a real CLIP ONNX export from a Hugging Face-compatible hub into a model folder.
//!
//! Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}`. Large files answer with
//! a redirect to a CDN and carry their sha256 in `X-Linked-Etag`; small ones carry the git blob
//! sha1 in `ETag`. The shared downloader ([`http_edge::download`]) writes each to `<name>.part`,
//! resumes it with `Range` after an interruption, verifies the hub's checksum, then renames it
//! into place. `model.json` is written last from the export's `config.json` and
//! `preprocessor_config.json`, so a folder with a `model.json` is complete.

use std::path::Path;
use std::time::Duration;

use http_edge::download::{Checksum, DownloadError as FileError, Downloader, Progress};
use http_edge::retry::retry;
use serde_json::Value;

use crate::model::{MODEL_JSON, ModelSpec, RESIZE_SHORTEST_EDGE_BICUBIC};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A file of a model: which repository, which path in it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFile {
    pub repo: String,
    pub path: String,
}

/// Where a model's files are. Exports differ in layout; each known name maps to its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    pub name: String,
    pub revision: String,
    pub vision: RemoteFile,
    pub text: RemoteFile,
    pub tokenizer: RemoteFile,
    pub config: RemoteFile,
    pub preprocessor: RemoteFile,
}

impl ModelSource {
    /// Known names map to public exports; anything else is taken as a repository with the
    /// Xenova (transformers.js) layout: `onnx/vision_model.onnx`, `onnx/text_model.onnx`.
    pub fn resolve(model: &str, revision: &str) -> Self {
        let file = |repo: &str, path: &str| RemoteFile {
            repo: repo.to_owned(),
            path: path.to_owned(),
        };
        if model == "qdrant-clip-vit-b-32" {
            // Qdrant's split export: one repository per tower, each a plain model.onnx.
            let (v, t) = ("Qdrant/clip-ViT-B-32-vision", "Qdrant/clip-ViT-B-32-text");
            return Self {
                name: "clip-vit-b-32".to_owned(),
                revision: revision.to_owned(),
                vision: file(v, "model.onnx"),
                text: file(t, "model.onnx"),
                tokenizer: file(t, "tokenizer.json"),
                config: file(v, "config.json"),
                preprocessor: file(v, "preprocessor_config.json"),
            };
        }
        let repo = match model {
            "clip-vit-base-patch32" => "Xenova/clip-vit-base-patch32",
            "clip-vit-base-patch16" => "Xenova/clip-vit-base-patch16",
            other => other,
        };
        Self {
            name: repo.rsplit('/').next().unwrap_or(repo).to_owned(),
            revision: revision.to_owned(),
            vision: file(repo, "onnx/vision_model.onnx"),
            text: file(repo, "onnx/text_model.onnx"),
            tokenizer: file(repo, "tokenizer.json"),
            config: file(repo, "config.json"),
            preprocessor: file(repo, "preprocessor_config.json"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// A file failed to arrive or to verify ([`http_edge::download`] says which).
    #[error(transparent)]
    File(#[from] http_edge::download::DownloadError),
    #[error("cannot derive model.json: {0}")]
    Config(String),
}

impl DownloadError {
    /// Whether the hub's checksum refused a file (the partial file is gone).
    pub fn is_checksum(&self) -> bool {
        matches!(self, Self::File(FileError::Checksum { .. }))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| {
        DownloadError::File(FileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

fn http_err(url: &str, message: impl ToString) -> DownloadError {
    DownloadError::File(FileError::Http {
        url: url.to_owned(),
        message: message.to_string(),
    })
}

/// Downloads every file of `source` into `dest` and writes `model.json`.
pub async fn download(
    endpoint: &str,
    source: &ModelSource,
    dest: &Path,
) -> Result<(), DownloadError> {
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(io_err(dest))?;
    // No redirects: the hub's redirect carries the checksum, read before following it.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| http_err(endpoint, e))?;
    let downloader = Downloader::new(client).with_progress(TerminalProgress::default());
    let files = [
        (&source.vision, crate::model::VISION_MODEL),
        (&source.text, crate::model::TEXT_MODEL),
        (&source.tokenizer, crate::model::TOKENIZER),
        (&source.config, "config.json"),
        (&source.preprocessor, "preprocessor_config.json"),
    ];
    for (remote, local) in files {
        let url = format!(
            "{}/{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            remote.repo,
            source.revision,
            remote.path
        );
        let path = dest.join(local);
        if path.is_file() {
            tracing::info!(file = %path.display(), "already present");
            continue;
        }
        let (target, checksum) = retry(&Downloader::BACKOFF, "hub resolve", || {
            resolve(downloader.client(), &url)
        })
        .await?;
        downloader.fetch(&target, &path, &checksum).await?;
    }
    let spec = spec_from_hub_config(&source.name, dest)?;
    let text =
        serde_json::to_string_pretty(&spec).map_err(|e| DownloadError::Config(e.to_string()))?;
    let path = dest.join(MODEL_JSON);
    tokio::fs::write(&path, text).await.map_err(io_err(&path))?;
    tracing::info!(model = %spec.name, dest = %dest.display(), "model downloaded");
    Ok(())
}

/// Asks the hub where a file is and what it hashes to: a redirect to the CDN with the sha256 in
/// `X-Linked-Etag` (large files), or the file itself with its git blob sha1 in `ETag`.
async fn resolve(client: &reqwest::Client, url: &str) -> Result<(String, Checksum), FileError> {
    let fail = |message: String| FileError::Http {
        url: url.to_owned(),
        message,
    };
    let first = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let header = |name: &str| first.headers().get(name).and_then(|v| v.to_str().ok());
    let checksum = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map_or(Checksum::Unknown, Checksum::from_etag);
    if first.status().is_redirection() {
        let location =
            header("location").ok_or_else(|| fail("redirect without a location".into()))?;
        let target = first
            .url()
            .join(location)
            .map_err(|e| fail(e.to_string()))?;
        return Ok((target.to_string(), checksum));
    }
    if first.status().is_success() {
        // A small file served directly: fetched again by the downloader (it is small).
        return Ok((url.to_owned(), checksum));
    }
    Err(fail(format!("status {}", first.status())))
}

/// A progress bar with rate and ETA on a terminal; nothing (but the log lines) otherwise.
#[derive(Default)]
struct TerminalProgress(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl Progress for TerminalProgress {
    fn start(&self, file: &str, already: u64, total: Option<u64>) {
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:24} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(file.to_owned());
        bar.set_position(already);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// Builds `model.json` from a transformers CLIP `config.json` and `preprocessor_config.json`.
pub fn spec_from_hub_config(name: &str, dir: &Path) -> Result<ModelSpec, DownloadError> {
    let read = |name: &str| -> Result<Value, DownloadError> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text).map_err(|e| DownloadError::Config(format!("{name}: {e}")))
    };
    let config = read("config.json")?;
    let pre = read("preprocessor_config.json")?;
    let num = |v: &Value| {
        v.as_u64()
            .or_else(|| v.get("shortest_edge").and_then(Value::as_u64))
    };
    let dim = config["projection_dim"]
        .as_u64()
        .or_else(|| config["vision_config"]["projection_dim"].as_u64())
        .ok_or_else(|| DownloadError::Config("config.json has no projection_dim".into()))?;
    let image_size = num(&pre["crop_size"])
        .or_else(|| pre["crop_size"].get("height").and_then(Value::as_u64))
        .or_else(|| config["vision_config"]["image_size"].as_u64())
        .ok_or_else(|| DownloadError::Config("no image size in the configs".into()))?;
    let context = config["text_config"]["max_position_embeddings"]
        .as_u64()
        .unwrap_or(77);
    let triple = |v: &Value, default: [f32; 3]| -> [f32; 3] {
        match v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
        {
            Some(a) if a.len() == 3 => [a[0] as f32, a[1] as f32, a[2] as f32],
            _ => default,
        }
    };
    let spec = ModelSpec {
        name: name.to_owned(),
        embedding_dim: dim as usize,
        image_size: image_size as u32,
        image_mean: triple(&pre["image_mean"], [0.481_454_7, 0.457_827_5, 0.408_210_7]),
        image_std: triple(&pre["image_std"], [0.268_629_5, 0.261_302_6, 0.275_777_1]),
        resize: RESIZE_SHORTEST_EDGE_BICUBIC.to_owned(),
        context_length: context as usize,
        pad_token_id: 0,
        prompt_template: "a photo of {}".to_owned(),
        // A downloaded model has not been measured here.
        relevance_floor: None,
        relevance_floor_vector: None,
    };
    spec.validate().map_err(DownloadError::Config)?;
    Ok(spec)
}
