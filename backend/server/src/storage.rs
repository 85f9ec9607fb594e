//! Object storage through `aws-sdk-s3`: put, get, delete, and pre-signed GETs signed for the
//! endpoint browsers reach (which may differ from the one the backend talks to).

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_bucket::HeadBucketError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use secrecy::{ExposeSecret as _, SecretString};

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object storage is unavailable: {0}")]
    Unavailable(String),
    #[error("no object {0}")]
    NotFound(String),
    #[error("object storage configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub endpoint: String,
    pub public_endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Not secret: it is part of every pre-signed URL.
    pub access_key: String,
    pub secret_key: SecretString,
    pub presign_ttl: Duration,
}

#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    /// Signs URLs for the public endpoint; never sends a request.
    signer: Client,
    bucket: String,
    ttl: Duration,
}

fn client(endpoint: &str, s: &StorageSettings) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            s.access_key.clone(),
            s.secret_key.expose_secret().to_owned(),
            None,
            None,
            "static",
        ))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .read_timeout(Duration::from_secs(20))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(100)),
        )
        .build();
    Client::from_conf(config)
}

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    e: &SdkError<E, R>,
) -> StorageError {
    metrics::upstream_error("storage");
    StorageError::Unavailable(format!("{what}: {}", DisplayErrorContext(e)))
}

impl ObjectStore {
    pub fn new(settings: &StorageSettings) -> Result<Self, StorageError> {
        PresigningConfig::expires_in(settings.presign_ttl)
            .map_err(|e| StorageError::Config(e.to_string()))?;
        Ok(Self {
            client: client(&settings.endpoint, settings),
            signer: client(&settings.public_endpoint, settings),
            bucket: settings.bucket.clone(),
            ttl: settings.presign_ttl,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Readiness probe: the bucket answers `HEAD`. Not counted as an upstream error (the probe
    /// runs every few seconds; readiness reports it).
    pub async fn probe(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                StorageError::Unavailable(format!("head bucket: {}", DisplayErrorContext(&e)))
            })
    }

    /// Creates the bucket when it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(HeadBucketError::is_not_found) => {}
            Err(e) => return Err(unavailable("head bucket", &e)),
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "bucket created");
                Ok(())
            }
            Err(SdkError::ServiceError(se))
                if se.err().is_bucket_already_owned_by_you()
                    || se.err().is_bucket_already_exists() =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("create bucket", &e)),
        }
    }

    #[tracing::instrument(skip(self, bytes), fields(bytes = bytes.len()))]
    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| unavailable("put object", &e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out
                .body
                .collect()
                .await
                .map(|b| b.into_bytes().to_vec())
                .map_err(|e| StorageError::Unavailable(format!("read object: {e}"))),
            Err(e)
                if e.as_service_error()
                    .is_some_and(GetObjectError::is_no_such_key) =>
            {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(e) => Err(unavailable("get object", &e)),
        }
    }

    /// Whether `key` is stored (a `HEAD`).
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(HeadObjectError::is_not_found) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("head object", &e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| unavailable("delete object", &e))?;
        Ok(())
    }

    /// A GET URL for `key`, valid for the configured TTL, signed locally.
    pub async fn presign_get(&self, key: &str) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(self.ttl)
            .map_err(|e| StorageError::Config(e.to_string()))?;
        self.presign_with(key, config).await
    }

    /// As [`presign_get`](Self::presign_get) with an explicit config (tests sign already-expired URLs).
    pub async fn presign_with(
        &self,
        key: &str,
        config: PresigningConfig,
    ) -> Result<String, StorageError> {
        let request = self
            .signer
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| StorageError::Config(format!("presign: {}", DisplayErrorContext(&e))))?;
        Ok(request.uri().to_owned())
    }
}
