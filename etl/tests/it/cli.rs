//! The command line as a newcomer meets it: a failure is one line on stderr, and after
//! `make run` the keys come from the files it generated.

use std::path::Path;
use std::process::{Command, Output};

use super::*;

/// The etl binary in `dir`, with no key, service address or backtrace request inherited.
fn etl_in(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etl"));
    cmd.current_dir(dir)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for var in [
        "API_KEY",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "ETL_RUN_DIR",
        "BACKEND_URL",
        "MODEL_SERVING_URL",
        "S3_ENDPOINT",
        "PUSHGATEWAY_URL",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn stderr_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr.starts_with("etl: "), "{stderr:?}");
    stderr.trim_end().to_owned()
}

#[test]
fn a_bad_argument_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = etl_in(dir.path())
        .args(["load", "--dataset", "no-such-dataset", "--source", "."])
        .output()
        .expect("etl");
    assert_eq!(out.status.code(), Some(2));
    let line = stderr_line(&out);
    assert!(line.contains("'no-such-dataset'"), "{line}");
    assert!(line.ends_with("(see etl --help)"), "{line}");
}

#[test]
fn an_unreachable_backend_is_one_line_unless_verbose() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let status = || {
        let mut cmd = etl_in(dir.path());
        cmd.args(["--backend-url", "http://127.0.0.1:1", "status"]);
        cmd
    };
    let out = status().output().expect("etl");
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(line.contains("backend stats"), "{line}");
    assert!(!line.contains("stack backtrace"), "{line}");

    let out = status().arg("--verbose").output().expect("etl");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Caused by"),
        "the chain when asked: {stderr}"
    );
}

#[test]
fn missing_keys_are_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = etl_in(dir.path())
        .args(["load", "--dataset", "folder", "--source", "."])
        .output()
        .expect("etl");
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(line.contains("S3_ACCESS_KEY is required"), "{line}");
    assert!(line.contains("make run"), "{line}");
}

/// `make run` writes one file per key under var/run of the checkout; `etl load` run anywhere in
/// that checkout, with nothing exported, reads them and says which it read.
#[tokio::test]
async fn after_make_run_the_generated_keys_are_read() {
    let stack = start_stack().await;
    let checkout = tempfile::tempdir().expect("tempdir");
    let run = checkout.path().join("var/run");
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::create_dir_all(checkout.path().join("etl")).expect("mkdir");
    std::fs::write(checkout.path().join("Cargo.toml"), "[workspace]\n").expect("write");
    for (file, key) in [
        ("api-key", API_KEY),
        ("s3-access-key", S3_KEY),
        ("s3-secret-key", S3_SECRET),
    ] {
        std::fs::write(run.join(file), format!("{key}\n")).expect("write");
    }
    let mut cmd = etl_in(&checkout.path().join("etl"));
    cmd.arg("--backend-url")
        .arg(format!("http://{}", stack.backend))
        .arg("--model-serving-url")
        .arg(format!("http://{}", stack.model))
        .arg("--s3-endpoint")
        .arg(format!("http://{}", stack.s3))
        .args([
            "load",
            "--dataset",
            "fashion-product-images",
            "--limit",
            "4",
        ])
        .arg("--source")
        .arg(dataset_dir());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("etl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("keys read from the files make run generated"))
        .collect();
    assert_eq!(said.len(), 1, "one log line: {stdout}");
    for file in ["api-key", "s3-access-key", "s3-secret-key"] {
        let path = run.join(file);
        assert!(said[0].contains(&*path.to_string_lossy()), "{}", said[0]);
    }
    assert!(!stdout.contains(S3_SECRET), "the secret is never logged");
    let stats = stack.clients().backend.stats().await.expect("stats");
    assert_eq!(stats.total, 4);
    stack.stop().await;
}
