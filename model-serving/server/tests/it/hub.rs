//! The real download code against a local stand-in for the Hugging Face hub: `resolve` URLs,
//! redirects to a CDN with `X-Linked-Etag` (sha256), git-sha1 `ETag`s on small files, `Range`
//! requests, and a connection that drops halfway through the largest file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_edge::testing::{cut_halfway, ranged, serve_local};
use model_serving::hub::{self, ModelSource};
use model_serving::model::ModelSpec;
use sha1::Digest as _;

use crate::helpers::*;

#[derive(Clone)]
struct Hub {
    files: Arc<HashMap<String, Vec<u8>>>,
    /// Files whose advertised checksum is wrong.
    corrupt_etag: Arc<Vec<String>>,
    /// Full (non-range) CDN downloads of this file are cut off halfway, once.
    cut_once: Arc<AtomicUsize>,
    range_requests: Arc<AtomicUsize>,
}

/// Large files live in LFS and are served through the CDN redirect.
fn is_lfs(path: &str) -> bool {
    path.ends_with(".onnx")
}

async fn resolve(
    State(hub): State<Hub>,
    UrlPath((owner, repo, _rev, path)): UrlPath<(String, String, String, String)>,
) -> Response {
    let key = format!("{owner}/{repo}/{path}");
    let Some(bytes) = hub.files.get(&key) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let lie = hub.corrupt_etag.contains(&path);
    if is_lfs(&path) {
        let mut sha = hex::encode(sha2::Sha256::digest(bytes));
        if lie {
            sha = "0".repeat(64);
        }
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, format!("/cdn/{owner}/{repo}/{path}"))
            .header("x-linked-etag", format!("\"{sha}\""))
            .header("x-linked-size", bytes.len())
            .body(Body::empty())
            .expect("response");
    }
    let mut git = sha1::Sha1::new();
    git.update(format!("blob {}\0", bytes.len()).as_bytes());
    git.update(bytes);
    let mut etag = hex::encode(git.finalize());
    if lie {
        etag = "f".repeat(40);
    }
    ([(header::ETAG, format!("\"{etag}\""))], bytes.clone()).into_response()
}

