//! Hostile inputs, generated: the files an attacker (or a broken client) sends to an image
//! endpoint. Each case says what a correct service answers, so tests and `make hostile` share one
//! list. Everything is made here from code; nothing is downloaded or committed.

pub mod process;

use std::io::Cursor;

use image::codecs::gif::{GifEncoder, Repeat};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{
    DynamicImage, ExtendedColorType, Frame, ImageEncoder, ImageFormat, Rgb, RgbImage, Rgba,
    RgbaImage,
};

/// What a correct service answers for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Encoded normally.
    Accepted,
    /// Refused with exactly this client-error status.
    Refused(u16),
}

/// One hostile image.
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

impl Case {
    fn new(name: impl Into<String>, bytes: Vec<u8>, expect: Expect) -> Self {
        Self {
            name: name.into(),
            bytes,
            expect,
        }
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {:?})",
            self.name,
            self.bytes.len(),
            self.expect
        )
    }
}

/// The service's limits the corpus is built against (the defaults of model-serving).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_aspect_ratio: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: 16 * 1024 * 1024,
            max_aspect_ratio: 20,
        }
    }
}

/// The first width whose shortest-edge resize to 224 no longer fits in 32 bits when the height
/// is 1: `224 * w` wraps to 192, below the crop size (the 2.4 KB PNG that took model-serving down).
/// At the default limits it is refused for its pixel count (19 Mpx) before its shape is looked at.
pub const WRAPPING_WIDTH: u32 = 19_173_962;

/// Every image case. `heavy` adds the ones that take seconds to generate (a 16-bit RGBA PNG at
/// the pixel cap).
pub fn images(limits: Limits, heavy: bool) -> Vec<Case> {
    use Expect::{Accepted, Refused};
    let mut cases = vec![
        Case::new(
            "png_1bit_wrapping_width",
            png_gray_strip(WRAPPING_WIDTH, 1),
            Refused(413),
        ),
        Case::new(
            "png_1bit_wrapping_height",
            png_gray_strip(1, WRAPPING_WIDTH),
            Refused(413),
        ),
        Case::new("jpeg_65535x1", jpeg(&stripes(65_535, 1)), Refused(400)),
        Case::new("jpeg_1x65535", jpeg(&stripes(1, 65_535)), Refused(400)),
        Case::new("png_65535x1", png_rgb(&stripes(65_535, 1)), Refused(400)),
        Case::new("gif_65535x1", gif_frames(65_535, 1, 1), Refused(400)),
        Case::new("gif_1x65535", gif_frames(1, 65_535, 1), Refused(400)),
        Case::new("webp_16383x1", webp(&stripes(16_383, 1)), Refused(400)),
        Case::new("webp_1x16383", webp(&stripes(1, 16_383)), Refused(400)),
    ];
    // At the aspect-ratio limit, both ways and in every format: still answered.
    let (long, short) = (20 * limits.max_aspect_ratio, 20);
    for (w, h) in [(long, short), (short, long)] {
        let img = stripes(w, h);
        cases.push(Case::new(
            format!("png_{w}x{h}_at_ratio_limit"),
            png_rgb(&img),
            Accepted,
        ));
        cases.push(Case::new(
            format!("jpeg_{w}x{h}_at_ratio_limit"),
            jpeg(&img),
            Accepted,
        ));
        cases.push(Case::new(
            format!("webp_{w}x{h}_at_ratio_limit"),
            webp(&img),
            Accepted,
        ));
        cases.push(Case::new(
            format!("gif_{w}x{h}_at_ratio_limit"),
            gif_frames(w, h, 1),
            Accepted,
        ));
        // One pixel past the limit.
        let (w2, h2) = if w > h { (w + 1, h) } else { (w, h + 1) };
        cases.push(Case::new(
            format!("png_{w2}x{h2}_past_ratio_limit"),
            png_rgb(&stripes(w2, h2)),
            Refused(400),
        ));
    }
    let side_over = (limits.max_pixels as f64).sqrt() as u32 + 1;
    cases.extend([
        Case::new(
            "png_over_pixel_cap",
            png_gray_strip(side_over, side_over),
            Refused(413),
        ),
        Case::new(
            "jpeg_progressive_5000_scans",
            progressive_jpeg_with_scans(5_000),
            Refused(400),
        ),
        Case::new(
            "jpeg_progressive_normal",
            progressive_jpeg_with_scans(0),
            Accepted,
        ),
        Case::new("gif_3000_frames", gif_frames(64, 64, 3_000), Accepted),
        Case::new(
            "png_truncated",
            truncated(png_rgb(&stripes(300, 300))),
            Refused(400),
        ),
        Case::new(
            "jpeg_truncated",
            truncated(jpeg(&stripes(300, 300))),
            Refused(400),
        ),
        Case::new("empty", Vec::new(), Refused(415)),
        Case::new("not_an_image", b"%PDF-1.7\n%hostile".to_vec(), Refused(415)),
        Case::new("png_zero_width_header", png_zero_width(), Refused(400)),
    ]);
    if heavy {
        let side = (limits.max_pixels as f64).sqrt() as u32;
        cases.push(Case::new(
            format!("png_rgba16_{side}x{side}_at_pixel_cap"),
            png_rgba16(side, side),
            Accepted,
        ));
    }
    cases
}

