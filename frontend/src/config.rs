//! The frontend's typed configuration: defaults in code, overridden by flags or env vars.

use std::net::SocketAddr;
use std::time::Duration;

use http_edge::limits::{self as edge, EdgeLimits};
use http_edge::rate_limit::{Rate, TrustedProxies};

#[derive(Debug, Clone, clap::Args)]
pub struct FrontendConfig {
    /// Where the shop's pages are served.
    #[arg(long, env = "FRONTEND_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// The backend's base URL.
    #[arg(long, env = "BACKEND_URL", default_value = "http://127.0.0.1:8000")]
    pub backend_url: String,
    /// Longest a page waits for the backend before it shows "try again".
    #[arg(long, env = "FRONTEND_SEARCH_TIMEOUT_MS", default_value_t = 5000)]
    pub search_timeout_ms: u64,
    /// Largest photo a shopper may upload as a query.
    #[arg(long, env = "FRONTEND_MAX_UPLOAD_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Results per page.
    #[arg(long, env = "FRONTEND_PAGE_SIZE", default_value_t = 24)]
    pub page_size: usize,
    /// Longest a page may take, upload included (503 + Retry-After beyond).
    #[arg(long, env = "FRONTEND_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// Deadline for a whole request body (a slower upload is refused with 408).
    #[arg(long, env = "FRONTEND_BODY_TIMEOUT_SECS", default_value_t = edge::DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
    /// Deadline for a request head (the connection is closed beyond it).
    #[arg(long, env = "FRONTEND_HEADER_TIMEOUT_SECS", default_value_t = edge::DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// Pages rendered at once; more are refused at once with 503. 0 = unlimited.
    #[arg(long, env = "FRONTEND_MAX_CONCURRENT_REQUESTS", default_value_t = edge::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Searching pages (search, photo search, similar) per second per client IP; 0 = no limit.
    #[arg(long, env = "FRONTEND_SEARCH_RATE_PER_SEC", default_value_t = DEFAULT_SEARCH_RATE.per_second)]
    pub search_rate_per_sec: u32,
    /// Searching pages a client may request at once before the per-second rate applies.
    #[arg(long, env = "FRONTEND_SEARCH_RATE_BURST", default_value_t = DEFAULT_SEARCH_RATE.burst)]
    pub search_rate_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client (comma-separated addresses). Empty:
    /// the peer address is the client.
    #[arg(long, env = "FRONTEND_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// How often readiness asks the backend whether it is ready.
    #[arg(long, env = "FRONTEND_READY_PROBE_INTERVAL_MS", default_value_t = 2000)]
    pub ready_probe_interval_ms: u64,
}

pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_SEARCH_RATE: Rate = Rate {
    per_second: 10,
    burst: 20,
};

impl FrontendConfig {
    /// The defaults (as `frontend --help` lists them, no environment read), pointed at
    /// `backend_url`: the base of in-process configurations (tests and embedding).
    pub fn new(backend_url: impl Into<String>) -> Self {
        use clap::{Args as _, FromArgMatches as _};
        let defaults = Self::augment_args(clap::Command::new("frontend"))
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(["frontend"])
            .and_then(|matches| Self::from_arg_matches(&matches))
            .unwrap_or_else(|e| unreachable!("every frontend setting has a default: {e}"));
        Self {
            backend_url: backend_url.into(),
            ..defaults
        }
    }

    pub fn edge_limits(&self) -> EdgeLimits {
        EdgeLimits {
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
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

    pub fn ready_probe_interval(&self) -> Duration {
        Duration::from_millis(self.ready_probe_interval_ms.max(100))
    }

    pub fn search_timeout(&self) -> Duration {
        Duration::from_millis(self.search_timeout_ms)
    }

    /// Refuses settings that cannot work, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.backend_url.starts_with("http://") || self.backend_url.starts_with("https://")) {
            return Err(format!(
                "BACKEND_URL must be an http(s) URL, got {:?}",
                self.backend_url
            ));
        }
        if !(1..=100).contains(&self.page_size) {
            return Err("FRONTEND_PAGE_SIZE must be between 1 and 100".into());
        }
        if self.search_timeout_ms == 0 {
            return Err("FRONTEND_SEARCH_TIMEOUT_MS must be positive".into());
        }
        if self.max_upload_bytes < 1024 {
            return Err("FRONTEND_MAX_UPLOAD_BYTES must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_the_documented_defaults_pointed_at_the_backend() {
        let config = FrontendConfig::new("http://10.0.0.5:8000");
        assert_eq!(config.backend_url, "http://10.0.0.5:8000");
        assert_eq!(config.addr, SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert_eq!(config.page_size, 24);
        assert_eq!(config.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS);
        assert_eq!(config.search_rate_per_sec, DEFAULT_SEARCH_RATE.per_second);
        assert_eq!(config.search_rate_burst, DEFAULT_SEARCH_RATE.burst);
    }
}
