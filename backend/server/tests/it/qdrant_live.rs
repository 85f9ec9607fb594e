//! The backend over a real Qdrant server process: readiness follows the server. Runs when
//! `QDRANT_BIN` names a Qdrant binary (this test starts and stops it, on loopback ports of its
//! own); otherwise it says it is skipped, in one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend::config::EdgeConfig;

use crate::helpers::{self, free_addr};

/// A Qdrant server on loopback, stopped (SIGKILL) when dropped.
/// The Qdrant server to test against: `QDRANT_URL`, or one started from `QDRANT_BIN` (kept
/// running while the returned process lives); `None` after one "skipped" line.
pub async fn qdrant_server(dir: &std::path::Path) -> Option<(String, Option<QdrantProcess>)> {
    match std::env::var("QDRANT_URL") {
        Ok(url) => Some((url, None)),
        Err(_) => {
            let process = QdrantProcess::start(dir.to_owned()).await?;
            Some((process.url(), Some(process)))
        }
    }
}

pub struct QdrantProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    storage: PathBuf,
    bin: PathBuf,
}

impl QdrantProcess {
    /// `None` (and one line on stderr) when `QDRANT_BIN` is not set.
    pub async fn start(storage: PathBuf) -> Option<Self> {
        let Some(bin) = std::env::var_os("QDRANT_BIN").map(PathBuf::from) else {
            eprintln!("skipped: set QDRANT_BIN to a Qdrant server binary to run this test");
            return None;
        };
        let (grpc, http) = (free_addr(), free_addr());
        Some(Self::spawn(bin, storage, grpc, http).await)
    }

    async fn spawn(bin: PathBuf, storage: PathBuf, grpc: SocketAddr, http: SocketAddr) -> Self {
        let child = Command::new(&bin)
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", http.port().to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", grpc.port().to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", storage.join("storage"))
            .env("QDRANT__STORAGE__SNAPSHOTS_PATH", storage.join("snapshots"))
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .current_dir(&storage)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let process = Self {
            child,
            grpc,
            http,
            storage,
            bin,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{http}/readyz")).await
                && r.status().is_success()
            {
                return process;
            }
            assert!(Instant::now() < deadline, "Qdrant not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and storage.
    pub async fn restart(mut self) -> Self {
        self.kill();
        let (bin, storage) = (self.bin.clone(), self.storage.clone());
        let (grpc, http) = (self.grpc, self.http);
        std::mem::forget(self);
        Self::spawn(bin, storage, grpc, http).await
    }
}

impl Drop for QdrantProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Readiness turns 503 `index` while the Qdrant server is down and comes back with it; a text
/// search meanwhile answers 503 with Retry-After, and works again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_qdrant_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut qdrant) = QdrantProcess::start(dir.path().to_owned()).await else {
        return;
    };
    let model = helpers::start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = backend::config::BackendConfig {
        qdrant_url: Some(qdrant.url()),
        edge: EdgeConfig {
            ready_probe_interval_ms: 200,
            ..EdgeConfig::without_rate_limits()
        },
        ..helpers::config(data.path(), model.addr)
    };
    let backend = helpers::start_backend(&config).await.expect("backend");
    helpers::ingest(&backend, model.addr, &helpers::products(3)).await;
    let body = helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["index"]["status"], "ready", "{body}");

    qdrant.kill();
    let body = helpers::wait_for_ready(backend.addr, 503, Duration::from_secs(15)).await;
    assert_eq!(body["checks"]["index"]["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["storage"]["status"], "ready", "{body}");
    let search = || async {
        backend
            .http
            .get(backend.url("/v1/search?q=red+dress&k=3"))
            .send()
            .await
            .expect("search")
    };
    let refused = search().await;
    assert_eq!(refused.status(), 503, "a search while the index is down");
    assert!(refused.headers().contains_key("retry-after"));

    let qdrant = qdrant.restart().await;
    helpers::wait_for_ready(backend.addr, 200, Duration::from_secs(30)).await;
    assert_eq!(
        search().await.status(),
        200,
        "a search once the index is back"
    );

    backend.stop().await;
    model.stop().await.expect("model-serving stops");
    drop(qdrant);
}
