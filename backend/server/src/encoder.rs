//! Query embeddings from model-serving: retries with backoff for transient failures, a circuit
//! breaker so a dead model-serving costs nothing per request, and a bounded cache of text
//! embeddings keyed by model and normalised query.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backend_api::ErrorKind;
use http_edge::retry::{Backoff, Transient, retry};
use model_serving_api::{ClientError, EmbeddingsResponse, ModelInfo, ModelServingClient};

use crate::index::IndexModel;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// Model-serving is down, failing or the breaker is open; try again later.
    #[error("the model service is unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// Model-serving answered that it is at capacity (or stopping) and said when to come back.
    #[error("the model service is busy; retry after {retry_after:?}")]
    Busy { retry_after: Duration },
    /// Model-serving refused the input (e.g. not an image), as one of our kinds.
    #[error("{message}")]
    Rejected { kind: ErrorKind, message: String },
}

impl EncoderError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::ModelUnavailable,
            Self::Busy { .. } => ErrorKind::ModelOverloaded,
            Self::Rejected { kind, .. } => *kind,
        }
    }

    /// How long the caller should wait before trying again, for the faults.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } | Self::Busy { retry_after } => {
                Some(*retry_after)
            }
            Self::Rejected { .. } => None,
        }
    }
}

/// Our kind for model-serving's refusal of an input (its code, else its status). A refusal we
/// cannot place is our fault (we sent something model-serving does not take): internal.
fn rejection_kind(status: u16, code: &str) -> ErrorKind {
    match (code, status) {
        ("image_too_large", _) | (_, 413) => ErrorKind::ImageTooLarge,
        ("unsupported_image", _) | (_, 415) => ErrorKind::UnsupportedImage,
        ("invalid_image" | "image_aspect_ratio", _) => ErrorKind::InvalidImage,
        ("empty_text" | "text_too_long" | "tokenize", _) => ErrorKind::InvalidRequest,
        _ => ErrorKind::Internal,
    }
}

/// The longest `Retry-After` of model-serving passed on to our callers.
pub const MAX_BUSY_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub attempts: u32,
    pub backoff: Duration,
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
    pub cache_entries: u64,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
            cache_entries: 10_000,
        }
    }
}

/// Consecutive-fault circuit breaker: after `threshold` faults it opens for `open_for`; then it
/// lets exactly one trial call through (half-open): its success closes the breaker, its fault
/// re-opens it, and everyone else is turned away until the trial has its answer.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_out: bool },
}

/// What callers turned away during a half-open trial are told to wait.
const TRIAL_WAIT: Duration = Duration::from_secs(1);

/// Leave to make one call. A permit dropped without a verdict (its caller was cancelled, or the
/// answer said nothing about model-serving's health) gives a half-open trial slot back.
#[must_use]
struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
}

impl Breaker {
    fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit, or `Err(wait)` while open or while another caller's trial is out.
    fn admit(&self) -> Result<Permit<'_>, Duration> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(Permit {
                breaker: self,
                trial: false,
            }),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                *state = BreakerState::HalfOpen { trial_out: true };
                Ok(Permit {
                    breaker: self,
                    trial: true,
                })
            }
            BreakerState::HalfOpen { trial_out: true } => Err(TRIAL_WAIT),
            BreakerState::HalfOpen { trial_out: false } => {
                *state = BreakerState::HalfOpen { trial_out: true };
                Ok(Permit {
                    breaker: self,
                    trial: true,
                })
            }
        }
    }

    fn is_open(&self) -> bool {
        !matches!(*self.lock(), BreakerState::Closed { .. })
    }
}

impl Permit<'_> {
    /// Model-serving answered (a result, or a refusal of the input): it is alive.
    fn success(self) {
        let mut state = self.breaker.lock();
        if matches!(
            *state,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. }
        ) {
            metrics::breaker_state(false);
            tracing::info!("model-serving circuit breaker closed");
        }
        *state = BreakerState::Closed { failures: 0 };
        drop(state);
        std::mem::forget(self);
    }

    /// A fault of model-serving (unreachable, timed out, failed).
    fn failure(self) {
        let breaker = self.breaker;
        let mut state = breaker.lock();
        let open = match *state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                *state = BreakerState::Closed { failures };
                failures >= breaker.threshold
            }
            // The trial failed: open again at once.
            BreakerState::HalfOpen { .. } if self.trial => true,
            // A call let through before the breaker opened, failing late: already counted.
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => false,
        };
        if open {
            *state = BreakerState::Open {
                until: Instant::now() + breaker.open_for,
            };
            metrics::breaker_state(true);
            tracing::warn!(
                open_for_ms = breaker.open_for.as_millis() as u64,
                "model-serving circuit breaker opened"
            );
        }
        drop(state);
        std::mem::forget(self);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial {
            let mut state = self.breaker.lock();
            if *state == (BreakerState::HalfOpen { trial_out: true }) {
                *state = BreakerState::HalfOpen { trial_out: false };
            }
        }
    }
}

