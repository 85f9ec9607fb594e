//! Dataset readers. Each yields items (bytes + attributes) or the reason an entry was skipped;
//! they run on a blocking thread and feed a bounded channel, so memory stays bounded.

use std::io::Read;
use std::path::{Path, PathBuf};

use backend_api::ImageAttributes;
use tokio::sync::mpsc::Sender;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    /// Kaggle "Fashion Product Images": styles.csv + images/<id>.jpg.
    FashionProductImages,
    /// Fashion-MNIST idx gz files (e.g. /usr/share/datasets/fashion-mnist).
    FashionMnist,
    /// A folder of images, with an optional captions.csv or captions.jsonl.
    Folder,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::FashionProductImages => "fashion-product-images",
            Self::FashionMnist => "fashion-mnist",
            Self::Folder => "folder",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Item {
    /// The item's id within its dataset (product id, split/index, relative path).
    pub key: String,
    pub bytes: Vec<u8>,
    pub attributes: ImageAttributes,
}

#[derive(Debug)]
// Items are the common case and move through a channel once; boxing them buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Extracted {
    Item(Item),
    Skipped { key: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {message}")]
    Unreadable { path: PathBuf, message: String },
}

fn unreadable(path: &Path, message: impl ToString) -> DatasetError {
    DatasetError::Unreadable {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads `source` and sends at most `limit` entries (items and skips) into `tx`.
/// Returns early, without error, when the receiver is gone.
pub fn extract(
    kind: DatasetKind,
    source: &Path,
    limit: Option<usize>,
    tx: &Sender<Extracted>,
) -> Result<(), DatasetError> {
    let mut sent = 0usize;
    let mut send = |entry: Extracted| -> bool {
        if limit.is_some_and(|l| sent >= l) {
            return false;
        }
        sent += 1;
        tx.blocking_send(entry).is_ok()
    };
    match kind {
        DatasetKind::FashionProductImages => fashion_product_images(source, &mut send),
        DatasetKind::FashionMnist => fashion_mnist(source, &mut send),
        DatasetKind::Folder => folder(source, &mut send),
    }
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn fashion_product_images(
    source: &Path,
    send: &mut dyn FnMut(Extracted) -> bool,
) -> Result<(), DatasetError> {
    let csv_path = source.join("styles.csv");
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&csv_path)
        .map_err(|e| unreadable(&csv_path, e))?;
    for (line, record) in reader.records().enumerate() {
        let line = line + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                if !send(Extracted::Skipped {
                    key: format!("styles.csv:{line}"),
                    reason: format!("malformed CSV line: {e}"),
                }) {
                    return Ok(());
                }
                continue;
            }
        };
        // Product names contain unquoted commas in the Kaggle file: the name is the rest.
        if record.len() < 10 || record[0].trim().parse::<u64>().is_err() {
            if !send(Extracted::Skipped {
                key: format!("styles.csv:{line}"),
                reason: format!("malformed CSV line ({} fields)", record.len()),
            }) {
                return Ok(());
            }
            continue;
        }
        let id = record[0].trim().to_owned();
        let name = record.iter().skip(9).collect::<Vec<_>>().join(",");
        let photo = source.join("images").join(format!("{id}.jpg"));
        let entry = match std::fs::read(&photo) {
            Ok(bytes) => Extracted::Item(Item {
                key: id,
                bytes,
                attributes: ImageAttributes {
                    dataset: DatasetKind::FashionProductImages.name().to_owned(),
                    caption: name.trim().to_owned(),
                    gender: opt(&record[1]),
                    category: opt(&record[2]),
                    article_type: opt(&record[4]),
                    colour: opt(&record[5]),
                    season: opt(&record[6]),
                    usage: opt(&record[8]),
                    width: None,
                    height: None,
                },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Extracted::Skipped {
                key: id,
                reason: "no image file".into(),
            },
            Err(e) => Extracted::Skipped {
                key: id,
                reason: format!("unreadable image file: {e}"),
            },
        };
        if !send(entry) {
            return Ok(());
        }
    }
    Ok(())
}

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn read_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|e| unreadable(path, e))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .map_err(|e| unreadable(path, e))?;
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn fashion_mnist(
    source: &Path,
    send: &mut dyn FnMut(Extracted) -> bool,
) -> Result<(), DatasetError> {
    for split in ["train", "t10k"] {
        let images_path = source.join(format!("{split}-images-idx3-ubyte.gz"));
        let labels_path = source.join(format!("{split}-labels-idx1-ubyte.gz"));
        let images = read_gz(&images_path)?;
        let labels = read_gz(&labels_path)?;
        let bad = |p: &Path| unreadable(p, "not an idx file of the expected shape");
        if be_u32(&images, 0) != Some(0x0803) || be_u32(&labels, 0) != Some(0x0801) {
            return Err(bad(&images_path));
        }
        let n = be_u32(&images, 4).ok_or_else(|| bad(&images_path))?;
        let (rows, cols) = (
            be_u32(&images, 8).ok_or_else(|| bad(&images_path))?,
            be_u32(&images, 12).ok_or_else(|| bad(&images_path))?,
        );
        if be_u32(&labels, 4) != Some(n)
            || images.len() < 16 + n * rows * cols
            || labels.len() < 8 + n
        {
            return Err(bad(&labels_path));
        }
        for i in 0..n {
            let pixels = images[16 + i * rows * cols..16 + (i + 1) * rows * cols].to_vec();
            let label = labels[8 + i] as usize;
            let key = format!("{split}-{i}");
            let entry = match (
                FASHION_MNIST_CLASSES.get(label),
                image::GrayImage::from_raw(cols as u32, rows as u32, pixels),
            ) {
                (Some(class), Some(img)) => {
                    let mut png = Vec::new();
                    match img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    {
                        Ok(()) => Extracted::Item(Item {
                            key,
                            bytes: png,
                            attributes: ImageAttributes {
                                dataset: DatasetKind::FashionMnist.name().to_owned(),
                                caption: format!("a photo of a {}", class.to_lowercase()),
                                article_type: Some((*class).to_owned()),
                                width: Some(cols as u32),
                                height: Some(rows as u32),
                                ..Default::default()
                            },
                        }),
                        Err(e) => Extracted::Skipped {
                            key,
                            reason: format!("cannot encode PNG: {e}"),
                        },
                    }
                }
                _ => Extracted::Skipped {
                    key,
                    reason: format!("label {label} out of range"),
                },
            };
            if !send(entry) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default, serde::Deserialize)]
struct CaptionRow {
    file: String,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    gender: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    article_type: Option<String>,
    #[serde(default)]
    colour: Option<String>,
}

fn captions(source: &Path) -> Result<std::collections::HashMap<String, CaptionRow>, DatasetError> {
    let mut out = std::collections::HashMap::new();
    let csv_path = source.join("captions.csv");
    let jsonl_path = source.join("captions.jsonl");
    if csv_path.is_file() {
        let mut reader = csv::Reader::from_path(&csv_path).map_err(|e| unreadable(&csv_path, e))?;
        for row in reader.deserialize::<CaptionRow>() {
            match row {
                Ok(row) => {
                    out.insert(row.file.clone(), row);
                }
                Err(e) => {
                    tracing::warn!(file = %csv_path.display(), error = %e, "caption line skipped")
                }
            }
        }
    } else if jsonl_path.is_file() {
        let text = std::fs::read_to_string(&jsonl_path).map_err(|e| unreadable(&jsonl_path, e))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<CaptionRow>(line) {
                Ok(row) => {
                    out.insert(row.file.clone(), row);
                }
                Err(e) => tracing::warn!(line = n + 1, error = %e, "caption line skipped"),
            }
        }
    }
    Ok(out)
}

fn folder(source: &Path, send: &mut dyn FnMut(Extracted) -> bool) -> Result<(), DatasetError> {
    let captions = captions(source)?;
    let mut files = Vec::new();
    let mut stack = vec![source.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "webp" | "gif"
                )
            }) {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let key = path
            .strip_prefix(source)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let row = captions.get(&key);
        let entry = match std::fs::read(&path) {
            Ok(bytes) => Extracted::Item(Item {
                key: key.clone(),
                bytes,
                attributes: ImageAttributes {
                    dataset: DatasetKind::Folder.name().to_owned(),
                    caption: row.map(|r| r.caption.clone()).unwrap_or_default(),
                    gender: row.and_then(|r| r.gender.clone()),
                    category: row.and_then(|r| r.category.clone()),
                    article_type: row.and_then(|r| r.article_type.clone()),
                    colour: row.and_then(|r| r.colour.clone()),
                    ..Default::default()
                },
            }),
            Err(e) => Extracted::Skipped {
                key,
                reason: format!("unreadable file: {e}"),
            },
        };
        if !send(entry) {
            return Ok(());
        }
    }
    Ok(())
}
