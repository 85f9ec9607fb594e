//! Image decoding and CLIP's reference preprocessing.
//!
//! The reference is OpenAI CLIP's `torchvision` transform on a PIL image: resize the shortest edge
//! to `image_size` with PIL's bicubic filter, center-crop (`round((h - size) / 2)`, Python rounding),
//! scale to [0, 1], normalise with the model's mean and std. The resampler below reproduces PIL's
//! `ImagingResample` (separable convolution, 22-bit fixed-point coefficients, 8-bit intermediate), so
//! the pixels match PIL's exactly rather than approximately.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Why an image was refused. Each variant is a client error.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("not an image in a supported format (JPEG, PNG, WebP, GIF)")]
    UnsupportedFormat,
    #[error("image has {pixels} pixels, over the limit of {limit}")]
    TooManyPixels { pixels: u64, limit: u64 },
    #[error("image has a zero dimension")]
    ZeroSize,
    #[error("cannot decode image: {0}")]
    Corrupt(String),
}

/// How images are turned into model input.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub image_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub max_pixels: u64,
}

impl Preprocessor {
    /// Number of f32 values one image occupies in the `pixel_values` tensor.
    pub fn tensor_len(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }

    /// Decodes `bytes` and appends the normalised CHW tensor to `out`.
    pub fn preprocess(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ImageError> {
        let rgb = decode_rgb(bytes, self.max_pixels)?;
        self.transform(&rgb, out);
        Ok(())
    }

    /// The CLIP transform on decoded RGB pixels.
    pub fn transform(&self, rgb: &RgbImage, out: &mut Vec<f32>) {
        let size = self.image_size;
        let (w, h) = rgb.dimensions();
        let (rw, rh) = shortest_edge_size(w, h, size);
        // Already at the target size (common for catalogue thumbnails): no copy.
        let resized = if (rw, rh) == (w, h) {
            std::borrow::Cow::Borrowed(rgb)
        } else {
            std::borrow::Cow::Owned(resize_bicubic(rgb, rw, rh))
        };
        let left = python_round_half((rw - size) as f64 / 2.0);
        let top = python_round_half((rh - size) as f64 / 2.0);
        normalise_chw(&resized, left, top, size, self.mean, self.std, out);
    }
}

/// Decodes JPEG, PNG, WebP or GIF (first frame), applies the EXIF orientation and converts to RGB.
/// The pixel limit is checked on the header, before any pixel buffer is allocated.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnsupportedFormat)?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(ImageError::UnsupportedFormat);
    }
    // The JPEG decoder fills a truncated scan with grey instead of failing; refuse it as PIL does.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::Corrupt(
            "truncated JPEG (no end-of-image marker after the last scan)".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // The decoder's own allocation cap: 4 bytes a pixel (RGBA) plus headroom.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        return Err(ImageError::ZeroSize);
    }
    if pixels > max_pixels {
        return Err(ImageError::TooManyPixels {
            pixels,
            limit: max_pixels,
        });
    }
    let orientation = decoder.orientation().ok();
    let decoded = if format == ImageFormat::Jpeg {
        // libjpeg-turbo's decoder (as in PIL), so pixels match the reference exactly; the
        // pure-Rust decoder is the fallback for what libjpeg cannot convert (CMYK, YCCK).
        match decode_jpeg_libjpeg(bytes, w, h) {
            Some(rgb) => Ok(DynamicImage::ImageRgb8(rgb)),
            None => DynamicImage::from_decoder(decoder),
        }
    } else {
        DynamicImage::from_decoder(decoder)
    };
    let mut image = decoded.map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Alpha is dropped, as PIL's convert("RGB") does.
        other => other.to_rgb8(),
    })
}

