//! One batch of the load: encoded in requests that fit model-serving's pixel budget, stored,
//! and upserted, each call retried while it fails transiently.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use backend_api::IngestItem;
use catalog::ImageObject;
use catalog::store::StorageError;
use futures::StreamExt as _;
use http_edge::retry::Transient;
use uuid::Uuid;

use crate::datasets::{DatasetKind, Item};
use crate::{Clients, LoadError, metrics, stored_object};

/// Splits a batch into runs of consecutive items whose pixels (read from the image headers, no
/// decoding) fit `budget`. An item whose header cannot be read counts as 0 (model-serving
/// refuses it on its own); an item over the budget goes alone (and is refused alone).
fn pixel_groups(items: &[&Item], budget: u64) -> Vec<std::ops::Range<usize>> {
    let pixels = |item: &Item| {
        image::ImageReader::new(std::io::Cursor::new(&item.bytes))
            .with_guessed_format()
            .ok()
            .and_then(|reader| reader.into_dimensions().ok())
            .map_or(0, |(w, h)| u64::from(w) * u64::from(h))
    };
    let mut groups = Vec::new();
    let (mut start, mut sum) = (0, 0u64);
    for (i, item) in items.iter().enumerate() {
        let p = pixels(item);
        if i > start && sum.saturating_add(p) > budget {
            groups.push(start..i);
            (start, sum) = (i, 0);
        }
        sum = sum.saturating_add(p);
    }
    if start < items.len() {
        groups.push(start..items.len());
    }
    groups
}

/// Six calls in all, 200 ms before the second, doubling up to 5 s; a `Retry-After` up to 30 s
/// is honoured.
const BACKOFF: http_edge::retry::Backoff =
    http_edge::retry::Backoff::new(6, Duration::from_millis(200));

