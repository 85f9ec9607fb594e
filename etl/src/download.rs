//! `etl download`: fetches a dataset's public files with resume and checksum.
//!
//! [`http_edge::download`] writes each file to `<name>.part`, asks for the rest with `Range`
//! after an interruption, and checks the whole file against its published MD5 before renaming it
//! into place, so a present file is a verified one.

use std::path::Path;
use std::time::Duration;

pub use http_edge::download::DownloadError;
use http_edge::download::{Checksum, Downloader};

/// Fashion-MNIST's canonical files and their published MD5 sums.
pub const FASHION_MNIST_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";
pub const FASHION_MNIST_FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
];

/// Downloads each `(name, md5)` from `base_url/name` into `dest`, with the shared resumable
/// downloader.
pub async fn download_files(
    base_url: &str,
    files: &[(&str, &str)],
    dest: &Path,
) -> Result<(), DownloadError> {
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|source| DownloadError::Io {
            path: dest.to_owned(),
            source,
        })?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DownloadError::Http {
            url: base_url.to_owned(),
            message: e.to_string(),
        })?;
    let downloader = Downloader::new(client);
    for (name, md5) in files {
        let url = format!("{}/{name}", base_url.trim_end_matches('/'));
        downloader
            .fetch(&url, &dest.join(name), &Checksum::Md5((*md5).to_owned()))
            .await?;
    }
    Ok(())
}
