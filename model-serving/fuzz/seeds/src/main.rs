//! Writes the seed corpus for the `preprocess` fuzz target: small valid images of every format
//! model-serving accepts, in the shapes that matter (tiny, square, both extreme aspect ratios at
//! and past the limit, 16-bit, alpha, animated, EXIF-rotated, truncated). The fuzzer mutates
//! these, so they only need to reach each decoder and branch; they stay a few KB each. The
//! hostile corpus of `backend/hostile` (bombs, wrapping widths, damaged files) is added to them.
//!
//! Usage: `model-serving-fuzz-seeds <dir>` (created if missing; existing files are replaced).

use std::error::Error;
use std::path::Path;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, Frame, ImageEncoder, RgbaImage};

/// Seeds above this size are left out: libFuzzer caps generated inputs at the largest seed.
const MAX_SEED_BYTES: usize = 64 * 1024;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Gradients plus an 8×8 checkerboard: edges for the resampler, yet small once compressed.
fn pattern(w: u32, h: u32, channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * channels);
    for y in 0..u64::from(h) {
        for x in 0..u64::from(w) {
            let checker = (x / 8 + y / 8) % 2 * 64;
            for c in 0..channels as u64 {
                let v = x * 255 / u64::from(w) + y * 255 / u64::from(h) + c * 85 + checker;
                out.push((v % 256) as u8);
            }
        }
    }
    out
}

fn png(w: u32, h: u32, color: ExtendedColorType) -> Result<Vec<u8>> {
    let bytes_per_pixel = usize::from(color.bits_per_pixel() / 8);
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(&pattern(w, h, bytes_per_pixel), w, h, color)?;
    Ok(out)
}

fn jpeg(w: u32, h: u32, color: ExtendedColorType) -> Result<Vec<u8>> {
    let channels = usize::from(color.channel_count());
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 85).encode(&pattern(w, h, channels), w, h, color)?;
    Ok(out)
}

fn webp(w: u32, h: u32, color: ExtendedColorType) -> Result<Vec<u8>> {
    let channels = usize::from(color.channel_count());
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out).encode(&pattern(w, h, channels), w, h, color)?;
    Ok(out)
}

fn gif(w: u32, h: u32, frames: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        for i in 0..frames {
            let mut rgba = pattern(w, h, 4);
            rgba.iter_mut()
                .for_each(|v| *v = v.wrapping_add((i * 40) as u8));
            let frame = RgbaImage::from_raw(w, h, rgba).ok_or("frame buffer size")?;
            encoder.encode_frame(Frame::new(frame))?;
        }
    }
    Ok(out)
}

/// A JPEG with an EXIF APP1 segment right after SOI saying `orientation` (1..=8).
fn jpeg_with_orientation(w: u32, h: u32, orientation: u16) -> Result<Vec<u8>> {
    let plain = jpeg(w, h, ExtendedColorType::Rgb8)?;
    // Big-endian TIFF header, one IFD with one entry: tag 0x0112 (Orientation), SHORT, count 1.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let len = u16::try_from(payload.len() + 2)?;
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&plain[2..]);
    Ok(out)
}

fn main() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: model-serving-fuzz-seeds <dir>")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    use ExtendedColorType::{L8, L16, La8, Rgb8, Rgba8, Rgba16};
    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        ("png-l8-1x1".into(), png(1, 1, L8)?),
        ("png-rgb8-224x224".into(), png(224, 224, Rgb8)?),
        ("png-rgba8-120x80".into(), png(120, 80, Rgba8)?),
        ("png-la8-31x17".into(), png(31, 17, La8)?),
        ("png-l16-64x64".into(), png(64, 64, L16)?),
        ("png-rgba16-40x30".into(), png(40, 30, Rgba16)?),
        ("jpeg-rgb-1x1".into(), jpeg(1, 1, Rgb8)?),
        ("jpeg-rgb-256x160".into(), jpeg(256, 160, Rgb8)?),
        ("jpeg-l8-225x223".into(), jpeg(225, 223, L8)?),
        ("webp-lossless-rgb-64x48".into(), webp(64, 48, Rgb8)?),
        ("webp-lossless-rgba-17x250".into(), webp(17, 250, Rgba8)?),
        ("gif-1-frame-50x40".into(), gif(50, 40, 1)?),
        ("gif-3-frames-32x32".into(), gif(32, 32, 3)?),
    ];
    for orientation in [3, 6, 8] {
        seeds.push((
            format!("jpeg-exif-orientation-{orientation}-48x32"),
            jpeg_with_orientation(48, 32, orientation)?,
        ));
    }
    // Aspect ratios at the service's limit (20:1) and past it, both ways, in every format; and
    // widths whose shortest-edge resize overflowed or wrapped before (issue 11).
    for (w, h) in [
        (20, 1),
        (1, 20),
        (21, 1),
        (1, 21),
        (400, 20),
        (4000, 1),
        (1, 4000),
    ] {
        seeds.push((format!("png-rgb8-{w}x{h}"), png(w, h, Rgb8)?));
        seeds.push((format!("jpeg-rgb-{w}x{h}"), jpeg(w, h, Rgb8)?));
        seeds.push((format!("webp-lossless-rgb-{w}x{h}"), webp(w, h, Rgb8)?));
        seeds.push((format!("gif-{w}x{h}"), gif(w, h, 1)?));
    }
    seeds.push(("jpeg-l8-65535x1".into(), jpeg(65_535, 1, L8)?));
    // Damaged files: a JPEG cut before its end marker, one with a trailer, a PNG cut mid-data.
    let whole = jpeg(64, 64, Rgb8)?;
    seeds.push((
        "jpeg-truncated".into(),
        whole[..whole.len() * 2 / 3].to_vec(),
    ));
    let mut trailer = whole.clone();
    trailer.extend_from_slice(b"camera trailer bytes");
    seeds.push(("jpeg-with-trailer".into(), trailer));
    let whole = png(64, 64, Rgb8)?;
    seeds.push(("png-truncated".into(), whole[..whole.len() / 2].to_vec()));

    // The project's hostile corpus (backend/hostile), without the cases that take seconds to
    // make; the largest are left out so libFuzzer's input size limit stays small.
    for case in hostile::images(hostile::Limits::default(), false) {
        if case.bytes.len() <= MAX_SEED_BYTES {
            seeds.push((format!("hostile-{}", case.name), case.bytes));
        }
    }

    let mut total = 0;
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes)?;
        total += bytes.len();
    }
    println!("{} seeds, {total} bytes, in {}", seeds.len(), dir.display());
    Ok(())
}