/// Decodes a JPEG to RGB with libjpeg-turbo (mozjpeg's decoder is libjpeg-turbo's), with
/// libjpeg's defaults as PIL uses them (integer IDCT, fancy upsampling). `None` on any failure.
fn decode_jpeg_libjpeg(bytes: &[u8], w: u32, h: u32) -> Option<RgbImage> {
    // The bindings report libjpeg errors by unwinding; keep that inside this function.
    std::panic::catch_unwind(|| -> Option<RgbImage> {
        let decompress = mozjpeg::Decompress::new_mem(bytes).ok()?;
        if decompress.size() != (w as usize, h as usize) {
            return None;
        }
        let mut started = decompress.rgb().ok()?;
        let pixels = started.read_scanlines::<u8>().ok()?;
        started.finish().ok()?;
        RgbImage::from_raw(w, h, pixels)
    })
    .ok()
    .flatten()
}

/// Whether an end-of-image marker follows the last start-of-scan. Inside entropy-coded data a
/// 0xFF byte is always followed by 0x00 or a restart marker, so FF D9 there is the real end;
/// bytes after it (camera trailers) are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// torchvision's `Resize(int)`: the shortest edge becomes `size`, the other `int(size * long / short)`.
pub fn shortest_edge_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let scale =
        |long: u32, short: u32| (u64::from(size) * u64::from(long) / u64::from(short)) as u32;
    if w <= h {
        (size, scale(h, w))
    } else {
        (scale(w, h), size)
    }
}

/// Python's `int(round(x))` for x >= 0: halves go to the even neighbour.
fn python_round_half(x: f64) -> u32 {
    let floor = x.floor();
    let diff = x - floor;
    let rounded = if diff > 0.5 || (diff == 0.5 && floor % 2.0 != 0.0) {
        floor + 1.0
    } else {
        floor
    };
    rounded as u32
}

// ------------------------------------------------------------------------------------------------
// PIL's bicubic resampling (libImaging/Resample.c), reproduced for 8-bit RGB.

const PRECISION_BITS: u32 = 32 - 8 - 2;
const BICUBIC_SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: the first input index, and fixed-point weights for the inputs it reads.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coefficients(in_size: u32, out_size: u32) -> Coefficients {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(xmax) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *out = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bicubic resize with PIL's exact arithmetic: horizontal pass over the rows the vertical pass
/// needs, to an 8-bit intermediate, then the vertical pass.
pub fn resize_bicubic(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    if !need_h && !need_v {
        return src.clone();
    }
    let horiz = coefficients(in_w, out_w);
    let vert = coefficients(in_h, out_h);
    let (first_row, last_row) = if need_v {
        let first = vert.bounds[0].0;
        let last = vert
            .bounds
            .last()
            .map_or(in_h as usize, |&(min, n)| min + n);
        (first, last)
    } else {
        (0, in_h as usize)
    };

    let src_raw = src.as_raw();
    let in_stride = in_w as usize * 3;
    let (tmp_w, tmp_rows, tmp): (usize, usize, std::borrow::Cow<'_, [u8]>) = if need_h {
        let rows = last_row - first_row;
        let out_stride = out_w as usize * 3;
        let mut buf = vec![0u8; rows * out_stride];
        for (r, out_row) in buf.chunks_exact_mut(out_stride).enumerate() {
            let in_row = &src_raw[(first_row + r) * in_stride..(first_row + r + 1) * in_stride];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &w) in k.iter().enumerate() {
                    let p = &in_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    acc[0] += i32::from(p[0]) * w;
                    acc[1] += i32::from(p[1]) * w;
                    acc[2] += i32::from(p[2]) * w;
                }
                out_row[xx * 3] = clip8(acc[0]);
                out_row[xx * 3 + 1] = clip8(acc[1]);
                out_row[xx * 3 + 2] = clip8(acc[2]);
            }
        }
        (out_w as usize, rows, std::borrow::Cow::Owned(buf))
    } else {
        (
            in_w as usize,
            in_h as usize,
            std::borrow::Cow::Borrowed(&src_raw[..]),
        )
    };
    if !need_v {
        return RgbImage::from_raw(out_w, out_h, tmp.into_owned())
            .unwrap_or_else(|| RgbImage::new(out_w, out_h));
    }

    let stride = tmp_w * 3;
    debug_assert!(tmp.len() >= tmp_rows * stride);
    let mut out = vec![0u8; out_h as usize * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - first_row;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for (i, out_px) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                acc += i32::from(tmp[(ymin + y) * stride + i]) * w;
            }
            *out_px = clip8(acc);
        }
    }
    RgbImage::from_raw(out_w, out_h, out).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

