//! `make eval-search`: loads the development split's held-out products with the ETL into a
//! fresh in-process catalogue (model-serving with `MODEL_DIR`, default the trained model; the
//! backend with its embedded engine and S3), asks the backend every question in each mode, and
//! prints the table. `EVAL_PRODUCTS` (default 1000) bounds the products loaded, `EVAL_CAPTIONS`
//! (default 400) the caption and more-like-this questions. `EVAL_CALIBRATE=1` evaluates a copy of
//! the model without its relevance floor and suggests one (see the README, Search quality).

use std::path::PathBuf;

fn number(var: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{var} must be a whole number, not {value:?}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let model =
        std::env::var_os("MODEL_DIR").map_or_else(local_stack::trained_model_dir, PathBuf::from);
    let products = number("EVAL_PRODUCTS", 1000)?;
    let captions = number("EVAL_CAPTIONS", 400)?;
    let dataset = local_stack::dataset_dir();
    let started = std::time::Instant::now();
    let calibrate = std::env::var_os("EVAL_CALIBRATE").is_some_and(|v| v == "1");
    let unfloored = tempfile::tempdir()?;
    let model = if calibrate {
        local_stack::model_without_floors(&model, unfloored.path())?
    } else {
        model
    };
    let catalogue = local_stack::Catalogue::start(model).await?;
    let report = search_eval::run(&catalogue, &dataset, products, captions).await;
    catalogue.stop().await?;
    print!("{}", report?.table());
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
