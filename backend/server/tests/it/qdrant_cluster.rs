//! The backend over a 3-node Qdrant cluster (distributed mode, loopback ports of its own): 2,000
//! real photos loaded into 3 shards × 2 copies, then one node killed with SIGKILL under a bounded
//! search and write load. Searches keep answering complete top-k pages, writes go on, the node
//! rejoins and every node counts the same points. Runs when `QDRANT_BIN` names a Qdrant binary;
//! otherwise it says it is skipped, in one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backend_api::{IngestItem, SearchMode, SearchParams};
use uuid::Uuid;

use crate::helpers::{self, free_addr, percentile};

const COLLECTION: &str = "cluster_test";

/// One peer of the cluster; SIGKILLed when dropped.
pub(crate) struct Node {
    child: Option<Child>,
    bin: PathBuf,
    storage: PathBuf,
    http: SocketAddr,
    pub(crate) grpc: SocketAddr,
    p2p: SocketAddr,
    /// The first peer's p2p URL, for the others to join through.
    bootstrap: Option<String>,
}

impl Node {
    fn new(bin: &Path, root: &Path, i: usize, bootstrap: Option<String>) -> Self {
        Self {
            child: None,
            bin: bin.to_owned(),
            storage: root.join(format!("node-{i}")),
            http: free_addr(),
            grpc: free_addr(),
            p2p: free_addr(),
            bootstrap,
        }
    }

    fn p2p_url(&self) -> String {
        format!("http://{}", self.p2p)
    }

