//! The frontend's typed configuration: defaults in code, overridden by flags or env vars.

use std::net::SocketAddr;
use std::time::Duration;

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
}

impl FrontendConfig {
    /// The defaults, pointed at `backend_url` (tests and embedding).
    pub fn new(backend_url: impl Into<String>) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            backend_url: backend_url.into(),
            search_timeout_ms: 5000,
            max_upload_bytes: 10 * 1024 * 1024,
            page_size: 24,
        }
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