async fn cdn(
    State(hub): State<Hub>,
    UrlPath((owner, repo, path)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = hub.files.get(&format!("{owner}/{repo}/{path}")).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(partial) = ranged(&bytes, &headers) {
        hub.range_requests.fetch_add(1, Ordering::SeqCst);
        return partial;
    }
    if is_lfs(&path) && hub.cut_once.fetch_sub(1, Ordering::SeqCst) == 1 {
        // Announce the whole file, send half of it, then the connection drops.
        return cut_halfway(&bytes);
    }
    bytes.into_response()
}

async fn start_hub(corrupt: Vec<String>) -> (SocketAddr, Hub) {
    let model = model_dir();
    let spec = ModelSpec::load(&model).expect("spec");
    let config = serde_json::to_vec(&serde_json::json!({
        "projection_dim": spec.embedding_dim,
        "vision_config": {"image_size": spec.image_size},
        "text_config": {"max_position_embeddings": 77},
    }))
    .expect("json");
    let preprocessor = serde_json::to_vec(&serde_json::json!({
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "image_mean": spec.image_mean,
        "image_std": spec.image_std,
        "resample": 3,
    }))
    .expect("json");
    let vision = read(&model.join("vision_model.onnx"));
    let text = read(&model.join("text_model.onnx"));
    let tokenizer = read(&model.join("tokenizer.json"));
    let mut files = HashMap::new();
    // The Xenova layout: one repository, towers under onnx/.
    let x = "Xenova/clip-vit-base-patch32";
    files.insert(format!("{x}/onnx/vision_model.onnx"), vision.clone());
    files.insert(format!("{x}/onnx/text_model.onnx"), text.clone());
    files.insert(format!("{x}/tokenizer.json"), tokenizer.clone());
    files.insert(format!("{x}/config.json"), config.clone());
    files.insert(
        format!("{x}/preprocessor_config.json"),
        preprocessor.clone(),
    );
    // Qdrant's layout: one repository per tower, each a model.onnx.
    let (qv, qt) = ("Qdrant/clip-ViT-B-32-vision", "Qdrant/clip-ViT-B-32-text");
    files.insert(format!("{qv}/model.onnx"), vision);
    files.insert(format!("{qv}/config.json"), config);
    files.insert(format!("{qv}/preprocessor_config.json"), preprocessor);
    files.insert(format!("{qt}/model.onnx"), text);
    files.insert(format!("{qt}/tokenizer.json"), tokenizer);
    let hub = Hub {
        files: Arc::new(files),
        corrupt_etag: Arc::new(corrupt),
        cut_once: Arc::new(AtomicUsize::new(1)),
        range_requests: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/{owner}/{repo}/resolve/{rev}/{*path}", get(resolve))
        .route("/cdn/{owner}/{repo}/{*path}", get(cdn))
        .with_state(hub.clone());
    let addr = serve_local(app).await.expect("serves");
    (addr, hub)
}

#[tokio::test]
async fn downloads_resumes_verifies_and_the_folder_loads() {
    let (addr, hub) = start_hub(Vec::new()).await;
    let dest = tempfile::tempdir().expect("tempdir");
    let folder = dest.path().join("clip-vit-base-patch32");
    let source = ModelSource::resolve("clip-vit-base-patch32", "main");
    assert_eq!(source.vision.repo, "Xenova/clip-vit-base-patch32");
    hub::download(&format!("http://{addr}"), &source, &folder)
        .await
        .expect("download");

    assert!(
        hub.range_requests.load(Ordering::SeqCst) >= 1,
        "the cut download was resumed with Range"
    );
    for file in ["vision_model.onnx", "text_model.onnx", "tokenizer.json"] {
        assert_eq!(
            read(&folder.join(file)),
            read(&model_dir().join(file)),
            "{file} intact"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&folder)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty());
    let spec = ModelSpec::load(&folder).expect("model.json written");
    let original = ModelSpec::load(&model_dir()).expect("spec");
    assert_eq!(spec.name, "clip-vit-base-patch32");
    assert_eq!(
        (spec.embedding_dim, spec.image_size, spec.context_length),
        (original.embedding_dim, original.image_size, 77)
    );

    // The downloaded folder serves, unchanged.
    let mut config = encoder_config();
    config.model_dir = folder.clone();
    let app = spawn_app_with(config, limits()).await;
    let out = app
        .client
        .encode_text(&["a photo of a dress".to_owned()])
        .await
        .expect("encode");
    assert_eq!(out.model, "clip-vit-base-patch32");

    // A second run finds everything present and changes nothing.
    let before = hub.range_requests.load(Ordering::SeqCst);
    hub::download(&format!("http://{addr}"), &source, &folder)
        .await
        .expect("rerun");
    assert_eq!(hub.range_requests.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn qdrant_split_export_downloads_and_loads() {
    let (addr, _hub) = start_hub(Vec::new()).await;
    let dest = tempfile::tempdir().expect("tempdir");
    let source = ModelSource::resolve("qdrant-clip-vit-b-32", "main");
    hub::download(&format!("http://{addr}"), &source, dest.path())
        .await
        .expect("download");
    let mut config = encoder_config();
    config.model_dir = dest.path().to_owned();
    let app = spawn_app_with(config, limits()).await;
    let out = app
        .client
        .encode_images(vec![read(&sample_photos(1)[0])])
        .await
        .expect("encode");
    assert_eq!(out.model, "clip-vit-b-32");
    assert_eq!(
        out.dim,
        ModelSpec::load(&model_dir()).expect("spec").embedding_dim
    );
}

#[tokio::test]
async fn a_checksum_mismatch_fails_and_keeps_nothing() {
    for corrupt in ["onnx/text_model.onnx", "tokenizer.json"] {
        let (addr, _hub) = start_hub(vec![corrupt.to_owned()]).await;
        let dest = tempfile::tempdir().expect("tempdir");
        let source = ModelSource::resolve("clip-vit-base-patch32", "main");
        let err = hub::download(&format!("http://{addr}"), &source, dest.path())
            .await
            .expect_err("mismatch");
        assert!(err.is_checksum(), "{corrupt}: {err}");
        let local = corrupt.rsplit('/').next().expect("name");
        assert!(!dest.path().join(local).exists());
        assert!(
            !dest.path().join("model.json").exists(),
            "no model.json for an incomplete folder"
        );
    }
}
