use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use backend_api::BackendClient;
use catalog::store::{ObjectStore, StorageSettings};
use clap::{Args, Parser, Subcommand};
use etl::datasets::DatasetKind;
use etl::run_secrets::RunSecrets;
use etl::{Clients, LoadOptions};
use model_serving_api::ModelServingClient;
use secrecy::{ExposeSecret, SecretString};

/// Secrets are `SecretString`s: the derived `Debug` (logged at start) prints them masked.
#[derive(Debug, Parser)]
#[command(
    name = "etl",
    version,
    about = "Load fashion datasets into the search index"
)]
struct Cli {
    /// On failure, print the whole error chain (and a backtrace when RUST_BACKTRACE=1).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(flatten)]
    services: Services,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Services {
    #[arg(long, env = "BACKEND_URL", default_value = "http://127.0.0.1:8000")]
    backend_url: String,
    /// model-serving, or several replicas separated by commas (round robin with failover).
    #[arg(
        long,
        env = "MODEL_SERVING_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    model_serving_url: String,
    /// The backend's write key (x-api-key). Unset: read from the keys `make run` generated.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    api_key: Option<SecretString>,
    #[arg(long, env = "S3_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    s3_endpoint: String,
    #[arg(long, env = "S3_BUCKET", default_value = "fashion-images")]
    s3_bucket: String,
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
    s3_access_key: Option<SecretString>,
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
    s3_secret_key: Option<SecretString>,
    /// Prometheus Pushgateway to push the job's metrics to (at the end, and every 10 s).
    #[arg(long, env = "PUSHGATEWAY_URL")]
    pushgateway_url: Option<String>,
    /// Where `make run` keeps the keys it generated (`api-key`, `s3-access-key`,
    /// `s3-secret-key`), read for the keys not set above. Default: `var/run` of the checkout
    /// around the working directory.
    #[arg(long, env = "ETL_RUN_DIR")]
    run_dir: Option<PathBuf>,
}

impl Services {
    /// Fills the keys left unset from the files `make run` generated, as the services get them.
    fn fill_from_run_dir(&mut self) -> anyhow::Result<()> {
        let missing =
            self.api_key.is_none() || self.s3_access_key.is_none() || self.s3_secret_key.is_none();
        if !missing {
            return Ok(());
        }
        let secrets = match &self.run_dir {
            Some(dir) => RunSecrets::read(dir)?,
            None => match std::env::current_dir()
                .ok()
                .and_then(|cwd| RunSecrets::discover(&cwd))
            {
                Some(dir) => RunSecrets::read(&dir)?,
                None => return Ok(()),
            },
        };
        let mut read = Vec::new();
        for (slot, value, file) in [
            (&mut self.api_key, secrets.api_key, RunSecrets::API_KEY),
            (
                &mut self.s3_access_key,
                secrets.s3_access_key,
                RunSecrets::S3_ACCESS_KEY,
            ),
            (
                &mut self.s3_secret_key,
                secrets.s3_secret_key,
                RunSecrets::S3_SECRET_KEY,
            ),
        ] {
            if slot.is_none()
                && let Some(value) = value
            {
                *slot = Some(value);
                read.push(secrets.dir.join(file).display().to_string());
            }
        }
        if !read.is_empty() {
            tracing::info!(
                files = read.join(", "),
                "keys read from the files make run generated"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a dataset: encode, store, index. Safe to rerun: what is indexed is skipped.
    Load {
        #[arg(long, value_enum)]
        dataset: DatasetKind,
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Batches in flight at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Pixels in one encode request at most (model-serving's own setting: a batch of large
        /// photos is sent in as many requests as this takes).
        #[arg(long, env = "MODEL_SERVING_MAX_REQUEST_PIXELS", default_value_t = etl::DEFAULT_MAX_REQUEST_PIXELS)]
        max_request_pixels: u64,
        /// Read the dataset and report, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// What is loaded, per dataset, and the model that made the index.
    Status,
    /// Embed every stored image again into a new index beside the live one (which keeps
    /// serving), then switch to it at once. Running it again after a failure resumes.
    Reindex {
        /// With the backend's MODEL_SERVING_NEXT_URL model (a model change: searches move to it
        /// at the switch); without, with the model model-serving serves now.
        #[arg(long)]
        next: bool,
        /// Keep the new index beside the live one instead of switching to it: searches that
        /// name its model (`model=`) try it on live traffic. Run again without it to switch.
        #[arg(long)]
        stage: bool,
        /// Start it and return at once, without following its progress.
        #[arg(long)]
        detach: bool,
    },
    /// Dump the catalogue (points with their vectors, and the objects) into a new folder.
    Dump {
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a dump into this deployment (the same model must be served); resumable.
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
    /// Download a dataset's public files (resumable, checksummed). Only fashion-mnist has them.
    Download {
        #[arg(value_enum)]
        dataset: DatasetKind,
        #[arg(long)]
        dest: PathBuf,
        #[arg(long, default_value = etl::download::FASHION_MNIST_URL)]
        base_url: String,
    },
}

/// A failure is one line on stderr (`etl: what went wrong: why`), unless `--verbose` or
/// `RUST_BACKTRACE` asks for the chain and the backtrace.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let verbose = cli.verbose || etl::errors::backtrace_requested();
    let result = telemetry::init("etl")
        .context("telemetry")
        .and_then(|guard| {
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let result = runtime.block_on(run(cli));
            drop(guard);
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let line = etl::errors::one_line(&error);
            tracing::error!(error = %line, "etl failed");
            if verbose {
                eprintln!("etl: {error:?}");
            } else {
                eprintln!("etl: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` as clap prints them; a bad argument as one line.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("etl: {} (see etl --help)", etl::errors::clap_line(error));
    ExitCode::from(2)
}

/// The bucket the backend uses, for writing (and reading back) objects: no pre-signing.
fn object_store(s: &Services) -> anyhow::Result<ObjectStore> {
    let required = |v: &Option<SecretString>, name: &str, file: &str| {
        v.clone().with_context(|| {
            format!(
                "{name} is required to store images: set it, or start the stack with \
                 `make run`, which writes it to var/run/{file}"
            )
        })
    };
    Ok(ObjectStore::new(&StorageSettings {
        endpoint: s.s3_endpoint.clone(),
        region: s.s3_region.clone(),
        bucket: s.s3_bucket.clone(),
        // The access key is not secret (it is in every pre-signed URL).
        access_key: required(&s.s3_access_key, "S3_ACCESS_KEY", RunSecrets::S3_ACCESS_KEY)?
            .expose_secret()
            .to_owned(),
        secret_key: required(&s.s3_secret_key, "S3_SECRET_KEY", RunSecrets::S3_SECRET_KEY)?,
        presign: None,
    })?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut s = cli.services;
    s.fill_from_run_dir()?;
    tracing::info!(services = ?s, "etl configuration");
    let mut backend = BackendClient::new(s.backend_url.clone(), Duration::from_secs(60))?;
    if let Some(key) = &s.api_key {
        backend = backend.with_api_key(key.expose_secret());
    }
    match cli.command {
        Command::Download {
            dataset,
            dest,
            base_url,
        } => {
            if dataset != DatasetKind::FashionMnist {
                anyhow::bail!(
                    "{} has no public download; get it from its source and use `etl load --source`",
                    dataset.name()
                );
            }
            etl::download::download_files(&base_url, &etl::download::FASHION_MNIST_FILES, &dest)
                .await?;
            println!("fashion-mnist ready in {}", dest.display());
            Ok(())
        }
        Command::Dump { out } => {
            let store = object_store(&s)?;
            let rates =
                etl::backup::dump(&backend, &store, &out, std::io::stderr().is_terminal()).await?;
            println!("{}", rates.line(&format!("dumped into {}", out.display())));
            Ok(())
        }
        Command::Restore { from } => {
            let store = object_store(&s)?;
            let model =
                ModelServingClient::new(s.model_serving_url.clone(), Duration::from_secs(60))?;
            let rates = etl::backup::restore(
                &backend,
                &model,
                &store,
                &from,
                std::io::stderr().is_terminal(),
            )
            .await?;
            println!(
                "{}",
                rates.line(&format!("restored from {}", from.display()))
            );
            Ok(())
        }
        Command::Reindex {
            next,
            stage,
            detach,
        } => {
            let model = if next {
                backend_api::ReindexModel::Next
            } else {
                backend_api::ReindexModel::Current
            };
            etl::reindex::run(&backend, model, stage, detach).await
        }
        Command::Status => {
            let stats = backend.stats().await.context("backend stats")?;
            println!("{} images indexed", stats.total);
            if let Some(model) = &stats.model {
                println!("  made by model {model}");
            }
            for (dataset, count) in &stats.by_dataset {
                println!("  {dataset:<28} {count:>8}");
            }
            Ok(())
        }
        Command::Load {
            dataset,
            source,
            limit,
            batch_size,
            concurrency,
            max_request_pixels,
            dry_run,
        } => {
            let store = object_store(&s)?;
            let clients = Clients {
                backend,
                model: ModelServingClient::new(
                    s.model_serving_url.clone(),
                    Duration::from_secs(300),
                )?,
                store,
            };
            let options = LoadOptions {
                dataset,
                source,
                limit,
                batch_size,
                concurrency,
                dry_run,
                progress: std::io::stderr().is_terminal(),
                max_request_pixels,
            };
            let metrics = telemetry::install_metrics("etl")?;
            etl::metrics::describe();
            // Push periodically while the job runs, and once more at the end whatever happened.
            let pusher = s.pushgateway_url.clone().map(|url| {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        if let Err(e) =
                            etl::metrics::push(&url, dataset.name(), metrics.render()).await
                        {
                            tracing::warn!(error = %e, "metrics push failed");
                        }
                    }
                })
            });
            let result = etl::load(&options, &clients).await;
            if let Some(pusher) = pusher {
                pusher.abort();
            }
            if let Some(url) = &s.pushgateway_url
                && let Err(e) = etl::metrics::push(url, dataset.name(), metrics.render()).await
            {
                tracing::warn!(error = %e, "metrics push failed");
            }
            let summary = result?;
            println!(
                "{}: loaded {}, already present {}, failed {} in {:.1} s ({:.1} items/s)",
                dataset.name(),
                summary.loaded,
                summary.already_present,
                summary.failed.len(),
                summary.elapsed.as_secs_f64(),
                summary.throughput()
            );
            for (key, reason) in summary.failed.iter().take(50) {
                println!("  failed {key}: {reason}");
            }
            if summary.failed.len() > 50 {
                println!("  ... and {} more", summary.failed.len() - 50);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_masks_every_secret() {
        let cli = Cli::try_parse_from([
            "etl",
            "--api-key",
            "api-key-sentinel-0123456789",
            "--s3-access-key",
            "access-key-sentinel",
            "--s3-secret-key",
            "s3-secret-sentinel-0123456789",
            "status",
        ])
        .expect("valid arguments");
        let shown = format!("{cli:?}");
        assert!(shown.contains("backend_url"), "{shown}");
        for secret in [
            "api-key-sentinel-0123456789",
            "access-key-sentinel",
            "s3-secret-sentinel-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        let key = cli
            .services
            .s3_secret_key
            .as_ref()
            .map(|k| k.expose_secret());
        assert_eq!(key, Some("s3-secret-sentinel-0123456789"));
    }
}
