//! The search-quality canary against the real parts: the same 200 real products indexed under
//! the project's trained model and under the generated random one. The canary's questions tell
//! them apart (the random model finds a product from its caption about as often as chance, 10 in
//! 200), both find a photo from itself, and the scores reach `/metrics` as `search_quality_*`.

use std::path::PathBuf;

use backend::canary::{Canary, CanaryReport, CanarySettings};

use crate::helpers::*;

/// Indexes the products under `model_dir` and runs the canary twice (the second run asks the
/// same set, from the query cache); returns the second report and the backend's `/metrics`.
async fn canary_under(model_dir: PathBuf, products: &[Product]) -> (CanaryReport, String) {
    let model = start_model_serving_with(free_addr(), model_dir).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(dir.path(), model.addr))
        .await
        .expect("backend");
    ingest(&backend, model.addr, products).await;
    let settings = CanarySettings {
        captions: 40,
        types: 8,
        photos: 4,
        ..CanarySettings::default()
    };
    let mut canary = Canary::new(settings);
    let first = canary
        .run(&backend.engine)
        .await
        .expect("canary runs")
        .expect("questions to ask");
    let second = canary
        .run(&backend.engine)
        .await
        .expect("canary runs")
        .expect("questions to ask");
    assert_eq!(
        first.scores, second.scores,
        "the same set on the same index scored differently"
    );
    println!(
        "canary: first run {:.3} s, second {:.3} s: {:?}",
        first.seconds, second.seconds, second.scores
    );
    let metrics = backend.metrics().await;
    backend.stop().await;
    model.stop().await.expect("model-serving stops");
    (second, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_tells_a_trained_model_from_a_random_one() {
    let products = products(200);
    let (trained, metrics) = canary_under(local_stack::trained_model_dir(), &products).await;
    for name in backend::metrics::QUALITY {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} not exported after a run"
        );
    }
    let recall = trained
        .score("caption_recall_at_10")
        .expect("caption check");
    assert!(
        metrics.contains(&format!(
            "search_quality_score{{check=\"caption_recall_at_10\"}} {recall}"
        )),
        "the gauge is not the run's score {recall}:\n{metrics}"
    );
    let (random, _) = canary_under(local_stack::test_model_dir(), &products).await;

    let score = |r: &CanaryReport, check: &str| r.score(check).expect(check);
    for (check, at_least) in [
        ("caption_recall_at_10", 0.6),
        ("caption_mrr", 0.3),
        ("type_precision_at_10", 0.5),
    ] {
        assert!(
            score(&trained, check) >= at_least,
            "trained model: {check} {} < {at_least}",
            score(&trained, check)
        );
        assert!(
            score(&trained, check) - score(&random, check) >= 0.3,
            "{check}: trained {} against random {}: the canary cannot tell them apart",
            score(&trained, check),
            score(&random, check)
        );
    }
    // A photo embedded again finds itself under any model (the check catches a broken image
    // path, not a weak model).
    for report in [&trained, &random] {
        assert!(score(report, "photo_recall_at_1") >= 0.75, "{report:?}");
    }
}
