//! Card-size thumbnails, made off the request path: a background task finds points without one
//! (woken by writes, and every few minutes for catalogues made before thumbnails), reads each
//! original from S3, scales it to fit [`EDGE`] pixels, stores a JPEG beside it
//! ([`catalog::thumbnail_key`]) and records the key in the point's payload. Grids then
//! pre-sign the thumbnail; a product page the original.
//!
//! Bounded: one image at a time, decoded under size and allocation limits (every original was
//! read by model-serving before it was stored, but the limit holds whatever is in the bucket). An
//! original that is gone or unreadable gets an empty key: no thumbnail, never asked again; one
//! no larger than its thumbnail would be is recorded as its own thumbnail.

use std::io::Cursor;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::index::Record;
use crate::metrics;
use crate::search::SearchEngine;
use crate::storage::StorageError;

/// The longest side of a thumbnail, in pixels (cards are at most 240 CSS pixels wide).
pub const EDGE: u32 = 256;
const QUALITY: u8 = 80;
/// Points handled per step.
const PAGE: usize = 32;
/// The largest side and decode allocation accepted for an original.
const MAX_SIDE: u32 = 12_000;
const MAX_ALLOC: u64 = 256 << 20;

/// A JPEG of `bytes` scaled to fit `EDGE` × `EDGE` (never enlarged), or why not.
pub fn make(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let scaled = if image.width() > EDGE || image.height() > EDGE {
        image.thumbnail(EDGE, EDGE)
    } else {
        image
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&scaled.into_rgb8())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The background task; woken by [`Thumbnails::wake`] after writes, stopped by
/// [`Thumbnails::stop`] (the engine's shutdown).
pub struct Thumbnails {
    wake: Notify,
    stopped: std::sync::atomic::AtomicBool,
    /// Held while a step runs (and the engine with it): a stop waits for the step, so the
    /// engine, and an embedded index's lock, are released when the backend stops.
    busy: tokio::sync::Mutex<()>,
}

impl Thumbnails {
    /// Starts the task for `engine`; it ends when the engine stops. `sweep`: how often it looks
    /// without being woken (a catalogue made before thumbnails, a failed step).
    pub fn spawn(engine: &Arc<SearchEngine>, sweep: Duration) -> Arc<Self> {
        let this = Arc::new(Self {
            wake: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            busy: tokio::sync::Mutex::new(()),
        });
        let (task, weak) = (this.clone(), Arc::downgrade(engine));
        tokio::spawn(async move { task.run(weak, sweep).await });
        this
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the task, after the step under way.
    pub async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
        let _step = self.busy.lock().await;
    }

    async fn run(&self, engine: Weak<SearchEngine>, sweep: Duration) {
        loop {
            let mut made = 0;
            let mut previous = Vec::new();
            let outcome = loop {
                let step = self.step(&engine, &mut previous).await;
                match step {
                    Ok(Some(n)) => made += n,
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            };
            match outcome {
                Ok(()) if made > 0 => tracing::info!(made, "thumbnails made"),
                Ok(()) => {}
                Err(error) => tracing::warn!(%error, "thumbnails stopped; they resume later"),
            }
            if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sweep) => {}
            }
        }
    }

    /// One page of points without a thumbnail; `None` when there is none left (or the engine
    /// stopped), else how many were made.
    async fn step(
        &self,
        engine: &Weak<SearchEngine>,
        previous: &mut Vec<uuid::Uuid>,
    ) -> anyhow::Result<Option<usize>> {
        let _step = self.busy.lock().await;
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        let Some(engine) = engine.upgrade() else {
            return Ok(None);
        };
        let batch = engine.index().missing_thumbnails(PAGE).await?;
        let ids: Vec<_> = batch.iter().map(|r| r.id).collect();
        if batch.is_empty() || ids == *previous {
            return Ok(None);
        }
        let mut made = 0;
        for record in batch {
            made += usize::from(Self::one(&engine, &record).await?);
        }
        *previous = ids;
        Ok(Some(made))
    }

    /// One point: its thumbnail made (or found, when another point shares the object) and
    /// recorded. Whether one was made.
    async fn one(engine: &SearchEngine, record: &Record) -> anyhow::Result<bool> {
        let original = &record.payload.s3_key;
        let key = ::catalog::thumbnail_key(original);
        let store = engine.store();
        if store.exists(&key).await? {
            engine.index().set_thumbnail(record.id, &key).await?;
            metrics::thumbnail("reused");
            return Ok(false);
        }
        let bytes = match store.get(original).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound(_)) => {
                tracing::warn!(id = %record.id, s3_key = %original, "no thumbnail: the original is gone");
                engine.index().set_thumbnail(record.id, "").await?;
                metrics::thumbnail("impossible");
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        };
        let size = bytes.len();
        let thumbnail = tokio::task::spawn_blocking(move || make(&bytes)).await?;
        match thumbnail {
            // An original already card-sized and smaller than any re-encoding (the small
            // dataset's 60 x 80 photos) is its own thumbnail: nothing more is stored.
            Ok(jpeg) if jpeg.len() >= size => {
                engine.index().set_thumbnail(record.id, original).await?;
                metrics::thumbnail("original");
                Ok(false)
            }
            Ok(jpeg) => {
                store.put(&key, jpeg, "image/jpeg").await?;
                engine.index().set_thumbnail(record.id, &key).await?;
                metrics::thumbnail("made");
                Ok(true)
            }
            Err(reason) => {
                tracing::warn!(id = %record.id, s3_key = %original, %reason, "no thumbnail: the original cannot be read");
                engine.index().set_thumbnail(record.id, "").await?;
                metrics::thumbnail("impossible");
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    }

    #[test]
    fn thumbnails_fit_the_card_keep_the_shape_and_never_grow() {
        let wide = make(&png(1200, 600)).expect("thumbnail");
        let read = image::load_from_memory(&wide).expect("a JPEG");
        assert_eq!((read.width(), read.height()), (256, 128));
        assert_eq!(&wide[..2], &[0xFF, 0xD8], "JPEG");
        let small = image::load_from_memory(&make(&png(60, 80)).expect("thumbnail")).expect("jpeg");
        assert_eq!((small.width(), small.height()), (60, 80));
        assert!(make(b"not an image").is_err());
        assert!(make(&png(1200, 600)[..200]).is_err(), "truncated");
    }

    #[test]
    fn a_huge_declared_size_is_refused_before_decoding() {
        // A PNG header declaring 100,000 x 100,000 pixels (a decompression bomb's shape).
        let mut header = png(1, 1);
        header[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        header[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(make(&header).is_err());
    }
}
