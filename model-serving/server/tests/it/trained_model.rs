//! The project's trained model (`model-serving/models/fashion-clip-mini`, made by `make train`),
//! served unchanged: it loads, and on held-out catalogue photos it ranks obvious queries the right
//! way. A model with random weights fails these checks: each query puts a photo of the right
//! article type first among five types by chance one time in five, and every right photo above
//! every other far less often (the same architecture untrained, and the generated tiny model, got
//! 1 of 5 queries' best photo right and 0 of 5 orderings).

use std::path::PathBuf;

use model_serving::encoder::EncoderConfig;

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

fn trained_model_dir() -> PathBuf {
    workspace().join("model-serving/models/fashion-clip-mini")
}

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
    let config = EncoderConfig {
        model_dir: trained_model_dir(),
        ..encoder_config()
    };
    let app = spawn_app_with(config, limits()).await;
    let info = app.client.model_info().await.expect("model info");
    assert_eq!(info.name, "fashion-clip-mini");

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
