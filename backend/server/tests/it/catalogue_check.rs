//! The sampled catalogue check against the real embedded S3 server and index: a point whose
//! object was removed behind the backend's back, an object no point references, pre-signed URLs
//! for a browser-facing name that does not resolve in here (good), and for a path S3 does not
//! serve (broken).

use backend::catalogue_check::{CatalogueCheck, CheckReport, CheckSettings};

use crate::helpers::*;

fn settings() -> CheckSettings {
    CheckSettings {
        sample: 50,
        orphan_min_age: std::time::Duration::ZERO,
        ..CheckSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_missing_and_orphan_objects_and_broken_presigned_urls() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let products = products(10);
    ingest(&backend, ms.addr, &products).await;

    // A healthy catalogue: every point's object is there and its URL answers.
    let mut check = CatalogueCheck::new(settings()).expect("check");
    let healthy = check.run(&backend.engine).await.expect("run");
    assert_eq!(
        healthy,
        CheckReport {
            points_checked: 10,
            objects_checked: 10,
            ..CheckReport::default()
        }
    );

    // One object removed from S3 directly; one stored that no point references.
    let store = backend.engine.store();
    let point = backend
        .client
        .get_image(point_id(&products[3]))
        .await
        .expect("point");
    store.delete(&point.s3_key).await.expect("delete object");
    store
        .put(
            "orphans/left-behind.jpg",
            b"not indexed".to_vec(),
            "image/jpeg",
        )
        .await
        .expect("put orphan");
    let mut check = CatalogueCheck::new(settings()).expect("check");
    let found = check.run(&backend.engine).await.expect("run");
    assert_eq!(found.points_checked, 10);
    assert_eq!(found.missing_objects, 1, "{found:?}");
    assert_eq!(found.presign_failures, 0, "{found:?}");
    assert_eq!(
        found.objects_checked, 10,
        "9 indexed objects and the orphan: {found:?}"
    );
    assert_eq!(found.orphan_objects, 1, "{found:?}");

    let metrics = backend.metrics().await;
    for name in backend::metrics::CATALOGUE {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name}");
    }
    assert!(metrics.contains("catalogue_check_problems{problem=\"missing_object\"} 1"));
    assert!(metrics.contains("catalogue_check_problems{problem=\"orphan_object\"} 1"));
    backend.stop().await;

    // A browser-facing public name that does not resolve in here (as in deploy/compose.yaml):
    // checked through the internal endpoint with the public Host header, the URLs are good.
    let browser_name = backend::config::BackendConfig {
        s3_public_endpoint: Some("http://images.shop.invalid:9000".into()),
        ..config(data.path(), ms.addr)
    };
    let backend = start_backend(&browser_name).await.expect("backend");
    let mut check = CatalogueCheck::new(settings()).expect("check");
    let good = check.run(&backend.engine).await.expect("run");
    assert_eq!(
        (good.missing_objects, good.presign_failures),
        (1, 0),
        "{good:?}"
    );
    backend.stop().await;

    // A public endpoint whose path S3 does not serve (a proxy prefix that is not there): every
    // sampled point whose object exists is a presign failure.
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind S3");
    let wrong = backend::config::BackendConfig {
        s3_public_endpoint: Some(format!(
            "http://{}/no-such-prefix",
            s3.local_addr().expect("addr")
        )),
        ..config(data.path(), ms.addr)
    };
    let backend = start_backend_with(&wrong, s3).await.expect("backend");
    let mut check = CatalogueCheck::new(settings()).expect("check");
    let broken = check.run(&backend.engine).await.expect("run");
    assert_eq!(
        (broken.missing_objects, broken.presign_failures),
        (1, 9),
        "{broken:?}"
    );
    backend.stop().await;
    ms.stop().await.expect("model-serving stops");
}
