//! Object keys: content-addressed, so identical bytes share one object and a rerun rewrites
//! nothing new.

use sha2::Digest as _;

use crate::{ImageFormat, sniff_image};

/// The object key of `bytes`: `images/<first two hex digits>/<sha256 hex>.<extension>`. The
/// two-digit prefix spreads keys over 256 "folders".
pub fn content_key(bytes: &[u8], extension: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(bytes));
    format!("images/{}/{digest}.{extension}", &digest[..2])
}

/// Whether `key` has the shape [`content_key`] gives: `images/<2 hex>/<64 hex>.<1-5
/// alphanumerics>` (so it names no path outside a folder of objects: no `..`, no `/` at the
/// start).
pub fn is_content_key(key: &str) -> bool {
    key.strip_prefix("images/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(prefix, name)| {
            let (hash, ext) = name.split_once('.').unwrap_or((name, ""));
            prefix.len() == 2
                && prefix.bytes().all(|b| b.is_ascii_hexdigit())
                && hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && hash.starts_with(prefix)
                && (1..=5).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// The key of the card-size thumbnail of the object at `original`
/// (`images/ab/<sha256>.png` → `thumbnails/ab/<sha256>.png.jpg`): derived, so a delete of the
/// original removes it and a check can tell its original.
pub fn thumbnail_key(original: &str) -> String {
    let rest = original.strip_prefix("images/").unwrap_or(original);
    format!("thumbnails/{rest}.jpg")
}

/// The original of a thumbnail key; `None` for any other key.
pub fn original_of_thumbnail(key: &str) -> Option<String> {
    let rest = key.strip_prefix("thumbnails/")?.strip_suffix(".jpg")?;
    Some(format!("images/{rest}"))
}

/// Where and how an image is stored: its key and content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageObject {
    pub key: String,
    pub content_type: &'static str,
}

impl ImageObject {
    /// The object for `bytes` when they are an image ([`sniff_image`]); `None` otherwise.
    pub fn of_image(bytes: &[u8]) -> Option<Self> {
        sniff_image(bytes).map(|format| Self::with_format(bytes, format))
    }

    /// The object for `bytes` of a known format.
    pub fn with_format(bytes: &[u8], format: ImageFormat) -> Self {
        Self {
            key: content_key(bytes, format.extension()),
            content_type: format.content_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addressed() {
        let a = content_key(b"same bytes", "jpg");
        assert_eq!(a, content_key(b"same bytes", "jpg"));
        assert_ne!(a, content_key(b"other bytes", "jpg"));
        assert_ne!(a, content_key(b"same bytes", "png"));
        let digest = hex::encode(sha2::Sha256::digest(b"same bytes"));
        assert_eq!(a, format!("images/{}/{digest}.jpg", &digest[..2]));
        // sha256("") is a published value.
        assert_eq!(
            content_key(b"", "png"),
            "images/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.png"
        );
    }

    #[test]
    fn content_keys_are_recognised_and_paths_are_not() {
        assert!(is_content_key(&content_key(b"photo", "jpg")));
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "images/ab/../../x.jpg",
            "images/zz/0000000000000000000000000000000000000000000000000000000000000000.jpg",
            "images/ab/0000000000000000000000000000000000000000000000000000000000000000.jpg",
            "thumbnails/ab/x.jpg",
            &format!("{}/../x", content_key(b"photo", "jpg")),
        ] {
            assert!(!is_content_key(bad), "{bad}");
        }
    }

    #[test]
    fn thumbnails_are_named_after_their_original() {
        let original = content_key(b"photo", "png");
        let thumb = thumbnail_key(&original);
        assert!(
            thumb.starts_with("thumbnails/") && thumb.ends_with(".png.jpg"),
            "{thumb}"
        );
        assert_eq!(original_of_thumbnail(&thumb), Some(original.clone()));
        assert_eq!(original_of_thumbnail(&original), None);
    }

    #[test]
    fn image_objects_take_their_type_from_the_bytes() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let object = ImageObject::of_image(png).expect("a PNG");
        assert_eq!(object.content_type, "image/png");
        assert_eq!(object.key, content_key(png, "png"));
        assert_eq!(ImageObject::of_image(b"%PDF-1.7"), None);
    }
}
