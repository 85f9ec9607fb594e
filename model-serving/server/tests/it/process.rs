//! The `model-serving` executable itself, as `make run` starts it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{model_dir, ort_library};

/// A started `model-serving serve`, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `model-serving serve` on the tiny model with `MALLOC_MMAP_THRESHOLD_` set to `threshold`
/// (unset when `None`) and waits until it is ready.
async fn serve(threshold: Option<&str>) -> Served {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_model-serving"));
    command
        .arg("serve")
        .env("MODEL_DIR", model_dir())
        .env("ORT_DYLIB_PATH", ort_library())
        .env("MODEL_SERVING_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(threshold) = threshold {
        command.env("MALLOC_MMAP_THRESHOLD_", threshold);
    }
    let mut served = Served(command.spawn().expect("spawn model-serving"));
    let ready = format!("http://127.0.0.1:{port}/health/ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(answer) = reqwest::get(&ready).await
            && answer.status().is_success()
        {
            return served;
        }
        assert!(
            served.0.try_wait().expect("wait").is_none(),
            "model-serving exited before it was ready"
        );
        assert!(Instant::now() < deadline, "model-serving not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let served = serve(None).await;
    assert_eq!(
        environment_value(served.0.id(), "MALLOC_MMAP_THRESHOLD_").as_deref(),
        Some("131072"),
        "the process that answers runs with the fixed threshold"
    );
    drop(served);

    let served = serve(Some("65536")).await;
    assert_eq!(
        environment_value(served.0.id(), "MALLOC_MMAP_THRESHOLD_").as_deref(),
        Some("65536"),
        "an explicit threshold is kept"
    );
}
