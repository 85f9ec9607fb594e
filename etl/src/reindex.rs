//! `etl reindex`: asks the backend to re-index (`POST /v1/admin/reindex`) and follows the run
//! with a progress bar until the new index is live (or the run failed: running the command again
//! resumes it).

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use backend_api::{BackendClient, ReindexModel, ReindexState, ReindexStatus};

/// How often the run's status is asked for.
const POLL: Duration = Duration::from_millis(500);
/// Status calls that may fail in a row (the backend restarting) before the command gives up
/// following; the run itself goes on in the backend.
const MAX_POLL_FAILURES: u32 = 20;

pub async fn run(
    backend: &BackendClient,
    model: ReindexModel,
    stage: bool,
    detach: bool,
) -> anyhow::Result<()> {
    let started = backend
        .start_reindex(model, stage)
        .await
        .context("starting the re-index")?;
    println!(
        "re-index to {} ({}) of {} items{}",
        started.model,
        started.fingerprint,
        started.total,
        started
            .from_fingerprint
            .as_deref()
            .map(|from| format!(", from {from}"))
            .unwrap_or_default()
    );
    if detach {
        println!("started; follow it with GET /v1/admin/reindex");
        return Ok(());
    }
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(started.total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos:>7}/{len:7} items [{elapsed_precise}] eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failures = 0;
    let status = loop {
        tokio::time::sleep(POLL).await;
        let status = match backend.reindex_status().await {
            Ok(status) => {
                failures = 0;
                status
            }
            Err(error) if failures < MAX_POLL_FAILURES => {
                failures += 1;
                tracing::warn!(%error, "re-index status unavailable; asking again");
                continue;
            }
            Err(error) => return Err(error).context("following the re-index"),
        };
        bar.set_length(status.total.max(status.handled));
        bar.set_position(status.handled);
        bar.set_message(format!("{:.0} embedded/s", status.embedded_per_second));
        if status.state != ReindexState::Running {
            break status;
        }
    };
    bar.finish_and_clear();
    report(&status)
}

fn report(status: &ReindexStatus) -> anyhow::Result<()> {
    let line = format!(
        "{} embedded, {} kept, {} dropped, {} removed in {:.1} s ({:.0} embedded/s)",
        status.embedded,
        status.kept,
        status.dropped,
        status.removed,
        status.seconds,
        status.embedded_per_second
    );
    match status.state {
        ReindexState::Done if status.stage => {
            println!(
                "re-index done, the new index is staged beside the live one (search it with model={}): {line}",
                status.model
            );
            Ok(())
        }
        ReindexState::Done => {
            println!("re-index done, the new index is live: {line}");
            Ok(())
        }
        _ => anyhow::bail!(
            "re-index failed after {line}: {}; run `etl reindex` again to resume",
            status.error.as_deref().unwrap_or("no reason given")
        ),
    }
}
