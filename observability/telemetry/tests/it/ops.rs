//! Readiness probes and the metrics upkeep against a real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use telemetry::ops::Probe;
use telemetry::{Readiness, ops_router};

const SERVICE: &str = "ops-it";

#[tokio::test]
async fn readiness_follows_its_probes() {
    let up = Arc::new(AtomicBool::new(true));
    let hang = Arc::new(AtomicBool::new(false));
    let readiness = Readiness::new();
    let (flag, hanging) = (up.clone(), hang.clone());
    let probes = vec![
        Probe::new("store", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused".to_owned())
                }
            }
        }),
        Probe::new("index", move || {
            let hangs = hanging.load(Ordering::SeqCst);
            async move {
                if hangs {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }),
    ];
    let _task = readiness.watch(
        probes,
        Duration::from_millis(100),
        Duration::from_millis(200),
    );
    let metrics = telemetry::install_metrics(SERVICE).expect("metrics");
    let addr = crate::serve(Router::new().merge(ops_router(metrics, readiness))).await;
    let client = reqwest::Client::new();
    let ready = || async {
        let response = crate::fetch(&client, addr, "/health/ready").await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("json");
        (status, body)
    };
    let wait_for = |status: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (now, body) = ready().await;
            if now == status {
                return body;
            }
            assert!(Instant::now() < deadline, "still {now}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    wait_for(200).await;
    up.store(false, Ordering::SeqCst);
    let body = wait_for(503).await;
    assert_eq!(body["checks"]["store"]["status"], "not_ready");
    assert_eq!(body["checks"]["store"]["reason"], "connection refused");
    assert_eq!(body["checks"]["index"]["status"], "ready");
    up.store(true, Ordering::SeqCst);
    wait_for(200).await;

    // A probe that never answers counts as down.
    hang.store(true, Ordering::SeqCst);
    let body = wait_for(503).await;
    assert_eq!(body["checks"]["index"]["status"], "not_ready");
    hang.store(false, Ordering::SeqCst);
    wait_for(200).await;
    // Liveness does not follow dependencies.
    let live = crate::fetch(&client, addr, "/health/live").await;
    assert_eq!(live.status(), 200);
}

#[test]
fn the_metrics_upkeep_runs_without_scrapes() {
    let before = telemetry::upkeep_runs();
    telemetry::install_metrics(SERVICE).expect("metrics");
    let deadline = Instant::now() + telemetry::UPKEEP_INTERVAL * 3;
    while telemetry::upkeep_runs() <= before {
        assert!(
            Instant::now() < deadline,
            "no upkeep within three intervals"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
