//! Typed configuration: flags, each overridable by its environment variable (all documented in
//! `.env.example`), validated at start-up and logged with secrets masked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http_edge::limits::{self as edge, EdgeLimits};
use http_edge::rate_limit::{Rate, TrustedProxies};
use secrecy::{ExposeSecret, SecretString};

use crate::fetch::{AllowList, FetchSettings};

#[derive(Debug, Clone, Args)]
pub struct BackendConfig {
    #[arg(long, env = "BACKEND_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Index and embedded S3 objects live here.
    #[arg(long, env = "DATA_DIR", default_value = "./var/data")]
    pub data_dir: PathBuf,
    /// model-serving, or several replicas separated by commas (round robin with failover).
    #[arg(
        long,
        env = "MODEL_SERVING_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    pub model_serving_url: String,

    /// The model-serving of the next model, for a zero-downtime model change: `POST
    /// /v1/admin/reindex {"model":"next"}` (or `etl reindex --next`) builds its index beside the
    /// live one, then searches move to it. Unset: re-index only with the current model.
    #[arg(long, env = "MODEL_SERVING_NEXT_URL")]
    pub model_serving_next_url: Option<String>,

    /// Qdrant server (gRPC, e.g. http://127.0.0.1:6334), or several nodes of a cluster separated
    /// by commas (a node that stops answering hands calls to the next). Unset: the embedded
    /// engine under DATA_DIR.
    #[arg(long, env = "QDRANT_URL")]
    pub qdrant_url: Option<String>,
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<SecretString>,
    #[arg(long, env = "QDRANT_COLLECTION", default_value = "fashion_images")]
    pub qdrant_collection: String,
    /// Shards of a new collection on a Qdrant server (a cluster spreads them over its nodes).
    /// Unset: Qdrant's default.
    #[arg(long, env = "QDRANT_SHARDS")]
    pub qdrant_shards: Option<u32>,
    /// Copies of each shard of a new collection (2 or more: the cluster survives a lost node).
    /// Unset: Qdrant's default (1).
    #[arg(long, env = "QDRANT_REPLICATION_FACTOR")]
    pub qdrant_replication_factor: Option<u32>,
    /// Copies that must acknowledge a write before it is answered. Unset: Qdrant's default (1).
    #[arg(long, env = "QDRANT_WRITE_CONSISTENCY")]
    pub qdrant_write_consistency: Option<u32>,
    /// HNSW search breadth; higher is slower and more exact.
    #[arg(long, env = "SEARCH_HNSW_EF", default_value_t = 128)]
    pub hnsw_ef: usize,
    /// Exact (brute-force) search instead of HNSW.
    #[arg(long, env = "SEARCH_EXACT", default_value_t = false)]
    pub exact: bool,
    /// Threads of the embedded engine's search pool (its per-segment reads run there). Qdrant's
    /// default of 4 per core made every search wake 8 spinning threads on 2 cores; 1 cost 27%
    /// less backend CPU per search there (README, "Configuration").
    #[arg(long, env = "INDEX_SEARCH_THREADS", default_value_t = 1)]
    pub index_search_threads: usize,
    /// Quiet time after the last write before the HNSW graph is rebuilt.
    #[arg(long, env = "INDEX_OPTIMIZE_AFTER_SECS", default_value_t = 5)]
    pub optimize_after_secs: u64,

    /// S3 endpoint (MinIO, AWS). Unset: an embedded S3 server over DATA_DIR on S3_EMBEDDED_ADDR.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The endpoint browsers reach; pre-signed URLs are signed for it. Default: S3_ENDPOINT.
    #[arg(long, env = "S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    #[arg(long, env = "S3_EMBEDDED_ADDR", default_value = "127.0.0.1:9000")]
    pub s3_embedded_addr: SocketAddr,
    #[arg(long, env = "S3_BUCKET", default_value = "fashion-images")]
    pub s3_bucket: String,
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<SecretString>,
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<SecretString>,
    /// Lifetime of pre-signed image URLs.
    #[arg(long, env = "PRESIGN_TTL_SECS", default_value_t = 900)]
    pub presign_ttl_secs: u64,

