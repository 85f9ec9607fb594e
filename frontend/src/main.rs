use anyhow::Context as _;
use clap::Parser;
use frontend::FrontendConfig;

#[derive(Parser)]
#[command(name = "frontend", version, about = "The shop's search page")]
struct Cli {
    #[command(flatten)]
    config: FrontendConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init(frontend::SERVICE).context("telemetry")?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let result = runtime.block_on(run(cli.config));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "frontend stopped");
    }
    result
}

async fn run(config: FrontendConfig) -> anyhow::Result<()> {
    tracing::info!(
        addr = %config.addr,
        backend = %config.backend_url,
        timeout_ms = config.search_timeout_ms,
        max_upload_bytes = config.max_upload_bytes,
        search_rate_per_sec = config.search_rate_per_sec,
        max_concurrent_requests = config.max_concurrent_requests,
        trusted_proxies = ?config.trusted_proxies.0,
        "starting frontend"
    );
    let app = frontend::router(&config)?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "frontend listening");
    frontend::serve_with(
        listener,
        app,
        config.edge_limits().header_timeout,
        http_edge::shutdown_signal(),
    )
    .await
}
