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
    #[error("{path}: not a valid idx file: {source}")]
    BadIdx { path: PathBuf, source: IdxError },
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

/// Largest image side an idx file may declare. Fashion-MNIST is 28×28; the idx datasets in use
/// stay under a few hundred pixels. Anything larger is a corrupt or hostile header.
pub const MAX_IDX_SIDE: u32 = 4096;
/// Largest decompressed idx payload read into memory (Fashion-MNIST's train images: 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Why an idx file was refused. Checked on the header, before the payload is read.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("file ends inside the {expected}-byte header")]
    TruncatedHeader { expected: usize },
    #[error("magic {found:#010x} is not an unsigned-byte idx file (expected {expected:#010x})")]
    WrongMagic { found: u32, expected: u32 },
    #[error("dimension {index} is {value}, outside 1..={max}")]
    AbsurdDimension { index: usize, value: u32, max: u32 },
    #[error("header dimensions {dims:?} overflow a 64-bit size")]
    Overflow { dims: Vec<u32> },
    #[error("header claims {claimed} bytes of data, over the limit of {limit}")]
    TooLarge { claimed: u64, limit: u64 },
    #[error("truncated: header claims {expected} bytes of data, the file holds {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("header claims {expected} bytes of data, the file holds more")]
    TrailingData { expected: u64 },
    #[error("images and labels disagree on the item count ({images} vs {labels})")]
    CountMismatch { images: u32, labels: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An idx file of unsigned bytes: its dimensions and its payload, checked against each other.
#[derive(Debug)]
pub struct Idx {
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

/// Reads an unsigned-byte idx file with `ndims` dimensions. The header is validated (magic,
/// dimension count, each dimension, checked product, [`MAX_IDX_BYTES`]) before any payload is
/// read, and the payload must be exactly the size the header claims: memory is bounded by the
/// smaller of the claim and the limit, whatever the file says.
pub fn read_idx(mut reader: impl Read, ndims: u8) -> Result<Idx, IdxError> {
    let expected_magic = 0x0800 | u32::from(ndims);
    let header_len = 4 + 4 * usize::from(ndims);
    let mut magic = [0u8; 4];
    read_header(&mut reader, &mut magic, header_len)?;
    let found = u32::from_be_bytes(magic);
    if found != expected_magic {
        return Err(IdxError::WrongMagic {
            found,
            expected: expected_magic,
        });
    }
    let mut dims = Vec::with_capacity(usize::from(ndims));
    for _ in 0..ndims {
        let mut dim = [0u8; 4];
        read_header(&mut reader, &mut dim, header_len)?;
        dims.push(u32::from_be_bytes(dim));
    }
    let claimed = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .ok_or_else(|| IdxError::Overflow { dims: dims.clone() })?;
    // The first dimension is the item count; the others are an item's shape (e.g. rows, cols).
    for (index, &value) in dims.iter().enumerate().skip(1) {
        if !(1..=MAX_IDX_SIDE).contains(&value) {
            return Err(IdxError::AbsurdDimension {
                index,
                value,
                max: MAX_IDX_SIDE,
            });
        }
    }
    if claimed > MAX_IDX_BYTES {
        return Err(IdxError::TooLarge {
            claimed,
            limit: MAX_IDX_BYTES,
        });
    }
    // One byte past the claim tells a longer file from an exact one without reading it all.
    let mut data = Vec::new();
    reader.take(claimed + 1).read_to_end(&mut data)?;
    let found = data.len() as u64;
    if found < claimed {
        return Err(IdxError::Truncated {
            expected: claimed,
            found,
        });
    }
    if found > claimed {
        return Err(IdxError::TrailingData { expected: claimed });
    }
    Ok(Idx { dims, data })
}

fn read_header(reader: &mut impl Read, buf: &mut [u8], header_len: usize) -> Result<(), IdxError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => IdxError::TruncatedHeader {
            expected: header_len,
        },
        _ => IdxError::Io(e),
    })
}

