//! `etl dump` and `etl restore`: a catalogue's points (ids, vectors, payloads) and its objects
//! to a folder, and from it into another deployment (embedded or Qdrant server, embedded S3 or
//! an external one: everything goes through the backend's API and S3).
//!
//! A dump folder: `manifest.json` (the model's fingerprint, counts), `points.jsonl` (one
//! [`StoredPoint`] a line, in id order) and `objects/<key>` (each original once). It is written
//! as `<folder>.partial` and renamed when complete, so a folder with a manifest is whole.
//! Restore refuses a dump made by another model than the target's, skips points already there
//! (so it resumes), stores the objects, then upserts the points in batches with their vectors:
//! no model call.

use std::collections::HashSet;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use backend_api::{BackendClient, IngestItem, StoredPoint};
use catalog::store::{ObjectStore, StorageError};
use futures::StreamExt as _;
use model_serving_api::ModelServingClient;
use serde::{Deserialize, Serialize};

/// Points read or written per step.
const PAGE: usize = 500;
/// Objects read or written at once.
const IN_FLIGHT: usize = 8;
/// The longest line `points.jsonl` may hold (a 4,096-float vector and a payload fit easily).
const MAX_LINE: usize = 1 << 20;
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The model that made the vectors, as the backend names it.
    pub model: Option<String>,
    pub fingerprint: Option<String>,
    pub points: u64,
    pub objects: u64,
    pub dumped_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub points: u64,
    pub objects: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rates {
    pub fn line(&self, what: &str) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{what}: {} points ({:.0}/s), {} objects ({:.1} MB, {:.1} MB/s), {} already there, in {:.1} s",
            self.points,
            self.points as f64 / secs,
            self.objects,
            self.bytes as f64 / 1e6,
            self.bytes as f64 / 1e6 / secs,
            self.skipped,
            secs
        )
    }
}

/// Our object keys only ([`catalog::is_content_key`]): a dump is input, and a key that could
/// name a path outside its folder is refused.
fn checked_key(key: &str) -> anyhow::Result<&str> {
    if catalog::is_content_key(key) {
        Ok(key)
    } else {
        bail!(
            "not an object key of this catalogue: {:?}",
            key.chars().take(80).collect::<String>()
        )
    }
}

