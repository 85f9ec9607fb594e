//! Image decoding and CLIP's reference preprocessing, bounded by the output.
//!
//! The reference is OpenAI CLIP's `torchvision` transform on a PIL image: resize the shortest edge
//! to `image_size` with PIL's bicubic filter, center-crop (`round((h - size) / 2)`, Python rounding),
//! scale to [0, 1], normalise with the model's mean and std. The resampler below reproduces PIL's
//! `ImagingResample` (separable convolution, 22-bit fixed-point coefficients, 8-bit intermediate), so
//! the pixels match PIL's exactly rather than approximately.
//!
//! Hostile input is the normal case here, so work is bounded by what is produced:
//! - [`ImageHeader::read`] checks format, dimensions, pixel count, aspect ratio and (for JPEG) the
//!   number of scans from the header alone, before any pixel buffer exists;
//! - the resampler computes only the rows and columns the center crop keeps, so its memory and time
//!   depend on the decoded pixels and the `size`×`size` output, never on the aspect ratio (each
//!   output pixel of PIL's separable filter depends only on its own coefficients, so the cropped
//!   result is bit-identical to resizing everything and cropping afterwards);
//! - every size derived from the input is computed with checked arithmetic.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Most pixels one image may have by default. Measured (`make hostile`): decoding a 16-bit RGBA
/// PNG needs 8 bytes a pixel plus 3 for the RGB copy, so 16 Mpx peaks near 190 MB; an 8-bit JPEG
/// needs about 6 bytes a pixel. 16 Mpx covers 4928×3264 camera photos.
pub const DEFAULT_MAX_PIXELS: u64 = 16 * 1024 * 1024;
/// Longest side over shortest side. The center crop of a longer image shows under 5% of it, and
/// the shortest-edge resize of an extreme one would not fit in 32 bits.
pub const DEFAULT_MAX_ASPECT_RATIO: u32 = 20;
/// Scans one JPEG may have. Baseline JPEGs have 1, progressive ones about 10; each scan costs a
/// pass over the whole coefficient buffer, so thousands of tiny scans are a time bomb.
pub const MAX_JPEG_SCANS: usize = 100;

/// Why an image was refused. Each variant is a client error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("not an image in a supported format (JPEG, PNG, WebP, GIF)")]
    UnsupportedFormat,
    #[error("image has {pixels} pixels, over the limit of {limit}")]
    TooManyPixels { pixels: u64, limit: u64 },
    #[error("image is {width}×{height}; its aspect ratio is over the limit of {limit}:1")]
    AspectRatio { width: u32, height: u32, limit: u32 },
    #[error("image has a zero dimension")]
    ZeroSize,
    #[error("JPEG has over {limit} scans")]
    TooManyScans { limit: usize },
    #[error("cannot decode image: {0}")]
    Corrupt(String),
    /// Decoding or preprocessing failed in a way the checks above did not foresee (a decoder
    /// panic). Still the input's fault: the same bytes fail the same way.
    #[error("the image could not be processed")]
    Unprocessable,
}

/// What one image may cost. Checked on the header, before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLimits {
    pub max_pixels: u64,
    pub max_aspect_ratio: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_aspect_ratio: DEFAULT_MAX_ASPECT_RATIO,
        }
    }
}

/// An image's format and size, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl ImageHeader {
    /// Reads and checks the header: supported format, non-zero size within `limits`, a complete
    /// JPEG with a bounded number of scans. Allocates no pixels.
    pub fn read(bytes: &[u8], limits: &ImageLimits) -> Result<Self, ImageError> {
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
        if format == ImageFormat::Jpeg {
            check_jpeg_scans(bytes)?;
        }
        let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        let header = Self {
            format,
            width,
            height,
        };
        header.check(limits)?;
        Ok(header)
    }

    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn check(&self, limits: &ImageLimits) -> Result<(), ImageError> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 {
            return Err(ImageError::ZeroSize);
        }
        if self.pixels() > limits.max_pixels {
            return Err(ImageError::TooManyPixels {
                pixels: self.pixels(),
                limit: limits.max_pixels,
            });
        }
        let (long, short) = (w.max(h), w.min(h));
        if u64::from(long) > u64::from(short) * u64::from(limits.max_aspect_ratio) {
            return Err(ImageError::AspectRatio {
                width: w,
                height: h,
                limit: limits.max_aspect_ratio,
            });
        }
        Ok(())
    }
}

/// How images are turned into model input.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub image_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub limits: ImageLimits,
}

