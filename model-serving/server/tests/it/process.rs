//! The `model-serving` executable itself, as `make run` starts it.

use std::path::Path;

use hostile::process::Service;

use crate::helpers::{model_dir, ort_library};

/// `model-serving serve` on the tiny model, with `env` added, ready.
async fn serve(logs: &Path, env: &[(&str, String)]) -> Service {
    let mut env = env.to_vec();
    env.push(("MODEL_DIR", model_dir().display().to_string()));
    env.push(("ORT_DYLIB_PATH", ort_library().display().to_string()));
    env.push(("RUST_LOG", "warn".to_owned()));
    let mut service = Service::start(
        "model-serving",
        Path::new(env!("CARGO_BIN_EXE_model-serving")),
        &["serve"],
        Some("MODEL_SERVING_ADDR"),
        &env,
        logs,
    )
    .expect("start model-serving");
    service
        .wait_healthy(&reqwest::Client::new())
        .await
        .expect("model-serving ready");
    service
}

/// The value of `var` in the environment the process runs with now (after any `exec`).
fn environment_value(pid: u32, var: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let prefix = format!("{var}=");
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix(&prefix).map(str::to_owned))
}

/// glibc reads its mmap threshold only when a process starts, so `serve` starts itself again
/// once with it fixed (the same PID answers), and keeps a value the operator set.
#[tokio::test]
async fn serve_restarts_itself_once_with_a_fixed_malloc_threshold() {
    const VAR: &str = "MALLOC_MMAP_THRESHOLD_";
    let logs = tempfile::tempdir().expect("tempdir");
    // This test's own environment is the operator's: a value set there is kept.
    let expected = std::env::var(VAR).unwrap_or_else(|_| "131072".to_owned());
    let served = serve(logs.path(), &[]).await;
    assert_eq!(
        environment_value(served.pid(), VAR),
        Some(expected),
        "the process that answers runs with the fixed threshold"
    );
    drop(served);

    let served = serve(logs.path(), &[(VAR, "65536".to_owned())]).await;
    assert_eq!(
        environment_value(served.pid(), VAR).as_deref(),
        Some("65536"),
        "an explicit threshold is kept"
    );
}