/// How one failed call counts, with what is kept of it.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Model-serving refused the input (4xx): it is healthy; never a breaker failure.
    Input {
        status: u16,
        code: String,
        message: String,
    },
    /// Model-serving answered "at capacity" or "stopping" with a Retry-After: alive, but busy.
    Busy {
        retry_after: Duration,
        cause: String,
    },
    /// A fault of model-serving; `retry` when the same call may well succeed at once.
    Fault { retry: bool, cause: String },
}

fn verdict(error: ClientError) -> Verdict {
    let cause = error.to_string();
    match error {
        ClientError::Rejected {
            status,
            code,
            message,
        } => Verdict::Input {
            status,
            code,
            message,
        },
        // Model-serving's own 503s (overloaded, stopping) always carry Retry-After; a gateway's
        // 502/504 or a bare 503 does not.
        ClientError::Unavailable {
            retry_after: Some(retry_after),
            ..
        }
        | ClientError::RateLimited {
            retry_after: Some(retry_after),
            ..
        } => Verdict::Busy { retry_after, cause },
        ClientError::RateLimited {
            retry_after: None, ..
        } => Verdict::Busy {
            retry_after: Duration::from_secs(1),
            cause,
        },
        ClientError::Unavailable {
            retry_after: None, ..
        } => Verdict::Fault { retry: true, cause },
        // A timeout is not retried: the request may still be running there, and sending it again
        // would add load exactly when the service is slow.
        ClientError::Transport(e) => Verdict::Fault {
            retry: !e.is_timeout(),
            cause,
        },
        ClientError::Server { .. } | ClientError::Decode(_) | ClientError::Config(_) => {
            Verdict::Fault {
                retry: false,
                cause,
            }
        }
    }
}

/// Embeddings with the model that made them (as model-serving named it in the same answer, so
/// a model changed between two calls is never mistaken for the one before).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded<T> {
    pub value: T,
    pub model: IndexModel,
}

/// What the search engine needs of the model: embeddings and the model's identity. The engine
/// knows only this trait (its unit tests use a fake); [`QueryEncoder`] is model-serving's.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// A text query as `(caption embedded, vector)`: the model's prompt template applied.
    async fn embed_query(&self, query: &str) -> Result<Embedded<(String, Vec<f32>)>, EncoderError>;
    async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<Embedded<Vec<Vec<f32>>>, EncoderError>;
    /// The model as last reported (name, fingerprint, size), without a call; `None` before
    /// model-serving was first reached.
    fn model(&self) -> Option<IndexModel>;
    /// The model model-serving serves: as last reported, asked for when there is none.
    async fn describe(&self) -> Result<IndexModel, EncoderError>;
    /// The model's relevance floor (a cosine similarity) for text queries, as last reported;
    /// `None` when it has none (or before model-serving was first reached).
    fn relevance_floor(&self) -> Option<f32>;
    /// The floor of searches by meaning alone, as last reported; `None` when it has none.
    fn vector_floor(&self) -> Option<f32>;
    /// Whether calls are being turned away (model-serving failing).
    fn breaker_open(&self) -> bool;
}

pub struct QueryEncoder {
    client: ModelServingClient,
    settings: EncoderSettings,
    breaker: Breaker,
    cache: moka::future::Cache<(String, String), std::sync::Arc<Vec<f32>>>,
    /// The model's identity: fetched at start-up (or on first use when model-serving was down),
    /// and again when an embedding response names another model.
    info: std::sync::RwLock<Option<ModelInfo>>,
}

