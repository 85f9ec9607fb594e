//! Correctness against independent references run in Python: CLIP's transform with PIL + numpy,
//! OpenAI CLIP's tokenizer, and a direct onnxruntime run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use model_serving::model::ModelSpec;
use model_serving::preprocess::{ImageLimits, Preprocessor, decode_rgb};
use model_serving::tokenize::TextTokenizer;

use crate::helpers::*;

fn run_python(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(python())
        .arg(reference_script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reference python");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("reference python");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn read_f32(path: &Path) -> Vec<f32> {
    read(path)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A model folder whose model.json asks for `size`, so both sides preprocess at that size.
fn spec_dir(size: u32) -> (tempfile::TempDir, Preprocessor) {
    let mut spec = ModelSpec::load(&model_dir()).expect("spec");
    spec.image_size = size;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_string(&spec).expect("json"),
    )
    .expect("write");
    let pre = Preprocessor {
        image_size: size,
        mean: spec.image_mean,
        std: spec.image_std,
        limits: ImageLimits {
            max_pixels: 100_000_000,
            max_aspect_ratio: 1_000,
        },
    };
    (dir, pre)
}

fn compare_preprocessing(photos: &[PathBuf], size: u32) -> (f32, f32) {
    let (dir, pre) = spec_dir(size);
    let out = dir.path().join("reference.f32");
    let mut args = vec![
        "preprocess".to_owned(),
        "--model".into(),
        dir.path().display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(&args, None);
    let reference = read_f32(&out);
    let mut ours = Vec::new();
    for photo in photos {
        pre.preprocess(&read(photo), &mut ours).expect("preprocess");
    }
    assert_eq!(ours.len(), reference.len());
    let max = max_abs_diff(&ours, &reference);
    let mean = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / ours.len() as f32;
    (max, mean)
}

/// The transform alone: both sides start from the same RGB pixels (PIL's decode, saved as PNG).
#[test]
fn clip_transform_matches_pil_on_real_photos() {
    let photos = sample_photos(24);
    let pngs = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "decode".to_owned(),
        "--out-dir".into(),
        pngs.path().display().to_string(),
    ];
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(&args, None);
    let pngs: Vec<PathBuf> = photos
        .iter()
        .map(|p| {
            pngs.path().join(format!(
                "{}.png",
                p.file_name().and_then(|n| n.to_str()).expect("name")
            ))
        })
        .collect();
    // 224: ViT-B/32 (these photos are 60×80, so upsampling); 32: the tiny model (downsampling).
    for size in [224, 32, 50] {
        let (max, _) = compare_preprocessing(&pngs, size);
        eprintln!("transform vs PIL at {size}: max |diff| = {max:e}");
        assert!(max <= 1e-3, "size {size}: max |diff| {max} over 1e-3");
    }
}

/// Extreme and odd shapes, where only the center crop's window is computed (a 4000×7 image would
/// resize to 128000×224 in full): still bit-identical to PIL's resize-then-crop.
#[test]
fn windowed_resize_is_bit_identical_to_pil_on_extreme_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut state = 0x9e37_79b9_u32;
    let mut noise = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, _] = state.to_le_bytes();
            image::Rgb([a, b, c])
        })
    };
    let shapes = [
        (4000, 7),
        (7, 4000),
        (400, 20),
        (20, 400),
        (1, 20),
        (20, 1),
        (997, 13),
        (13, 997),
        (225, 224),
        (224, 227),
        (1000, 999),
        // Height shrinking by over twice the width's pixels: Pillow 13 resizes vertically first.
        (301, 640),
        (300, 1000),
        (150, 900),
        (400, 500),
    ];
    let paths: Vec<PathBuf> = shapes
        .iter()
        .map(|&(w, h)| {
            let path = dir.path().join(format!("{w}x{h}.png"));
            noise(w, h).save(&path).expect("save png");
            path
        })
        .collect();
    for size in [224, 32] {
        let differ: Vec<_> = paths
            .iter()
            .zip(shapes)
            .map(|(path, shape)| {
                (
                    shape,
                    compare_preprocessing(std::slice::from_ref(path), size).0,
                )
            })
            .filter(|&(_, max)| max != 0.0)
            .collect();
        eprintln!("windowed resize vs PIL at {size}: shapes that differ: {differ:?}");
        assert!(
            differ.is_empty(),
            "size {size}: not bit-identical for {differ:?}"
        );
    }
}

/// The whole path from the JPEG bytes, as the service receives them: decoding is libjpeg-turbo,
/// as in PIL, so the bound is the same.
#[test]
fn jpeg_preprocessing_matches_pil_on_real_photos() {
    let photos = sample_photos(48);
    for size in [224, 32] {
        let (max, mean) = compare_preprocessing(&photos, size);
        eprintln!("jpeg path vs PIL at {size}: max |diff| = {max:e}, mean |diff| = {mean:e}");
        assert!(max <= 1e-3, "size {size}: max |diff| {max} over 1e-3");
    }
}