/// A striped RGB image: cheap to make, not flat (so encoders cannot shortcut it).
pub fn stripes(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 7 * 30) as u8])
    })
}

pub fn png_rgb(img: &RgbImage) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png)
}

pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg)
}

pub fn webp(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let rgba = DynamicImage::ImageRgb8(img.clone()).to_rgba8();
    WebPEncoder::new_lossless(&mut out)
        .encode(
            rgba.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgba8,
        )
        .expect("webp encode");
    out
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

/// An 8-bit greyscale PNG of zeros, written row by row with maximum compression: a few KB
/// however large it claims to be.
pub fn png_gray_strip(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let raw = vec![0u8; w as usize * h as usize];
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::NoFilter)
        .write_image(&raw, w, h, ExtendedColorType::L8)
        .expect("png encode");
    out
}

/// A 16-bit RGBA PNG: 8 bytes a pixel decoded.
pub fn png_rgba16(w: u32, h: u32) -> Vec<u8> {
    // Each row one colour: after the Sub filter a row is zeros, so 128 MB of pixels deflate to
    // a few hundred KB. The decoder still has to produce all of them.
    let mut bytes = Vec::with_capacity(w as usize * h as usize * 8);
    for y in 0..h {
        let pixel = [(y.wrapping_mul(16) & 0xFFFF) as u16, 30_000, 12_345, 65_535];
        let pixel: Vec<u8> = pixel.iter().flat_map(|v| v.to_be_bytes()).collect();
        for _ in 0..w {
            bytes.extend_from_slice(&pixel);
        }
    }
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Sub)
        .write_image(&bytes, w, h, ExtendedColorType::Rgba16)
        .expect("png encode");
    out
}

/// A GIF with `frames` frames of `w`×`h`.
pub fn gif_frames(w: u32, h: u32, frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 30);
        encoder.set_repeat(Repeat::Infinite).expect("gif repeat");
        for i in 0..frames {
            let shade = (i % 200) as u8;
            let frame = RgbaImage::from_fn(w, h, |x, _| Rgba([shade, (x % 256) as u8, 80, 255]));
            encoder.encode_frame(Frame::new(frame)).expect("gif frame");
        }
    }
    out
}

/// A real progressive JPEG (libjpeg's progressive scan script), then its last scan repeated
/// `extra` more times before the end marker: every marker well formed, thousands of scans.
pub fn progressive_jpeg_with_scans(extra: usize) -> Vec<u8> {
    let img = stripes(320, 240);
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_size(320, 240);
    compress.set_progressive_mode();
    let mut started = compress.start_compress(Vec::new()).expect("jpeg start");
    started
        .write_scanlines(img.as_raw())
        .expect("jpeg scanlines");
    let jpeg = started.finish().expect("jpeg finish");
    if extra == 0 {
        return jpeg;
    }
    let last_scan = jpeg
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let end = jpeg.len() - 2; // FF D9
    let mut out = jpeg[..end].to_vec();
    for _ in 0..extra {
        out.extend_from_slice(&jpeg[last_scan..end]);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

fn truncated(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// A PNG whose header claims a width of 0 (invalid per the spec).
fn png_zero_width() -> Vec<u8> {
    let mut bytes = png_rgb(&stripes(4, 4));
    // IHDR data starts at byte 16: width (4 bytes) then height. The CRC is left stale on purpose.
    bytes[16..20].copy_from_slice(&0u32.to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bombs_are_small_and_claim_what_they_should() {
        let strip = png_gray_strip(WRAPPING_WIDTH, 1);
        assert!(strip.len() < 64 * 1024, "{} bytes", strip.len());
        let dims = image::ImageReader::with_format(Cursor::new(&strip), ImageFormat::Png)
            .into_dimensions()
            .expect("dims");
        assert_eq!(dims, (WRAPPING_WIDTH, 1));
        assert_eq!((224u64 * u64::from(WRAPPING_WIDTH)) as u32, 192);
        let scans = progressive_jpeg_with_scans(5_000);
        let count = scans.windows(2).filter(|w| *w == [0xFF, 0xDA]).count();
        assert!(count > 5_000, "{count} scans");
        assert!(image::load_from_memory(&progressive_jpeg_with_scans(0)).is_ok());
        // Small enough to upload under the services' body limits.
        let wide = png_rgba16(4096, 4096);
        assert!(wide.len() < 8 << 20, "{} bytes", wide.len());
    }
}
