//! ETL end to end with the real parts in process: model-serving (tiny model), the backend with
//! the embedded Qdrant engine and embedded S3; real photos, Fashion-MNIST from Debian, a
//! `kill -9` in the middle of a load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backend_api::{BackendClient, SearchParams};
use catalog::store::{ObjectStore, StorageSettings};
use etl::datasets::DatasetKind;
use etl::{Clients, LoadOptions, point_id};
use model_serving_api::ModelServingClient;
use tokio::net::TcpListener;

const API_KEY: &str = "etl-test-api-key-0123456789";
const S3_KEY: &str = "etl-test-access";
const S3_SECRET: &str = "etl-test-secret-0123456789";

use local_stack::dataset_dir;

mod cli;

/// The photo of a product of the real dataset.
fn photo(product: &str) -> Vec<u8> {
    std::fs::read(dataset_dir().join("images").join(format!("{product}.jpg"))).expect("photo")
}

/// The bytes the ETL stores for the first entry of a dataset (Fashion-MNIST's are PNG it encodes).
async fn first_item_bytes(kind: DatasetKind, source: PathBuf) -> Vec<u8> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || etl::datasets::extract(kind, &source, Some(1), &tx))
        .await
        .expect("join")
        .expect("extract");
    match rx.recv().await {
        Some(etl::datasets::Extracted::Item(item)) => item.bytes,
        _ => panic!("no first item"),
    }
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

struct Stack {
    model: SocketAddr,
    backend: SocketAddr,
    s3: SocketAddr,
    servers: (local_stack::Backend, local_stack::Running<()>),
    _data: tempfile::TempDir,
}

impl Stack {
    /// Drains the backend (flushing the index), then model-serving.
    async fn stop(self) {
        let (backend, model) = self.servers;
        backend.stop().await.expect("backend stops cleanly");
        model.stop().await.expect("model-serving stops cleanly");
    }