/// Lowercase, trimmed, whitespace collapsed: "Red  Dress " and "red dress" share a cache entry.
pub fn normalise_query(q: &str) -> String {
    q.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl QueryEncoder {
    pub fn new(client: ModelServingClient, settings: EncoderSettings) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_entries)
            .build();
        Self {
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_open_for),
            client,
            settings,
            cache,
            info: std::sync::RwLock::new(None),
        }
    }

    fn known(&self) -> Option<ModelInfo> {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The model's description: kept from the last fetch, fetched when there is none.
    pub async fn model_info(&self) -> Result<ModelInfo, EncoderError> {
        if let Some(info) = self.known() {
            return Ok(info);
        }
        let info = self.call(|| self.client.model_info()).await?;
        *self.info.write().unwrap_or_else(|e| e.into_inner()) = Some(info.clone());
        Ok(info)
    }

    /// An embedding response names its model: when that is not the model we know, model-serving
    /// has changed it; forget ours so the next query fetches its description (and prompt) again.
    fn observe(&self, response: &EmbeddingsResponse) -> IndexModel {
        let mut info = self.info.write().unwrap_or_else(|e| e.into_inner());
        if info
            .as_ref()
            .is_some_and(|known| known.fingerprint != response.fingerprint)
        {
            tracing::info!(
                model = %response.model,
                fingerprint = %response.fingerprint,
                "model-serving reports another model; refreshing its description"
            );
            *info = None;
        }
        IndexModel {
            name: response.model.clone(),
            fingerprint: response.fingerprint.clone(),
            dim: response.dim,
        }
    }

    /// The caption a shopper's query is embedded as: the model's prompt template, unless the
    /// query already speaks of a photo.
    pub fn caption(template: &str, query: &str) -> String {
        let q = normalise_query(query);
        if q.contains("photo") || q.contains("picture") || q.contains("image of") {
            q
        } else {
            template.replace("{}", &q)
        }
    }

    /// Embeds a text query (prompt template applied), from the cache when possible (keyed by
    /// the model's fingerprint: another model's vectors are never served from it).
    pub async fn embed_query(
        &self,
        query: &str,
    ) -> Result<Embedded<(String, Vec<f32>)>, EncoderError> {
        let info = self.model_info().await?;
        let caption = Self::caption(&info.prompt_template, query);
        let key = (info.fingerprint.clone(), caption.clone());
        if let Some(hit) = self.cache.get(&key).await {
            metrics::cache(true);
            return Ok(Embedded {
                value: (caption, hit.as_ref().clone()),
                model: model_of(&info),
            });
        }
        metrics::cache(false);
        let texts = [caption.clone()];
        let response = self.call(|| self.client.encode_text(&texts)).await?;
        let model = self.observe(&response);
        let vector = first_row(response.embeddings)?;
        if model.fingerprint == info.fingerprint {
            self.cache
                .insert(key, std::sync::Arc::new(vector.clone()))
                .await;
        }
        Ok(Embedded {
            value: (caption, vector),
            model,
        })
    }

    pub async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<Embedded<Vec<Vec<f32>>>, EncoderError> {
        let response = self
            .call(|| self.client.encode_images(images.clone()))
            .await?;
        let model = self.observe(&response);
        Ok(Embedded {
            value: response.embeddings,
            model,
        })
    }

    /// Whether the circuit breaker is open or half-open (model-serving failing).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs `call` behind the circuit breaker, retrying faults that may pass at once.
    ///
    /// Only faults of model-serving count toward the breaker. A refused input (4xx) proves the
    /// service healthy, so one client's bad images can never open it for everyone. An
    /// "overloaded" 503 is neither: the service is alive and answers such refusals in
    /// microseconds, so there is nothing for the breaker to save callers from, and opening it
    /// would turn one client's flood into an outage for all. It is not retried here either
    /// (retries would add load at the worst moment): the caller gets 503 with model-serving's
    /// Retry-After, capped at [`MAX_BUSY_RETRY_AFTER`].
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EncoderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let backoff = Backoff::new(self.settings.attempts as usize, self.settings.backoff);
        retry(&backoff, "model-serving call", || self.attempt(&call))
            .await
            .map_err(|failed| failed.error)
    }

    /// One call behind the breaker; a fault that may pass at once comes back transient.
    async fn attempt<T, F, Fut>(&self, call: &F) -> Result<T, Failed>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let permit = self.breaker.admit().map_err(|remaining| {
            Failed::last(EncoderError::Unavailable {
                message: "model service failing; circuit breaker open".into(),
                retry_after: remaining.max(Duration::from_secs(1)),
            })
        })?;
        let error = match call().await {
            Ok(value) => {
                permit.success();
                return Ok(value);
            }
            Err(error) => error,
        };
        Err(match verdict(error) {
            Verdict::Input {
                status,
                code,
                message,
            } => {
                permit.success();
                let kind = rejection_kind(status, &code);
                if kind == ErrorKind::Internal {
                    tracing::error!(status, %code, %message, "model-serving refused a call we made");
                }
                Failed::last(EncoderError::Rejected { kind, message })
            }
            Verdict::Busy { retry_after, cause } => {
                drop(permit);
                metrics::upstream_error("model-serving");
                tracing::info!(error = %cause, "model-serving busy; passing its retry-after on");
                Failed::last(EncoderError::Busy {
                    retry_after: retry_after.clamp(Duration::from_secs(1), MAX_BUSY_RETRY_AFTER),
                })
            }
            Verdict::Fault { retry, cause } => {
                permit.failure();
                metrics::upstream_error("model-serving");
                Failed {
                    error: EncoderError::Unavailable {
                        message: cause,
                        retry_after: Duration::from_secs(1),
                    },
                    transient: retry,
                }
            }
        })
    }
}

