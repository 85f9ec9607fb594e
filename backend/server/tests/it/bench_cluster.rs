//! `make bench-cluster`: the server path's search and write rates on this machine, in one run.
//! Searches go through nginx (configured from `deploy/nginx.conf`) from 16 clients (vector mode,
//! k=10, every query new, so each is embedded): 1 vs 2 backends, over one Qdrant node vs a 3-node
//! cluster (3 shards × 2 copies). Writes: batch upserts of 100 points with the embedded engine,
//! one Qdrant node and the cluster. A benchmark, not a test: it asserts nothing about speed and
//! runs only when asked (`--run-ignored only`), with `QDRANT_BIN`, nginx and an S3 server; the
//! Makefile passes `BENCH_BIN_DIR` so the release binaries are measured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::qdrant_cluster::start_cluster;
use crate::qdrant_live::QdrantProcess;
use crate::replicas::{
    Process, backend_command, etl_load, page_key, s3_and_nginx, spawn_ready, start_nginx,
};

fn bin(name: &str) -> PathBuf {
    match std::env::var_os("BENCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => workspace_bin(name),
    }
}

/// Stopped (SIGTERM) when dropped, nginx first.
struct Deployment {
    _nginx: Process,
    _backends: Vec<Process>,
    front: String,
}

/// `n` backends over `qdrant` (none: the embedded engine) behind nginx.
async fn deploy(
    root: &Path,
    tag: &str,
    n: usize,
    qdrant: Option<(&str, bool, &str)>,
    model: SocketAddr,
    s3: SocketAddr,
    nginx: &Path,
) -> Deployment {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut backends = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut command = backend_command(
            &bin("backend"),
            *addr,
            &root.join(format!("{tag}-data-{i}")),
            model,
            s3,
        );
        if let Some((url, cluster, collection)) = qdrant {
            command
                .env("QDRANT_URL", url)
                .env("QDRANT_COLLECTION", collection);
            if cluster {
                command
                    .env("QDRANT_SHARDS", "3")
                    .env("QDRANT_REPLICATION_FACTOR", "2");
            }
        }
        let process = spawn_ready(
            &mut command,
            *addr,
            &root.join(format!("{tag}-backend-{i}.log")),
        )
        .await;
        backends.push(process);
    }
    // One backend: both upstream entries name it.
    let pair = [addrs[0], *addrs.last().expect("a backend")];
    let (process, front) =
        start_nginx(nginx, &root.join(format!("{tag}-nginx")), pair, model).await;
    Deployment {
        _nginx: process,
        _backends: backends,
        front,
    }
}

/// Loads 32 photos with the ETL (so objects exist), then upserts `points` more that name them,
/// 100 per batch; returns points per second of the upserts.
async fn load(front: &str, model: SocketAddr, s3: SocketAddr, points: usize) -> f64 {
    etl_load(&bin("etl"), front, model, s3, 32);
    let http = reqwest::Client::new();
    let key = page_key(&http, front).await;
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let started = Instant::now();
    for batch in 0..points.div_ceil(100) {
        let items: Vec<serde_json::Value> = (0..100)
            .map(|j| {
                serde_json::json!({
                    "id": uuid::Uuid::from_u128(0xBE_0000 + (batch * 100 + j) as u128).to_string(),
                    "vector": (0..32).map(|_| next()).collect::<Vec<f32>>(),
                    "s3_key": key,
                    "dataset": "bench",
                    "caption": format!("bench point {batch} {j}"),
                })
            })
            .collect();
        let response = http
            .post(format!("{front}/v1/images:batch"))
            .header("x-api-key", API_KEY)
            .json(&serde_json::json!({ "items": items }))
            .send()
            .await
            .expect("upsert");
        assert!(
            response.status().is_success(),
            "upsert: {}",
            response.status()
        );
    }
    points as f64 / started.elapsed().as_secs_f64()
}

/// 16 clients searching through `front` for `seconds`: (p50 ms, p99 ms, searches/s, failed).
async fn search_load(front: &str, seconds: u64) -> (f64, f64, f64, usize) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let front = front.to_owned();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut times, mut failed) = (Vec::new(), 0);
                for i in 0..100_000 {
                    if started.elapsed() > Duration::from_secs(seconds) {
                        break;
                    }
                    let t = Instant::now();
                    let ok = http
                        .get(format!(
                            "{front}/v1/search?q=bench+{c}+{i}+{seconds}&k=10&mode=vector"
                        ))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failed += 1;
                    }
                }
                (times, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (times, f) = task.await.expect("client");
        all.extend(times);
        failed += f;
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))];
    (pct(0.5), pct(0.99), rate, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-cluster"]
async fn bench_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let Some((nginx, mut s3_process, s3, qdrant_bin)) = s3_and_nginx(root).await else {
        return;
    };
    std::fs::create_dir_all(root.join("single")).expect("dir");
    let single = QdrantProcess::start(root.join("single"))
        .await
        .expect("qdrant");
    let cluster = start_cluster(&qdrant_bin, root).await;
    let cluster_url = format!("http://{}", cluster[0].grpc);
    let model = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let points = 3_000;
    let seconds = 6;
    println!(
        "bench-cluster: 16 clients through nginx, {seconds} s each; upserts of {points} points, 100 per batch"
    );
    println!("| index | backends | upserts/s | search p50 ms | p99 ms | searches/s | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let single_url = single.url();
    for (tag, qdrant) in [
        ("embedded", None),
        (
            "one-node",
            Some((single_url.as_str(), false, "bench_one_node")),
        ),
        (
            "cluster",
            Some((cluster_url.as_str(), true, "bench_cluster")),
        ),
    ] {
        let backends = if qdrant.is_some() {
            vec![1, 2]
        } else {
            vec![1]
        };
        let mut upserts = None;
        for n in backends {
            let deployment = deploy(
                root,
                &format!("{tag}-{n}"),
                n,
                qdrant,
                model.addr,
                s3,
                &nginx,
            )
            .await;
            if upserts.is_none() {
                upserts = Some(load(&deployment.front, model.addr, s3, points).await);
            }
            let (p50, p99, rate, failed) = search_load(&deployment.front, seconds).await;
            println!(
                "| {tag} | {n} | {} | {p50:.1} | {p99:.1} | {rate:.0} | {failed} |",
                if n == 1 {
                    format!("{:.0}", upserts.unwrap_or(f64::NAN))
                } else {
                    "".to_owned()
                }
            );
            drop(deployment);
        }
    }
    model.stop().await.expect("model-serving stops");
    drop(cluster);
    drop(single);
    s3_process.stop();
}
