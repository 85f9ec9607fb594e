//! The model-serving wire types and a typed client, so callers (backend, etl) never re-declare
//! the JSON shapes.
//!
//! Endpoints: `POST /encode_text`, `POST /encode_image` (multipart or JSON with base64),
//! `GET /v1/model`, plus `/metrics`, `/health/live`, `/health/ready`.

use std::time::Duration;

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
    pub dim: usize,
    pub embeddings: Vec<Vec<f32>>,
}

/// `GET /v1/model`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
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

/// A typed client. Cheap to clone; connections are pooled.
#[derive(Debug, Clone)]
pub struct ModelServingClient {
    base: String,
    http: reqwest::Client,
}

impl ModelServingClient {
    /// `base` is the service URL, e.g. `http://127.0.0.1:8001`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self::with_http(base, http))
    }

    pub fn with_http(base: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    #[tracing::instrument(skip_all, fields(items = texts.len()))]
    pub async fn encode_text(&self, texts: &[String]) -> Result<EmbeddingsResponse, ClientError> {
        let request =
            self.http
                .post(format!("{}/encode_text", self.base))
                .json(&EncodeTextRequest {
                    texts: texts.to_vec(),
                });
        self.send(request).await
    }

    /// Encodes images given as raw file bytes (sent as one multipart request).
    #[tracing::instrument(skip_all, fields(items = images.len()))]
    pub async fn encode_images(
        &self,
        images: Vec<Vec<u8>>,
    ) -> Result<EmbeddingsResponse, ClientError> {
        let mut form = reqwest::multipart::Form::new();
        for (i, bytes) in images.into_iter().enumerate() {
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(bytes).file_name(format!("image-{i}")),
            );
        }
        let request = self
            .http
            .post(format!("{}/encode_image", self.base))
            .multipart(form);
        self.send(request).await
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
        let request = self
            .http
            .post(format!("{}/encode_image", self.base))
            .json(&body);
        self.send(request).await
    }

    pub async fn model_info(&self) -> Result<ModelInfo, ClientError> {
        self.send(self.http.get(format!("{}/v1/model", self.base)))
            .await
    }

    /// Whether `/health/ready` answers 200.
    pub async fn ready(&self) -> bool {
        let request = self.http.get(format!("{}/health/ready", self.base));
        matches!(request.send().await, Ok(r) if r.status().is_success())
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        http_edge::send_json(request).await
    }
}