#[test]
fn tokenizer_matches_openai_clip_on_product_titles() {
    let csv = std::fs::read_to_string(dataset_dir().join("styles.csv")).expect("styles.csv");
    let mut texts: Vec<String> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.splitn(10, ',').nth(9).map(str::to_owned))
        .filter(|t| !t.trim().is_empty())
        .take(400)
        .collect();
    texts.extend(
        [
            "Women's RED summer-dress, size 38!",
            "  lots   of\twhitespace\n here ",
            "café crème & naïve résumé",
            "T-shirt 100% cotton (2-pack) #1",
            "&amp; html &quot;entities&quot;",
            "👗 dress emoji",
            &"very long title ".repeat(40),
        ]
        .map(str::to_owned),
    );
    let reference: Vec<Vec<u32>> = serde_json::from_str(&run_python(
        &["tokenize", "--bpe", &bpe_vocab().display().to_string()],
        Some(&serde_json::to_string(&texts).expect("json")),
    ))
    .expect("reference ids");
    let ours = TextTokenizer::load(&model_dir().join("tokenizer.json"), 77, 0).expect("tokenizer");
    let mut mismatches = Vec::new();
    for (text, want) in texts.iter().zip(&reference) {
        let got = ours.encode(text).expect("encode");
        if &got != want {
            mismatches.push((text.clone(), got, want.clone()));
        }
    }
    assert_eq!(reference.len(), texts.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} differ, e.g. {:?}",
        mismatches.len(),
        texts.len(),
        mismatches.first()
    );
}

#[tokio::test]
async fn service_embeddings_equal_a_direct_onnxruntime_run() {
    let app = spawn_app().await;
    // Images: the reference decodes with PIL; feed both sides PNGs of the same pixels so the
    // comparison is about the model run, not the JPEG decoder.
    let photos = sample_photos(8);
    let pngs = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        let rgb = decode_rgb(&read(photo), &ImageLimits::default()).expect("decode");
        let path = pngs.path().join(format!("{i}.png"));
        rgb.save(&path).expect("save png");
        paths.push(path);
    }
    let service = app
        .client
        .encode_images(paths.iter().map(|p| read(p)).collect())
        .await
        .expect("service");

    let texts = [
        "red summer dress",
        "a photo of black leather boots",
        "Puma Men Blue Sports Shoes",
    ];
    let tokenizer =
        TextTokenizer::load(&model_dir().join("tokenizer.json"), 77, 0).expect("tokenizer");
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokenizer.encode(t).expect("ids"))
        .collect();
    let service_texts = app
        .client
        .encode_text(&texts.map(str::to_owned))
        .await
        .expect("service texts");

    let mut args = vec![
        "embed".to_owned(),
        "--model".into(),
        model_dir().display().to_string(),
        "--texts-json".into(),
        serde_json::to_string(&ids).expect("json"),
        "--images".into(),
    ];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reference: serde_json::Value =
        serde_json::from_str(&run_python(&args, None)).expect("json");
    let rows = |key: &str| -> Vec<Vec<f32>> {
        serde_json::from_value(reference[key].clone()).expect("rows")
    };

    for (ours, theirs) in service.embeddings.iter().zip(rows("images")) {
        let d = max_abs_diff(ours, &theirs);
        assert!(d <= 1e-4, "image embedding differs by {d}");
    }
    for (ours, theirs) in service_texts.embeddings.iter().zip(rows("texts")) {
        let d = max_abs_diff(ours, &theirs);
        assert!(d <= 1e-4, "text embedding differs by {d}");
    }
}

/// Multiply-adds × 2 of a CLIP vision tower per image, counted by hand: the patch convolution,
/// per layer the four attention projections, the two attention products and the MLP (4× wide),
/// then the projection.
fn vit_flops(image: u64, patch: u64, width: u64, layers: u64, heads: u64, embed: u64) -> u64 {
    let patches = (image / patch).pow(2);
    let tokens = patches + 1;
    let conv = 2 * patches * width * 3 * patch * patch;
    let projections = 4 * 2 * tokens * width * width;
    let attention = 2 * 2 * heads * tokens * tokens * (width / heads);
    let mlp = 2 * 2 * tokens * width * 4 * width;
    conv + layers * (projections + attention + mlp) + 2 * width * embed
}

#[test]
fn the_machine_ceiling_counts_every_product_of_the_model() {
    // The tiny preset of tools/gen_models.py: 32 px, patch 8, width 32, 2 layers, 2 heads.
    let dir = model_dir();
    let spec = ModelSpec::load(&dir).expect("spec");
    assert_eq!(
        spec.name, "clip-tiny-random",
        "this check counts the tiny preset's products"
    );
    let out = run_python(
        &[
            "ceiling",
            "--model",
            &dir.display().to_string(),
            "--batch",
            "3",
            "--seconds",
            "0.2",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let counted = v["gflop_per_image"].as_f64().expect("gflop_per_image") * 1e9;
    assert_eq!(counted.round() as u64, vit_flops(32, 8, 32, 2, 2, 32));
    let rate = v["gemm_gflops"].as_f64().expect("gemm_gflops");
    let ceiling = v["images_per_second"].as_f64().expect("images_per_second");
    assert!(rate > 0.0 && ceiling.is_finite(), "{v}");
    assert!(
        (ceiling - rate * 1e9 / counted).abs() < 1e-6 * ceiling,
        "{v}"
    );
}
