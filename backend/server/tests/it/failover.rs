//! model-serving replicas: the backend spreads its encode calls over two model-serving processes
//! (`MODEL_SERVING_URL` with two URLs) and fails over when one is killed with SIGKILL under a
//! bounded 16-client search load: no search fails.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::config::BackendConfig;
use backend_api::{SearchMode, SearchParams};

use crate::helpers::*;

/// A model-serving process (the workspace's own binary, which `make test` builds), killed when
/// dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    async fn start() -> Self {
        let bin = workspace_bin("model-serving");
        let addr = free_addr();
        let mut child = Command::new(bin)
            .arg("serve")
            .env("MODEL_DIR", local_stack::test_model_dir())
            .env("ORT_DYLIB_PATH", local_stack::ort_library())
            .env("MODEL_SERVING_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn model-serving");
        wait_until_up(
            &format!("http://{addr}/health/ready"),
            Duration::from_secs(60),
            || matches!(child.try_wait(), Ok(None)),
        )
        .await;
        Self { child, addr }
    }

    /// Texts and images this replica has encoded, from its own /metrics.
    async fn items_encoded(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.starts_with("model_serving_items_encoded_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill(&mut self) {
        // std's kill is SIGKILL on Unix: no graceful drain, connections die mid-request.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_serving_replica_fails_no_search() {
    let (mut a, b) = tokio::join!(Replica::start(), Replica::start());
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = BackendConfig {
        model_serving_url: format!("http://{},http://{}", a.addr, b.addr),
        ..config(data.path(), a.addr)
    };
    let backend = Arc::new(start_backend(&cfg).await.expect("backend"));
    ingest(&backend, b.addr, &products(24)).await;

    // 16 clients, every query new (so every search is an encode call), bounded in count and
    // time; replica `a` is killed 1.5 s in.
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 150;
    let started = Instant::now();
    let kill_at = Duration::from_millis(1500);
    let deadline = Duration::from_secs(6);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let params = SearchParams {
                    k: Some(5),
                    ..SearchParams::default()
                };
                let mut done = Vec::new();
                for i in 0..PER_CLIENT {
                    if started.elapsed() > deadline {
                        break;
                    }
                    let sent = started.elapsed();
                    let result = backend
                        .client
                        .search_text_as(
                            &format!("failover query {c} {i}"),
                            SearchMode::Vector,
                            &params,
                        )
                        .await;
                    done.push((sent, started.elapsed() - sent, result.err()));
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(kill_at).await;
    let (served_a, served_b) = tokio::join!(a.items_encoded(), b.items_encoded());
    a.kill();
    let killed = started.elapsed();

    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut window = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        for (sent, took, error) in task.await.expect("client task") {
            if let Some(error) = error {
                failures.push(format!("{:.2} s: {error}", sent.as_secs_f64()));
                continue;
            }
            let ms = took.as_secs_f64() * 1e3;
            if sent < killed {
                before.push(ms);
            } else {
                after.push(ms);
                if sent < killed + Duration::from_secs(1) {
                    window.push(ms);
                }
            }
        }
    }
    for v in [&mut before, &mut after, &mut window] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "failover: {} searches before the SIGKILL (p50 {:.1} ms, p99 {:.1} ms), {} after (p50 {:.1} ms, p99 {:.1} ms; first second p99 {:.1} ms), {} failed",
        before.len(),
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        after.len(),
        percentile(&after, 0.5),
        percentile(&after, 0.99),
        percentile(&window, 0.99),
        failures.len()
    );
    assert!(failures.is_empty(), "failed searches: {failures:#?}");
    // Both replicas took load before the kill, and the load went on after it.
    assert!(
        served_a > 0.0 && served_b > 0.0,
        "calls were not spread: a {served_a}, b {served_b}"
    );
    assert!(
        after.len() >= 100,
        "only {} searches after the kill",
        after.len()
    );
    // The backend stays ready on the surviving replica.
    let ready = reqwest::get(backend.url("/health/ready"))
        .await
        .expect("ready");
    assert!(ready.status().is_success(), "{}", ready.status());

    drop(b);
    let Ok(backend) = Arc::try_unwrap(backend) else {
        panic!("client tasks still hold the backend");
    };
    backend.stop().await;
}
