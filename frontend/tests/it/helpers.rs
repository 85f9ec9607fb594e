//! The real services for the frontend's tests: the `model-serving`, `backend` and `etl` binaries
//! built beside this test (`cargo build --bins`, which `make test` runs first), on free loopback
//! ports, with real photos loaded by the ETL. Every child is killed by pid when the stack drops.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "frontend-test-api-key-0123456789";
const S3_KEY: &str = "frontend-test-access";
const S3_SECRET: &str = "frontend-test-secret-0123456789";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

pub fn dataset_dir() -> PathBuf {
    env_path(
        "DATASET_DIR",
        workspace().join("../shared/datasets/fashion-product-images-small"),
    )
}

fn model_dir() -> PathBuf {
    env_path("TEST_MODEL_DIR", workspace().join("var/models/tiny"))
}

/// target/<profile>/, where cargo put the binaries next to this test's `deps/` folder.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `make test` does)",
        path.display()
    );
    path
}

pub fn free_addr() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A real photo from the dataset, by its `images/<id>.jpg` name.
/// The photo's canonical path: chromedriver refuses a file upload path with `..` in it.
pub fn photo(id: &str) -> PathBuf {
    let path = dataset_dir().join("images").join(format!("{id}.jpg"));
    path.canonicalize()
        .unwrap_or_else(|e| panic!("test photo {}: {e}", path.display()))
}

pub struct Stack {
    pub model: SocketAddr,
    pub backend: SocketAddr,
    pub s3: SocketAddr,
    pub loaded: usize,
    children: Vec<(&'static str, Child)>,
    dir: tempfile::TempDir,
}

impl Stack {
    pub fn backend_url(&self) -> String {
        format!("http://{}", self.backend)
    }

    /// Starts model-serving and the backend, then loads `photos` real photos with the ETL.
    pub async fn start(photos: usize) -> Stack {
        Self::start_with(photos, &[]).await
    }

    /// [`Stack::start`] with extra environment for model-serving and the backend.
    pub async fn start_with(photos: usize, env: &[(&str, String)]) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stack = Stack {
            model: free_addr(),
            backend: free_addr(),
            s3: free_addr(),
            loaded: 0,
            children: Vec::new(),
            dir,
        };
        let model_dir = model_dir();
        stack.spawn(
            "model-serving",
            Command::new(bin("model-serving"))
                .arg("serve")
                .env("MODEL_DIR", &model_dir)
                .env("MODEL_SERVING_ADDR", stack.model.to_string())
                .envs(env.iter().map(|(k, v)| (*k, v))),
        );
        stack.wait_ready("model-serving", stack.model).await;
        let data = stack.dir.path().join("data");
        stack.spawn(
            "backend",
            Command::new(bin("backend"))
                .env("BACKEND_ADDR", stack.backend.to_string())
                .env("DATA_DIR", &data)
                .env("MODEL_SERVING_URL", format!("http://{}", stack.model))
                .env("S3_EMBEDDED_ADDR", stack.s3.to_string())
                .env("S3_ACCESS_KEY", S3_KEY)
                .env("S3_SECRET_KEY", S3_SECRET)
                .env("API_KEY", API_KEY)
                .env("INDEX_OPTIMIZE_AFTER_SECS", "1")
                .envs(env.iter().map(|(k, v)| (*k, v))),
        );
        stack.wait_ready("backend", stack.backend).await;
        let log = stack.log_path("etl");
        let status = Command::new(bin("etl"))
            .args(["load", "--dataset", "fashion-product-images", "--source"])
            .arg(dataset_dir())
            .args(["--limit", &photos.to_string(), "--batch-size", "16"])
            .env("BACKEND_URL", stack.backend_url())
            .env("MODEL_SERVING_URL", format!("http://{}", stack.model))
            .env("API_KEY", API_KEY)
            .env("S3_ENDPOINT", format!("http://{}", stack.s3))
            .env("S3_ACCESS_KEY", S3_KEY)
            .env("S3_SECRET_KEY", S3_SECRET)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::fs::File::create(&log).expect("etl log"))
            .stderr(Stdio::inherit())
            .status()
            .expect("run etl");
        assert!(status.success(), "etl load failed: {}", tail(&log));
        let client = backend_api::BackendClient::new(stack.backend_url(), Duration::from_secs(10))
            .expect("backend client");
        stack.loaded = client.stats().await.expect("stats").total as usize;
        assert_eq!(stack.loaded, photos, "every photo indexed");
        stack
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&mut self, name: &'static str, command: &mut Command) {
        let log = std::fs::File::create(self.log_path(name)).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = command
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((name, child));
    }

    async fn wait_ready(&mut self, name: &str, addr: SocketAddr) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(r) = http
                .get(format!("http://{addr}/health/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| *n == name)
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{name} exited ({status}): {}", tail(&self.log_path(name)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{name} not ready after 90 s: {}",
            tail(&self.log_path(name))
        );
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child started in its own process group (chromedriver), killed with its whole group on drop:
/// the browser it started goes too, even when a test fails before closing its session.
pub struct Guard(pub Child);

impl Guard {
    pub fn spawn(command: &mut Command) -> std::io::Result<Guard> {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0).spawn().map(Guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
