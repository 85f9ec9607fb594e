//! The HTTP contract: both encode endpoints, every image format, bad input, overload, metrics.

use std::io::Cursor;
use std::time::Duration;

use image::{DynamicImage, ImageFormat};
use model_serving::batcher::BatchConfig;
use model_serving_api::{ClientError, ErrorBody};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};

use crate::helpers::*;

fn encode_as(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

/// Inserts an EXIF APP1 segment with the given orientation right after the JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend([0, 1]); // one IFD entry
    tiff.extend([0x01, 0x12, 0, 3, 0, 0, 0, 1]); // Orientation, SHORT, count 1
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]); // value padding, next IFD = 0
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let len = (payload.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(len.to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String, Option<String>) {
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body: ErrorBody = response.json().await.expect("JSON error body");
    assert!(!body.error.message.is_empty());
    (status, body.error.code, retry)
}

#[tokio::test]
async fn encodes_texts_and_every_image_format() {
    let app = spawn_app().await;
    let info = app.client.model_info().await.expect("model info");
    assert_eq!(info.dim, 32);
    assert_eq!(info.context_length, 77);

    let texts = vec![
        "red summer dress".to_owned(),
        "black leather sneakers".to_owned(),
        "red summer dress".to_owned(),
    ];
    let out = app.client.encode_text(&texts).await.expect("encode text");
    assert_eq!((out.dim, out.embeddings.len()), (32, 3));
    assert_eq!(out.model, info.name);
    for e in &out.embeddings {
        assert!((norm(e) - 1.0).abs() < 1e-5, "unit length");
    }
    assert_eq!(out.embeddings[0], out.embeddings[2], "deterministic");
    assert!(max_abs_diff(&out.embeddings[0], &out.embeddings[1]) > 1e-3);

    // The same pixels through JPEG, lossless PNG and lossless WebP give the same embedding.
    let photo = sample_photos(1).remove(0);
    let jpeg = read(&photo);
    let decoded = DynamicImage::ImageRgb8(
        model_serving::preprocess::decode_rgb(&jpeg, &Default::default()).expect("decode"),
    );
    let png = encode_as(&decoded, ImageFormat::Png);
    let webp = encode_as(
        &DynamicImage::ImageRgba8(decoded.to_rgba8()),
        ImageFormat::WebP,
    );
    let gif = encode_as(
        &DynamicImage::ImageRgba8(decoded.to_rgba8()),
        ImageFormat::Gif,
    );
    let grey = encode_as(
        &DynamicImage::ImageLuma8(decoded.to_luma8()),
        ImageFormat::Png,
    );
    let out = app
        .client
        .encode_images(vec![jpeg.clone(), png, webp, gif, grey])
        .await
        .expect("encode images");
    assert_eq!(out.embeddings.len(), 5);
    let e = &out.embeddings;
    assert!(max_abs_diff(&e[0], &e[1]) < 1e-6, "PNG == JPEG pixels");
    assert!(max_abs_diff(&e[0], &e[2]) < 1e-6, "WebP == JPEG pixels");
    assert!(max_abs_diff(&e[0], &e[3]) > 0.0, "GIF is palette-quantised");
    assert!((norm(&e[3]) - 1.0).abs() < 1e-5 && (norm(&e[4]) - 1.0).abs() < 1e-5);

    // JSON with base64 (and a data: URL) is the same as multipart.
    let b64 = app
        .client
        .encode_images_base64(std::slice::from_ref(&jpeg))
        .await
        .expect("base64");
    assert_eq!(b64.embeddings[0], e[0]);

    // EXIF orientation is applied: a JPEG tagged "rotate 90° CW" encodes like the rotated pixels.
    let rotated = encode_as(&decoded.rotate90(), ImageFormat::Png);
    let tagged = with_exif_orientation(&jpeg, 6);
    let out = app
        .client
        .encode_images(vec![tagged, rotated])
        .await
        .expect("exif");
    assert!(max_abs_diff(&out.embeddings[0], &out.embeddings[1]) < 1e-6);
    assert!(
        max_abs_diff(&out.embeddings[0], &e[0]) > 1e-4,
        "orientation changed the input"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let mut config = encoder_config();
    config.max_items_per_request = 4;
    config.max_image_pixels = 60_000;
    let mut limits = limits();
    limits.max_body_bytes = 256 * 1024;
    let app = spawn_app_with(config, limits).await;
    let post_json = |path: &str, body: String| {
        app.http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "/encode_text",
            r#"{"texts": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
        (
            "/encode_text",
            r#"{"texts": ["a","b","c","d","e"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "too_many_items",
        ),
        (
            "/encode_text",
            r#"{"texts": ["red dress", "  "]}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_text",
        ),
        (
            "/encode_text",
            format!(r#"{{"texts": ["{}"]}}"#, "x".repeat(1001)),
            StatusCode::BAD_REQUEST,
            "text_too_long",
        ),
        (
            "/encode_text",
            r#"{"texts": ["unterminated"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "/encode_text",
            r#"{"text": ["wrong field"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "/encode_text",
            format!(r#"{{"texts": ["{}"]}}"#, "y".repeat(300_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "/encode_image",
            r#"{"images": ["%%% not base64"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_base64",
        ),
        (
            "/encode_image",
            r#"{"images": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, got_code, _) = error_of(post_json(path, body.clone()).await.expect("send")).await;
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{path} {}",
            &body[..body.len().min(60)]
        );
    }

    let photo = read(&sample_photos(1)[0]); // 224×224 = 50,176 pixels: under the limit
    let big = encode_as(&DynamicImage::new_rgb8(300, 300), ImageFormat::Png);
    let upload = |files: Vec<Vec<u8>>| {
        let mut form = Form::new();
        for (i, f) in files.into_iter().enumerate() {
            form = form.part("files", Part::bytes(f).file_name(format!("f{i}")));
        }
        app.http
            .post(app.url("/encode_image"))
            .multipart(form)
            .send()
    };
    let image_cases: Vec<(Vec<Vec<u8>>, StatusCode, &str)> = vec![
        (
            vec![b"GIF? no, just text".to_vec()],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
        ),
        (
            vec![photo.clone(), Vec::new()],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
        ),
        (
            vec![photo[..photo.len() / 3].to_vec()],
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (vec![big], StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        (
            vec![photo.clone(); 5],
            StatusCode::BAD_REQUEST,
            "too_many_items",
        ),
        (
            vec![vec![0xFF; 300 * 1024]],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (vec![], StatusCode::BAD_REQUEST, "invalid_multipart"), // a form with no parts
    ];
    for (files, status, code) in image_cases {
        let n = files.len();
        let response = upload(files).await.expect("send");
        assert_ne!(
            response.status(),
            StatusCode::OK,
            "{n} files, {code}: accepted"
        );
        let (got, got_code, _) = error_of(response).await;
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{n} files, {code}"
        );
    }
    let wrong_type = app
        .http
        .post(app.url("/encode_image"))
        .header("content-type", "image/jpeg")
        .body(photo.clone())
        .send()
        .await
        .expect("send");
    let (status, code, _) = error_of(wrong_type).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (status, code, _) =
        error_of(app.http.get(app.url("/nope")).send().await.expect("send")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // The typed client reports refusals as such, not as transient faults.
    let err = app.client.encode_text(&[]).await.expect_err("refused");
    assert!(matches!(err, ClientError::Rejected { status: 400, .. }) && !err.is_transient());

    // After all that, the service still works.
    let ok = upload(vec![photo]).await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
}

/// A 4000 × 4000 JPEG (16 MP, the per-image limit): small to send, a few tens of milliseconds
/// to decode. Images are decoded after their queue room is reserved, one at a time with one
/// decode thread, so a request of several holds its room (and its time) while they decode.
fn large_jpeg() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::new_rgb8(4000, 4000)
        .write_to(&mut out, ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

fn multipart(files: &[Vec<u8>]) -> Form {
    let mut form = Form::new();
    for (i, f) in files.iter().enumerate() {
        form = form.part("files", Part::bytes(f.clone()).file_name(format!("f{i}")));
    }
    form
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let mut config = encoder_config();
    // The image queue admits 4 items; one image is decoded at a time.
    config.batch = BatchConfig {
        max_batch: 64,
        max_wait: Duration::ZERO,
        max_run: Duration::ZERO,
        max_queued: 4,
    };
    config.max_items_per_request = 4;
    config.decode_threads = 1;
    let app = spawn_app_with(config, limits()).await;
    let images = vec![large_jpeg(); 4];
    let waiting = {
        let client = app.client.clone();
        let images = images.clone();
        tokio::spawn(async move { client.encode_images(images).await })
    };
    // The first request holds all 4 places while its 64 MP decode: wait until the queue gauge
    // shows it (room is reserved before anything is decoded), then send one more image.
    let started = std::time::Instant::now();
    while !app
        .metrics()
        .await
        .contains(r#"model_serving_queue_depth_items{modality="image"} 4"#)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first request never held the queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = app
        .http
        .post(app.url("/encode_image"))
        .multipart(multipart(&images[..1]))
        .send()
        .await
        .expect("send");
    let (status, code, retry) = error_of(refused).await;
    assert_eq!(
        (status, code.as_str(), retry.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded", Some("1"))
    );
    let first = waiting
        .await
        .expect("join")
        .expect("queued request completes");
    assert_eq!(first.embeddings.len(), 4);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"model_serving_errors_total{modality="image",kind="overloaded"} 1"#),
        "{metrics}"
    );
}

/// The value of the first sample of `text` (Prometheus text format) that starts with `needle`.
fn sample(text: &str, needle: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{needle} missing in\n{text}"))
}

/// One single-photo request for each photo, all sent at once.
fn one_request_each(
    app: &TestApp,
    photos: &[std::path::PathBuf],
) -> Vec<tokio::task::JoinHandle<Result<model_serving_api::EmbeddingsResponse, ClientError>>> {
    photos
        .iter()
        .map(|p| {
            let client = app.client.clone();
            let bytes = read(p);
            tokio::spawn(async move { client.encode_images(vec![bytes]).await })
        })
        .collect()
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_metrics_declared() {
    let mut config = encoder_config();
    config.batch.max_wait = Duration::from_millis(100);
    let app = spawn_app_with(config, limits()).await;
    let photos = sample_photos(16);
    // A worker that is idle runs a job at once, so only requests that arrive during a run share
    // the next one; with the tiny model a run is shorter than a photo's decode, and on a busy
    // machine a burst can arrive one by one. Bursts of 16 until one shares a run, at most 10.
    let mut bursts = 0u32;
    while bursts < 10 {
        bursts += 1;
        let tasks = one_request_each(&app, &photos);
        for task in tasks {
            assert_eq!(
                task.await.expect("join").expect("encode").embeddings.len(),
                1
            );
        }
        let runs = sample(
            &app.metrics().await,
            r#"model_serving_batch_size_items_count{modality="image"}"#,
        );
        if runs < f64::from(16 * bursts) {
            break;
        }
    }
    app.client
        .encode_text(&["denim jacket".to_owned()])
        .await
        .expect("text");
    app.client
        .encode_text(&[String::new()])
        .await
        .expect_err("an error, to count");

    let text = app.metrics().await;
    for name in model_serving::metrics::ALL {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} not declared"
        );
    }
    let value = |needle: &str| sample(&text, needle);
    let images = f64::from(16 * bursts);
    assert_eq!(
        value(r#"model_serving_items_encoded_total{modality="image"}"#),
        images
    );
    assert_eq!(
        value(r#"model_serving_batch_size_items_sum{modality="image"}"#),
        images
    );
    let runs = value(r#"model_serving_batch_size_items_count{modality="image"}"#);
    assert!(
        runs < images,
        "{bursts} bursts of 16 concurrent images took {runs} runs: no batching"
    );
    assert_eq!(
        value(r#"model_serving_decode_seconds_count{modality="image"}"#),
        images
    );
    assert_eq!(
        value(
            r#"http_requests_total{service="model-serving",method="POST",route="/encode_image",status="2xx"}"#
        ),
        images
    );
    // Fault series exist at 0 before any fault; the empty text above counted as an input error.
    for modality in model_serving::metrics::MODALITIES {
        for kind in model_serving::metrics::FAULT_KINDS {
            assert_eq!(
                value(&format!(
                    "model_serving_errors_total{{modality=\"{modality}\",kind=\"{kind}\"}}"
                )),
                0.0
            );
        }
    }
    assert_eq!(
        value(r#"model_serving_errors_total{modality="text",kind="empty_text"}"#),
        1.0
    );
}

/// Two single-thread vision sessions and a rest session (the production layout on 2 cores):
/// a request that finds the service idle runs on the rest session, requests that queue up run
/// on the pool, and every session gives each photo the same embedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rest_session_takes_lone_requests_and_the_pool_takes_bursts() {
    // The trained model: its runs are long enough (a batch of 64 takes tens of ms) for requests
    // to queue up behind one; the tiny model's are shorter than a photo's decode.
    let mut config = encoder_config();
    config.model_dir = trained_model_dir();
    config.vision_sessions = 2;
    config.rest_session = true;
    config.batch.max_batch = 1;
    let app = spawn_app_with(config, limits()).await;
    let photos = sample_photos(16);
    let mut alone = Vec::new();
    for photo in &photos {
        let out = app
            .client
            .encode_images(vec![read(photo)])
            .await
            .expect("encode");
        alone.push(out.embeddings[0].clone());
    }
    let pool_series = r#"model_serving_inference_seconds_count{modality="image",session="pool"}"#;
    let text = app.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"model_serving_inference_seconds_count{modality="image",session="rest"}"#
        ),
        16.0,
        "one request at a time runs at rest"
    );
    assert!(
        !text.contains(pool_series),
        "the pool ran a request that found the service idle"
    );
    // A request of 64 images (a long run at rest), and once its images are decoded 16
    // single-photo requests, until the pool has run one, at most 10 times: singles that queue up
    // behind the long run go to the pool (batches of 1: a batch that leaves others waiting).
    let decoded = r#"model_serving_decode_seconds_count{modality="image"}"#;
    let mut pool_runs = 0.0;
    for _ in 0..10 {
        let before = sample(&app.metrics().await, decoded);
        let big: Vec<Vec<u8>> = photos.iter().cycle().take(64).map(|p| read(p)).collect();
        let long = {
            let client = app.client.clone();
            tokio::spawn(async move { client.encode_images(big).await })
        };
        let started = std::time::Instant::now();
        while sample(&app.metrics().await, decoded) < before + 64.0
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let singles = one_request_each(&app, &photos);
        let long = long.await.expect("join").expect("encode");
        for (embedding, expected) in long.embeddings.iter().zip(alone.iter().cycle()) {
            let diff = max_abs_diff(embedding, expected);
            assert!(
                diff < 1e-5,
                "a batch of 64 encoded a photo differently: {diff}"
            );
        }
        for (task, expected) in singles.into_iter().zip(&alone) {
            let out = task.await.expect("join").expect("encode");
            let diff = max_abs_diff(&out.embeddings[0], expected);
            assert!(diff < 1e-5, "a session encoded a photo differently: {diff}");
        }
        let text = app.metrics().await;
        if text.contains(pool_series) {
            pool_runs = sample(&text, pool_series);
            break;
        }
    }
    assert!(pool_runs > 0.0, "10 bursts never reached the pool");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut config = encoder_config();
    config.batch.max_wait = Duration::from_millis(800);
    let mut app = spawn_app_with(config, limits()).await;
    let in_flight = {
        let client = app.client.clone();
        tokio::spawn(async move { client.encode_text(&["linen trousers".to_owned()]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown();
    let answer = in_flight.await.expect("join");
    assert_eq!(
        answer
            .expect("in-flight request completes")
            .embeddings
            .len(),
        1
    );
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .expect("server stops")
        .expect("join")
        .expect("clean stop");
    assert!(app.client.encode_text(&["after".to_owned()]).await.is_err());
}

#[tokio::test]
async fn a_slow_encode_is_cut_off_by_the_edge_timeout() {
    // Eight 16 MP images decoded one at a time (hundreds of milliseconds); the edge allows
    // 50 ms for the whole request.
    let mut config = encoder_config();
    config.decode_threads = 1;
    let limits = model_serving::HttpLimits {
        request_timeout: Duration::from_millis(50),
        ..limits()
    };
    let app = spawn_app_with(config, limits).await;
    let response = app
        .http
        .post(app.url("/encode_image"))
        .multipart(multipart(&vec![large_jpeg(); 8]))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "timeout");
}
