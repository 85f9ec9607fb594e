// Search results allocate many small strings (payloads, URLs); mimalloc is faster at that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use backend::config::BackendConfig;
use clap::Parser;

#[derive(Parser)]
#[command(name = "backend", version, about = "The fashion-search API")]
struct Cli {
    #[command(flatten)]
    config: BackendConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init("backend").context("telemetry")?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let result = runtime.block_on(run(cli.config));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "backend stopped");
    }
    result
}

async fn run(config: BackendConfig) -> anyhow::Result<()> {
    tracing::info!(
        addr = %config.addr,
        data_dir = %config.data_dir.display(),
        model_serving = %config.model_serving_url,
        qdrant = config.qdrant_url.as_deref().unwrap_or("embedded"),
        s3 = config.s3_endpoint.as_deref().unwrap_or("embedded"),
        api_key = if config.api_key.is_some() { "set" } else { "unset (writes refused)" },
        search_rate_per_sec = config.edge.search_rate_per_sec,
        write_rate_per_sec = config.edge.write_rate_per_sec,
        max_concurrent_requests = config.edge.max_concurrent_requests,
        trusted_proxies = ?config.edge.trusted_proxies.0,
        "starting backend"
    );
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let backend = backend::build(&config, None).await?;
    tracing::info!(addr = %listener.local_addr()?, "backend listening");
    backend::serve(listener, backend, http_edge::shutdown_signal()).await
}
