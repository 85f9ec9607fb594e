//! Stateless backend replicas: two `backend` processes over one Qdrant server and one external
//! S3 server, behind nginx configured from `deploy/nginx.conf` (only addresses and paths
//! rewritten). The ETL loads through the balancer; one backend is killed with SIGKILL under a
//! search load; nginx sends its requests to the other and no search fails.
//!
//! Opt-in: needs `QDRANT_BIN` (a Qdrant server), nginx (`NGINX_BIN`, default /usr/sbin/nginx)
//! and an S3-compatible server command (`S3_SERVER_BIN`, default the `moto_server` that
//! `make test-live` installs); otherwise it says what is missing, in one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::qdrant_live::QdrantProcess;

pub(crate) const S3_KEY: &str = "replica-access-key";
pub(crate) const S3_SECRET: &str = "replica-secret-key-0123456789";

/// A child process, SIGKILLed when dropped.
pub(crate) struct Process(Child);

impl Process {
    pub(crate) fn spawn(command: &mut Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Self(child)
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then SIGKILL after 5 s: nginx's master stops its workers only when asked (a
    /// SIGKILLed master leaves them running).
    pub(crate) fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tool(var: &str, default: PathBuf) -> Option<PathBuf> {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    path.is_file().then_some(path)
}

/// `deploy/nginx.conf` with the compose file's names and ports replaced by loopback addresses,
/// and its pid and temp paths moved under `dir`.
pub(crate) fn nginx_conf(
    dir: &Path,
    backends: [SocketAddr; 2],
    model: SocketAddr,
    listen: SocketAddr,
) -> String {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx.conf"),
    )
    .expect("deploy/nginx.conf");
    let nowhere = free_addr();
    let replaced = [
        ("worker_processes auto;", "worker_processes 1;".to_owned()),
        (
            "pid /tmp/nginx.pid;",
            format!("pid {}/nginx.pid;", dir.display()),
        ),
        ("/tmp/client_body", format!("{}/client_body", dir.display())),
        ("/tmp/proxy", format!("{}/proxy", dir.display())),
        ("access_log /dev/stdout;", "access_log off;".to_owned()),
        ("frontend:3000", nowhere.to_string()),
        ("backend-1:8000", backends[0].to_string()),
        ("backend-2:8000", backends[1].to_string()),
        ("model-serving-1:8001", model.to_string()),
        ("model-serving-2:8001", model.to_string()),
        ("listen 8080;", format!("listen {};", free_addr())),
        ("listen 8000;", format!("listen {listen};")),
        ("listen 8001;", format!("listen {};", free_addr())),
        ("listen 8081;", format!("listen {};", free_addr())),
    ];
    let mut out = conf;
    for (from, to) in replaced {
        assert!(
            out.contains(from),
            "deploy/nginx.conf no longer has {from:?}"
        );
        out = out.replace(from, &to);
    }
    out
}

/// A `backend` process on `addr` over the S3 server at `s3`, with the test key. nginx is its one
/// peer and every load client is 127.0.0.1 behind it, so the per-shopper search and write limits
/// are lifted.
pub(crate) fn backend_command(
    bin: &Path,
    addr: SocketAddr,
    data: &Path,
    model: SocketAddr,
    s3: SocketAddr,
) -> Command {
    let mut command = Command::new(bin);
    command
        .env("BACKEND_ADDR", addr.to_string())
        .env("DATA_DIR", data)
        .env("MODEL_SERVING_URL", format!("http://{model}"))
        .env("S3_ENDPOINT", format!("http://{s3}"))
        .env("S3_ACCESS_KEY", S3_KEY)
        .env("S3_SECRET_KEY", S3_SECRET)
        .env("API_KEY", API_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("BACKEND_TRUSTED_PROXIES", "127.0.0.1")
        .env("BACKEND_SEARCH_RATE_PER_SEC", "100000")
        .env("BACKEND_SEARCH_RATE_BURST", "100000")
        .env("BACKEND_WRITE_RATE_PER_SEC", "100000")
        .env("BACKEND_WRITE_RATE_BURST", "100000")
        .env("RUST_LOG", "warn");
    command
}

/// The ETL loading `limit` real photos through `front`, storing them in the S3 server at `s3`.
pub(crate) fn etl_load(bin: &Path, front: &str, model: SocketAddr, s3: SocketAddr, limit: u64) {
    let status = Command::new(bin)
        .args(["load", "--dataset", "fashion-product-images", "--source"])
        .arg(dataset_dir())
        .args(["--limit", &limit.to_string(), "--batch-size", "16"])
        .env("BACKEND_URL", front)
        .env("MODEL_SERVING_URL", format!("http://{model}"))
        .env("API_KEY", API_KEY)
        .env("S3_ENDPOINT", format!("http://{s3}"))
        .env("S3_ACCESS_KEY", S3_KEY)
        .env("S3_SECRET_KEY", S3_SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("etl runs");
    assert!(status.success(), "etl load: {status}");
}

/// Spawns `command` (its output to `log`) and waits until `http://{addr}/health/ready` answers.
pub(crate) async fn spawn_ready(command: &mut Command, addr: SocketAddr, log: &Path) -> Process {
    let mut process = Process::spawn(command, log);
    wait_until_up(
        &format!("http://{addr}/health/ready"),
        Duration::from_secs(60),
        || process.alive(),
    )
    .await;
    process
}

/// nginx with `deploy/nginx.conf` (see [`nginx_conf`]) in `dir`, in front of `backends`; returns
/// it and its API URL once a readiness check answers through it.
pub(crate) async fn start_nginx(
    nginx: &Path,
    dir: &Path,
    backends: [SocketAddr; 2],
    model: SocketAddr,
) -> (Process, String) {
    for sub in ["client_body", "proxy"] {
        std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
    }
    // Its workers run as another user when the test runs as root.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("a+rwx")
        .arg(dir)
        .status();
    let listen = free_addr();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, backends, model, listen)).expect("conf");
    let process = spawn_ready(
        Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr", "-g", "daemon off;"]),
        listen,
        &dir.join("nginx.log"),
    )
    .await;
    (process, format!("http://{listen}"))
}

/// What the server-path suites need: nginx, an S3 server (started here, its log under `root`) and
/// a Qdrant binary; `None`, and one line saying what is missing, otherwise.
pub(crate) async fn s3_and_nginx(root: &Path) -> Option<(PathBuf, Process, SocketAddr, PathBuf)> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let nginx = tool("NGINX_BIN", PathBuf::from("/usr/sbin/nginx"));
    let s3_server = tool(
        "S3_SERVER_BIN",
        home.join(".cache/fashion-search/venv-s3/bin/moto_server"),
    );
    let (Some(nginx), Some(s3_server), Some(qdrant)) = (
        nginx,
        s3_server,
        std::env::var_os("QDRANT_BIN").map(PathBuf::from),
    ) else {
        eprintln!(
            "skipped: needs QDRANT_BIN, nginx and an S3 server (`QDRANT_BIN=<qdrant> make test-live` installs the others)"
        );
        return None;
    };
    let s3 = free_addr();
    let mut process = Process::spawn(
        Command::new(&s3_server).args(["-H", "127.0.0.1", "-p", &s3.port().to_string()]),
        &root.join("s3.log"),
    );
    wait_until_up(&format!("http://{s3}/"), Duration::from_secs(60), || {
        process.alive()
    })
    .await;
    Some((nginx, process, s3, qdrant))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_behind_nginx_survive_a_killed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let Some((nginx, s3_process, s3, _)) = s3_and_nginx(root).await else {
        return;
    };
    std::fs::create_dir_all(root.join("qdrant")).expect("qdrant dir");
    let Some(qdrant) = QdrantProcess::start(root.join("qdrant")).await else {
        return;
    };

