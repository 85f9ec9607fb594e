//! `etl download`: fetches a dataset's public files with resume and checksum.
//!
//! Each file is written to `<name>.part`; after an interruption the next attempt asks for the
//! rest with `Range`; the whole file is checked against its published MD5 before it is renamed
//! into place, so a present file is a verified one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use md5::Digest as _;
use tokio::io::AsyncWriteExt;

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

const ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "{file}: checksum mismatch (expected md5 {expected}, got {actual}); the download was removed"
    )]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Downloads each `(name, md5)` from `base_url/name` into `dest`.
pub async fn download_files(
    base_url: &str,
    files: &[(&str, &str)],
    dest: &Path,
) -> Result<(), DownloadError> {
    tokio::fs::create_dir_all(dest).await.map_err(io(dest))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DownloadError::Http {
            url: base_url.to_owned(),
            message: e.to_string(),
        })?;
    for (name, md5) in files {
        let url = format!("{}/{name}", base_url.trim_end_matches('/'));
        let target = dest.join(name);
        if target.is_file() {
            tracing::info!(file = %target.display(), "already present");
            continue;
        }
        let part = dest.join(format!("{name}.part"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fetch(&client, &url, &part).await {
                Ok(()) => break,
                Err(e @ DownloadError::Http { .. }) if attempt < ATTEMPTS => {
                    tracing::warn!(%url, attempt, error = %e, "download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
        let actual = md5_of(&part).await?;
        if actual != *md5 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(DownloadError::Checksum {
                file: (*name).to_owned(),
                expected: (*md5).to_owned(),
                actual,
            });
        }
        tokio::fs::rename(&part, &target)
            .await
            .map_err(io(&target))?;
        tracing::info!(file = %target.display(), "downloaded and verified");
    }
    Ok(())
}

async fn fetch(client: &reqwest::Client, url: &str, part: &Path) -> Result<(), DownloadError> {
    let http = |message: String| DownloadError::Http {
        url: url.to_owned(),
        message,
    };
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| http(e.to_string()))?;
    let append = match response.status().as_u16() {
        206 => true,
        200 => false,
        416 if have > 0 => return Ok(()),
        status => return Err(http(format!("status {status}"))),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(io(part))?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| http(e.to_string()))?;
        file.write_all(&chunk).await.map_err(io(part))?;
    }
    file.sync_all().await.map_err(io(part))?;
    Ok(())
}

async fn md5_of(path: &Path) -> Result<String, DownloadError> {
    let bytes = tokio::fs::read(path).await.map_err(io(path))?;
    Ok(hex_string(&md5::Md5::digest(&bytes)))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