fn read_idx_gz(path: &Path, ndims: u8) -> Result<Idx, DatasetError> {
    let bad_idx = |source| DatasetError::BadIdx {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(path, e))?;
    read_idx(flate2::read::GzDecoder::new(file), ndims).map_err(bad_idx)
}

fn fashion_mnist(
    source: &Path,
    send: &mut dyn FnMut(Extracted) -> bool,
) -> Result<(), DatasetError> {
    for split in ["train", "t10k"] {
        let images_path = source.join(format!("{split}-images-idx3-ubyte.gz"));
        let labels_path = source.join(format!("{split}-labels-idx1-ubyte.gz"));
        let images = read_idx_gz(&images_path, 3)?;
        let labels = read_idx_gz(&labels_path, 1)?;
        // read_idx checked the dimension counts and that each payload matches its header.
        let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
        if labels.dims[0] != n {
            return Err(DatasetError::BadIdx {
                path: labels_path,
                source: IdxError::CountMismatch {
                    images: n,
                    labels: labels.dims[0],
                },
            });
        }
        let item_len = rows as usize * cols as usize;
        for (i, (pixels, &label)) in images
            .data
            .chunks_exact(item_len)
            .zip(&labels.data)
            .enumerate()
        {
            let key = format!("{split}-{i}");
            let entry = match (
                FASHION_MNIST_CLASSES.get(usize::from(label)),
                image::GrayImage::from_raw(cols, rows, pixels.to_vec()),
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
                                width: Some(cols),
                                height: Some(rows),
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

/// How deep the folder reader descends below `--source`. Directory symlinks are never followed,
/// so the real tree cannot loop; the cap bounds a pathological nesting.
pub const MAX_FOLDER_DEPTH: usize = 64;

fn is_image_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp" | "gif"
        )
    })
}

/// A file the folder reader will read: where its key comes from and where its bytes are.
struct FolderFile {
    /// Path under the root, as found (a symlink's own path): the item's key.
    path: PathBuf,
    /// What to read: the file itself, or a symlink's checked target inside the root.
    target: PathBuf,
}

