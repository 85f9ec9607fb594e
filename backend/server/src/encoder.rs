//! Query embeddings from model-serving: retries with backoff for transient failures, a circuit
//! breaker so a dead model-serving costs nothing per request, and a bounded cache of text
//! embeddings keyed by model and normalised query.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use model_serving_api::{ClientError, ModelInfo, ModelServingClient};
use tokio::sync::RwLock;

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// Model-serving is down, overloaded or the breaker is open; try again later.
    #[error("the model service is unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// Model-serving refused the input (e.g. not an image).
    #[error("{message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

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

/// Consecutive-failure circuit breaker: after `threshold` failures it opens for `open_for`;
/// then one trial call is let through (half-open), and a success closes it.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// `Err(remaining)` while open.
    fn check(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.open_until {
            Some(until) if Instant::now() < until => Err(until - Instant::now()),
            Some(_) => {
                // Half-open: let this call through; a failure re-opens at once.
                state.open_until = None;
                state.failures = self.threshold.saturating_sub(1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.failures > 0 || state.open_until.is_some() {
            metrics::breaker_state(false);
        }
        *state = BreakerState::default();
    }

    fn failure(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.failures += 1;
        if state.failures >= self.threshold && state.open_until.is_none() {
            state.open_until = Some(Instant::now() + self.open_for);
            metrics::breaker_state(true);
            tracing::warn!(
                failures = state.failures,
                open_for_ms = self.open_for.as_millis() as u64,
                "model-serving circuit breaker opened"
            );
        }
    }
}

pub struct QueryEncoder {
    client: ModelServingClient,
    settings: EncoderSettings,
    breaker: Breaker,
    cache: moka::future::Cache<(String, String), std::sync::Arc<Vec<f32>>>,
    info: RwLock<Option<ModelInfo>>,
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
            breaker: Breaker {
                threshold: settings.breaker_failures.max(1),
                open_for: settings.breaker_open_for,
                state: Mutex::new(BreakerState::default()),
            },
            client,
            settings,
            cache,
            info: RwLock::new(None),
        }
    }

    /// The model's description, fetched once from model-serving and kept.
    pub async fn model_info(&self) -> Result<ModelInfo, EncoderError> {
        if let Some(info) = self.info.read().await.as_ref() {
            return Ok(info.clone());
        }
        let info = self.call(|| self.client.model_info()).await?;
        *self.info.write().await = Some(info.clone());
        Ok(info)
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

    /// Embeds a text query (prompt template applied), from the cache when possible.
    pub async fn embed_query(&self, query: &str) -> Result<(String, Vec<f32>), EncoderError> {
        let info = self.model_info().await?;
        let caption = Self::caption(&info.prompt_template, query);
        let key = (info.name.clone(), caption.clone());
        if let Some(hit) = self.cache.get(&key).await {
            metrics::cache(true);
            return Ok((caption, hit.as_ref().clone()));
        }
        metrics::cache(false);
        let texts = [caption.clone()];
        let response = self.call(|| self.client.encode_text(&texts)).await?;
        let vector = first_row(response.embeddings)?;
        self.cache
            .insert(key, std::sync::Arc::new(vector.clone()))
            .await;
        Ok((caption, vector))
    }

    pub async fn embed_images(&self, images: Vec<Vec<u8>>) -> Result<Vec<Vec<f32>>, EncoderError> {
        let response = self
            .call(|| self.client.encode_images(images.clone()))
            .await?;
        Ok(response.embeddings)
    }

    /// Runs `call` with retries (transient errors only) behind the circuit breaker.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EncoderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut delay = self.settings.backoff;
        let mut last = None;
        for attempt in 1..=self.settings.attempts.max(1) {
            if let Err(remaining) = self.breaker.check() {
                return Err(EncoderError::Unavailable {
                    message: "model service failing; circuit breaker open".into(),
                    retry_after: remaining.max(Duration::from_secs(1)),
                });
            }
            match call().await {
                Ok(value) => {
                    self.breaker.success();
                    return Ok(value);
                }
                Err(ClientError::Rejected {
                    status,
                    code,
                    message,
                }) => {
                    // The service answered; it is healthy.
                    self.breaker.success();
                    return Err(EncoderError::Rejected {
                        status,
                        code,
                        message,
                    });
                }
                Err(error) => {
                    self.breaker.failure();
                    metrics::upstream_error("model-serving");
                    let transient = error.is_transient();
                    tracing::warn!(attempt, %error, transient, "model-serving call failed");
                    let retry_after = match &error {
                        ClientError::Unavailable {
                            retry_after: Some(d),
                            ..
                        } => *d,
                        _ => Duration::from_secs(1),
                    };
                    last = Some((error.to_string(), retry_after));
                    if !transient {
                        break;
                    }
                    if attempt < self.settings.attempts {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
        let (message, retry_after) =
            last.unwrap_or_else(|| ("no attempt made".into(), Duration::from_secs(1)));
        Err(EncoderError::Unavailable {
            message,
            retry_after,
        })
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

    #[test]
    fn breaker_opens_after_failures_and_half_opens() {
        let breaker = Breaker {
            threshold: 2,
            open_for: Duration::from_millis(50),
            state: Mutex::new(BreakerState::default()),
        };
        assert!(breaker.check().is_ok());
        breaker.failure();
        assert!(breaker.check().is_ok());
        breaker.failure();
        assert!(breaker.check().is_err(), "open after 2 failures");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.check().is_ok(), "half-open trial");
        breaker.failure();
        assert!(breaker.check().is_err(), "a failed trial re-opens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.check().is_ok());
        breaker.success();
        breaker.failure();
        assert!(breaker.check().is_ok(), "closed after success");
    }
}
