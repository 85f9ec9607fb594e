// Per-image tensors (600 KB at 224 px) are allocated and freed at a high rate; mimalloc reuses
// the pages instead of faulting fresh ones in for each.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use model_serving::config::ServeConfig;
use model_serving::{ClipEncoder, hub};

#[derive(Parser)]
#[command(
    name = "model-serving",
    version,
    about = "CLIP text and image encoders over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the encoders (the default when run by `make run`).
    Serve(ServeConfig),
    /// Download a real CLIP ONNX export into a model folder (resumable, checksummed).
    Download {
        /// A known name (clip-vit-base-patch32) or a Hugging Face repository (owner/name).
        model: String,
        #[arg(long)]
        dest: PathBuf,
        /// Hub base URL.
        #[arg(long, env = "HF_ENDPOINT", default_value = hub::DEFAULT_ENDPOINT)]
        endpoint: String,
        #[arg(long, default_value = "main")]
        revision: String,
    },
}

/// glibc's malloc, which ONNX Runtime allocates from, raises its mmap threshold each time it
/// frees a big mapped block, so the protobuf buffers a model load frees afterwards stay in its
/// heap: 140 MB of resident memory with one vision session, 410 MB with three (ViT-B/32
/// shapes). glibc reads a fixed threshold from the environment only when the process starts, so
/// the process sets it and starts itself again, once (same PID, arguments and descriptors). An
/// explicit `MALLOC_MMAP_THRESHOLD_` is kept. Only `serve` loads models, so only it restarts.
/// Returns why it could not, to be logged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_malloc_threshold() -> Option<String> {
    use std::os::unix::process::CommandExt as _;
    const VAR: &str = "MALLOC_MMAP_THRESHOLD_";
    if std::env::var_os(VAR).is_some() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(format!("cannot find the executable: {e}")),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // `exec` returns only if it failed.
    let error = command.args(args).env(VAR, "131072").exec();
    Some(error.to_string())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_malloc_threshold() -> Option<String> {
    None
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let malloc_error = match cli.command {
        Command::Serve(_) => fixed_malloc_threshold(),
        Command::Download { .. } => None,
    };
    // Telemetry is installed before the runtime starts and flushed after it stops.
    let _telemetry = telemetry::init("model-serving").context("telemetry")?;
    if let Some(error) = malloc_error {
        tracing::warn!(%error, "cannot restart with a fixed malloc mmap threshold; freed model-load buffers stay resident");
    }
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(config) => serve(config).await,
            Command::Download {
                model,
                dest,
                endpoint,
                revision,
            } => {
                let source = hub::ModelSource::resolve(&model, &revision);
                hub::download(&endpoint, &source, &dest).await?;
                println!("model ready in {}", dest.display());
                Ok(())
            }
        }
    });
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "model-serving stopped");
    }
    result
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    tracing::info!(
        model_dir = %config.model_dir.display(),
        ort = %config.ort_dylib_path.display(),
        addr = %config.addr,
        max_batch = config.max_batch,
        max_wait_ms = config.max_wait_ms,
        max_run_ms = config.max_run_ms,
        queue_items = config.queue_items,
        max_items = config.max_items,
        max_body_bytes = config.max_body_bytes,
        threads = config.threads,
        "starting model-serving"
    );
    let encoder_config = config.encoder();
    let encoder = tokio::task::spawn_blocking(move || ClipEncoder::load(encoder_config))
        .await
        .context("model loading task")?
        .context("cannot load the model")?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "model-serving listening");
    model_serving::serve(
        listener,
        Arc::new(encoder),
        config.limits(),
        http_edge::shutdown_signal(),
    )
    .await?;
    tracing::info!("model-serving stopped");
    Ok(())
}