fn progress(total: u64, shown: bool) -> indicatif::ProgressBar {
    let bar = if shown {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos:>7}/{len:7} points [{elapsed_precise}] {per_sec:>10} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Writes `bytes` to `path` whole (a temporary file beside it, then renamed).
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Dumps the catalogue behind `backend` (and `store`, its bucket) into the folder `out`.
pub async fn dump(
    backend: &BackendClient,
    store: &ObjectStore,
    out: &Path,
    show_progress: bool,
) -> anyhow::Result<Rates> {
    if out.join("manifest.json").exists() {
        bail!("{} already holds a dump", out.display());
    }
    let started = Instant::now();
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    std::fs::create_dir_all(partial.join("objects"))
        .with_context(|| format!("creating {}", partial.display()))?;
    let points_path = partial.join("points.jsonl");
    let mut points_file = std::io::BufWriter::new(
        std::fs::File::create(&points_path)
            .with_context(|| format!("creating {}", points_path.display()))?,
    );
    let stats = backend.stats().await.context("backend stats")?;
    let bar = progress(stats.total, show_progress);
    let mut rates = Rates::default();
    let mut seen_ids = HashSet::new();
    let mut seen_keys = HashSet::new();
    let mut fingerprint: Option<Option<String>> = None;
    let mut offset = 0;
    loop {
        let page = backend
            .points_page(offset, PAGE)
            .await
            .with_context(|| format!("reading points from {offset}"))?;
        match &fingerprint {
            None => fingerprint = Some(page.fingerprint.clone()),
            Some(known) if *known != page.fingerprint => {
                bail!("the index changed model during the dump; dump again")
            }
            Some(_) => {}
        }
        if page.points.is_empty() {
            break;
        }
        offset += page.points.len();
        let mut new_keys = Vec::new();
        for point in &page.points {
            checked_key(&point.s3_key)?;
            // Writes during a dump shift the pages: an id seen twice is written once.
            if seen_ids.insert(point.id) {
                serde_json::to_writer(&mut points_file, point)?;
                points_file.write_all(b"\n")?;
                rates.points += 1;
            }
            if seen_keys.insert(point.s3_key.clone()) {
                new_keys.push(point.s3_key.clone());
            }
        }
        let objects = partial.join("objects");
        let written: Vec<anyhow::Result<u64>> = futures::stream::iter(new_keys)
            .map(|key| {
                let path = objects.join(&key);
                async move {
                    if let Ok(meta) = std::fs::metadata(&path) {
                        return Ok(meta.len());
                    }
                    let bytes = store
                        .get(&key)
                        .await
                        .with_context(|| format!("reading object {key}"))?;
                    let size = bytes.len() as u64;
                    tokio::task::spawn_blocking(move || write_file(&path, &bytes)).await??;
                    Ok(size)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for size in written {
            rates.bytes += size?;
            rates.objects += 1;
        }
        bar.set_position(rates.points);
    }
    points_file.flush()?;
    points_file.get_ref().sync_all()?;
    drop(points_file);
    let stats = backend.stats().await.context("backend stats")?;
    let manifest = Manifest {
        format: FORMAT,
        model: stats.model,
        fingerprint: fingerprint.flatten(),
        points: rates.points,
        objects: rates.objects,
        dumped_at: telemetry::time_rfc3339(std::time::SystemTime::now()).unwrap_or_default(),
    };
    write_file(
        &partial.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    bar.finish_and_clear();
    rates.elapsed = started.elapsed();
    Ok(rates)
}

/// Restores the dump in `from` into the deployment behind `backend`, `store` and `model`.
pub async fn restore(
    backend: &BackendClient,
    model: &ModelServingClient,
    store: &ObjectStore,
    from: &Path,
    show_progress: bool,
) -> anyhow::Result<Rates> {
    let started = Instant::now();
    let manifest_path = from.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("{} (not a complete dump?)", manifest_path.display()))?,
    )
    .with_context(|| format!("reading {}", manifest_path.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "dump format {} is not this version's ({FORMAT})",
            manifest.format
        );
    }
    // The vectors are restored as they are: they must be the target model's.
    let served = model.model_info().await.context("model-serving")?;
    if let Some(dumped) = &manifest.fingerprint
        && *dumped != served.fingerprint
    {
        bail!(
            "the dump holds vectors of {} ({dumped}), but model-serving at {} serves {} ({}): restore where that model is served, then re-index if you want the other",
            manifest.model.as_deref().unwrap_or("a model"),
            model.base_url(),
            served.name,
            served.fingerprint
        );
    }
    let made_by = manifest.fingerprint.clone().unwrap_or(served.fingerprint);
    let bar = progress(manifest.points, show_progress);
    let mut rates = Rates::default();
    let file = std::fs::File::open(from.join("points.jsonl"))
        .with_context(|| format!("{}", from.join("points.jsonl").display()))?;
    let mut lines = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        let mut batch: Vec<StoredPoint> = Vec::with_capacity(PAGE);
        while batch.len() < PAGE {
            line.clear();
            let read = (&mut lines)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut line)?;
            if read == 0 {
                break;
            }
            number += 1;
            if line.len() > MAX_LINE {
                bail!("points.jsonl line {number} is longer than {MAX_LINE} bytes");
            }
            let point: StoredPoint = serde_json::from_str(line.trim_end())
                .with_context(|| format!("points.jsonl line {number}"))?;
            checked_key(&point.s3_key)?;
            batch.push(point);
        }
        if batch.is_empty() {
            break;
        }
        let ids = batch.iter().map(|p| p.id).collect();
        let there: HashSet<_> = backend
            .existing(ids)
            .await
            .context("asking which points exist")?
            .into_iter()
            .collect();
        rates.skipped += there.len() as u64;
        let todo: Vec<StoredPoint> = batch
            .into_iter()
            .filter(|p| !there.contains(&p.id))
            .collect();
        let keys: HashSet<String> = todo.iter().map(|p| p.s3_key.clone()).collect();
        let objects = from.join("objects");
        let stored: Vec<anyhow::Result<u64>> = futures::stream::iter(keys)
            .map(|key| {
                let path = objects.join(&key);
                async move {
                    let bytes = tokio::fs::read(&path)
                        .await
                        .with_context(|| format!("{}", path.display()))?;
                    let size = bytes.len() as u64;
                    let object = catalog::ImageObject::of_image(&bytes)
                        .ok_or_else(|| anyhow::anyhow!("{} is not an image", path.display()))?;
                    if object.key != key {
                        bail!(
                            "{} does not hold the bytes its name says (its key would be {})",
                            path.display(),
                            object.key
                        );
                    }
                    store
                        .put(&key, bytes, object.content_type)
                        .await
                        .map_err(|e: StorageError| anyhow::anyhow!("storing {key}: {e}"))?;
                    Ok(size)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for size in stored {
            rates.bytes += size?;
            rates.objects += 1;
        }
        let items: Vec<IngestItem> = todo
            .into_iter()
            .map(|p| IngestItem {
                id: p.id,
                vector: p.vector,
                s3_key: p.s3_key,
                attributes: p.attributes,
            })
            .collect();
        let n = items.len() as u64;
        if n > 0 {
            backend
                .ingest_batch_made_by(items, Some(made_by.clone()))
                .await
                .context("upserting points")?;
        }
        rates.points += n;
        bar.set_position(rates.points + rates.skipped);
    }
    bar.finish_and_clear();
    rates.elapsed = started.elapsed();
    Ok(rates)
}