impl Preprocessor {
    /// Number of f32 values one image occupies in the `pixel_values` tensor.
    pub fn tensor_len(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }

    /// Decodes `bytes` and appends the normalised CHW tensor to `out`.
    pub fn preprocess(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ImageError> {
        let header = ImageHeader::read(bytes, &self.limits)?;
        let rgb = decode_rgb_checked(bytes, header, &self.limits)?;
        self.transform(&rgb, out)
    }

    /// The CLIP transform on decoded RGB pixels: shortest-edge resize and center crop, computing
    /// only the kept window, then normalisation.
    pub fn transform(&self, rgb: &RgbImage, out: &mut Vec<f32>) -> Result<(), ImageError> {
        let size = self.image_size;
        let (w, h) = rgb.dimensions();
        let (rw, rh) = shortest_edge_size(w, h, size).ok_or(ImageError::AspectRatio {
            width: w,
            height: h,
            limit: self.limits.max_aspect_ratio,
        })?;
        let left = python_round_half(f64::from(rw - size) / 2.0);
        let top = python_round_half(f64::from(rh - size) / 2.0);
        let window = Window {
            left,
            top,
            width: size,
            height: size,
        };
        let cropped = resize_bicubic_window(rgb, rw, rh, window);
        normalise_chw(&cropped, size, self.mean, self.std, out);
        Ok(())
    }
}

/// Decodes JPEG, PNG, WebP or GIF (first frame), applies the EXIF orientation and converts to RGB.
/// The header is checked against `limits` before any pixel buffer is allocated.
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let header = ImageHeader::read(bytes, limits)?;
    decode_rgb_checked(bytes, header, limits)
}

/// [`decode_rgb`] for a header already read and checked.
pub fn decode_rgb_checked(
    bytes: &[u8],
    header: ImageHeader,
    limits: &ImageLimits,
) -> Result<RgbImage, ImageError> {
    let ImageHeader {
        format,
        width: w,
        height: h,
    } = header;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    // The decoder's own allocation cap: 8 bytes a pixel (16-bit RGBA) at most.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    decoder_limits.max_image_width = Some(w);
    decoder_limits.max_image_height = Some(h);
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    // The header read twice must agree (a decoder that reads differently is refused).
    if decoder.dimensions() != (w, h) {
        return Err(ImageError::Corrupt("inconsistent image header".into()));
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
    let image = decoded.map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut image = match image {
        DynamicImage::ImageRgb8(rgb) => DynamicImage::ImageRgb8(rgb),
        // Alpha is dropped, as PIL's convert("RGB") does; the wide buffer is freed before the
        // orientation is applied, so the peak is the decoded buffer plus one RGB copy.
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image.into_rgb8())
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

/// Refuses a JPEG whose last scan has no end-of-image marker after it (the decoder would fill the
/// missing part with grey instead of failing; PIL refuses it), or that has too many scans. Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so FF DA there
/// is a real start-of-scan and FF D9 the real end; bytes after the end (camera trailers) are allowed.
fn check_jpeg_scans(bytes: &[u8]) -> Result<(), ImageError> {
    let mut scans = 0usize;
    let mut last_scan = None;
    for (at, pair) in bytes.windows(2).enumerate() {
        if pair == [0xFF, 0xDA] {
            scans += 1;
            if scans > MAX_JPEG_SCANS {
                return Err(ImageError::TooManyScans {
                    limit: MAX_JPEG_SCANS,
                });
            }
            last_scan = Some(at);
        }
    }
    let complete = last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]));
    if complete {
        Ok(())
    } else {
        Err(ImageError::Corrupt(
            "truncated JPEG (no end-of-image marker after the last scan)".into(),
        ))
    }
}

