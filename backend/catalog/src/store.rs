//! Object storage through `aws-sdk-s3`: put, get, delete, and — when configured — pre-signed GETs
//! signed for the endpoint browsers reach (which may differ from the one the service talks to).
//!
//! Pre-signed URLs are made with `aws-sigv4` directly, the signer the SDK itself uses: the SDK's
//! `presigned()` runs a whole request pipeline (endpoint resolution, ~20 interceptors) to sign
//! one URL, which was about a third of the backend's CPU per cached search. A unit test checks
//! that both produce the same URL.
//!
//! Pre-signing is optional ([`StorageSettings::presign`]): a writer such as the ETL configures
//! none and carries no TTL; [`ObjectStore::presign_get`] then fails with
//! [`StorageError::Config`].

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_bucket::HeadBucketError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret as _, SecretString};

/// S3's limit on a pre-signed URL's lifetime.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What stays as it is in a key in the URL path: RFC 3986's unreserved characters and `/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// The same without `/`, for query values.
const QUERY: &AsciiSet = &PATH.add(b'/');

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
    /// Where this process reaches S3.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Not secret: it is part of every pre-signed URL.
    pub access_key: String,
    pub secret_key: SecretString,
    /// Pre-signed GETs, for a service that hands out image URLs; `None` for a writer.
    pub presign: Option<PresignSettings>,
}

#[derive(Debug, Clone)]
pub struct PresignSettings {
    /// The endpoint browsers reach, which URLs are signed for.
    pub public_endpoint: String,
    /// How long a URL stays valid (at most 7 days, S3's limit).
    pub ttl: Duration,
}

#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    /// The endpoint this process talks to, `scheme://host[:port][/path]` without a trailing `/`.
    endpoint: String,
    bucket: String,
    presigner: Option<Presigner>,
    /// Called on each failed call to S3 (the caller counts it in its own metrics).
    on_unavailable: Option<fn()>,
}

/// Signs GET URLs for the public endpoint; never sends a request.
#[derive(Clone)]
struct Presigner {
    /// `scheme://host[:port][/path]` of the public endpoint, without a trailing `/`.
    base: String,
    /// The `host` header a browser sends to it (the one signed header).
    host: String,
    region: String,
    identity: Identity,
    ttl: Duration,
}

impl Presigner {
    fn new(presign: &PresignSettings, s: &StorageSettings) -> Result<Self, StorageError> {
        if presign.ttl.is_zero() || presign.ttl > MAX_PRESIGN_TTL {
            return Err(StorageError::Config(format!(
                "a pre-signed URL lives between 1 s and 7 days (S3's limit), not {} s",
                presign.ttl.as_secs()
            )));
        }
        let endpoint = url::Url::parse(&presign.public_endpoint).map_err(|e| {
            StorageError::Config(format!(
                "public endpoint {:?}: {e}",
                presign.public_endpoint
            ))
        })?;
        let host = match (endpoint.scheme(), endpoint.host_str()) {
            ("http" | "https", Some(host)) => match endpoint.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            },
            _ => {
                return Err(StorageError::Config(format!(
                    "public endpoint {:?} is not an http(s) URL with a host",
                    presign.public_endpoint
                )));
            }
        };
        Ok(Self {
            base: format!(
                "{}://{host}{}",
                endpoint.scheme(),
                endpoint.path().trim_end_matches('/')
            ),
            host,
            region: s.region.clone(),
            identity: Credentials::new(
                s.access_key.clone(),
                s.secret_key.expose_secret().to_owned(),
                None,
                None,
                "static",
            )
            .into(),
            ttl: presign.ttl,
        })
    }

    /// A path-style GET URL for `bucket/key`, valid for `ttl` from `now`; the same URL the SDK's
    /// `get_object().presigned()` makes.
    fn url(
        &self,
        bucket: &str,
        key: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, StorageError> {
        let failed = |e: &dyn std::fmt::Display| StorageError::Config(format!("presign: {e}"));
        let mut url = format!(
            "{}/{}/{}?x-id=GetObject",
            self.base,
            utf8_percent_encode(bucket, PATH),
            utf8_percent_encode(key, PATH)
        );
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(ttl);
        // S3's rules: the path as sent (encoded once, not normalised), no payload hash.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let request = SignableRequest::new(
            "GET",
            &url,
            std::iter::once(("host", self.host.as_str())),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
        for (name, value) in instructions.params() {
            url.push('&');
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(value, QUERY));
        }
        Ok(url)
    }
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