    fn start(&mut self) {
        std::fs::create_dir_all(&self.storage).expect("node storage");
        let mut command = Command::new(&self.bin);
        command
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http.port().to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc.port().to_string())
            .env("QDRANT__CLUSTER__ENABLED", "true")
            .env("QDRANT__CLUSTER__P2P__PORT", self.p2p.port().to_string())
            .env(
                "QDRANT__STORAGE__STORAGE_PATH",
                self.storage.join("storage"),
            )
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.storage.join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .args(["--uri", &self.p2p_url()])
            .current_dir(&self.storage)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.storage.join("stderr.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        if let Some(first) = &self.bootstrap {
            command.args(["--bootstrap", first]);
        }
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display())),
        );
    }

    /// SIGKILL: a crash, not a shutdown.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Peers this node's consensus knows, when it has a leader.
    async fn peers(&self) -> usize {
        match self.get("/cluster").await {
            Some(c) if !c["result"]["raft_info"]["leader"].is_null() => c["result"]["peers"]
                .as_object()
                .map_or(0, serde_json::Map::len),
            _ => 0,
        }
    }

    /// States of this node's shard copies and of the ones it sees elsewhere.
    async fn replica_states(&self) -> Vec<String> {
        let Some(c) = self
            .get(&format!("/collections/{COLLECTION}/cluster"))
            .await
        else {
            return vec!["unreachable".into()];
        };
        ["local_shards", "remote_shards"]
            .iter()
            .flat_map(|k| c["result"][k].as_array().cloned().unwrap_or_default())
            .map(|s| s["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    async fn count(&self) -> Option<u64> {
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/collections/{COLLECTION}/points/count",
                self.http
            ))
            .json(&serde_json::json!({"exact": true}))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["result"]["count"].as_u64()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

/// Three peers on loopback, each joined through the first once the cluster has a leader; returns
/// when every peer is known.
pub(crate) async fn start_cluster(bin: &Path, root: &Path) -> Vec<Node> {
    let mut first = Node::new(bin, root, 0, None);
    first.start();
    let bootstrap = Some(first.p2p_url());
    let mut nodes = vec![first];
    for i in 1..3 {
        let first = &nodes[0];
        until("peer joined", Duration::from_secs(60), || async {
            first.peers().await >= i
        })
        .await;
        let mut node = Node::new(bin, root, i, bootstrap.clone());
        node.start();
        nodes.push(node);
    }
    until("3 peers", Duration::from_secs(60), || async {
        nodes[2].peers().await == 3
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_a_killed_node() {
    let Some(bin) = std::env::var_os("QDRANT_BIN").map(PathBuf::from) else {
        eprintln!("skipped: set QDRANT_BIN to a Qdrant server binary to run the cluster test");
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_cluster(&bin, root.path()).await;

    let model = helpers::start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = backend::config::BackendConfig {
        // Every node: the one the backend talks to is the one killed below.
        qdrant_url: Some(
            nodes
                .iter()
                .map(|n| format!("http://{}", n.grpc))
                .collect::<Vec<_>>()
                .join(","),
        ),
        qdrant_collection: COLLECTION.into(),
        qdrant_shards: Some(3),
        qdrant_replication_factor: Some(2),
        qdrant_write_consistency: Some(1),
        ..helpers::config(data.path(), model.addr)
    };
    let backend = Arc::new(helpers::start_backend(&config).await.expect("backend"));
    let products = helpers::products(2000);
    let loading = Instant::now();
    let stored = helpers::ingest(&backend, model.addr, &products).await;
    let loaded = stored.len();
    println!(
        "cluster: {loaded} photos loaded in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    until("all copies active", Duration::from_secs(60), || async {
        let states = nodes[0].replica_states().await;
        states.len() == 6 && states.iter().all(|s| s == "Active")
    })
    .await;

    // Load: 8 searching clients and one writer, bounded to 12 s; node 0, the one the backend
    // talks to, killed 3 s in (it moves to the next node it was given).
    let started = Instant::now();
    let kill_at = Duration::from_secs(3);
    let load_for = Duration::from_secs(12);
    let written = Arc::new(AtomicUsize::new(0));
    let searchers: Vec<_> = (0..8)
        .map(|c| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let params = SearchParams {
                    k: Some(10),
                    ..SearchParams::default()
                };
                let mut out = Vec::new();
                for i in 0..10_000 {
                    if started.elapsed() > load_for {
                        break;
                    }
                    let sent = started.elapsed();
                    let result = backend
                        .client
                        .search_text_as(
                            &format!("cluster query {c} {i}"),
                            SearchMode::Vector,
                            &params,
                        )
                        .await;
                    let took = (started.elapsed() - sent).as_secs_f64() * 1e3;
                    out.push((
                        sent,
                        took,
                        result.map(|r| r.hits.len()).map_err(|e| e.to_string()),
                    ));
                }
                out
            })
        })
        .collect();
    let writer = {
        let backend = backend.clone();
        let written = written.clone();
        let sample = backend
            .engine
            .index()
            .retrieve(&[helpers::point_id(&products[0])], true)
            .await
            .expect("a stored point");
        let record = sample.into_iter().next().expect("point 0");
        let vector = record.vector.clone().expect("its vector");
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for batch in 0..10_000u128 {
                if started.elapsed() > load_for {
                    break;
                }
                let items: Vec<IngestItem> = (0..10u128)
                    .map(|j| IngestItem {
                        id: Uuid::from_u128((0xC1u128 << 64) | (batch * 10 + j)),
                        vector: vector.clone(),
                        s3_key: record.payload.s3_key.clone(),
                        attributes: record.payload.attributes.clone(),
                    })
                    .collect();
                let sent = started.elapsed();
                match backend.client.ingest_batch(items).await {
                    Ok(r) => {
                        written.fetch_add(r.upserted, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(format!("{:.1} s: {e}", sent.as_secs_f64())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failed
        })
    };
    tokio::time::sleep(kill_at).await;
    nodes[0].kill();
    let killed = started.elapsed();

    let mut errors = Vec::new();
    let mut short = 0;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut last_error = Duration::ZERO;
    for task in searchers {
        for (sent, took, result) in task.await.expect("searcher") {
            match result {
                Ok(hits) => {
                    if hits < 10 {
                        short += 1;
                    }
                    if sent < killed {
                        &mut before
                    } else {
                        &mut after
                    }
                    .push(took);
                }
                Err(e) => {
                    last_error = last_error.max(sent);
                    errors.push(format!("{:.2} s: {e}", sent.as_secs_f64()));
                }
            }
        }
    }
    let write_errors = writer.await.expect("writer");
    before.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    println!(
        "cluster: node killed at {:.1} s; searches before {} (p99 {:.1} ms), after {} (p50 {:.1} ms, p99 {:.1} ms), {} failed (last at {:.1} s), {short} short of k; writes {} points, {} batches failed",
        killed.as_secs_f64(),
        before.len(),
        percentile(&before, 0.99),
        after.len(),
        percentile(&after, 0.5),
        percentile(&after, 0.99),
        errors.len(),
        last_error.as_secs_f64(),
        written.load(Ordering::Relaxed),
        write_errors.len(),
    );
    for e in errors.iter().chain(&write_errors).take(10) {
        println!("  {e}");
    }
    assert_eq!(short, 0, "every answered search has its 10 hits");
    // The backend was given every node: losing the one it talks to costs a retry, not a search.
    assert!(errors.is_empty(), "searches failed: {errors:?}");
    assert!(after.len() >= 50, "searches went on after the kill");
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "writes went on during the load"
    );

    // The node comes back on its ports and storage, its copies catch up, the counts agree.
    let rejoin = Instant::now();
    nodes[0].start();
    let expected = (loaded + written.load(Ordering::Relaxed)) as u64;
    // A batch that failed to answer may still have been written (by the node before it died):
    // up to its 10 points more.
    let maybe = 10 * write_errors.len() as u64;
    // Rejoined: every node sees all 6 copies active (the restarted one's own view is its state
    // from before the crash, so the others' count too) and every node counts every point
    // (a count on a node reads its local copies first: stale ones show here).
    let nodes = &nodes;
    let took = until(
        "copies active and counts equal",
        Duration::from_secs(180),
        || async move {
            for node in nodes {
                let states = node.replica_states().await;
                if states.len() != 6 || states.iter().any(|s| s != "Active") {
                    return false;
                }
                match node.count().await {
                    Some(count) if (expected..=expected + maybe).contains(&count) => {}
                    _ => return false,
                }
            }
            // And the nodes agree with each other.
            let mut counts = Vec::new();
            for node in nodes {
                counts.push(node.count().await);
            }
            counts.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
    let mut counts = Vec::new();
    for node in nodes {
        counts.push(node.count().await);
    }
    println!(
        "cluster: node rejoined: all copies active and counts equal {:.1} s after its restart; counts {counts:?}, expected {expected} (+ up to {maybe} from failed batches)",
        took.as_secs_f64().max(rejoin.elapsed().as_secs_f64())
    );

    let Ok(backend) = Arc::try_unwrap(backend) else {
        panic!("load tasks still hold the backend");
    };
    backend.stop().await;
    model.stop().await.expect("model-serving stops");
}