/// A storage failure wrapped for the shared retry: object storage failures are network or
/// server faults, worth another try.
struct StorageFailure(StorageError);

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Transient for StorageFailure {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Retries `call` while it fails transiently ([`http_edge::retry`]: exponential backoff, an
/// overloaded service's `Retry-After` honoured); sorts the final error into "skip this input"
/// and "stop the job".
async fn retry<T, E, F, Fut>(stage: &'static str, call: F) -> Result<T, RetryError<E>>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    http_edge::retry::retry(&BACKOFF, stage, call)
        .await
        .map_err(|e| {
            if e.is_transient() {
                RetryError::Persistent(LoadError::Persistent {
                    stage,
                    attempts: BACKOFF.attempts as u32,
                    message: e.to_string(),
                })
            } else {
                RetryError::Rejected(e)
            }
        })
}

enum RetryError<E> {
    /// Refused for this input: skip it.
    Rejected(E),
    /// The service stayed unavailable: stop the job.
    Persistent(LoadError),
}

/// The outcome of one batch.
pub(crate) struct BatchOutcome {
    pub loaded: usize,
    pub present: usize,
    pub failed: Vec<(String, String)>,
}

/// Encodes a batch in as few requests as model-serving's pixel budget allows. Returns each
/// item's vector (or why it was refused) and the fingerprint of the model that made them.
async fn encode(
    clients: &Clients,
    items: &[&Item],
    max_request_pixels: u64,
) -> Result<(Vec<Result<Vec<f32>, String>>, Option<String>), LoadError> {
    let mut out = Vec::with_capacity(items.len());
    let mut model = None;
    for group in pixel_groups(items, max_request_pixels) {
        out.extend(encode_request(clients, &items[group], &mut model).await?);
    }
    Ok((out, model))
}

/// Notes the model an answer names; two models in one batch would mix their vectors.
fn same_model(model: &mut Option<String>, answered: String) -> Result<(), LoadError> {
    match model {
        Some(known) if *known != answered => Err(LoadError::Persistent {
            stage: "encode",
            attempts: 1,
            message: format!(
                "model-serving changed its model during a batch ({known}, then {answered}); run the load again"
            ),
        }),
        _ => {
            *model = Some(answered);
            Ok(())
        }
    }
}

async fn encode_request(
    clients: &Clients,
    items: &[&Item],
    model: &mut Option<String>,
) -> Result<Vec<Result<Vec<f32>, String>>, LoadError> {
    let bytes: Vec<Vec<u8>> = items.iter().map(|i| i.bytes.clone()).collect();
    match retry("encode", || clients.model.encode_images(bytes.clone())).await {
        Ok(response) => {
            same_model(model, response.fingerprint)?;
            Ok(response.embeddings.into_iter().map(Ok).collect())
        }
        Err(RetryError::Persistent(e)) => Err(e),
        // One bad image refuses the whole request: encode one by one to find it.
        Err(RetryError::Rejected(_)) if items.len() > 1 => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match retry("encode", || {
                    clients.model.encode_images(vec![item.bytes.clone()])
                })
                .await
                {
                    Ok(mut r) => {
                        same_model(model, std::mem::take(&mut r.fingerprint))?;
                        out.push(r.embeddings.pop().ok_or_else(|| "no embedding".to_owned()))
                    }
                    Err(RetryError::Rejected(e)) => out.push(Err(e.to_string())),
                    Err(RetryError::Persistent(e)) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(RetryError::Rejected(e)) => Ok(vec![Err(e.to_string())]),
    }
}

/// One batch, one span: the calls it makes carry its trace context into model-serving, S3 and
/// the backend.
#[tracing::instrument(name = "etl.batch", skip_all, fields(dataset = dataset.name(), items = items.len()))]
pub(crate) async fn process_batch(
    clients: &Clients,
    dataset: DatasetKind,
    items: Vec<Item>,
    claimed: &Mutex<HashSet<Uuid>>,
    max_request_pixels: u64,
) -> Result<BatchOutcome, LoadError> {
    let mut entries: Vec<(Item, ImageObject, Uuid)> = items
        .into_iter()
        .map(|item| {
            let object = stored_object(&item.bytes);
            let id = catalog::point_id(dataset.name(), &object.key);
            (item, object, id)
        })
        .collect();
    // The same photo twice in a run is one product: whichever batch claims it first loads it.
    let before = entries.len();
    {
        let mut claimed = claimed.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(_, _, id)| claimed.insert(*id));
    }
    let duplicates = before - entries.len();
    let ids: Vec<Uuid> = entries.iter().map(|(_, _, id)| *id).collect();
    let started = Instant::now();
    let existing = match retry("exists", || clients.backend.existing(ids.clone())).await {
        Ok(existing) => existing,
        Err(RetryError::Persistent(e)) => return Err(e),
        Err(RetryError::Rejected(e)) => {
            return Err(LoadError::Persistent {
                stage: "exists",
                attempts: 1,
                message: e.to_string(),
            });
        }
    };
    metrics::stage("exists", started.elapsed());
    let present = existing.len() + duplicates;
    let todo: Vec<(Item, ImageObject, Uuid)> = entries
        .into_iter()
        .filter(|(_, _, id)| !existing.contains(id))
        .collect();
    let mut outcome = BatchOutcome {
        loaded: 0,
        present,
        failed: Vec::new(),
    };
    if todo.is_empty() {
        return Ok(outcome);
    }
    let started = Instant::now();
    let images: Vec<&Item> = todo.iter().map(|(item, _, _)| item).collect();
    let (vectors, model) = encode(clients, &images, max_request_pixels).await?;
    metrics::stage("encode", started.elapsed());
    let started = Instant::now();
    let mut encoded = Vec::new();
    for ((item, object, id), vector) in todo.into_iter().zip(vectors) {
        match vector {
            Ok(v) => encoded.push((item, object, id, v)),
            Err(reason) => outcome.failed.push((item.key, reason)),
        }
    }
    // Store the batch's images concurrently: S3 round trips, not CPU, bound this stage.
    let store = &clients.store;
    let stored: Vec<Result<IngestItem, LoadError>> = futures::stream::iter(encoded)
        .map(|(item, object, id, vector)| async move {
            match retry("store", || async {
                store
                    .put(&object.key, item.bytes.clone(), object.content_type)
                    .await
                    .map_err(StorageFailure)
            })
            .await
            {
                Ok(()) | Err(RetryError::Rejected(_)) => {}
                Err(RetryError::Persistent(e)) => return Err(e),
            }
            Ok(IngestItem {
                id,
                vector,
                s3_key: object.key,
                attributes: item.attributes,
            })
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let upserts = stored.into_iter().collect::<Result<Vec<_>, _>>()?;
    metrics::stage("store", started.elapsed());
    let n = upserts.len();
    let started = Instant::now();
    if n > 0 {
        // The batch says which model made its vectors: the backend refuses another model's.
        match retry("upsert", || {
            clients
                .backend
                .ingest_batch_made_by(upserts.clone(), model.clone())
        })
        .await
        {
            Ok(_) => {
                outcome.loaded = n;
                metrics::stage("upsert", started.elapsed());
            }
            Err(RetryError::Persistent(e)) => return Err(e),
            Err(RetryError::Rejected(e)) => {
                return Err(LoadError::Persistent {
                    stage: "upsert",
                    attempts: 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use http_edge::CallError;

    #[tokio::test]
    async fn an_overloaded_service_is_retried_no_sooner_than_it_asked() {
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let out = retry("encode", || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(CallError::Unavailable {
                    message: "overloaded".into(),
                    retry_after: Some(Duration::from_millis(700)),
                })
            } else {
                Ok(7)
            }
        })
        .await;
        assert!(matches!(out, Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "retried after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refused_input_is_not_retried() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry("encode", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(CallError::Rejected {
                status: 400,
                code: "invalid_image".into(),
                message: "not an image".into(),
            })
        })
        .await;
        assert!(matches!(out, Err(RetryError::Rejected(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
mod pixel_budget_tests {
    use super::*;

    fn png(width: u32, height: u32) -> Item {
        let mut bytes = Vec::new();
        image::GrayImage::new(width, height)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("png");
        Item {
            key: format!("{width}x{height}"),
            bytes,
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_batch_is_split_where_the_pixels_would_pass_the_budget() {
        // 100×100 = 10,000 px each; a budget of 25,000 px takes two at a time.
        let items: Vec<Item> = (0..5).map(|_| png(100, 100)).collect();
        let refs: Vec<&Item> = items.iter().collect();
        assert_eq!(pixel_groups(&refs, 25_000), vec![0..2, 2..4, 4..5]);
        // Everything fits: one request.
        assert_eq!(pixel_groups(&refs, 50_000), vec![0..5]);
    }

    #[test]
    fn an_item_over_the_budget_goes_alone_and_unreadable_headers_count_as_nothing() {
        let big = png(300, 300);
        let small = png(10, 10);
        let garbage = Item {
            key: "garbage".into(),
            bytes: b"not an image".to_vec(),
            attributes: Default::default(),
        };
        let refs = vec![&small, &big, &garbage, &small];
        assert_eq!(pixel_groups(&refs, 1_000), vec![0..1, 1..2, 2..4]);
        assert_eq!(
            pixel_groups(&[], 1_000),
            Vec::<std::ops::Range<usize>>::new()
        );
    }
}