/// Crops a `size`×`size` window at (left, top), scales to [0, 1], normalises, and appends the
/// planes in CHW order.
fn normalise_chw(
    img: &RgbImage,
    left: u32,
    top: u32,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut Vec<f32>,
) {
    let base = out.len();
    let plane = size as usize * size as usize;
    out.resize(base + 3 * plane, 0.0);
    // Precomputed per channel and byte value: the same f32 arithmetic as (x / 255 - mean) / std.
    let mut table = [[0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        for (v, slot) in t.iter_mut().enumerate() {
            *slot = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    let raw = img.as_raw();
    let stride = img.width() as usize * 3;
    let size = size as usize;
    let (r_plane, rest) = out[base..].split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for y in 0..size {
        let start = (top as usize + y) * stride + left as usize * 3;
        let row = &raw[start..start + size * 3];
        let at = y * size;
        let (r, g, b) = (
            &mut r_plane[at..at + size],
            &mut g_plane[at..at + size],
            &mut b_plane[at..at + size],
        );
        for (x, p) in row.chunks_exact(3).enumerate() {
            r[x] = table[0][usize::from(p[0])];
            g[x] = table[1][usize::from(p[1])];
            b[x] = table[2][usize::from(p[2])];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_follows_torchvision() {
        assert_eq!(shortest_edge_size(60, 80, 224), (224, 298));
        assert_eq!(shortest_edge_size(800, 600, 224), (298, 224));
        assert_eq!(shortest_edge_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn rounding_is_pythons() {
        assert_eq!(python_round_half(0.5), 0);
        assert_eq!(python_round_half(1.5), 2);
        assert_eq!(python_round_half(2.5), 2);
        assert_eq!(python_round_half(37.0), 37);
        assert_eq!(python_round_half(37.6), 38);
    }

    #[test]
    fn resize_keeps_a_flat_colour_flat() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([200, 10, 99]));
        let out = resize_bicubic(&img, 224, 320);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
        let out = resize_bicubic(&img, 5, 7);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(60, 224), (80, 298), (640, 224), (7, 3)] {
            let c = coefficients(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let sum: i32 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i32,
                    "{i}->{o} at {xx}: {sum}"
                );
            }
        }
    }

    #[test]
    fn refuses_non_images_and_bombs() {
        assert!(matches!(decode_rgb(b"", 100), Err(ImageError::Empty)));
        assert!(matches!(
            decode_rgb(b"%PDF-1.7 not an image", 100),
            Err(ImageError::UnsupportedFormat)
        ));
        let mut png = Vec::new();
        RgbImage::new(100, 100)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("encode");
        assert!(matches!(
            decode_rgb(&png, 9_999),
            Err(ImageError::TooManyPixels { pixels: 10_000, .. })
        ));
        assert!(decode_rgb(&png, 10_000).is_ok());
        assert!(matches!(
            decode_rgb(&png[..png.len() / 2], 10_000),
            Err(ImageError::Corrupt(_))
        ));
        let mut jpeg = Vec::new();
        RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .expect("encode");
        assert!(decode_rgb(&jpeg, 10_000).is_ok());
        let mut trailer = jpeg.clone();
        trailer.extend(b"camera trailer");
        assert!(decode_rgb(&trailer, 10_000).is_ok());
        assert!(matches!(
            decode_rgb(&jpeg[..jpeg.len() - 40], 10_000),
            Err(ImageError::Corrupt(_))
        ));
    }
}
