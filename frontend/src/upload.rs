//! The photo upload form: its image part (bounded by the upload limit) and its plain fields.

use std::collections::HashMap;

use axum::extract::Multipart;
use axum::http::StatusCode;

use crate::notices::problem;
use crate::views::Notice;

/// Image formats the model can read, by their first bytes (the catalogue's one sniffer).
pub(crate) fn looks_like_image(bytes: &[u8]) -> bool {
    catalog::sniff_image(bytes).is_some()
}

/// What an upload form carried.
pub(crate) struct Upload {
    pub(crate) image: Vec<u8>,
    pub(crate) fields: HashMap<String, String>,
}

pub(crate) async fn read_upload(
    mut multipart: Multipart,
    limit: usize,
) -> Result<Upload, (StatusCode, Notice)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            problem(
                "That photo is too large",
                format!(
                    "Photos up to {} MB work; please try a smaller one.",
                    limit / (1024 * 1024)
                ),
            ),
        )
    };
    let unreadable = |status: StatusCode| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            (
                StatusCode::BAD_REQUEST,
                problem(
                    "We could not read that upload",
                    "Please choose a photo and try again.",
                ),
            )
        }
    };
    let mut image = None;
    let mut fields = HashMap::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => return Err(unreadable(error.status())),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" {
            let mut bytes = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if bytes.len() + chunk.len() > limit {
                            return Err(too_large());
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(error) => return Err(unreadable(error.status())),
                }
            }
            image = Some(bytes);
        } else {
            let value = field.text().await.map_err(|e| unreadable(e.status()))?;
            let value = value.trim();
            if !value.is_empty() && value.len() <= 200 {
                fields.insert(name, value.to_owned());
            }
        }
    }
    match image {
        Some(image) if !image.is_empty() => Ok(Upload { image, fields }),
        _ => Err((
            StatusCode::BAD_REQUEST,
            problem(
                "Please choose a photo",
                "Pick a JPEG, PNG, WebP or GIF photo, then press “Find similar”.",
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sniffing() {
        assert!(looks_like_image(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(looks_like_image(b"\x89PNG\r\n\x1a\n...."));
        assert!(looks_like_image(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(!looks_like_image(b"%PDF-1.7"));
        assert!(!looks_like_image(b""));
    }
}