    /// Key required in `x-api-key` for writes. Unset: writes are refused.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<SecretString>,
    #[arg(long, env = "BACKEND_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    #[arg(long, env = "BACKEND_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Query embeddings kept in the cache.
    #[arg(long, env = "QUERY_CACHE_ENTRIES", default_value_t = 10_000)]
    pub query_cache_entries: u64,
    /// Keep a summary of what shoppers type for `GET /v1/admin/queries` (off by default).
    #[arg(long, env = "BACKEND_QUERY_SUMMARY", default_value_t = false, action = clap::ArgAction::Set)]
    pub query_summary: bool,
    /// Seconds between catalogue checks (sampled points against their objects and pre-signed
    /// URLs, sampled objects against the index); 0 turns them off.
    #[arg(long, env = "CATALOGUE_CHECK_INTERVAL_SECS", default_value_t = 300)]
    pub catalogue_check_interval_secs: u64,
    /// Points, and objects, a catalogue check samples.
    #[arg(long, env = "CATALOGUE_CHECK_SAMPLE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub catalogue_check_sample: u64,
    /// Seconds between the search-quality canary's runs; 0 turns it off.
    #[arg(long, env = "SEARCH_CANARY_INTERVAL_SECS", default_value_t = 60)]
    pub canary_interval_secs: u64,
    /// Captions the canary asks per run (each one index search; embeddings are cached).
    #[arg(long, env = "SEARCH_CANARY_CAPTIONS", default_value_t = 40, value_parser = clap::value_parser!(u64).range(0..=500))]
    pub canary_captions: u64,
    /// Inside addresses add-by-URL may reach anyway: comma-separated CIDR blocks, addresses or
    /// address:port (`10.0.0.0/8,127.0.0.1:8080`). Empty: public addresses only.
    #[arg(long, env = "BACKEND_FETCH_ALLOW", default_value = "")]
    pub fetch_allow: AllowList,
    /// Fetch only from the allowlist, by IP literal: no name is resolved, no public address
    /// reached (the contract fuzzer's runs).
    #[arg(long, env = "BACKEND_FETCH_ONLY_ALLOWLISTED", default_value_t = false)]
    pub fetch_only_allowlisted: bool,
    /// Edge limits, rate limits and readiness probing.
    #[command(flatten)]
    pub edge: EdgeConfig,
}