    let model = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let backend_bin = workspace_bin("backend");
    let addrs = [free_addr(), free_addr()];
    let mut backends: Vec<Process> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let data = root.join(format!("backend-{i}"));
        let process = spawn_ready(
            backend_command(&backend_bin, *addr, &data, model.addr, s3)
                .env("QDRANT_URL", qdrant.url())
                .env("QDRANT_COLLECTION", "replicas")
                .env("INDEX_OPTIMIZE_AFTER_SECS", "1")
                // The quality canary and the catalogue check, on the server path.
                .env("SEARCH_CANARY_INTERVAL_SECS", "1")
                .env("CATALOGUE_CHECK_INTERVAL_SECS", "1"),
            *addr,
            &root.join(format!("backend-{i}.log")),
        )
        .await;
        backends.push(process);
    }

    // nginx, from the deployment's own configuration.
    let (nginx_process, front) = start_nginx(&nginx, &root.join("nginx"), addrs, model.addr).await;

    // The ETL loads through the balancer, storing photos in the external S3.
    let photos = 120;
    etl_load(&workspace_bin("etl"), &front, model.addr, s3, photos);

    // Both replicas serve the same catalogue, with images from the external S3.
    let http = reqwest::Client::new();
    for addr in addrs {
        let stats: serde_json::Value = http
            .get(format!("http://{addr}/v1/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON");
        assert!(
            stats["total"]
                .as_u64()
                .is_some_and(|n| n > 0 && n <= photos),
            "{addr}: {stats}"
        );
        let page: serde_json::Value = http
            .get(format!(
                "http://{addr}/v1/search?q=blue+shirt&k=3&mode=vector"
            ))
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("search JSON");
        let url = page["hits"][0]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("no hit from {addr}: {page}"));
        assert!(url.starts_with(&format!("http://{s3}/")), "{url}");
        let image = http.get(url).send().await.expect("image");
        assert!(image.status().is_success(), "{url}: {}", image.status());
    }

    // Each replica's canary asks the Qdrant server and its catalogue check samples the external
    // S3: every sampled image is there and its pre-signed URL answers.
    for addr in addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        let metrics = loop {
            let text = http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text");
            let sampled = text
                .lines()
                .find(|l| l.starts_with("catalogue_check_sampled{sample=\"points\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if sampled > 0.0 && text.contains("search_quality_score{check=\"photo_recall_at_1\"}") {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "{addr}: no canary or catalogue check run:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for problem in ["missing_object", "presign_failed"] {
            assert!(
                metrics.contains(&format!(
                    "catalogue_check_problems{{problem=\"{problem}\"}} 0"
                )),
                "{addr}: {problem}"
            );
        }
        assert!(
            metrics.contains("search_quality_score{check=\"photo_recall_at_1\"} 1"),
            "{addr}: a catalogue photo did not find itself first"
        );
    }

    // 8 clients search through nginx for 8 s (bounded in count too); backend 0 is killed 2 s in.
    let started = Instant::now();
    let kill_at = Duration::from_secs(2);
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let (http, front) = (http.clone(), front.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..2_000 {
                    if started.elapsed() > Duration::from_secs(8) {
                        break;
                    }
                    let sent = started.elapsed();
                    let status = http
                        .get(format!(
                            "{front}/v1/search?q=replica+{c}+{i}&k=5&mode=vector"
                        ))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    out.push((sent, (started.elapsed() - sent).as_secs_f64() * 1e3, status));
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(kill_at).await;
    backends[0].kill();
    let killed = started.elapsed();
    let mut failed = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for task in tasks {
        for (sent, ms, status) in task.await.expect("client") {
            if status != 200 {
                failed.push(format!("{:.2} s: status {status}", sent.as_secs_f64()));
            } else if sent < killed {
                before.push(ms);
            } else {
                after.push(ms);
            }
        }
    }
    before.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    println!(
        "replicas: {} searches through nginx before the SIGKILL (p99 {:.1} ms), {} after (p50 {:.1} ms, p99 {:.1} ms), {} failed",
        before.len(),
        percentile(&before, 0.99),
        after.len(),
        percentile(&after, 0.5),
        percentile(&after, 0.99),
        failed.len()
    );
    assert!(failed.is_empty(), "failed searches: {failed:#?}");
    assert!(after.len() >= 50, "searches went on after the kill");

    // Writes go on through the balancer, to the surviving backend.
    let item = serde_json::json!({"items": [{
        "id": uuid::Uuid::from_u128(0x5EED).to_string(),
        "vector": vec![0.1f32; 32],
        "s3_key": page_key(&http, &front).await,
        "dataset": "replicas",
        "caption": "written after the kill",
    }]});
    let write = http
        .post(format!("{front}/v1/images:batch"))
        .header("x-api-key", API_KEY)
        .json(&item)
        .send()
        .await
        .expect("write");
    assert!(
        write.status().is_success(),
        "write after the kill: {}",
        write.status()
    );

    drop(nginx_process);
    drop(backends);
    model.stop().await.expect("model-serving stops");
    drop(s3_process);
    drop(qdrant);
}

/// A stored object's key, read from a search through the balancer.
pub(crate) async fn page_key(http: &reqwest::Client, front: &str) -> String {
    let page: serde_json::Value = http
        .get(format!("{front}/v1/search?q=shirt&k=1&mode=vector"))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("JSON");
    page["hits"][0]["s3_key"]
        .as_str()
        .expect("a key")
        .to_owned()
}
