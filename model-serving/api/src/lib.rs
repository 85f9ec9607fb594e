//! The model-serving wire types and a typed client, so callers (backend, etl) never re-declare
//! the JSON shapes.
//!
//! Endpoints: `POST /encode_text`, `POST /encode_image` (multipart or JSON with base64),
//! `GET /v1/model`, plus `/metrics`, `/health/live`, `/health/ready`.
//!
//! The client spreads calls over one or more replicas (a comma-separated list of base URLs) and
//! fails over: a replica that cannot be reached is skipped for [`REPLICA_DOWN_FOR`], one that is
//! busy (503) hands the call to the next. Every call is idempotent (encoding has no side
//! effects), so trying it again elsewhere is safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `POST /encode_text` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeTextRequest {
    pub texts: Vec<String>,
}

/// `POST /encode_image` JSON body: images as standard base64 (a `data:` URL prefix is accepted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeImageRequest {
    pub images: Vec<String>,
}

/// Both encode endpoints answer with L2-normalised embeddings, one per input, in input order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingsResponse {
    pub model: String,
    /// The fingerprint of the model files that made these vectors (see [`ModelInfo::fingerprint`]).
    pub fingerprint: String,
    pub dim: usize,
    pub embeddings: Vec<Vec<f32>>,
}

/// `GET /v1/model`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    /// What made the vectors: `sha256:` and 16 hex digits over the ONNX files, the tokenizer and
    /// the preprocessing. Two folders with the same fingerprint make the same vectors; an index
    /// records the fingerprint of the model that made it.
    pub fingerprint: String,
    pub dim: usize,
    pub image_size: u32,
    pub context_length: usize,
    pub prompt_template: String,
    pub max_batch: usize,
    pub max_items_per_request: usize,
    /// The cosine similarity below which a text query's nearest images are not matches (from
    /// the model folder's `model.json`); `None`: the model has no measured floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_floor: Option<f32>,
    /// The floor for searches by meaning alone (`relevance_floor_vector` in `model.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_floor_vector: Option<f32>,
}

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Every client call fails with the shared error of the services' JSON calls.
pub use http_edge::CallError as ClientError;

/// How long a replica that could not be reached is tried only after the others.
pub const REPLICA_DOWN_FOR: Duration = Duration::from_secs(2);