impl ObjectStore {
    pub fn new(settings: &StorageSettings) -> Result<Self, StorageError> {
        let presigner = settings
            .presign
            .as_ref()
            .map(|presign| Presigner::new(presign, settings))
            .transpose()?;
        Ok(Self {
            client: client(&settings.endpoint, settings),
            endpoint: settings.endpoint.trim_end_matches('/').to_owned(),
            bucket: settings.bucket.clone(),
            presigner,
            on_unavailable: None,
        })
    }

    /// Calls `hook` on each failed call to S3 (not on readiness probes): the service's
    /// upstream-error counter.
    pub fn on_unavailable(mut self, hook: fn()) -> Self {
        self.on_unavailable = Some(hook);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        what: &str,
        e: &SdkError<E, R>,
    ) -> StorageError {
        if let Some(hook) = self.on_unavailable {
            hook();
        }
        StorageError::Unavailable(format!("{what}: {}", DisplayErrorContext(e)))
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
            Err(e) => return Err(self.unavailable("head bucket", &e)),
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
            Err(e) => Err(self.unavailable("create bucket", &e)),
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
            .map_err(|e| self.unavailable("put object", &e))?;
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
            Err(e) => Err(self.unavailable("get object", &e)),
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
            Err(e) => Err(self.unavailable("head object", &e)),
        }
    }

    /// Up to `max` object keys after `start_after` (key order), with when each was last written.
    pub async fn list_keys(
        &self,
        start_after: &str,
        max: usize,
    ) -> Result<Vec<(String, Option<SystemTime>)>, StorageError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .start_after(start_after)
            .max_keys(i32::try_from(max.min(1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| self.unavailable("list objects", &e))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| {
                let written = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok());
                o.key().map(|k| (k.to_owned(), written))
            })
            .collect())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.unavailable("delete object", &e))?;
        Ok(())
    }

    fn presigner(&self) -> Result<&Presigner, StorageError> {
        self.presigner.as_ref().ok_or_else(|| {
            StorageError::Config("pre-signing is not configured for this store".into())
        })
    }

    /// A GET URL for `key`, valid for the configured TTL, signed locally (no request is sent).
    pub fn presign_get(&self, key: &str) -> Result<String, StorageError> {
        let presigner = self.presigner()?;
        presigner.url(&self.bucket, key, presigner.ttl, SystemTime::now())
    }

    /// How this process can fetch what a shopper's browser fetches for `key`: the pre-signed
    /// URL and, when the public endpoint is another host than the one this process talks to
    /// (a browser-facing name that does not resolve in here), the same request sent to the
    /// internal endpoint with the public `Host` header. The signature covers the host header,
    /// the path and the query, not the address, so S3 judges it as it would the browser's. A
    /// public endpoint with a path prefix (a proxy) is fetched as it is.
    pub fn presigned_probe(&self, key: &str) -> Result<(String, Option<String>), StorageError> {
        let presigner = self.presigner()?;
        let url = self.presign_get(key)?;
        let public_has_path = presigner
            .base
            .split("://")
            .nth(1)
            .is_some_and(|r| r.contains('/'));
        if presigner.base == self.endpoint
            || public_has_path
            || self.endpoint.matches('/').count() > 2
        {
            return Ok((url, None));
        }
        match url.strip_prefix(&presigner.base) {
            Some(rest) => Ok((
                format!("{}{rest}", self.endpoint),
                Some(presigner.host.clone()),
            )),
            None => Ok((url, None)),
        }
    }

    /// As [`presign_get`](Self::presign_get) for another lifetime (tests sign short-lived URLs).
    pub fn presign_for(&self, key: &str, ttl: Duration) -> Result<String, StorageError> {
        self.presigner()?
            .url(&self.bucket, key, ttl, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(presign: Option<PresignSettings>) -> StorageSettings {
        StorageSettings {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            bucket: "fashion-images".into(),
            access_key: "access-id".into(),
            secret_key: "s3-secret-0123456789".into(),
            presign,
        }
    }

    #[test]
    fn the_secret_key_never_shows_in_debug_output() {
        let debug = format!("{:?}", settings(None));
        assert!(!debug.contains("s3-secret"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
    }

    #[test]
    fn a_writer_has_no_presigning() {
        let store = ObjectStore::new(&settings(None)).expect("store");
        let error = store.presign_get("images/ab/x.jpg").unwrap_err();
        assert!(matches!(error, StorageError::Config(_)), "{error}");
    }

    #[test]
    fn urls_are_signed_locally_for_the_public_endpoint() {
        let store = ObjectStore::new(&settings(Some(PresignSettings {
            public_endpoint: "https://images.example.com".into(),
            ttl: Duration::from_secs(300),
        })))
        .expect("store");
        // Nothing listens on the private endpoint: signing sends no request.
        let url = store.presign_get("images/ab/x.jpg").expect("signed");
        assert!(
            url.starts_with("https://images.example.com/fashion-images/images/ab/x.jpg?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=300"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
    }

    /// The URL is the SDK's own, byte for byte, for the same key, endpoint and time: endpoints
    /// with and without a port or a path, keys that need escaping.
    #[tokio::test]
    async fn urls_are_the_ones_the_sdk_signs() {
        use aws_sdk_s3::presigning::PresigningConfig;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let ttl = Duration::from_secs(900);
        for endpoint in [
            "http://127.0.0.1:9000",
            "https://images.example.com",
            "https://images.example.com/s3/",
        ] {
            let settings = settings(Some(PresignSettings {
                public_endpoint: endpoint.into(),
                ttl,
            }));
            let store = ObjectStore::new(&settings).expect("store");
            let sdk = client(endpoint, &settings);
            for key in [
                "images/ab/0123abcdef.jpg",
                "odd keys/with spaces+plus&amp=/é~_.-",
            ] {
                let ours = store
                    .presigner()
                    .expect("presigner")
                    .url("fashion-images", key, ttl, at)
                    .expect("ours");
                let theirs = sdk
                    .get_object()
                    .bucket("fashion-images")
                    .key(key)
                    .presigned(
                        PresigningConfig::builder()
                            .start_time(at)
                            .expires_in(ttl)
                            .build()
                            .expect("config"),
                    )
                    .await
                    .expect("sdk")
                    .uri()
                    .to_owned();
                assert_eq!(ours, theirs, "{endpoint} {key}");
            }
        }
    }

    #[test]
    fn a_public_endpoint_must_be_an_http_url() {
        for endpoint in [
            "",
            "images.example.com",
            "ftp://images.example.com",
            "http://",
        ] {
            let refused = ObjectStore::new(&settings(Some(PresignSettings {
                public_endpoint: endpoint.into(),
                ttl: Duration::from_secs(60),
            })));
            assert!(
                matches!(refused, Err(StorageError::Config(_))),
                "{endpoint:?} accepted"
            );
        }
    }

    #[test]
    fn a_ttl_beyond_seven_days_is_refused() {
        let refused = ObjectStore::new(&settings(Some(PresignSettings {
            public_endpoint: "http://127.0.0.1:9".into(),
            ttl: Duration::from_secs(8 * 24 * 3600),
        })));
        assert!(matches!(refused, Err(StorageError::Config(_))));
    }
}
