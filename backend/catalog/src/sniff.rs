//! The one image sniffer: the type of an image from its first bytes, before anything decodes it.
//! (model-serving decodes and so checks the whole file; this only decides key and content type,
//! and refuses what is plainly not an image.)

/// An image format the catalogue stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    Webp,
}

impl ImageFormat {
    pub const ALL: [Self; 4] = [Self::Jpeg, Self::Png, Self::Gif, Self::Webp];

    /// The object key's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }
}

/// The image type from its magic bytes; `None` when they are not one of [`ImageFormat`]'s.
pub fn sniff_image(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', ..] => Some(ImageFormat::Png),
        [b'G', b'I', b'F', b'8', ..] => Some(ImageFormat::Gif),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some(ImageFormat::Webp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_is_recognised() {
        let cases: [(&[u8], ImageFormat, &str, &str); 5] = [
            (
                b"\xFF\xD8\xFF\xE0\0\x10JFIF",
                ImageFormat::Jpeg,
                "jpg",
                "image/jpeg",
            ),
            (
                b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
                ImageFormat::Png,
                "png",
                "image/png",
            ),
            (b"GIF89a\x01\0\x01\0", ImageFormat::Gif, "gif", "image/gif"),
            (b"GIF87a\x01\0\x01\0", ImageFormat::Gif, "gif", "image/gif"),
            (
                b"RIFF\x24\0\0\0WEBPVP8 ",
                ImageFormat::Webp,
                "webp",
                "image/webp",
            ),
        ];
        for (bytes, format, extension, content_type) in cases {
            assert_eq!(sniff_image(bytes), Some(format), "{bytes:?}");
            assert_eq!(format.extension(), extension);
            assert_eq!(format.content_type(), content_type);
        }
        let seen: std::collections::HashSet<_> = cases.iter().map(|c| c.1).collect();
        assert_eq!(seen.len(), ImageFormat::ALL.len(), "a test case per format");
    }

    #[test]
    fn garbage_is_not_an_image() {
        for bytes in [
            &b""[..],
            b"\xFF\xD8", // cut before the third marker byte
            b"%PDF-1.7",
            b"<svg xmlns=",
            b"BM\x36\0\0\0",           // BMP: not stored
            b"RIFF\x24\0\0\0WAVEfmt ", // a RIFF that is audio
            b"RIFF\0\0\0\0WEB",        // WebP cut short
            b"\0\0\0\x18ftypavif",     // AVIF: not stored
            b"hello, world",
        ] {
            assert_eq!(sniff_image(bytes), None, "{bytes:?}");
        }
    }
}