/// A failed attempt as the retry loop sees it: the error, and whether trying again may help.
struct Failed {
    error: EncoderError,
    transient: bool,
}

impl Failed {
    /// An answer that trying again would not change (a refusal, busy, the breaker open).
    fn last(error: EncoderError) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

impl Transient for Failed {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

#[async_trait::async_trait]
impl Embedder for QueryEncoder {
    async fn embed_query(&self, query: &str) -> Result<Embedded<(String, Vec<f32>)>, EncoderError> {
        QueryEncoder::embed_query(self, query).await
    }

    async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<Embedded<Vec<Vec<f32>>>, EncoderError> {
        QueryEncoder::embed_images(self, images).await
    }

    fn model(&self) -> Option<IndexModel> {
        self.known().as_ref().map(model_of)
    }

    async fn describe(&self) -> Result<IndexModel, EncoderError> {
        self.model_info().await.map(|info| model_of(&info))
    }

    fn relevance_floor(&self) -> Option<f32> {
        self.known().and_then(|info| info.relevance_floor)
    }

    fn vector_floor(&self) -> Option<f32> {
        self.known().and_then(|info| info.relevance_floor_vector)
    }

    fn breaker_open(&self) -> bool {
        QueryEncoder::breaker_open(self)
    }
}

/// The identity an index records, from model-serving's description.
pub fn model_of(info: &ModelInfo) -> IndexModel {
    IndexModel {
        name: info.name.clone(),
        fingerprint: info.fingerprint.clone(),
        dim: info.dim,
    }
}

fn first_row(rows: Vec<Vec<f32>>) -> Result<Vec<f32>, EncoderError> {
    rows.into_iter()
        .next()
        .ok_or_else(|| EncoderError::Unavailable {
            message: "model service returned no embedding".into(),
            retry_after: Duration::from_secs(1),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn queries_normalise_and_get_the_prompt() {
        assert_eq!(
            normalise_query("  Red   Summer\tDRESS "),
            "red summer dress"
        );
        assert_eq!(
            QueryEncoder::caption("a photo of {}", "Red dress"),
            "a photo of red dress"
        );
        assert_eq!(
            QueryEncoder::caption("a photo of {}", "a photo of a red dress"),
            "a photo of a red dress"
        );
    }

    fn breaker(threshold: u32, open_for_ms: u64) -> Breaker {
        Breaker::new(threshold, Duration::from_millis(open_for_ms))
    }

    #[test]
    fn breaker_opens_after_faults_and_half_opens_for_exactly_one_trial() {
        let breaker = breaker(2, 50);
        breaker.admit().expect("closed").failure();
        breaker.admit().expect("still closed").failure();
        assert!(breaker.admit().is_err(), "open after 2 faults");
        std::thread::sleep(Duration::from_millis(60));
        let trial = breaker.admit().expect("half-open: one trial");
        assert!(trial.trial);
        for _ in 0..5 {
            assert_eq!(
                breaker.admit().err(),
                Some(TRIAL_WAIT),
                "only one trial while it is out"
            );
        }
        trial.failure();
        assert!(breaker.admit().is_err(), "a failed trial re-opens at once");
        std::thread::sleep(Duration::from_millis(60));
        breaker.admit().expect("trial").success();
        assert!(!breaker.is_open());
        let first = breaker.admit().expect("closed");
        let second = breaker.admit().expect("closed: everyone passes");
        first.failure();
        second.success();
        breaker.admit().expect("closed").failure();
        assert!(breaker.admit().is_ok(), "a success resets the count");
    }

    #[test]
    fn a_trial_without_a_verdict_gives_its_slot_back() {
        let breaker = breaker(1, 10);
        breaker.admit().expect("closed").failure();
        std::thread::sleep(Duration::from_millis(20));
        let trial = breaker.admit().expect("trial");
        assert!(breaker.admit().is_err());
        drop(trial); // cancelled, or a busy answer
        let trial = breaker.admit().expect("the next caller gets the trial");
        assert!(breaker.admit().is_err());
        trial.success();
        assert!(breaker.admit().is_ok());
    }

    fn encoder(attempts: u32, threshold: u32) -> QueryEncoder {
        // Never contacted: these tests hand `call` their own futures.
        let client =
            ModelServingClient::new("http://127.0.0.1:9", Duration::from_secs(1)).expect("client");
        QueryEncoder::new(
            client,
            EncoderSettings {
                attempts,
                backoff: Duration::from_millis(1),
                breaker_failures: threshold,
                breaker_open_for: Duration::from_millis(100),
                cache_entries: 10,
            },
        )
    }

    #[tokio::test]
    async fn refused_inputs_never_open_the_breaker() {
        let encoder = encoder(3, 2);
        let calls = AtomicUsize::new(0);
        for _ in 0..20 {
            let result: Result<(), _> = encoder
                .call(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ClientError::Rejected {
                        status: 400,
                        code: "invalid_image".into(),
                        message: "not an image".into(),
                    })
                })
                .await;
            assert!(matches!(
                result,
                Err(EncoderError::Rejected {
                    kind: ErrorKind::InvalidImage,
                    ..
                })
            ));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            20,
            "input errors are not retried"
        );
        assert!(!encoder.breaker_open());
    }

    #[tokio::test]
    async fn faults_open_the_breaker_and_a_refused_input_closes_it_from_half_open() {
        let encoder = encoder(3, 2);
        let calls = AtomicUsize::new(0);
        let fail = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ClientError::Server {
                status: 500,
                message: "inference failed".into(),
            })
        };
        assert!(matches!(
            encoder.call(fail).await,
            Err(EncoderError::Unavailable { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a 500 is not retried");
        assert!(!encoder.breaker_open());
        let _ = encoder.call(fail).await;
        assert!(encoder.breaker_open(), "two faults open it");
        let _ = encoder.call(fail).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "open: no call made");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let result: Result<(), _> = encoder
            .call(|| async {
                Err(ClientError::Rejected {
                    status: 413,
                    code: "image_too_large".into(),
                    message: "too many pixels".into(),
                })
            })
            .await;
        assert!(matches!(result, Err(EncoderError::Rejected { .. })));
        assert!(!encoder.breaker_open(), "the service answered: closed");
    }

    #[tokio::test]
    async fn busy_answers_are_passed_on_not_retried_and_not_counted() {
        let encoder = encoder(3, 1);
        let calls = AtomicUsize::new(0);
        for _ in 0..10 {
            let result: Result<(), _> = encoder
                .call(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ClientError::Unavailable {
                        message: "the encoder is at capacity".into(),
                        retry_after: Some(Duration::from_secs(3600)),
                    })
                })
                .await;
            match result {
                Err(EncoderError::Busy { retry_after }) => {
                    assert_eq!(retry_after, MAX_BUSY_RETRY_AFTER, "capped")
                }
                other => panic!("expected busy, got {other:?}"),
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10, "never retried");
        assert!(!encoder.breaker_open(), "busy is not a fault");
    }

    #[tokio::test]
    async fn concurrent_callers_send_one_trial_when_half_open() {
        let encoder = Arc::new(encoder(1, 1));
        let _ = encoder
            .call(|| async {
                Err::<(), _>(ClientError::Server {
                    status: 500,
                    message: "down".into(),
                })
            })
            .await;
        assert!(encoder.breaker_open());
        tokio::time::sleep(Duration::from_millis(120)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (encoder, calls) = (encoder.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                encoder
                    .call(|| async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(())
                    })
                    .await
            }));
        }
        let mut passed = 0;
        for task in tasks {
            if task.await.expect("task").is_ok() {
                passed += 1;
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one trial");
        assert_eq!(passed, 1);
        assert!(!encoder.breaker_open(), "the trial succeeded");
    }

    #[tokio::test]
    async fn an_unreachable_model_service_is_retried_then_opens_the_breaker() {
        // A loopback port with nothing listening: connection refused, a real transport fault.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client =
            ModelServingClient::new(format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
                .expect("client");
        let encoder = QueryEncoder::new(
            client,
            EncoderSettings {
                attempts: 3,
                backoff: Duration::from_millis(1),
                breaker_failures: 3,
                breaker_open_for: Duration::from_secs(60),
                cache_entries: 10,
            },
        );
        let first = encoder.embed_images(vec![vec![1, 2, 3]]).await;
        assert!(
            matches!(&first, Err(EncoderError::Unavailable { message, .. }) if !message.contains("breaker")),
            "{first:?}"
        );
        assert!(encoder.breaker_open(), "3 attempts, 3 faults");
        let second = encoder.embed_images(vec![vec![1, 2, 3]]).await;
        assert!(
            matches!(&second, Err(EncoderError::Unavailable { message, .. }) if message.contains("breaker")),
            "{second:?}"
        );
    }
}
