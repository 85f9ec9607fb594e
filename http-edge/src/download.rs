//! One file download that survives interruptions and never leaves a wrong file in place.
//!
//! The file is written to `<name>.part`; after an interruption the next attempt asks for the rest
//! with `Range` (a server that ignores it sends the whole file again, which replaces the part);
//! the complete part is checked against the expected checksum, then renamed into place. So a
//! file at its final path is a verified one, and a present file is not fetched again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sha1::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::retry::{Backoff, Transient, retry};

/// What the downloaded bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    /// Git's blob id: sha1 of `blob <len>\0` and the bytes (what a hub's `ETag` carries for
    /// files stored in git rather than LFS).
    GitBlobSha1(String),
    Md5(String),
    /// Nothing to check against: the sha256 is logged so it can be recorded.
    Unknown,
}

impl Checksum {
    /// A hex digest as an `ETag` carries it (quotes allowed): 64 digits are a sha256, 40 a git
    /// blob sha1; anything else is unknown.
    pub fn from_etag(tag: &str) -> Self {
        let tag = tag.trim().trim_start_matches("W/").trim_matches('"');
        let hex = tag.bytes().all(|b| b.is_ascii_hexdigit());
        match tag.len() {
            64 if hex => Self::Sha256(tag.to_ascii_lowercase()),
            40 if hex => Self::GitBlobSha1(tag.to_ascii_lowercase()),
            _ => Self::Unknown,
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha256(_) | Self::Unknown => "sha256",
            Self::GitBlobSha1(_) => "git-sha1",
            Self::Md5(_) => "md5",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "{file}: checksum mismatch (expected {algorithm} {expected}, got {actual}); the download was removed"
    )]
    Checksum {
        file: String,
        algorithm: &'static str,
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

/// Network failures may pass; a wrong checksum or a local I/O error will not.
impl Transient for DownloadError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Http { .. })
    }
}

pub(crate) fn http_error(url: &str, message: impl ToString) -> DownloadError {
    DownloadError::Http {
        url: url.to_owned(),
        message: message.to_string(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Told how a download advances (a terminal progress bar, say). Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A transfer of `file` starts with `already` bytes kept of `total`, when known.
    fn start(&self, _file: &str, _already: u64, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

struct Silent;
impl Progress for Silent {}

/// Downloads files with one HTTP client, retrying interruptions with backoff.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    backoff: Backoff,
    progress: Arc<dyn Progress>,
}

impl Downloader {
    /// Five attempts, from 200 ms apart.
    pub const BACKOFF: Backoff = Backoff::new(5, Duration::from_millis(200));

    pub fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            backoff: Self::BACKOFF,
            progress: Arc::new(Silent),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_progress(mut self, progress: impl Progress + 'static) -> Self {
        self.progress = Arc::new(progress);
        self
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Downloads `url` into `dest` unless `dest` is already there; see the module docs.
    pub async fn fetch(
        &self,
        url: &str,
        dest: &Path,
        checksum: &Checksum,
    ) -> Result<(), DownloadError> {
        if dest.is_file() {
            tracing::info!(file = %dest.display(), "already present");
            return Ok(());
        }
        let part = part_path(dest);
        retry(&self.backoff, "download", || self.transfer(url, &part)).await?;
        verify(&part, checksum, url).await?;
        tokio::fs::rename(&part, dest)
            .await
            .map_err(io_error(dest))?;
        if let Some(dir) = dest.parent() {
            // The rename is durable once the folder is synced; failing that is not worth an error.
            if let Ok(dir) = tokio::fs::File::open(dir).await {
                let _ = dir.sync_all().await;
            }
        }
        tracing::info!(file = %dest.display(), "downloaded and verified");
        Ok(())
    }

    /// One attempt: asks for what the part file lacks and appends it.
    async fn transfer(&self, url: &str, part: &Path) -> Result<(), DownloadError> {
        let have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut request = self.client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| http_error(url, e))?;
        let append = match response.status().as_u16() {
            206 => true,
            200 => false,
            // The part file already holds everything (the checksum tells if it is right).
            416 if have > 0 => return Ok(()),
            status => return Err(http_error(url, format!("status {status}"))),
        };
        if have > 0 {
            tracing::info!(%url, bytes_kept = have, resumed = append, "continuing a download");
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(io_error(part))?;
        let already = if append { have } else { 0 };
        let name = part
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".part").to_owned())
            .unwrap_or_default();
        self.progress.start(
            &name,
            already,
            response.content_length().map(|n| n + already),
        );
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    self.progress.finish();
                    // Keep what arrived: the next attempt continues from it.
                    let _ = file.flush().await;
                    return Err(http_error(url, error));
                }
            };
            file.write_all(&chunk).await.map_err(io_error(part))?;
            self.progress.advance(chunk.len() as u64);
        }
        self.progress.finish();
        file.flush().await.map_err(io_error(part))?;
        file.sync_all().await.map_err(io_error(part))?;
        Ok(())
    }
}

/// `<dest>.part`, beside the destination (so the final rename stays on one file system).
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Hashes the part on the blocking pool; a mismatch removes it.
async fn verify(part: &Path, expected: &Checksum, url: &str) -> Result<(), DownloadError> {
    let path = part.to_owned();
    let algorithm = expected.clone();
    let actual = tokio::task::spawn_blocking(move || digest(&path, &algorithm))
        .await
        .map_err(|e| http_error(url, e))?
        .map_err(io_error(part))?;
    let want = match expected {
        Checksum::Sha256(want) | Checksum::GitBlobSha1(want) | Checksum::Md5(want) => want,
        Checksum::Unknown => {
            tracing::warn!(%url, sha256 = %actual, "no checksum to verify against; recording the sha256");
            return Ok(());
        }
    };
    if !want.eq_ignore_ascii_case(&actual) {
        let _ = tokio::fs::remove_file(part).await;
        return Err(DownloadError::Checksum {
            file: url.to_owned(),
            algorithm: expected.algorithm(),
            expected: want.clone(),
            actual,
        });
    }
    Ok(())
}

fn digest(path: &Path, checksum: &Checksum) -> std::io::Result<String> {
    use std::io::Read as _;
    fn run<D: sha1::Digest>(mut hasher: D, mut file: std::fs::File) -> std::io::Result<String> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buf[..n]);
        }
    }
    let file = std::fs::File::open(path)?;
    match checksum {
        Checksum::Sha256(_) | Checksum::Unknown => run(sha2::Sha256::new(), file),
        Checksum::Md5(_) => run(md5::Md5::new(), file),
        Checksum::GitBlobSha1(_) => {
            let len = file.metadata()?.len();
            let mut git = sha1::Sha1::new();
            git.update(format!("blob {len}\0").as_bytes());
            run(git, file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_name_their_algorithm() {
        let sha256 = "a".repeat(64);
        assert_eq!(
            Checksum::from_etag(&format!("\"{sha256}\"")),
            Checksum::Sha256(sha256)
        );
        assert_eq!(
            Checksum::from_etag(&"B".repeat(40)),
            Checksum::GitBlobSha1("b".repeat(40))
        );
        assert_eq!(Checksum::from_etag("\"abc-123\""), Checksum::Unknown);
    }

    #[test]
    fn the_part_file_sits_beside_the_destination() {
        assert_eq!(
            part_path(Path::new("/m/onnx/model.onnx")),
            Path::new("/m/onnx/model.onnx.part")
        );
        assert_eq!(part_path(Path::new("/d/x.gz")), Path::new("/d/x.gz.part"));
    }
}