/// A typed client over one or more replicas. Cheap to clone (clones share the replicas' state);
/// connections are pooled.
#[derive(Debug, Clone)]
pub struct ModelServingClient {
    replicas: Arc<Replicas>,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Replicas {
    /// As given, for messages.
    list: String,
    urls: Vec<String>,
    /// Per replica: until when (ms since `epoch`) it goes after the others; 0 when up.
    down_until: Vec<AtomicU64>,
    next: AtomicUsize,
    epoch: Instant,
}

impl Replicas {
    fn parse(list: &str) -> Result<Self, ClientError> {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ClientError::Config(format!(
                "no model-serving URL in {list:?} (one URL, or a comma-separated list)"
            )));
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ClientError::Config(format!(
                "model-serving URL {bad:?} is not http(s)://host:port"
            )));
        }
        Ok(Self {
            list: list.to_owned(),
            down_until: urls.iter().map(|_| AtomicU64::new(0)).collect(),
            urls,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The order to try the replicas in for one call: round robin over those that are up, then
    /// those marked down (so a call fails only when every replica fails it now).
    fn order(&self) -> Vec<usize> {
        let n = self.urls.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = self.now_ms();
        let (mut up, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| self.down_until[i].load(Ordering::Relaxed) <= now);
        up.append(&mut down);
        up
    }

    fn mark_down(&self, i: usize) {
        let until = self.now_ms() + REPLICA_DOWN_FOR.as_millis() as u64;
        self.down_until[i].store(until, Ordering::Relaxed);
    }

    fn mark_up(&self, i: usize) {
        self.down_until[i].store(0, Ordering::Relaxed);
    }
}

impl ModelServingClient {
    /// `base` is the service URL, e.g. `http://127.0.0.1:8001`, or several replicas' URLs
    /// separated by commas.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Transport)?;
        Self::with_http(base, http)
    }

    pub fn with_http(base: impl Into<String>, http: reqwest::Client) -> Result<Self, ClientError> {
        Ok(Self {
            replicas: Arc::new(Replicas::parse(&base.into())?),
            http,
        })
    }

    /// The URL (or the comma-separated replica URLs) as configured.
    pub fn base_url(&self) -> &str {
        &self.replicas.list
    }

    /// The replicas' base URLs.
    pub fn replica_urls(&self) -> &[String] {
        &self.replicas.urls
    }

    #[tracing::instrument(skip_all, fields(items = texts.len()))]
    pub async fn encode_text(&self, texts: &[String]) -> Result<EmbeddingsResponse, ClientError> {
        let body = EncodeTextRequest {
            texts: texts.to_vec(),
        };
        self.call(|base| self.http.post(format!("{base}/encode_text")).json(&body))
            .await
    }

    /// Encodes images given as raw file bytes (sent as one multipart request).
    #[tracing::instrument(skip_all, fields(items = images.len()))]
    pub async fn encode_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<EmbeddingsResponse, ClientError> {
        // Shared, not copied, when the call goes to a second replica.
        let images: Vec<bytes::Bytes> = images.into_iter().map(bytes::Bytes::from).collect();
        self.call(|base| {
            let mut form = reqwest::multipart::Form::new();
            for (i, image) in images.iter().enumerate() {
                let part =
                    reqwest::multipart::Part::stream_with_length(image.clone(), image.len() as u64);
                form = form.part("files", part.file_name(format!("image-{i}")));
            }
            self.http
                .post(format!("{base}/encode_image"))
                .multipart(form)
        })
        .await
    }

    /// Encodes images sent as base64 JSON (the reference design's second form).
    pub async fn encode_images_base64(
        &self,
        images: &[Vec<u8>],
    ) -> Result<EmbeddingsResponse, ClientError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let body = EncodeImageRequest {
            images: images.iter().map(|b| engine.encode(b)).collect(),
        };
        self.call(|base| self.http.post(format!("{base}/encode_image")).json(&body))
            .await
    }

    pub async fn model_info(&self) -> Result<ModelInfo, ClientError> {
        self.call(|base| self.http.get(format!("{base}/v1/model")))
            .await
    }

    /// Whether some replica's `/health/ready` answers 200.
    pub async fn ready(&self) -> bool {
        for i in self.replicas.order() {
            let request = self
                .http
                .get(format!("{}/health/ready", self.replicas.urls[i]));
            if matches!(request.send().await, Ok(r) if r.status().is_success()) {
                return true;
            }
        }
        false
    }

    /// One call, made on the replicas in [`Replicas::order`] until one answers: an unreachable
    /// replica (transport error) is marked down and a busy one (503) passed over; any other
    /// answer, success or refusal, is the call's; so is a timeout.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let mut failed = None;
        for i in self.replicas.order() {
            let base = &self.replicas.urls[i];
            let error = match http_edge::send_json(request(base)).await {
                Ok(answer) => {
                    self.replicas.mark_up(i);
                    return Ok(answer);
                }
                // A timeout is not tried elsewhere: after the whole timeout a second one would
                // double the wait, and the call may still be running there.
                Err(ClientError::Transport(e)) if e.is_timeout() => {
                    self.replicas.mark_down(i);
                    return Err(ClientError::Transport(e));
                }
                Err(error @ ClientError::Transport(_)) => {
                    self.replicas.mark_down(i);
                    error
                }
                Err(error @ ClientError::Unavailable { .. }) => error,
                Err(error) => return Err(error),
            };
            if self.replicas.urls.len() > 1 {
                tracing::warn!(replica = %base, %error, "model-serving replica failed the call");
            }
            failed = Some(error);
        }
        Err(failed.unwrap_or_else(|| ClientError::Config("no model-serving replica".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_replicas_is_parsed_and_checked() {
        let r = Replicas::parse(" http://a:1/ , http://b:2,").expect("two replicas");
        assert_eq!(r.urls, ["http://a:1", "http://b:2"]);
        for bad in ["", " , ", "a:1", "http://a:1,ftp://b"] {
            assert!(
                matches!(Replicas::parse(bad), Err(ClientError::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn calls_go_round_robin_and_a_down_replica_goes_last() {
        let r = Replicas::parse("http://a:1,http://b:2,http://c:3").expect("replicas");
        let firsts: Vec<usize> = (0..6).map(|_| r.order()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        r.mark_down(1);
        for _ in 0..6 {
            let order = r.order();
            assert_eq!(order.len(), 3, "a down replica is still tried, last");
            assert_eq!(order[2], 1, "{order:?}");
        }
        r.mark_up(1);
        let firsts: Vec<usize> = (0..3).map(|_| r.order()[0]).collect();
        assert!(firsts.contains(&1), "back in the rotation: {firsts:?}");
    }
}
