//! Downloads a real CLIP ONNX export from a Hugging Face-compatible hub into a model folder.
//!
//! Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}`. Large files answer with
//! a redirect to a CDN and carry their sha256 in `X-Linked-Etag`; small ones carry the git blob
//! sha1 in `ETag`. Each file is written to `<name>.part`, resumed with a `Range` request after an
//! interruption, verified against the hub's checksum, then renamed into place. `model.json` is
//! written last from the export's `config.json` and `preprocessor_config.json`, so a folder with a
//! `model.json` is complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sha1::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::model::{MODEL_JSON, ModelSpec, RESIZE_SHORTEST_EDGE_BICUBIC};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const ATTEMPTS: u32 = 5;

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
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "{file}: checksum mismatch (expected {expected}, got {actual}); the partial file was removed"
    )]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot derive model.json: {0}")]
    Config(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
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
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DownloadError::Http {
            url: endpoint.to_owned(),
            message: e.to_string(),
        })?;
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
        fetch_file(&client, &url, &dest.join(local)).await?;
    }
    let spec = spec_from_hub_config(&source.name, dest)?;
    let text =
        serde_json::to_string_pretty(&spec).map_err(|e| DownloadError::Config(e.to_string()))?;
    let path = dest.join(MODEL_JSON);
    tokio::fs::write(&path, text).await.map_err(io_err(&path))?;
    tracing::info!(model = %spec.name, dest = %dest.display(), "model downloaded");
    Ok(())
}

enum Expected {
    Sha256(String),
    GitSha1(String),
    Unknown,
}

/// One file, resumable: retries continue from the bytes already in `<name>.part`.
async fn fetch_file(client: &reqwest::Client, url: &str, dest: &Path) -> Result<(), DownloadError> {
    if dest.is_file() {
        tracing::info!(file = %dest.display(), "already present");
        return Ok(());
    }
    let part = dest.with_extension(format!(
        "{}.part",
        dest.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        match fetch_attempt(client, url, &part).await {
            Ok(expected) => {
                verify(&part, &expected, url).await?;
                tokio::fs::rename(&part, dest).await.map_err(io_err(dest))?;
                tracing::info!(file = %dest.display(), "downloaded and verified");
                return Ok(());
            }
            Err(e @ DownloadError::Http { .. }) => {
                let have = tokio::fs::metadata(&part)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                tracing::warn!(%url, attempt, bytes_kept = have, error = %e, "download interrupted; resuming");
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| DownloadError::Http {
        url: url.to_owned(),
        message: "no attempt made".into(),
    }))
}

fn http_err(url: &str, message: impl ToString) -> DownloadError {
    DownloadError::Http {
        url: url.to_owned(),
        message: message.to_string(),
    }
}

async fn fetch_attempt(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
) -> Result<Expected, DownloadError> {
    // The hub's answer: a redirect (large files) carrying the checksum, or the file itself.
    let first = client.get(url).send().await.map_err(|e| http_err(url, e))?;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_ascii_lowercase())
    };
    let etag = header(&first, "x-linked-etag").or_else(|| header(&first, "etag"));
    let expected = match etag {
        Some(tag) if tag.len() == 64 && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Expected::Sha256(tag)
        }
        Some(tag) if tag.len() == 40 && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Expected::GitSha1(tag)
        }
        _ => Expected::Unknown,
    };
    let target = if first.status().is_redirection() {
        let location = header(&first, "location")
            .ok_or_else(|| http_err(url, "redirect without a location"))?;
        let location = first
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&location)
            .to_owned();
        first
            .url()
            .join(&location)
            .map_err(|e| http_err(url, e))?
            .to_string()
    } else if first.status().is_success() {
        // Small file served directly: restart it from scratch (it is small).
        drop(first);
        let _ = tokio::fs::remove_file(part).await;
        url.to_owned()
    } else {
        return Err(DownloadError::Http {
            url: url.to_owned(),
            message: format!("status {}", first.status()),
        });
    };

    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut request = client.get(&target);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| http_err(&target, e))?;
    let append = match response.status().as_u16() {
        206 => true,
        200 => false,
        // The part file already holds everything.
        416 if have > 0 => return Ok(expected),
        status => return Err(http_err(&target, format!("status {status}"))),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(io_err(part))?;
    // A progress bar with rate and ETA on a terminal; nothing (but the log lines) otherwise.
    let already = if append { have } else { 0 };
    let total = response.content_length().map(|n| n + already);
    let progress =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(
        part.file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".part").to_owned())
            .unwrap_or_default(),
    );
    progress.set_position(already);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| http_err(&target, e))?;
        file.write_all(&chunk).await.map_err(io_err(part))?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    file.flush().await.map_err(io_err(part))?;
    file.sync_all().await.map_err(io_err(part))?;
    Ok(expected)
}

async fn verify(part: &Path, expected: &Expected, url: &str) -> Result<(), DownloadError> {
    let path = part.to_owned();
    let (sha256, git_sha1) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use std::io::Read;
        let len = std::fs::metadata(&path)?.len();
        let mut file = std::fs::File::open(&path)?;
        let mut sha256 = sha2::Sha256::new();
        let mut git = sha1::Sha1::new();
        git.update(format!("blob {len}\0").as_bytes());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha256.update(&buf[..n]);
            git.update(&buf[..n]);
        }
        Ok((hex::encode(sha256.finalize()), hex::encode(git.finalize())))
    })
    .await
    .map_err(|e| http_err(url, e))?
    .map_err(io_err(part))?;
    let (want, got) = match expected {
        Expected::Sha256(want) => (want, sha256),
        Expected::GitSha1(want) => (want, git_sha1),
        Expected::Unknown => {
            tracing::warn!(%url, sha256 = %sha256, "the hub gave no checksum; recording the sha256");
            return Ok(());
        }
    };
    if *want != got {
        let _ = tokio::fs::remove_file(part).await;
        return Err(DownloadError::Checksum {
            file: url.to_owned(),
            expected: want.clone(),
            actual: got,
        });
    }
    Ok(())
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
    };
    spec.validate().map_err(DownloadError::Config)?;
    Ok(spec)
}