impl BackendConfig {
    /// Every setting at its documented default (what `backend --help` lists), with no
    /// environment read: the base of in-process configurations (tests, benchmarks, the local
    /// stack), which then say only what they change.
    pub fn defaults() -> Self {
        use clap::FromArgMatches as _;
        let command =
            Self::augment_args(clap::Command::new("backend")).mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(["backend"])
            .unwrap_or_else(|e| unreachable!("every backend setting has a default: {e}"));
        Self::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("defaults read back: {e}"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.presign_ttl_secs == 0 || self.presign_ttl_secs > 7 * 24 * 3600 {
            return Err("PRESIGN_TTL_SECS must be between 1 and 604800".into());
        }
        if self.s3_endpoint.is_some()
            && (self.s3_access_key.is_none() || self.s3_secret_key.is_none())
        {
            return Err("S3_ENDPOINT needs S3_ACCESS_KEY and S3_SECRET_KEY".into());
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|k| k.expose_secret().len() < 16)
        {
            return Err("API_KEY must be at least 16 characters".into());
        }
        if [
            self.qdrant_shards,
            self.qdrant_replication_factor,
            self.qdrant_write_consistency,
        ]
        .contains(&Some(0))
        {
            return Err(
                "QDRANT_SHARDS, QDRANT_REPLICATION_FACTOR and QDRANT_WRITE_CONSISTENCY must be positive"
                    .into(),
            );
        }
        if self.qdrant_write_consistency.unwrap_or(1) > self.qdrant_replication_factor.unwrap_or(1)
        {
            return Err(
                "QDRANT_WRITE_CONSISTENCY cannot exceed QDRANT_REPLICATION_FACTOR (copies to wait for > copies made)"
                    .into(),
            );
        }
        if self.hnsw_ef == 0 {
            return Err("SEARCH_HNSW_EF must be positive".into());
        }
        if !(1..=64).contains(&self.index_search_threads) {
            return Err("INDEX_SEARCH_THREADS must be between 1 and 64".into());
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// Add-by-URL: the body limit, 3 s to connect, 10 s (or less, within the request timeout)
    /// for the whole fetch.
    pub fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            allow: self.fetch_allow.clone(),
            max_bytes: self.max_body_bytes,
            connect_timeout: Duration::from_secs(3),
            total_timeout: self.timeout().min(Duration::from_secs(10)),
            only_allowlisted: self.fetch_only_allowlisted,
        }
    }
}

/// What the backend admits at its edge ([`http_edge::limits`], [`http_edge::rate_limit`]) and
/// how often readiness probes its dependencies. Defaults: [`EdgeConfig::default`].
#[derive(Debug, Clone, Args)]
pub struct EdgeConfig {
    /// Deadline for a whole request body (a slower upload is refused with 408).
    #[arg(long, env = "BACKEND_BODY_TIMEOUT_SECS", default_value_t = edge::DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
    /// Deadline for a request head (the connection is closed beyond it).
    #[arg(long, env = "BACKEND_HEADER_TIMEOUT_SECS", default_value_t = edge::DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// API requests handled at once; more are refused at once with 503. 0 = unlimited.
    #[arg(long, env = "BACKEND_MAX_CONCURRENT_REQUESTS", default_value_t = edge::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Searches per second per client IP (search, image search, similar); 0 = no limit.
    #[arg(long, env = "BACKEND_SEARCH_RATE_PER_SEC", default_value_t = DEFAULT_SEARCH_RATE.per_second)]
    pub search_rate_per_sec: u32,
    /// Searches a client may send at once before the per-second rate applies.
    #[arg(long, env = "BACKEND_SEARCH_RATE_BURST", default_value_t = DEFAULT_SEARCH_RATE.burst)]
    pub search_rate_burst: u32,
    /// Writes per second per API key (add, batch, delete); 0 = no limit.
    #[arg(long, env = "BACKEND_WRITE_RATE_PER_SEC", default_value_t = DEFAULT_WRITE_RATE.per_second)]
    pub write_rate_per_sec: u32,
    #[arg(long, env = "BACKEND_WRITE_RATE_BURST", default_value_t = DEFAULT_WRITE_RATE.burst)]
    pub write_rate_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client for the rate limits (comma-separated
    /// addresses). Empty: the peer address is the client.
    #[arg(long, env = "BACKEND_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// How often readiness probes the index, object storage and model-serving.
    #[arg(long, env = "BACKEND_READY_PROBE_INTERVAL_MS", default_value_t = DEFAULT_READY_PROBE_INTERVAL_MS)]
    pub ready_probe_interval_ms: u64,
}

pub const DEFAULT_SEARCH_RATE: Rate = Rate {
    per_second: 50,
    burst: 100,
};
pub const DEFAULT_WRITE_RATE: Rate = Rate {
    per_second: 20,
    burst: 50,
};
pub const DEFAULT_READY_PROBE_INTERVAL_MS: u64 = 2000;

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            body_timeout_secs: edge::DEFAULT_BODY_TIMEOUT_SECS,
            header_timeout_secs: edge::DEFAULT_HEADER_TIMEOUT_SECS,
            max_concurrent_requests: edge::DEFAULT_MAX_CONCURRENT_REQUESTS,
            search_rate_per_sec: DEFAULT_SEARCH_RATE.per_second,
            search_rate_burst: DEFAULT_SEARCH_RATE.burst,
            write_rate_per_sec: DEFAULT_WRITE_RATE.per_second,
            write_rate_burst: DEFAULT_WRITE_RATE.burst,
            trusted_proxies: TrustedProxies::default(),
            ready_probe_interval_ms: DEFAULT_READY_PROBE_INTERVAL_MS,
        }
    }
}

