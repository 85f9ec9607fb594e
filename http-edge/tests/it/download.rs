//! The downloader against a local file server that honours `Range` and drops the first full
//! transfer of a file halfway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_edge::download::{Checksum, DownloadError, Downloader, part_path};
use http_edge::retry::Backoff;
use http_edge::testing::{cut_halfway, ranged, serve_local};
use sha2::Digest as _;

#[derive(Clone)]
struct Files {
    files: Arc<HashMap<String, Vec<u8>>>,
    cut: Arc<AtomicBool>,
    ranges: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
}

async fn serve_file(
    State(files): State<Files>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    files.gets.fetch_add(1, Ordering::SeqCst);
    let Some(bytes) = files.files.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(partial) = ranged(bytes, &headers) {
        files.ranges.fetch_add(1, Ordering::SeqCst);
        return partial;
    }
    if name == "big.bin" && !files.cut.swap(true, Ordering::SeqCst) {
        return cut_halfway(bytes);
    }
    bytes.clone().into_response()
}

async fn file_server() -> (SocketAddr, Files, Vec<u8>) {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files = Files {
        files: Arc::new(HashMap::from([
            ("big.bin".to_owned(), big.clone()),
            ("small.txt".to_owned(), b"hello".to_vec()),
        ])),
        cut: Arc::new(AtomicBool::new(false)),
        ranges: Arc::new(AtomicUsize::new(0)),
        gets: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/{name}", get(serve_file))
        .with_state(files.clone());
    let addr = serve_local(app).await.expect("serves");
    (addr, files, big)
}

fn downloader() -> Downloader {
    Downloader::new(reqwest::Client::new()).with_backoff(Backoff::new(3, Duration::from_millis(10)))
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_range_and_is_verified() {
    let (addr, files, big) = file_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("big.bin");
    let sha = hex::encode(sha2::Sha256::digest(&big));
    downloader()
        .fetch(
            &format!("http://{addr}/big.bin"),
            &dest,
            &Checksum::Sha256(sha),
        )
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).expect("file"), big);
    assert!(!part_path(&dest).exists(), "the part file was renamed");
    assert_eq!(
        files.ranges.load(Ordering::SeqCst),
        1,
        "resumed once with Range"
    );

    // A present file is not fetched again.
    let gets = files.gets.load(Ordering::SeqCst);
    downloader()
        .fetch(&format!("http://{addr}/big.bin"), &dest, &Checksum::Unknown)
        .await
        .expect("present");
    assert_eq!(files.gets.load(Ordering::SeqCst), gets);
}

#[tokio::test]
async fn every_checksum_kind_is_checked_and_a_mismatch_leaves_nothing() {
    let (addr, _files, _) = file_server().await;
    let url = format!("http://{addr}/small.txt");
    let dir = tempfile::tempdir().expect("tempdir");
    // md5("hello"), sha256("hello"), git's blob id of "hello" (`git hash-object`).
    let good = [
        Checksum::Md5("5d41402abc4b2a76b9719d911017c592".into()),
        Checksum::Sha256("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into()),
        Checksum::GitBlobSha1("b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0".into()),
        Checksum::Unknown,
    ];
    for (i, checksum) in good.iter().enumerate() {
        let dest = dir.path().join(format!("ok-{i}.txt"));
        downloader()
            .fetch(&url, &dest, checksum)
            .await
            .unwrap_or_else(|e| panic!("{checksum:?}: {e}"));
        assert_eq!(std::fs::read(&dest).expect("file"), b"hello");
    }

    let bad = tempfile::tempdir().expect("tempdir");
    let err = downloader()
        .fetch(
            &url,
            &bad.path().join("x.txt"),
            &Checksum::Md5("0".repeat(32)),
        )
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            err,
            DownloadError::Checksum {
                algorithm: "md5",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(bad.path()).expect("dir").count(),
        0,
        "no partial or unverified file kept"
    );

    let err = downloader()
        .fetch(
            &format!("http://{addr}/missing"),
            &bad.path().join("y"),
            &Checksum::Unknown,
        )
        .await
        .expect_err("404");
    assert!(matches!(err, DownloadError::Http { .. }), "{err}");
}
