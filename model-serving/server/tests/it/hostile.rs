//! Hostile images from the project's own corpus (`hostile` crate): every one is answered with
//! its expected status, the service stays up, and an ordinary request right after succeeds.

use std::time::Duration;

use hostile::{Expect, Limits};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};

use crate::helpers::*;

fn upload(bytes: Vec<u8>, copies: usize) -> Form {
    (0..copies).fold(Form::new(), |form, i| {
        form.part(
            "file",
            Part::bytes(bytes.clone()).file_name(format!("upload-{i}")),
        )
    })
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned()
}

fn big_limits() -> model_serving::HttpLimits {
    model_serving::HttpLimits {
        max_body_bytes: 32 * 1024 * 1024,
        ..limits()
    }
}

#[tokio::test]
async fn every_hostile_image_gets_its_answer_and_the_service_stays_up() {
    let app = spawn_app_with(encoder_config(), big_limits()).await;
    let photo = read(&sample_photos(1)[0]);
    for case in hostile::images(Limits::default(), true) {
        let response = app
            .http
            .post(app.url("/encode_image"))
            .multipart(upload(case.bytes.clone(), 1))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case:?}: no answer: {e}"));
        let status = response.status();
        match case.expect {
            Expect::Accepted => {
                assert_eq!(status, StatusCode::OK, "{case:?}");
                let body: model_serving_api::EmbeddingsResponse =
                    response.json().await.expect("embeddings");
                assert!((norm(&body.embeddings[0]) - 1.0).abs() < 1e-4, "{case:?}");
            }
            Expect::Refused(expected) => {
                assert_eq!(status.as_u16(), expected, "{case:?}");
                let code = error_code(response).await;
                assert!(!code.is_empty(), "{case:?}");
            }
        }
        // Still serving: an ordinary photo encodes after every case.
        let ok = app
            .client
            .encode_images(vec![photo.clone()])
            .await
            .unwrap_or_else(|e| panic!("after {case:?}: {e}"));
        assert_eq!(ok.embeddings.len(), 1);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"kind="image_aspect_ratio""#),
        "aspect-ratio refusals are counted"
    );
}

#[tokio::test]
async fn a_request_over_its_pixel_budget_is_refused_before_decoding() {
    let mut config = encoder_config();
    config.max_request_pixels = 3 * 1_000_000;
    let app = spawn_app_with(config, big_limits()).await;
    let image = hostile::png_rgb(&hostile::stripes(1000, 1000));
    // Three at the budget pass; four are refused as a whole.
    let ok = app
        .client
        .encode_images(vec![image.clone(); 3])
        .await
        .expect("at budget");
    assert_eq!(ok.embeddings.len(), 3);
    let response = app
        .http
        .post(app.url("/encode_image"))
        .multipart(upload(image, 4))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "image_too_large");
}

#[tokio::test]
async fn parallel_bombs_at_the_pixel_cap_are_all_answered() {
    let app = spawn_app_with(encoder_config(), big_limits()).await;
    let side = (hostile::Limits::default().max_pixels as f64).sqrt() as u32;
    let bomb = hostile::png_rgba16(side, side);
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let (http, url, bomb) = (app.http.clone(), app.url("/encode_image"), bomb.clone());
            tokio::spawn(async move {
                http.post(url)
                    .multipart(upload(bomb, 1))
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    for request in requests {
        let status = request.await.expect("join").expect("answer");
        eprintln!("parallel bomb answered {status}");
        // Each is encoded, or shed as overload with Retry-After; never a fault or a lost answer.
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    let photo = read(&sample_photos(1)[0]);
    assert!(app.client.encode_images(vec![photo]).await.is_ok());
}

#[tokio::test]
async fn thousands_of_multipart_parts_are_refused() {
    let app = spawn_app().await;
    // Text parts (skipped as non-images) still count.
    let form = (0..5_000).fold(Form::new(), |form, i| {
        let part = Part::text("x").mime_str("text/plain").expect("mime");
        form.part(format!("f{i}"), part)
    });
    let response = app
        .http
        .post(app.url("/encode_image"))
        .multipart(form)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "too_many_parts");
}
