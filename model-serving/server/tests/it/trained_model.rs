//! The project's trained model (`model-serving/models/fashion-clip-mini`, made by `make train`),
//! served unchanged: it loads, and on held-out catalogue photos it ranks obvious queries the right
//! way. A model with random weights fails these checks: each query puts a photo of the right
//! article type first among five types by chance one time in five, and every right photo above
//! every other far less often (the same architecture untrained, and the generated tiny model, got
//! 1 of 5 queries' best photo right and 0 of 5 orderings).

use std::path::PathBuf;

use model_serving::encoder::EncoderConfig;
use model_serving::model::VISION_MODEL;
use model_serving::onnx::VisionGraph;

use crate::helpers::*;

/// Article types, the query that should find them, and photos per type.
const CASES: [(&str, &str); 5] = [
    ("Watches", "a photo of a watch"),
    ("Sunglasses", "a photo of sunglasses"),
    ("Handbags", "a photo of a handbag"),
    ("Tshirts", "a photo of a t-shirt"),
    ("Casual Shoes", "a photo of casual shoes"),
];
const PER_TYPE: usize = 3;

/// 32-bit FNV-1a: the training split rule (`model-serving/training/data.py`).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The first `n` photos of `article_type` in styles.csv order from the validation split
/// (FNV-1a(id) % 10 == 0), which training never saw.
fn held_out_photos(article_type: &str, n: usize) -> Vec<PathBuf> {
    let dir = dataset_dir();
    let styles = std::fs::read_to_string(dir.join("styles.csv")).expect("styles.csv");
    let photos: Vec<PathBuf> = styles
        .lines()
        .skip(1)
        .filter_map(|line| {
            // id, gender, masterCategory, subCategory, articleType, ... (no quoting before the name)
            let fields: Vec<&str> = line.splitn(6, ',').collect();
            let (id, kind) = (*fields.first()?, *fields.get(4)?);
            let photo = dir.join("images").join(format!("{id}.jpg"));
            (kind == article_type && fnv1a(id).is_multiple_of(10) && photo.is_file())
                .then_some(photo)
        })
        .take(n)
        .collect();
    assert_eq!(
        photos.len(),
        n,
        "not enough held-out photos of {article_type}"
    );
    photos
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn split_rule_matches_training() {
    // Values from data.py's fnv1a32.
    assert_eq!(fnv1a(""), 0x811c_9dc5);
    assert_eq!(fnv1a("a"), 0xe40c_292c);
    assert_eq!(fnv1a("10000"), 0x68f4_7e1c);
}

#[tokio::test]
async fn trained_model_ranks_obvious_queries_on_held_out_photos() {
    ranks_obvious_queries(trained_model_dir(), "fashion-clip-mini").await;
}

/// `make quantize`'s script on the trained model: an int8 folder that says so, served
/// unchanged, whose embeddings agree with the fp32 model's and which still ranks the obvious
/// queries right; a folder that is not a model is refused in one line, and nothing is written.
#[tokio::test]
async fn int8_copy_is_served_agrees_with_fp32_and_still_ranks() {
    let script = workspace().join("model-serving/tools/quantize.py");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("fashion-clip-mini-int8");
    let run = std::process::Command::new(python())
        .arg(&script)
        .arg("--src")
        .arg(trained_model_dir())
        .arg("--out")
        .arg(&out)
        .arg("--dataset-dir")
        .arg(dataset_dir())
        .args(["--calibration-images", "64", "--calibration-texts", "64"])
        .output()
        .expect("run quantize.py");
    assert!(
        run.status.success(),
        "quantize.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).expect("model.json"))
            .expect("json");
    assert_eq!(meta["precision"], "int8");
    assert_eq!(meta["quantization"]["mode"], "static");
    assert_eq!(meta["quantization"]["source_model"], "fashion-clip-mini");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary folders left: {leftovers:?}");

    // The same photos and captions through both folders: near-identical embeddings.
    let fp32 = spawn_app_with(
        EncoderConfig {
            model_dir: trained_model_dir(),
            ..encoder_config()
        },
        limits(),
    )
    .await;
    let int8 = spawn_app_with(
        EncoderConfig {
            model_dir: out.clone(),
            ..encoder_config()
        },
        limits(),
    )
    .await;
    let photos: Vec<Vec<u8>> = sample_photos(16).iter().map(|p| read(p)).collect();
    let texts: Vec<String> = CASES.iter().map(|(_, q)| (*q).to_owned()).collect();
    let mut worst = f32::INFINITY;
    for app in [&fp32, &int8] {
        assert!(app.client.model_info().await.is_ok());
    }
    let (a, b) = (
        fp32.client
            .encode_images(photos.clone())
            .await
            .expect("fp32 images"),
        int8.client
            .encode_images(photos)
            .await
            .expect("int8 images"),
    );
    let (c, d) = (
        fp32.client.encode_text(&texts).await.expect("fp32 texts"),
        int8.client.encode_text(&texts).await.expect("int8 texts"),
    );
    for (x, y) in a
        .embeddings
        .iter()
        .zip(&b.embeddings)
        .chain(c.embeddings.iter().zip(&d.embeddings))
    {
        worst = worst.min(dot(x, y));
    }
    assert!(
        worst > 0.98,
        "an int8 embedding is {worst} from its fp32 one"
    );
    ranks_obvious_queries(out.clone(), "fashion-clip-mini-int8").await;

    // Its int8 convolutions cannot share packed weights (ONNX Runtime refuses such sessions):
    // the sessions that were to share its weights load again with their own, and encode the
    // same.
    let graph =
        VisionGraph::prepare_sharing(&out.join(VISION_MODEL), true, Some(0)).expect("prepare");
    assert!(graph.shared_weights() > 0, "no weights listed to share");
    let (shared, worst) = shared_against_own(&out).await;
    assert_eq!(shared, 0, "the int8 CNN's sessions shared {shared} weights");
    assert!(worst < 1e-5, "embeddings differ by {worst}");

    // Not a model folder: one line on stderr, a failure status, no folder written.
    let bad = tmp.path().join("not-a-model");
    std::fs::create_dir(&bad).expect("mkdir");
    let run = std::process::Command::new(python())
        .arg(&script)
        .arg("--src")
        .arg(&bad)
        .arg("--out")
        .arg(tmp.path().join("never"))
        .arg("--dataset-dir")
        .arg(dataset_dir())
        .output()
        .expect("run quantize.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("quantize.py:"), "{stderr}");
    assert!(!tmp.path().join("never").exists());
}

async fn ranks_obvious_queries(model_dir: PathBuf, name: &str) {
    let config = EncoderConfig {
        model_dir,
        ..encoder_config()
    };
    let app = spawn_app_with(config, limits()).await;
    let info = app.client.model_info().await.expect("model info");
    assert_eq!(info.name, name);

    let mut labels = Vec::new();
    let mut images = Vec::new();
    for (kind, _) in CASES {
        for photo in held_out_photos(kind, PER_TYPE) {
            labels.push(kind);
            images.push(read(&photo));
        }
    }
    let image_vecs = app
        .client
        .encode_images(images)
        .await
        .expect("encode images")
        .embeddings;
    let queries: Vec<String> = CASES.iter().map(|(_, q)| (*q).to_owned()).collect();
    let text_vecs = app
        .client
        .encode_text(&queries)
        .await
        .expect("encode texts")
        .embeddings;

    for ((kind, query), text) in CASES.iter().zip(&text_vecs) {
        let scores: Vec<f32> = image_vecs.iter().map(|img| dot(text, img)).collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .expect("scores");
        assert_eq!(
            labels[best], *kind,
            "{query:?}: best photo is a {} (scores {scores:?})",
            labels[best]
        );
        // Every photo of the right type above every photo of the others.
        let worst_right = (0..scores.len())
            .filter(|&i| labels[i] == *kind)
            .map(|i| scores[i])
            .fold(f32::INFINITY, f32::min);
        let best_wrong = (0..scores.len())
            .filter(|&i| labels[i] != *kind)
            .map(|i| scores[i])
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(
            worst_right > best_wrong,
            "{query:?}: a {kind} photo scores {worst_right}, below another type's {best_wrong}"
        );
    }
}