/// torchvision's `Resize(int)`: the shortest edge becomes `size`, the other `int(size * long / short)`.
/// `None` when the long edge would not fit in 32 bits (only for aspect ratios far over the limit).
pub fn shortest_edge_size(w: u32, h: u32, size: u32) -> Option<(u32, u32)> {
    if w == 0 || h == 0 {
        return None;
    }
    let scale = |long: u32, short: u32| {
        u32::try_from(u64::from(size) * u64::from(long) / u64::from(short)).ok()
    };
    if w <= h {
        Some((size, scale(h, w)?))
    } else {
        Some((scale(w, h)?, size))
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

/// The part of a resized image that is computed: `width`×`height` output pixels from (left, top).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// Per output pixel of a window: the first input index, and fixed-point weights for the inputs it
/// reads.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// PIL's `precompute_coeffs` for the outputs `first .. first + count` of an `in_size` → `out_size`
/// resize. Each output's coefficients depend only on its own index, so a window's are exactly
/// those of the full resize.
fn coefficients(in_size: u32, out_size: u32, first: u32, count: u32) -> Coefficients {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    // The support never exceeds the input, so the kernel is bounded by the input size.
    let ksize = (support.ceil() as usize * 2 + 1).min(in_size as usize + 1);
    let mut bounds = Vec::with_capacity(count as usize);
    let mut weights = vec![0i32; count as usize * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in (first..first + count).enumerate() {
        let center = (f64::from(xx) + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
        let (xmin, xmax) = (xmin as usize, (xmax.max(0) as usize).min(ksize));
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[i * ksize..(i + 1) * ksize];
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

/// Bicubic resize of the whole image with PIL's exact arithmetic.
pub fn resize_bicubic(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let window = Window {
        left: 0,
        top: 0,
        width: out_w,
        height: out_h,
    };
    resize_bicubic_window(src, out_w, out_h, window)
}

/// The `window` of a bicubic resize of `src` to `out_w`×`out_h`, computing only its pixels.
///
/// PIL resizes in two separable passes through an 8-bit intermediate: horizontal first, except
/// (Pillow 13, python-pillow/Pillow#9549) when the height shrinks by more than twice as many
/// pixels as the width does, then vertical first. Each intermediate pixel depends only on its
/// own row and column, so only the rows and columns the window reads are computed: memory is the
/// window plus one pass's strip of the input at the window's size, and time is proportional to
/// the same. `window` is clamped to the output.
pub fn resize_bicubic_window(src: &RgbImage, out_w: u32, out_h: u32, window: Window) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let left = window.left.min(out_w);
    let top = window.top.min(out_h);
    let width = window.width.min(out_w - left);
    let height = window.height.min(out_h - top);
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let image = |w: u32, h: u32, raw: Vec<u8>| {
        RgbImage::from_raw(w, h, raw).unwrap_or_else(|| RgbImage::new(w, h))
    };
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let src = Plane {
        raw: src.as_raw(),
        width: in_w as usize,
    };
    // Without a pass on an axis, the window is a plain crop on that axis.
    let horiz = need_h.then(|| coefficients(in_w, out_w, left, width));
    let vert = need_v.then(|| coefficients(in_h, out_h, top, height));
    let cols = horiz
        .as_ref()
        .map_or((left as usize, (left + width) as usize), Coefficients::span);
    let rows = vert
        .as_ref()
        .map_or((top as usize, (top + height) as usize), Coefficients::span);
    let vertical_first = need_h
        && need_v
        && out_h < in_h
        && (i64::from(in_h) - i64::from(out_h)) > 2 * (i64::from(in_w) - i64::from(out_w));

    let raw = if vertical_first {
        let (Some(horiz), Some(vert)) = (&horiz, &vert) else {
            return RgbImage::new(width, height);
        };
        let tmp = vertical_pass(src, cols, vert, 0);
        let tmp = Plane {
            raw: &tmp,
            width: cols.1 - cols.0,
        };
        horizontal_pass(tmp, (0, height as usize), horiz, cols.0)
    } else {
        let tmp = match &horiz {
            Some(horiz) => horizontal_pass(src, rows, horiz, 0),
            None => crop(src, rows, cols),
        };
        let tmp_plane = Plane {
            raw: &tmp,
            width: width as usize,
        };
        match &vert {
            Some(vert) => vertical_pass(tmp_plane, (0, width as usize), vert, rows.0),
            None => tmp,
        }
    };
    image(width, height, raw)
}

/// 8-bit RGB pixels, `width` to a row.
#[derive(Clone, Copy)]
struct Plane<'a> {
    raw: &'a [u8],
    width: usize,
}

impl Coefficients {
    /// The input indices the outputs read: `[first, last)`.
    fn span(&self) -> (usize, usize) {
        let first = self.bounds.iter().map(|&(min, _)| min).min().unwrap_or(0);
        let last = self
            .bounds
            .iter()
            .map(|&(min, n)| min + n)
            .max()
            .unwrap_or(first);
        (first, last.max(first))
    }
}

/// Rows `rows` and columns `cols` of `src`, as they are.
fn crop(src: Plane<'_>, rows: (usize, usize), cols: (usize, usize)) -> Vec<u8> {
    let stride = (cols.1 - cols.0) * 3;
    let mut out = Vec::with_capacity((rows.1 - rows.0) * stride);
    for r in rows.0..rows.1 {
        let start = (r * src.width + cols.0) * 3;
        out.extend_from_slice(&src.raw[start..start + stride]);
    }
    out
}

/// The horizontal pass over rows `rows` of `src`: one output column per coefficient set, whose
/// input indices are `shift` to the right of `src`'s first column.
fn horizontal_pass(
    src: Plane<'_>,
    rows: (usize, usize),
    c: &Coefficients,
    shift: usize,
) -> Vec<u8> {
    let out_w = c.bounds.len();
    let stride = out_w * 3;
    let mut out = vec![0u8; (rows.1 - rows.0) * stride];
    for (r, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let row = rows.0 + r;
        let in_row = &src.raw[row * src.width * 3..(row + 1) * src.width * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let xmin = xmin - shift;
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
    out
}

/// The vertical pass over columns `cols` of `src`: one output row per coefficient set, whose
/// input indices are `shift` below `src`'s first row.
fn vertical_pass(src: Plane<'_>, cols: (usize, usize), c: &Coefficients, shift: usize) -> Vec<u8> {
    let stride = (cols.1 - cols.0) * 3;
    let mut out = vec![0u8; c.bounds.len() * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let ymin = ymin - shift;
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for (i, out_px) in out_row.iter_mut().enumerate() {
            let column = cols.0 * 3 + i;
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                acc += i32::from(src.raw[(ymin + y) * src.width * 3 + column]) * w;
            }
            *out_px = clip8(acc);
        }
    }
    out
}

/// Scales a `size`×`size` image to [0, 1], normalises, and appends the planes in CHW order.
fn normalise_chw(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3], out: &mut Vec<f32>) {
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
    let (r_plane, rest) = out[base..].split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for (i, p) in img.as_raw().chunks_exact(3).take(plane).enumerate() {
        r_plane[i] = table[0][usize::from(p[0])];
        g_plane[i] = table[1][usize::from(p[1])];
        b_plane[i] = table[2][usize::from(p[2])];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_pixels: u64) -> ImageLimits {
        ImageLimits {
            max_pixels,
            ..ImageLimits::default()
        }
    }

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode");
        out
    }

    /// A deterministic busy image: every pixel differs from its neighbours.
    fn noise(w: u32, h: u32) -> RgbImage {
        let mut state = 0x2545_f491_u32 ^ w.wrapping_mul(31) ^ h;
        RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, _] = state.to_le_bytes();
            image::Rgb([a, b, c])
        })
    }

    fn crop(img: &RgbImage, w: Window) -> RgbImage {
        image::imageops::crop_imm(img, w.left, w.top, w.width, w.height).to_image()
    }

    #[test]
    fn shortest_edge_follows_torchvision() {
        assert_eq!(shortest_edge_size(60, 80, 224), Some((224, 298)));
        assert_eq!(shortest_edge_size(800, 600, 224), Some((298, 224)));
        assert_eq!(shortest_edge_size(224, 224, 224), Some((224, 224)));
        // The sizes that wrapped around in 32 bits.
        assert_eq!(shortest_edge_size(19_173_962, 1, 224), None);
        assert_eq!(shortest_edge_size(1, 19_173_962, 224), None);
        assert_eq!(shortest_edge_size(0, 5, 224), None);
        assert_eq!(
            shortest_edge_size(65_535, 1, 224),
            Some((224 * 65_535, 224))
        );
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
        for (i, o) in [(60, 224), (80, 298), (640, 224), (7, 3), (1, 224)] {
            let c = coefficients(i, o, 0, o);
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
    fn a_window_is_bit_identical_to_cropping_the_full_resize() {
        // Up- and downscaling on each axis, square and extreme shapes, windows at the edges.
        for (w, h, ow, oh) in [
            (60, 80, 224, 298),
            (80, 60, 298, 224),
            (640, 480, 298, 224),
            (300, 1200, 224, 896),
            (3, 60, 224, 4480),
            (1, 1, 224, 224),
            (2, 40, 224, 4480),
            (500, 500, 224, 224),
            (224, 500, 224, 500),
            (500, 224, 500, 224),
            (301, 640, 224, 476),
            (300, 1000, 32, 106),
            (1000, 300, 106, 32),
        ] {
            let img = noise(w, h);
            let full = resize_bicubic(&img, ow, oh);
            for window in [
                Window {
                    left: (ow - ow.min(224)) / 2,
                    top: (oh - oh.min(224)) / 2,
                    width: ow.min(224),
                    height: oh.min(224),
                },
                Window {
                    left: 0,
                    top: 0,
                    width: ow.min(17),
                    height: oh.min(9),
                },
                Window {
                    left: ow - 5,
                    top: oh - 3,
                    width: 5,
                    height: 3,
                },
            ] {
                let part = resize_bicubic_window(&img, ow, oh, window);
                assert!(
                    part == crop(&full, window),
                    "{w}x{h} -> {ow}x{oh}, window {window:?}"
                );
            }
        }
    }

    #[test]
    fn transform_of_an_extreme_strip_is_bounded_and_matches_the_reference_crop() {
        // 20:1 at 4000×200: the full resize would be 4480×224; the window is 224×224.
        let img = noise(4000, 200);
        let pre = Preprocessor {
            image_size: 224,
            mean: [0.0; 3],
            std: [1.0; 3],
            limits: ImageLimits::default(),
        };
        let mut out = Vec::new();
        pre.transform(&img, &mut out).expect("transform");
        assert_eq!(out.len(), pre.tensor_len());
        let full = resize_bicubic(&img, 4480, 224);
        let expected = crop(
            &full,
            Window {
                left: 2128,
                top: 0,
                width: 224,
                height: 224,
            },
        );
        assert_eq!(out[0], f32::from(expected.get_pixel(0, 0)[0]) / 255.0);
        let last = 224 * 224 - 1;
        assert_eq!(
            out[last],
            f32::from(expected.get_pixel(223, 223)[0]) / 255.0
        );
    }

    #[test]
    fn headers_are_checked_before_decoding() {
        let l = ImageLimits::default();
        assert_eq!(ImageHeader::read(b"", &l), Err(ImageError::Empty));
        assert_eq!(
            ImageHeader::read(b"%PDF-1.7 not an image", &l),
            Err(ImageError::UnsupportedFormat)
        );
        let strip = png(&RgbImage::new(2100, 100));
        assert!(matches!(
            ImageHeader::read(&strip, &l),
            Err(ImageError::AspectRatio {
                width: 2100,
                height: 100,
                limit: 20
            })
        ));
        let tall = png(&RgbImage::new(10, 201));
        assert!(matches!(
            ImageHeader::read(&tall, &l),
            Err(ImageError::AspectRatio { .. })
        ));
        let ok = png(&RgbImage::new(10, 200));
        assert_eq!(
            ImageHeader::read(&ok, &l)
                .expect("20:1 is allowed")
                .pixels(),
            2000
        );
    }

    #[test]
    fn refuses_non_images_and_bombs() {
        assert!(matches!(
            decode_rgb(b"", &limits(100)),
            Err(ImageError::Empty)
        ));
        assert!(matches!(
            decode_rgb(b"%PDF-1.7 not an image", &limits(100)),
            Err(ImageError::UnsupportedFormat)
        ));
        let png = png(&RgbImage::new(100, 100));
        assert!(matches!(
            decode_rgb(&png, &limits(9_999)),
            Err(ImageError::TooManyPixels { pixels: 10_000, .. })
        ));
        assert!(decode_rgb(&png, &limits(10_000)).is_ok());
        assert!(matches!(
            decode_rgb(&png[..png.len() / 2], &limits(10_000)),
            Err(ImageError::Corrupt(_))
        ));
        let mut jpeg = Vec::new();
        RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .expect("encode");
        assert!(decode_rgb(&jpeg, &limits(10_000)).is_ok());
        let mut trailer = jpeg.clone();
        trailer.extend(b"camera trailer");
        assert!(decode_rgb(&trailer, &limits(10_000)).is_ok());
        assert!(matches!(
            decode_rgb(&jpeg[..jpeg.len() - 40], &limits(10_000)),
            Err(ImageError::Corrupt(_))
        ));
    }

    #[test]
    fn a_jpeg_with_too_many_scans_is_refused_unread() {
        let mut bytes = vec![0xFF, 0xD8];
        for _ in 0..=MAX_JPEG_SCANS {
            bytes.extend([0xFF, 0xDA, 0x00, 0x02]);
        }
        bytes.extend([0xFF, 0xD9]);
        assert_eq!(
            check_jpeg_scans(&bytes),
            Err(ImageError::TooManyScans {
                limit: MAX_JPEG_SCANS
            })
        );
    }
}