    fn clients(&self) -> Clients {
        Clients {
            backend: BackendClient::new(
                format!("http://{}", self.backend),
                Duration::from_secs(60),
            )
            .expect("backend client")
            .with_api_key(API_KEY),
            model: ModelServingClient::new(
                format!("http://{}", self.model),
                Duration::from_secs(60),
            )
            .expect("model client"),
            store: ObjectStore::new(&StorageSettings {
                endpoint: format!("http://{}", self.s3),
                region: "us-east-1".into(),
                bucket: "fashion-images".into(),
                access_key: S3_KEY.into(),
                secret_key: S3_SECRET.into(),
                presign: None,
            })
            .expect("store"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BACKEND_URL", format!("http://{}", self.backend)),
            ("MODEL_SERVING_URL", format!("http://{}", self.model)),
            ("API_KEY", API_KEY.into()),
            ("S3_ENDPOINT", format!("http://{}", self.s3)),
            ("S3_ACCESS_KEY", S3_KEY.into()),
            ("S3_SECRET_KEY", S3_SECRET.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

async fn start_stack() -> Stack {
    start_stack_with(None).await
}

/// The stack, with model-serving's per-request pixel budget when given.
async fn start_stack_with(max_request_pixels: Option<u64>) -> Stack {
    let mut encoder =
        local_stack::encoder_config(local_stack::test_model_dir(), local_stack::ort_library());
    if let Some(budget) = max_request_pixels {
        encoder.max_request_pixels = budget;
    }
    let model = local_stack::start_model_serving(
        local_stack::loopback().await.expect("bind"),
        encoder,
        local_stack::http_limits(),
    )
    .await
    .expect("model-serving");
    let data = tempfile::tempdir().expect("tempdir");
    let s3_listener = local_stack::loopback().await.expect("bind");
    let s3 = s3_listener.local_addr().expect("addr");
    let config = backend::config::BackendConfig {
        s3_access_key: Some(S3_KEY.to_owned().into()),
        s3_secret_key: Some(S3_SECRET.to_owned().into()),
        query_cache_entries: 100,
        ..local_stack::backend_config(data.path(), model.addr, API_KEY)
    };
    let backend = local_stack::start_backend(&config, s3_listener)
        .await
        .expect("backend");
    Stack {
        model: model.addr,
        backend: backend.addr(),
        s3,
        servers: (backend, model),
        _data: data,
    }
}

fn options(dataset: DatasetKind, source: PathBuf, limit: Option<usize>) -> LoadOptions {
    LoadOptions {
        dataset,
        source,
        limit,
        batch_size: 16,
        concurrency: 2,
        dry_run: false,
        progress: false,
        max_request_pixels: etl::DEFAULT_MAX_REQUEST_PIXELS,
    }
}

#[tokio::test]
async fn loads_real_photos_then_a_rerun_skips_them() {
    let stack = start_stack().await;
    let clients = stack.clients();
    let opts = options(DatasetKind::FashionProductImages, dataset_dir(), Some(64));
    let summary = etl::load(&opts, &clients).await.expect("load");
    assert_eq!(summary.loaded + summary.failed.len(), 64, "{summary:?}");
    assert!(summary.loaded >= 60, "{summary:?}");
    let stats = clients.backend.stats().await.expect("stats");
    assert_eq!(stats.total as usize, summary.loaded);
    assert_eq!(
        stats.by_dataset.get("fashion-product-images").copied(),
        Some(summary.loaded as u64)
    );

    // Payloads come from styles.csv, and the stored image is the photo.
    let csv = std::fs::read_to_string(dataset_dir().join("styles.csv")).expect("csv");
    let row: Vec<&str> = csv.lines().nth(1).expect("row").splitn(10, ',').collect();
    let item = clients
        .backend
        .get_image(point_id(DatasetKind::FashionProductImages, &photo(row[0])))
        .await
        .expect("first product indexed");
    assert_eq!(item.attributes.caption, row[9]);
    assert_eq!(item.attributes.article_type.as_deref(), Some(row[4]));
    assert_eq!(item.attributes.colour.as_deref(), Some(row[5]));
    let photo =
        std::fs::read(dataset_dir().join("images").join(format!("{}.jpg", row[0]))).expect("photo");
    let bytes = reqwest::get(&item.url)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&bytes[..], &photo[..]);

    // A rerun finds everything present and encodes nothing.
    let again = etl::load(&opts, &clients).await.expect("rerun");
    assert_eq!((again.loaded, again.already_present), (0, summary.loaded));
    assert_eq!(
        clients.backend.stats().await.expect("stats").total as usize,
        summary.loaded
    );
    let hits = clients
        .backend
        .search_text("shirt", &SearchParams::default())
        .await
        .expect("search");
    assert!(!hits.hits.is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn bad_files_are_skipped_counted_and_explained() {
    let stack = start_stack().await;
    let clients = stack.clients();
    let folder = tempfile::tempdir().expect("tempdir");
    let photos: Vec<PathBuf> = {
        let mut all: Vec<PathBuf> = std::fs::read_dir(dataset_dir().join("images"))
            .expect("images")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        all.sort();
        all.truncate(5);
        all
    };
    for (i, p) in photos.iter().enumerate() {
        std::fs::copy(p, folder.path().join(format!("good-{i}.jpg"))).expect("copy");
    }
    let bytes = std::fs::read(&photos[0]).expect("photo");
    std::fs::write(
        folder.path().join("truncated.jpg"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    std::fs::write(folder.path().join("notes.png"), b"this is not a png").expect("write");
    std::fs::create_dir(folder.path().join("sub")).expect("mkdir");
    std::fs::copy(&photos[1], folder.path().join("sub/nested.jpg")).expect("copy");
    std::fs::write(
        folder.path().join("captions.csv"),
        "file,caption,colour\ngood-0.jpg,a red scarf,Red\nsub/nested.jpg,nested shoe,\n",
    )
    .expect("captions");

    let summary = etl::load(
        &options(DatasetKind::Folder, folder.path().to_owned(), None),
        &clients,
    )
    .await
    .expect("load");
    // sub/nested.jpg is a copy of good-1.jpg: one photo, one product.
    assert_eq!(
        (summary.loaded, summary.already_present),
        (5, 1),
        "{summary:?}"
    );
    let failed: Vec<&str> = summary.failed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(failed.len(), 2, "{summary:?}");
    assert!(failed.contains(&"truncated.jpg") && failed.contains(&"notes.png"));
    assert!(summary.failed.iter().all(|(_, reason)| !reason.is_empty()));
    let captioned = clients
        .backend
        .get_image(point_id(DatasetKind::Folder, &bytes))
        .await
        .expect("item");
    assert_eq!(captioned.attributes.caption, "a red scarf");
    assert_eq!(captioned.attributes.colour.as_deref(), Some("Red"));
    assert_eq!(clients.backend.stats().await.expect("stats").total, 5);
    stack.stop().await;
}

#[tokio::test]
async fn fashion_mnist_from_the_debian_package() {
    let source = env_path(
        "FASHION_MNIST_DIR",
        PathBuf::from("/usr/share/datasets/fashion-mnist"),
    );
    assert!(
        source.join("train-images-idx3-ubyte.gz").is_file(),
        "Fashion-MNIST missing at {} (Debian package dataset-fashion-mnist; `make system-deps`)",
        source.display()
    );
    let first = first_item_bytes(DatasetKind::FashionMnist, source.clone()).await;
    let stack = start_stack().await;
    let clients = stack.clients();
    let summary = etl::load(
        &options(DatasetKind::FashionMnist, source, Some(50)),
        &clients,
    )
    .await
    .expect("load");
    assert_eq!((summary.loaded, summary.failed.len()), (50, 0));
    let item = clients
        .backend
        .get_image(point_id(DatasetKind::FashionMnist, &first))
        .await
        .expect("item");
    // The first training image of Fashion-MNIST is an ankle boot (label 9).
    assert_eq!(item.attributes.article_type.as_deref(), Some("Ankle boot"));
    assert_eq!(item.attributes.caption, "a photo of a ankle boot");
    assert_eq!(
        (item.attributes.width, item.attributes.height),
        (Some(28), Some(28))
    );
    let facets = clients.backend.facets().await.expect("facets");
    assert!(
        facets.facets["article_type"].len() >= 5,
        "several classes in 50 images"
    );
    stack.stop().await;
}

#[tokio::test]
async fn kill_9_mid_load_then_rerun_completes_without_duplicates() {
    let stack = start_stack().await;
    let clients = stack.clients();
    let env = stack.env();
    let run = move |limit: usize| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_etl"));
        cmd.args([
            "load",
            "--dataset",
            "fashion-product-images",
            "--batch-size",
            "8",
            "--concurrency",
            "1",
            "--limit",
        ])
        .arg(limit.to_string())
        .arg("--source")
        .arg(dataset_dir())
        .envs(env.clone())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        cmd
    };
    let mut child = run(400).spawn().expect("etl");
    // Kill it once some, but not all, batches are in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let total = clients.backend.stats().await.expect("stats").total;
        if total >= 40 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let partial = clients.backend.stats().await.expect("stats").total;
    assert!(partial < 400, "killed before the end ({partial})");

    let mut rerun = run(400);
    let status = tokio::task::spawn_blocking(move || rerun.status())
        .await
        .expect("join")
        .expect("rerun");
    assert!(status.success());
    // Exactly the valid items, each once: the dry run lists them.
    let dry = etl::load(
        &LoadOptions {
            dry_run: true,
            ..options(DatasetKind::FashionProductImages, dataset_dir(), Some(400))
        },
        &clients,
    )
    .await
    .expect("dry run");
    let valid = 400 - dry.failed.len();
    let csv = std::fs::read_to_string(dataset_dir().join("styles.csv")).expect("csv");
    let ids: Vec<_> = csv
        .lines()
        .skip(1)
        .take(400)
        .filter_map(|l| l.split(',').next())
        .filter(|id| !dry.failed.iter().any(|(k, _)| k == id))
        .map(|id| point_id(DatasetKind::FashionProductImages, &photo(id)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Products whose photos are byte-identical (10200 and 10244 among these) are one product.
    assert!(
        ids.len() < valid && ids.len() + 5 > valid,
        "{} of {valid}",
        ids.len()
    );
    assert_eq!(
        clients.backend.stats().await.expect("stats").total as usize,
        ids.len()
    );
    for chunk in ids.chunks(200) {
        let present = clients
            .backend
            .existing(chunk.to_vec())
            .await
            .expect("exists");
        assert_eq!(present.len(), chunk.len(), "nothing missing");
    }
    stack.stop().await;
}

/// Debian's Prometheus Pushgateway on a free loopback port; killed when dropped.
struct Pushgateway {
    child: std::process::Child,
    url: String,
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_pushgateway() -> Pushgateway {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = std::process::Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus-pushgateway (Debian package; `make system-deps`)");
    let gateway = Pushgateway {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !reqwest::get(format!("{}/-/ready", gateway.url))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushgateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway
}

#[tokio::test]
async fn job_metrics_reach_the_pushgateway() {
    let stack = start_stack().await;
    let gateway = start_pushgateway().await;
    let folder = tempfile::tempdir().expect("tempdir");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dataset_dir().join("images"))
        .expect("images")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    photos.sort();
    for (i, p) in photos.iter().take(3).enumerate() {
        std::fs::copy(p, folder.path().join(format!("{i}.jpg"))).expect("copy");
    }
    std::fs::write(folder.path().join("broken.jpg"), b"\xFF\xD8\xFF not really").expect("write");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_etl"));
    cmd.args(["load", "--dataset", "folder", "--source"])
        .arg(folder.path())
        .envs(stack.env())
        .env("PUSHGATEWAY_URL", &gateway.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("etl");
    assert!(output.status.success());
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains("loaded 3, already present 0, failed 1"),
        "{summary}"
    );

    let text = reqwest::get(format!("{}/metrics", gateway.url))
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let value = |name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|lab| l.contains(lab)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let loaded = value(
        "etl_items_total",
        &[r#"job="etl""#, r#"dataset="folder""#, r#"outcome="loaded""#],
    );
    assert_eq!(loaded, Some(3.0), "{text}");
    assert_eq!(
        value("etl_items_total", &[r#"outcome="failed""#]),
        Some(1.0)
    );
    // Why: the broken file reached model-serving, which refused it (not a dataset problem).
    assert_eq!(
        value(
            "etl_failures_total",
            &[r#"dataset="folder""#, r#"reason="image""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "etl_failures_total",
            &[r#"dataset="folder""#, r#"reason="source""#]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value("etl_job_failed", &[r#"dataset="folder""#]), Some(0.0));
    assert!(
        value(
            "etl_last_success_timestamp_seconds",
            &[r#"dataset="folder""#]
        )
        .is_some_and(|t| t > 1.7e9)
    );
    assert!(text.contains("# HELP etl_stage_seconds "));
    stack.stop().await;
}

/// A stand-in for the dataset's web server: files with `Range` support; the first full GET of
/// the largest file is cut halfway.
async fn file_server(dir: PathBuf) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::body::Body;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Clone)]
    struct Files {
        dir: PathBuf,
        cut: Arc<AtomicBool>,
        ranges: Arc<AtomicUsize>,
    }
    async fn serve_file(
        State(f): State<Files>,
        UrlPath(name): UrlPath<String>,
        headers: HeaderMap,
    ) -> Response {
        let Ok(bytes) = std::fs::read(f.dir.join(&name)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if let Some(start) = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok())
        {
            f.ranges.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::PARTIAL_CONTENT,
                bytes[start.min(bytes.len())..].to_vec(),
            )
                .into_response();
        }
        if name.starts_with("train-images") && !f.cut.swap(true, Ordering::SeqCst) {
            use futures::StreamExt as _;
            let half = bytes[..bytes.len() / 2].to_vec();
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(std::io::Error::other("connection reset"))
                }),
            );
            return Response::builder()
                .header(header::CONTENT_LENGTH, bytes.len())
                .body(Body::from_stream(stream))
                .expect("response");
        }
        bytes.into_response()
    }
    let ranges = Arc::new(AtomicUsize::new(0));
    let files = Files {
        dir,
        cut: Arc::new(AtomicBool::new(false)),
        ranges: ranges.clone(),
    };
    let app = axum::Router::new()
        .route("/{name}", axum::routing::get(serve_file))
        .with_state(files);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, ranges)
}

#[tokio::test]
async fn download_resumes_and_verifies_checksums() {
    use etl::download::{DownloadError, FASHION_MNIST_FILES, download_files};
    let source = env_path(
        "FASHION_MNIST_DIR",
        PathBuf::from("/usr/share/datasets/fashion-mnist"),
    );
    let (addr, ranges) = file_server(source.clone()).await;
    let base = format!("http://{addr}");

    // Debian ships the files recompressed, so their MD5 differs from the published one: the
    // canonical manifest must refuse them and leave nothing behind.
    let dest = tempfile::tempdir().expect("tempdir");
    let err = download_files(&base, &FASHION_MNIST_FILES[1..2], dest.path())
        .await
        .expect_err("mismatch");
    assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(dest.path()).expect("dir").count(),
        0,
        "no partial or unverified file kept"
    );

    // With the MD5s of the files served, the download completes, resuming the cut file.
    let manifest: Vec<(String, String)> = FASHION_MNIST_FILES
        .iter()
        .map(|(name, _)| {
            let out = std::process::Command::new("md5sum")
                .arg(source.join(name))
                .output()
                .expect("md5sum");
            let sum = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .expect("sum")
                .to_owned();
            ((*name).to_owned(), sum)
        })
        .collect();
    let files: Vec<(&str, &str)> = manifest
        .iter()
        .map(|(n, m)| (n.as_str(), m.as_str()))
        .collect();
    download_files(&base, &files, dest.path())
        .await
        .expect("download");
    assert!(
        ranges.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the cut file was resumed with Range"
    );
    for (name, _) in &files {
        assert_eq!(
            std::fs::read(dest.path().join(name)).expect("downloaded"),
            std::fs::read(source.join(name)).expect("source"),
            "{name}"
        );
    }
    // And the result loads.
    let stack = start_stack().await;
    let summary = etl::load(
        &options(DatasetKind::FashionMnist, dest.path().to_owned(), Some(10)),
        &stack.clients(),
    )
    .await
    .expect("load");
    assert_eq!(summary.loaded, 10);
    stack.stop().await;
}

/// The ETL's trace goes on into model-serving and the backend: their server spans are children of
/// the ETL's batch span, linked by the `traceparent` header on the wire.
#[test]
fn traces_continue_into_model_serving_and_the_backend() {
    use telemetry::testing::{attribute, otlp_receiver};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (receiver, mut spans) = runtime.block_on(otlp_receiver()).expect("receiver");
    // Installed outside the runtime, as the binaries do.
    let guard = std::sync::Arc::new(
        telemetry::init_with(
            "etl",
            telemetry::TelemetryConfig {
                filter: "info".into(),
                json: true,
                otlp_endpoint: Some(format!("http://{receiver}")),
            },
        )
        .expect("telemetry"),
    );
    let flush = guard.clone();
    let collected = runtime.block_on(async move {
        let stack = start_stack().await;
        let clients = stack.clients();
        let opts = options(DatasetKind::FashionProductImages, dataset_dir(), Some(16));
        let summary = etl::load(&opts, &clients).await.expect("load");
        assert_eq!(summary.loaded, 16);
        tokio::task::spawn_blocking(move || flush.flush())
            .await
            .expect("flush");
        let mut collected = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(span)) = tokio::time::timeout_at(deadline, spans.recv()).await {
            collected.push(span.1);
            let names: Vec<&str> = collected.iter().map(|s| s.name.as_str()).collect();
            if [
                "etl.load",
                "etl.batch",
                "POST /encode_image",
                "POST /v1/images:batch",
                "POST /v1/images:exists",
            ]
            .iter()
            .all(|n| names.contains(n))
            {
                break;
            }
        }
        stack.stop().await;
        collected
    });
    let batch = collected
        .iter()
        .find(|s| s.name == "etl.batch")
        .expect("the batch span was exported");
    let load = collected
        .iter()
        .find(|s| s.name == "etl.load")
        .expect("the load span was exported");
    assert_eq!(batch.trace_id, load.trace_id);
    assert_eq!(
        batch.parent_span_id, load.span_id,
        "batches are children of the load"
    );
    for route in [
        "POST /encode_image",
        "POST /v1/images:exists",
        "POST /v1/images:batch",
    ] {
        let server = collected
            .iter()
            .find(|s| s.name == route && s.trace_id == batch.trace_id)
            .unwrap_or_else(|| panic!("{route}: no server span in the ETL's trace"));
        assert_eq!(server.kind, 2, "{route} is a server span");
        // Up the parent links (through any client-side span) to the batch that made the call.
        let mut ancestors = Vec::new();
        let mut parent_id = server.parent_span_id.clone();
        while let Some(parent) = collected.iter().find(|s| s.span_id == parent_id) {
            ancestors.push(parent.name.clone());
            parent_id = parent.parent_span_id.clone();
        }
        assert!(
            ancestors.iter().any(|n| n == "etl.batch"),
            "{route} continues the batch's trace: ancestors {ancestors:?}"
        );
        assert!(attribute(server, "http.route").is_some());
    }
    drop(runtime);
}

/// model-serving refuses a request whose images hold more pixels than its budget; the ETL reads
/// the headers and sends a batch in as many requests as the budget takes, so nothing is refused
/// (without the split, every batch would first be refused whole, then sent one by one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_to_fit_model_servings_pixel_budget() {
    let photos = dataset_dir().join("images");
    let mut sizes: Vec<u64> = std::fs::read_dir(&photos)
        .expect("images")
        .filter_map(|e| e.ok())
        .take(64)
        .filter_map(|e| image::image_dimensions(e.path()).ok())
        .map(|(w, h)| u64::from(w) * u64::from(h))
        .collect();
    sizes.sort_unstable();
    // Room for about three of the largest photos per request.
    let budget = 3 * sizes.last().copied().expect("photos");
    let stack = start_stack_with(Some(budget)).await;
    let options = LoadOptions {
        max_request_pixels: budget,
        batch_size: 16,
        ..options(DatasetKind::FashionProductImages, dataset_dir(), Some(32))
    };
    let summary = etl::load(&options, &stack.clients()).await.expect("load");
    assert_eq!(summary.failed, Vec::<(String, String)>::new());
    assert_eq!(summary.loaded + summary.already_present, 32);
    let metrics = reqwest::get(format!("http://{}/metrics", stack.model))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_requests_total{")
                && l.contains("route=\"/encode_image\"")
                && l.contains("status=\"4xx\"")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "model-serving refused requests: {refused:?}"
    );
    let encoded: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_requests_total{")
                && l.contains("route=\"/encode_image\"")
                && l.contains("status=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        encoded >= 32 / 3,
        "{encoded} encode requests for 32 photos in threes"
    );
    stack.stop().await;
}

/// The `etl` binary run against `stack` (one-line errors: no backtrace asked for).
fn run_etl(stack: &Stack, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .args(args)
        .envs(stack.env())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("etl runs")
}

/// `etl reindex` re-embeds a loaded catalogue and reports it; `etl status` names the index's
/// model; a load through a model-serving that serves another model stops before any work,
/// naming both models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_follows_the_run_and_a_load_with_another_model_is_refused() {
    let stack = start_stack().await;
    let clients = stack.clients();
    let opts = options(DatasetKind::FashionProductImages, dataset_dir(), Some(40));
    let summary = etl::load(&opts, &clients).await.expect("load");
    let etl = |args: &[&str]| run_etl(&stack, args);
    let status = etl(&["status"]);
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    let served = clients.model.model_info().await.expect("model info");
    assert!(
        out.contains("made by model") && out.contains(&served.fingerprint),
        "{out}"
    );

    let reindex = etl(&["reindex"]);
    let out = String::from_utf8_lossy(&reindex.stdout).into_owned();
    assert!(
        reindex.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&reindex.stderr)
    );
    assert!(
        out.contains("re-index done") && out.contains(&format!("{} embedded", summary.loaded)),
        "{out}"
    );
    assert_eq!(
        clients.backend.stats().await.expect("stats").total as usize,
        summary.loaded
    );
    let next = etl(&["reindex", "--next"]);
    assert!(!next.status.success());
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("MODEL_SERVING_NEXT_URL"),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );

    // Another model's model-serving: the load stops at once, naming both fingerprints.
    let other = local_stack::start_model_serving(
        local_stack::loopback().await.expect("bind"),
        local_stack::encoder_config(local_stack::trained_model_dir(), local_stack::ort_library()),
        local_stack::http_limits(),
    )
    .await
    .expect("trained model-serving");
    let other_info =
        ModelServingClient::new(format!("http://{}", other.addr), Duration::from_secs(10))
            .expect("client")
            .model_info()
            .await
            .expect("info");
    let load = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .args([
            "load",
            "--dataset",
            "fashion-product-images",
            "--limit",
            "50",
            "--source",
        ])
        .arg(dataset_dir())
        .envs(stack.env())
        .env("MODEL_SERVING_URL", format!("http://{}", other.addr))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("etl runs");
    let err = String::from_utf8_lossy(&load.stderr).into_owned();
    assert!(!load.status.success(), "{err}");
    assert!(
        err.contains(&served.fingerprint) && err.contains(&other_info.fingerprint),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        clients.backend.stats().await.expect("stats").total as usize,
        summary.loaded
    );
    other.stop().await.expect("stop");
    stack.stop().await;
}

/// `etl dump` then `etl restore` into a fresh deployment: the same searches give the same
/// results, the objects come back whole, a second restore finds everything there, and a dump
/// folder is never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_then_restore_into_a_fresh_deployment_gives_the_same_searches() {
    let first = start_stack().await;
    let clients = first.clients();
    let opts = options(DatasetKind::FashionProductImages, dataset_dir(), Some(40));
    let summary = etl::load(&opts, &clients).await.expect("load");
    let params = SearchParams {
        k: Some(20),
        ..SearchParams::default()
    };
    let before = clients
        .backend
        .search_text("shirt", &params)
        .await
        .expect("search");
    let folder = tempfile::tempdir().expect("tempdir");
    let dump_dir = folder.path().join("catalogue");
    let etl = run_etl;
    let dump_arg = dump_dir.to_str().expect("utf-8 path");
    let dumped = etl(&first, &["dump", "--out", dump_arg]);
    let out = String::from_utf8_lossy(&dumped.stdout).into_owned();
    assert!(
        dumped.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    println!("{}", out.trim());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dump_dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["points"], summary.loaded);
    let served = clients.model.model_info().await.expect("model");
    assert_eq!(manifest["fingerprint"], served.fingerprint.as_str());
    let lines = std::fs::read_to_string(dump_dir.join("points.jsonl")).expect("points");
    assert_eq!(lines.lines().count(), summary.loaded);
    let again = etl(&first, &["dump", "--out", dump_arg]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a dump"));
    first.stop().await;

    // A fresh deployment: restored, the same searches, the same photos.
    let second = start_stack().await;
    let restored = etl(&second, &["restore", "--from", dump_arg]);
    let out = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert!(
        restored.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    println!("{}", out.trim());
    let clients = second.clients();
    assert_eq!(
        clients.backend.stats().await.expect("stats").total as usize,
        summary.loaded
    );
    let after = clients
        .backend
        .search_text("shirt", &params)
        .await
        .expect("search");
    let ranked = |r: &backend_api::SearchResponse| {
        r.hits
            .iter()
            .map(|h| (h.item.id, (h.score * 1e4).round() as i64))
            .collect::<Vec<_>>()
    };
    assert_eq!(ranked(&after), ranked(&before));
    let item = &after.hits[0].item;
    let bytes = reqwest::get(&item.url)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(catalog::content_key(&bytes, "jpg"), item.s3_key);
    let twice = etl(&second, &["restore", "--from", dump_arg]);
    let out = String::from_utf8_lossy(&twice.stdout).into_owned();
    assert!(twice.status.success());
    assert!(
        out.contains(&format!("{} already there", summary.loaded)),
        "{out}"
    );
    second.stop().await;
}