/// Lists the image files under `root` (canonical), never leaving it.
///
/// Directory symlinks are not followed: one pointing inside the root names a directory the walk
/// reaches anyway (or an ancestor: a loop), one pointing outside is refused. File symlinks are
/// read only when their target resolves inside the root. Refusals are reported through `skip`.
fn walk_folder(
    root: &Path,
    skip: &mut dyn FnMut(&Path, String) -> bool,
) -> Result<Option<Vec<FolderFile>>, DatasetError> {
    let mut files = Vec::new();
    let mut stack = vec![(root.to_owned(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == root => return Err(unreadable(&dir, e)),
            Err(e) => {
                if !skip(&dir, format!("unreadable directory: {e}")) {
                    return Ok(None);
                }
                continue;
            }
        };
        for entry in entries {
            let (path, file_type) = match entry.and_then(|e| e.file_type().map(|t| (e.path(), t))) {
                Ok(entry) => entry,
                Err(e) => {
                    if !skip(&dir, format!("unreadable directory entry: {e}")) {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let reason = if file_type.is_dir() {
                if depth < MAX_FOLDER_DEPTH {
                    stack.push((path, depth + 1));
                    continue;
                }
                format!("directory nested deeper than {MAX_FOLDER_DEPTH} levels")
            } else if file_type.is_symlink() {
                match symlink_refusal(root, &path, &mut files) {
                    Some(reason) => reason,
                    None => continue,
                }
            } else {
                // Only regular files: a FIFO named x.jpg would block the read forever.
                if file_type.is_file() && is_image_name(&path) {
                    files.push(FolderFile {
                        target: path.clone(),
                        path,
                    });
                }
                continue;
            };
            tracing::warn!(path = %path.display(), %reason, "folder entry skipped");
            if !skip(&path, reason) {
                return Ok(None);
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Some(files))
}

/// Resolves a symlink met by the walk: queues it when it is an image file inside `root`, and
/// returns why it is refused when it leaves the root or cannot be resolved.
fn symlink_refusal(root: &Path, link: &Path, files: &mut Vec<FolderFile>) -> Option<String> {
    let target = match std::fs::canonicalize(link) {
        Ok(target) => target,
        Err(e) => return is_image_name(link).then(|| format!("broken symlink: {e}")),
    };
    if !target.starts_with(root) {
        return Some("symlink points outside --source".into());
    }
    match std::fs::metadata(&target) {
        // Inside the root: a directory the walk reaches by its real path, or an ancestor.
        Ok(meta) if meta.is_dir() => None,
        Ok(meta) if meta.is_file() && is_image_name(link) => {
            files.push(FolderFile {
                path: link.to_owned(),
                target,
            });
            None
        }
        Ok(_) => None,
        Err(e) => is_image_name(link).then(|| format!("unreadable symlink target: {e}")),
    }
}

fn folder(source: &Path, send: &mut dyn FnMut(Extracted) -> bool) -> Result<(), DatasetError> {
    let root = std::fs::canonicalize(source).map_err(|e| unreadable(source, e))?;
    let captions = captions(&root)?;
    let key_of = |path: &Path| {
        path.strip_prefix(&root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    };
    let mut skip = |path: &Path, reason: String| {
        send(Extracted::Skipped {
            key: key_of(path),
            reason,
        })
    };
    let Some(files) = walk_folder(&root, &mut skip)? else {
        return Ok(());
    };
    for file in files {
        let key = key_of(&file.path);
        let row = captions.get(&key);
        let entry = match std::fs::read(&file.target) {
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::symlink;

    use super::*;

    fn run(kind: DatasetKind, source: &Path) -> Result<Vec<Extracted>, DatasetError> {
        let mut out = Vec::new();
        let mut send = |e: Extracted| {
            out.push(e);
            true
        };
        match kind {
            DatasetKind::Folder => folder(source, &mut send)?,
            DatasetKind::FashionMnist => fashion_mnist(source, &mut send)?,
            DatasetKind::FashionProductImages => fashion_product_images(source, &mut send)?,
        }
        Ok(out)
    }

    /// Items as (key, bytes) and skips as (key, reason).
    type FolderRead = (Vec<(String, Vec<u8>)>, Vec<(String, String)>);

    /// Runs the folder reader on another thread so a loop fails the test instead of hanging it.
    fn run_folder_bounded(source: &Path) -> FolderRead {
        let source = source.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(run(DatasetKind::Folder, &source).map_err(|e| e.to_string()))
        });
        let entries = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the folder reader finished within 20 s")
            .expect("the folder reader succeeded");
        let (mut items, mut skipped) = (Vec::new(), Vec::new());
        for entry in entries {
            match entry {
                Extracted::Item(item) => items.push((item.key, item.bytes)),
                Extracted::Skipped { key, reason } => skipped.push((key, reason)),
            }
        }
        skipped.sort();
        (items, skipped)
    }

    #[test]
    fn folder_stays_inside_the_root_and_survives_symlink_loops() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("nested/deeper")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret.png"), b"outside").expect("write");
        std::fs::write(root.join("a.png"), b"a").expect("write");
        std::fs::write(root.join("notes.txt"), b"not an image").expect("write");
        std::fs::write(root.join("nested/deeper/b.JPG"), b"b").expect("write");
        // Loops: a directory symlink to an ancestor, and one to itself.
        symlink("../..", root.join("nested/deeper/up")).expect("symlink");
        symlink(".", root.join("self")).expect("symlink");
        // Escapes: a file and a directory outside the root, by relative and absolute paths.
        symlink("../outside/secret.png", root.join("escape.png")).expect("symlink");
        symlink(&outside, root.join("escape-dir")).expect("symlink");
        // Inside the root: a file symlink is read from its target.
        symlink("nested/deeper/b.JPG", root.join("alias.png")).expect("symlink");
        symlink("missing.png", root.join("broken.png")).expect("symlink");
        // --source given through a symlink: keys stay relative to the real root.
        let source = tmp.path().join("source-link");
        symlink(&root, &source).expect("symlink");

        let (items, skipped) = run_folder_bounded(&source);

        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.png", "alias.png", "nested/deeper/b.JPG"]);
        assert_eq!(
            items[1].1, b"b",
            "an in-root symlink is read from its target"
        );
        assert!(items.iter().all(|(_, bytes)| bytes != b"outside"));
        let skipped_keys: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(skipped_keys, ["broken.png", "escape-dir", "escape.png"]);
        assert!(skipped[0].1.starts_with("broken symlink"), "{skipped:?}");
        assert_eq!(skipped[1].1, "symlink points outside --source");
        assert_eq!(skipped[2].1, "symlink points outside --source");
    }

    #[test]
    fn folder_nesting_is_capped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut deep = tmp.path().to_owned();
        for _ in 0..=MAX_FOLDER_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::write(deep.join("too-deep.png"), b"x").expect("write");
        std::fs::write(tmp.path().join("d/shallow.png"), b"y").expect("write");

        let (items, skipped) = run_folder_bounded(tmp.path());

        assert_eq!(items, [("d/shallow.png".to_owned(), b"y".to_vec())]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].0.matches('/').count(), MAX_FOLDER_DEPTH);
        assert!(skipped[0].1.contains("nested deeper"), "{skipped:?}");
    }

    #[test]
    fn folder_source_that_does_not_exist_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = run(DatasetKind::Folder, &tmp.path().join("nope")).err();
        assert!(
            matches!(err, Some(DatasetError::Unreadable { .. })),
            "{err:?}"
        );
    }

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn idx_of_the_claimed_shape_is_read() {
        let parsed = read_idx(&idx(0x0803, &[2, 2, 3], &[7; 12])[..], 3).expect("valid");
        assert_eq!(parsed.dims, [2, 2, 3]);
        assert_eq!(parsed.data, [7; 12]);
        let empty = read_idx(&idx(0x0801, &[0], &[])[..], 1).expect("valid, no items");
        assert!(empty.data.is_empty());
    }

    #[test]
    fn idx_headers_are_checked_before_the_payload() {
        let check = |bytes: Vec<u8>, ndims| read_idx(&bytes[..], ndims).err();
        // Wrong magic: a zip file, a big-endian float idx, and labels where images are expected.
        assert!(matches!(
            check(b"PK\x03\x04rest of a zip".to_vec(), 3),
            Some(IdxError::WrongMagic {
                found: 0x504b_0304,
                expected: 0x0803
            })
        ));
        assert!(matches!(
            check(idx(0x0d03, &[1, 1, 1], &[0; 4]), 3),
            Some(IdxError::WrongMagic { .. })
        ));
        assert!(matches!(
            check(idx(0x0801, &[1], &[0]), 3),
            Some(IdxError::WrongMagic { .. })
        ));
        // The header itself cut short.
        assert!(matches!(
            check(idx(0x0803, &[1, 28], &[]), 3),
            Some(IdxError::TruncatedHeader { expected: 16 })
        ));
        // n × rows × cols past u64.
        assert!(matches!(
            check(idx(0x0803, &[u32::MAX; 3], &[0; 64]), 3),
            Some(IdxError::Overflow { .. })
        ));
        // Huge n with a sane shape: refused on the header, nothing read or allocated.
        assert!(matches!(
            check(idx(0x0803, &[u32::MAX, 28, 28], &[0; 64]), 3),
            Some(IdxError::TooLarge { claimed, limit: MAX_IDX_BYTES }) if claimed == u64::from(u32::MAX) * 784
        ));
        assert!(matches!(
            check(idx(0x0801, &[u32::MAX], &[0; 64]), 1),
            Some(IdxError::TooLarge { .. })
        ));
        // Absurd or empty sides.
        assert!(matches!(
            check(idx(0x0803, &[1, 100_000, 1], &[0; 64]), 3),
            Some(IdxError::AbsurdDimension {
                index: 1,
                value: 100_000,
                ..
            })
        ));
        assert!(matches!(
            check(idx(0x0803, &[1, 28, 0], &[]), 3),
            Some(IdxError::AbsurdDimension {
                index: 2,
                value: 0,
                ..
            })
        ));
        // Payload shorter or longer than the header says.
        assert!(matches!(
            check(idx(0x0803, &[3, 28, 28], &[0; 784 * 2]), 3),
            Some(IdxError::Truncated {
                expected: 2352,
                found: 1568
            })
        ));
        assert!(matches!(
            check(idx(0x0801, &[3], &[0; 4]), 1),
            Some(IdxError::TrailingData { expected: 3 })
        ));
    }

    /// A claim just under the limit with a tiny payload: the reader reads what is there and
    /// reports the truncation, without reserving the claimed size up front.
    #[test]
    fn idx_claim_under_the_limit_is_not_preallocated() {
        let n = u32::try_from(MAX_IDX_BYTES / (4096 * 4096)).expect("fits");
        let err = read_idx(&idx(0x0803, &[n, 4096, 4096], &[1; 10])[..], 3).err();
        assert!(
            matches!(
                err,
                Some(IdxError::Truncated {
                    expected: MAX_IDX_BYTES,
                    found: 10
                })
            ),
            "{err:?}"
        );
    }

    fn write_gz(path: &Path, bytes: &[u8]) {
        let file = std::fs::File::create(path).expect("create");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(bytes).expect("write");
        gz.finish().expect("finish");
    }

    fn write_mnist(dir: &Path, split: &str, images: &[u8], labels: &[u8]) {
        write_gz(&dir.join(format!("{split}-images-idx3-ubyte.gz")), images);
        write_gz(&dir.join(format!("{split}-labels-idx1-ubyte.gz")), labels);
    }

    #[test]
    fn fashion_mnist_reads_checked_files_and_refuses_bad_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        // Two 2×3 images, labels 9 and 10 (out of range: skipped, not fatal).
        write_mnist(
            dir,
            "train",
            &idx(
                0x0803,
                &[2, 2, 3],
                &[0, 50, 100, 150, 200, 250, 1, 2, 3, 4, 5, 6],
            ),
            &idx(0x0801, &[2], &[9, 10]),
        );
        write_mnist(
            dir,
            "t10k",
            &idx(0x0803, &[0, 2, 3], &[]),
            &idx(0x0801, &[0], &[]),
        );
        let entries = run(DatasetKind::FashionMnist, dir).expect("valid files");
        assert_eq!(entries.len(), 2);
        let Extracted::Item(item) = &entries[0] else {
            panic!("first entry is an item: {entries:?}");
        };
        assert_eq!(item.key, "train-0");
        assert_eq!(item.attributes.article_type.as_deref(), Some("Ankle boot"));
        let png = image::load_from_memory(&item.bytes)
            .expect("a PNG")
            .to_luma8();
        assert_eq!(png.dimensions(), (3, 2));
        assert_eq!(png.into_raw(), [0, 50, 100, 150, 200, 250]);
        assert!(matches!(&entries[1], Extracted::Skipped { key, .. } if key == "train-1"));

        // Label count disagreeing with the image count.
        write_mnist(
            dir,
            "train",
            &idx(0x0803, &[2, 2, 3], &[0; 12]),
            &idx(0x0801, &[1], &[0]),
        );
        let err = run(DatasetKind::FashionMnist, dir).err();
        assert!(
            matches!(
                &err,
                Some(DatasetError::BadIdx {
                    source: IdxError::CountMismatch {
                        images: 2,
                        labels: 1
                    },
                    ..
                })
            ),
            "{err:?}"
        );

        // A hostile header: refused before the (absent) payload is read.
        write_mnist(
            dir,
            "train",
            &idx(0x0803, &[u32::MAX, 28, 28], &[]),
            &idx(0x0801, &[1], &[0]),
        );
        let err = run(DatasetKind::FashionMnist, dir).err();
        let message = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(message.contains("train-images-idx3-ubyte.gz"), "{message}");
        assert!(message.contains("over the limit"), "{message}");

        // Not gzip at all.
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), b"plain text").expect("write");
        let err = run(DatasetKind::FashionMnist, dir).err();
        assert!(
            matches!(
                &err,
                Some(DatasetError::BadIdx {
                    source: IdxError::Io(_),
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