impl EdgeConfig {
    /// The defaults without rate limits: for tests and benchmarks that load one backend from
    /// one address.
    pub fn without_rate_limits() -> Self {
        Self {
            search_rate_per_sec: 0,
            write_rate_per_sec: 0,
            ..Self::default()
        }
    }

    /// The edge limits around the request timeout.
    pub fn limits(&self, request_timeout: Duration) -> EdgeLimits {
        EdgeLimits {
            request_timeout,
            body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            max_concurrent: self.max_concurrent_requests,
        }
    }

    pub fn search_rate(&self) -> Rate {
        Rate {
            per_second: self.search_rate_per_sec,
            burst: self.search_rate_burst,
        }
    }

    pub fn write_rate(&self) -> Rate {
        Rate {
            per_second: self.write_rate_per_sec,
            burst: self.write_rate_burst,
        }
    }

    pub fn ready_probe_interval(&self) -> Duration {
        Duration::from_millis(self.ready_probe_interval_ms.max(100))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::storage::StorageSettings;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: BackendConfig,
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cli = Cli::try_parse_from([
            "backend",
            "--api-key",
            "api-key-secret-0123456789",
            "--s3-access-key",
            "access-id",
            "--s3-secret-key",
            "s3-secret-0123456789",
            "--qdrant-api-key",
            "qdrant-secret-0123456789",
        ])
        .expect("parses");
        let debug = format!("{:?}", cli.config);
        for secret in ["api-key-secret", "s3-secret", "qdrant-secret"] {
            assert!(!debug.contains(secret), "{secret} shows in {debug}");
        }
        let storage = StorageSettings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key: "access-id".into(),
            secret_key: "s3-secret-0123456789".into(),
            presign: None,
        };
        let debug = format!("{storage:?}");
        assert!(!debug.contains("s3-secret"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
    }

    #[test]
    fn the_fetch_allowlist_is_empty_by_default_and_parsed_when_set() {
        let cli = Cli::try_parse_from(["backend"]).expect("parses");
        if std::env::var_os("BACKEND_FETCH_ALLOW").is_none() {
            assert!(cli.config.fetch_allow.0.is_empty());
        }
        let cli = Cli::try_parse_from(["backend", "--fetch-allow", "10.0.0.0/8, 127.0.0.1:8080"])
            .expect("parses");
        assert_eq!(cli.config.fetch_allow.0.len(), 2);
        assert!(
            Cli::try_parse_from(["backend", "--fetch-allow", "intranet.local"]).is_err(),
            "host names are not rules"
        );
        let settings = cli.config.fetch_settings();
        assert_eq!(settings.max_bytes, cli.config.max_body_bytes);
        assert!(settings.total_timeout <= cli.config.timeout());
    }

    #[test]
    fn defaults_are_the_documented_ones_whatever_the_environment() {
        // The environment of whoever runs the tests must not leak in (e.g. a QDRANT_URL).
        let defaults = BackendConfig::defaults();
        assert_eq!(defaults.addr, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(defaults.qdrant_url, None);
        assert_eq!(defaults.s3_endpoint, None);
        assert!(
            defaults.api_key.is_none(),
            "writes are off unless a key is set"
        );
        assert_eq!(defaults.presign_ttl_secs, 900);
        assert_eq!(defaults.hnsw_ef, 128);
        assert_eq!(defaults.index_search_threads, 1);
        assert!(defaults.validate().is_ok());
    }
}
