//! Search quality measured the way a shopper meets it: the development split's held-out
//! products are loaded with the ETL, and every question goes to the backend's API
//! (`GET /v1/search`, `GET /v1/images/{id}/similar`), in each matching mode side by side.
//!
//! The held-out products are those `model-serving/training` never trained on: FNV-1a(id) % 10 == 0
//! (the rule of `data.py`). The questions:
//! - caption → product: each product's display name as the query; R@1 and R@10 of that product;
//! - "<brand> <type>" (the name's first word and the article type, e.g. "Puma Watches"), for each
//!   pair with at least 3 products: precision of the top min(5, products) results;
//! - "<type>" and "<colour> <type>" (at least 10 and 5 products): precision of the top
//!   min(10, products);
//! - more like this (no words, so one figure for every mode): the share of the 10 nearest
//!   products with the query product's type;
//! - made-up words ("qorvex blint"): the share answered with no match at all in hybrid mode
//!   (the model's relevance floor at work), and, for a model without a floor, the calibration
//!   of one: the similarity of each caption's own product against the best similarity a made-up
//!   query reaches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use backend_api::{BackendClient, SearchMode, SearchParams, SearchResponse};
use futures::StreamExt as _;
use uuid::Uuid;

/// Queries in flight at once.
const CONCURRENCY: usize = 4;
/// Made-up queries asked.
const GIBBERISH: usize = 40;

/// A held-out product, as `styles.csv` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: String,
    pub caption: String,
    pub article_type: String,
    pub colour: String,
}

impl Product {
    /// The first word of the display name ("Puma Men Black Watch" → "puma").
    pub fn brand(&self) -> String {
        brand_of(&self.caption)
    }
}

fn brand_of(caption: &str) -> String {
    caption
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// 32-bit FNV-1a of the UTF-8 bytes: the split rule of `model-serving/training/data.py`.
pub fn fnv1a32(text: &str) -> u32 {
    text.bytes().fold(0x811C_9DC5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub fn is_validation(product_id: &str) -> bool {
    fnv1a32(product_id).is_multiple_of(10)
}

/// The held-out products with a photo, in file order, at most `limit`; and their raw CSV lines.
pub fn validation_products(
    dataset: &Path,
    limit: usize,
) -> anyhow::Result<(Vec<Product>, Vec<String>)> {
    let path = dataset.join("styles.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut products = Vec::new();
    let mut lines = Vec::new();
    for line in text.lines().skip(1) {
        if products.len() >= limit {
            break;
        }
        // The display name is the rest of the line (it may hold commas), as the ETL reads it.
        let fields: Vec<&str> = line.splitn(10, ',').collect();
        let [id, _, _, _, article_type, colour, _, _, _, caption] = fields[..] else {
            continue;
        };
        let id = id.trim();
        if !is_validation(id) || !dataset.join("images").join(format!("{id}.jpg")).is_file() {
            continue;
        }
        products.push(Product {
            id: id.to_owned(),
            caption: caption.trim().to_owned(),
            article_type: article_type.trim().to_owned(),
            colour: colour.trim().to_owned(),
        });
        lines.push(line.to_owned());
    }
    Ok((products, lines))
}

/// A dataset folder holding only `lines` of `dataset`'s `styles.csv` (its photos linked), for
/// the ETL to load.
pub fn write_split(dataset: &Path, lines: &[String], out: &Path) -> anyhow::Result<()> {
    let header = std::fs::read_to_string(dataset.join("styles.csv"))?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut csv = header;
    for line in lines {
        csv.push('\n');
        csv.push_str(line);
    }
    csv.push('\n');
    std::fs::write(out.join("styles.csv"), csv)?;
    let images = std::fs::canonicalize(dataset.join("images"))?;
    std::os::unix::fs::symlink(images, out.join("images"))?;
    Ok(())
}

/// One mode's figures (`None`: no question of that family).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub caption_r1: Option<f64>,
    pub caption_r10: Option<f64>,
    pub brand_type: Option<f64>,
    pub type_p10: Option<f64>,
    pub colour_type_p10: Option<f64>,
    pub queries: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub products: usize,
    pub model: String,
    pub modes: BTreeMap<&'static str, Scores>,
    pub similar_type_p10: Option<f64>,
    /// The model's relevance floor, as the backend applied it.
    pub relevance_floor: Option<f32>,
    /// Share of made-up queries answered with no hit in hybrid mode.
    pub gibberish_unanswered: Option<f64>,
    /// Vector mode: the similarity of each caption's own product (when in the top 10), and the
    /// best similarity each made-up query reached: what a floor is calibrated on.
    pub own_product_scores: Vec<f32>,
    pub gibberish_scores: Vec<f32>,
    /// Vector mode: the best similarity of each shopper-like query ("<brand> <type>",
    /// "<type>", "<colour> <type>"): what vector mode's floor is calibrated on.
    pub shopper_scores: Vec<f32>,
    /// The model's floor for vector mode, as the backend applied it.
    pub vector_floor: Option<f32>,
    /// Share of made-up queries answered with no hit in vector mode.
    pub gibberish_unanswered_vector: Option<f64>,
    /// Questions per family: captions, brand+type, type, colour+type, similar.
    pub questions: [usize; 5],
}

/// Made-up two-word queries, the same every run (a fixed linear congruential sequence).
pub fn gibberish(n: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    (0..n)
        .map(|_| {
            let mut word = || {
                let len = 5 + next(5);
                (0..len)
                    .map(|_| char::from(b'a' + next(26) as u8))
                    .collect::<String>()
            };
            format!("{} {}", word(), word())
        })
        .collect()
}

/// Vector mode's floor: the highest multiple of 0.01 at least [`VECTOR_FLOOR_MARGIN`] below
/// every shopper-like query's best similarity (so none loses its answer, with room for a
/// smaller catalogue, whose best matches are less near), and the share of made-up queries it
/// turns away; `None` without scores.
pub fn suggest_vector_floor(shopper: &[f32], gibberish: &[f32]) -> Option<(f32, f64)> {
    if shopper.is_empty() || gibberish.is_empty() {
        return None;
    }
    let lowest = shopper.iter().copied().fold(f32::INFINITY, f32::min);
    let floor = ((lowest - VECTOR_FLOOR_MARGIN) * 100.0).floor() / 100.0;
    let away = gibberish.iter().filter(|s| **s < floor).count() as f64 / gibberish.len() as f64;
    Some((floor, away))
}

/// How far under the least near shopper-like query vector mode's floor sits.
pub const VECTOR_FLOOR_MARGIN: f32 = 0.02;

/// The lowest floor (a multiple of 0.01) that leaves at most 5% of made-up queries with a hit,
/// and the share of captions' own products at or above it; `None` without made-up scores.
pub fn suggest_floor(own: &[f32], gibberish: &[f32]) -> Option<(f32, f64)> {
    if gibberish.is_empty() {
        return None;
    }
    let mut sorted = gibberish.to_vec();
    sorted.sort_by(f32::total_cmp);
    let p95 = sorted[((sorted.len() as f64 * 0.95).ceil() as usize).min(sorted.len()) - 1];
    let floor = ((p95 * 100.0).floor() + 1.0) / 100.0;
    let kept = own.iter().filter(|s| **s >= floor).count() as f64 / own.len().max(1) as f64;
    Some((floor, kept))
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// An attribute question: the query and what a relevant hit has.
struct Question {
    query: String,
    depth: usize,
    relevant: Box<dyn Fn(&backend_api::ImageItem) -> bool + Send + Sync>,
}

/// Groups of at least `min` products by `key`, in a stable order.
fn groups<K: Ord + Clone>(
    products: &[Product],
    key: impl Fn(&Product) -> Option<K>,
    min: usize,
) -> Vec<(K, usize)> {
    let mut counts = BTreeMap::new();
    for p in products {
        if let Some(k) = key(p) {
            *counts.entry(k).or_insert(0usize) += 1;
        }
    }
    counts.into_iter().filter(|(_, n)| *n >= min).collect()
}

fn questions(products: &[Product]) -> [Vec<Question>; 3] {
    let same =
        |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
    let brand_type = groups(
        products,
        |p| (!p.brand().is_empty()).then(|| (p.brand(), p.article_type.clone())),
        3,
    )
    .into_iter()
    .map(|((brand, kind), n)| Question {
        query: format!("{brand} {kind}"),
        depth: n.min(5),
        relevant: Box::new(move |item| {
            brand_of(&item.attributes.caption) == brand
                && same(&item.attributes.article_type, &kind)
        }),
    })
    .collect();
    let by_type = groups(products, |p| Some(p.article_type.clone()), 10)
        .into_iter()
        .map(|(kind, n)| Question {
            query: kind.clone(),
            depth: n.min(10),
            relevant: Box::new(move |item| same(&item.attributes.article_type, &kind)),
        })
        .collect();
    let colour_type = groups(
        products,
        |p| (!p.colour.is_empty()).then(|| (p.colour.clone(), p.article_type.clone())),
        5,
    )
    .into_iter()
    .map(|((colour, kind), n)| Question {
        query: format!("{colour} {kind}"),
        depth: n.min(10),
        relevant: Box::new(move |item| {
            same(&item.attributes.colour, &colour) && same(&item.attributes.article_type, &kind)
        }),
    })
    .collect();
    [brand_type, by_type, colour_type]
}

async fn search(
    client: &BackendClient,
    q: &str,
    mode: SearchMode,
    k: usize,
) -> anyhow::Result<SearchResponse> {
    let params = SearchParams {
        k: Some(k),
        ..SearchParams::default()
    };
    client
        .search_text_as(q, mode, &params)
        .await
        .with_context(|| format!("{mode} search for {q:?}"))
}

/// Every question in every mode, through `client`. `points` gives each product's point id (as
/// the ETL made it); `max_captions` bounds the caption and similar questions (evenly sampled).
pub async fn evaluate(
    client: &BackendClient,
    products: &[Product],
    points: &[Uuid],
    max_captions: usize,
) -> anyhow::Result<Report> {
    let step = products.len().div_ceil(max_captions.max(1)).max(1);
    let sample: Vec<usize> = (0..products.len()).step_by(step).collect();
    let families = questions(products);
    let mut report = Report {
        products: products.len(),
        questions: [
            sample.len(),
            families[0].len(),
            families[1].len(),
            families[2].len(),
            sample.len(),
        ],
        ..Report::default()
    };
    for mode in SearchMode::ALL {
        let mut scores = Scores::default();
        let found: Vec<(bool, bool, Option<f32>)> = futures::stream::iter(&sample)
            .map(|&i| async move {
                let response = search(client, &products[i].caption, mode, 10).await?;
                let rank = response.hits.iter().position(|h| h.item.id == points[i]);
                let score = rank.map(|r| response.hits[r].score);
                Ok::<_, anyhow::Error>((rank == Some(0), rank.is_some(), score))
            })
            .buffered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        if mode == SearchMode::Vector {
            report.own_product_scores = found.iter().filter_map(|x| x.2).collect();
        }
        let share = |f: fn(&(bool, bool, Option<f32>)) -> bool| {
            mean(
                &found
                    .iter()
                    .map(|x| f64::from(u8::from(f(x))))
                    .collect::<Vec<_>>(),
            )
        };
        scores.caption_r1 = share(|x| x.0);
        scores.caption_r10 = share(|x| x.1);
        let mut precision = Vec::new();
        for family in &families {
            let answers: Vec<(f64, Option<f32>)> = futures::stream::iter(family)
                .map(|question| async move {
                    let response = search(client, &question.query, mode, question.depth).await?;
                    let relevant = response
                        .hits
                        .iter()
                        .take(question.depth)
                        .filter(|h| (question.relevant)(&h.item))
                        .count();
                    let best = response.hits.first().map(|h| h.score);
                    Ok::<_, anyhow::Error>((relevant as f64 / question.depth as f64, best))
                })
                .buffered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            if mode == SearchMode::Vector {
                report
                    .shopper_scores
                    .extend(answers.iter().filter_map(|a| a.1));
            }
            let values: Vec<f64> = answers.iter().map(|a| a.0).collect();
            precision.push(mean(&values));
        }
        scores.brand_type = precision[0];
        scores.type_p10 = precision[1];
        scores.colour_type_p10 = precision[2];
        scores.queries = sample.len() + families.iter().map(Vec::len).sum::<usize>();
        report.modes.insert(mode.as_str(), scores);
    }
    let probe = search(client, "dress", SearchMode::Hybrid, 1).await?;
    report.model = probe.model;
    report.relevance_floor = probe.relevance_floor;
    let probe = search(client, "dress", SearchMode::Vector, 1).await?;
    report.vector_floor = probe.relevance_floor;
    let made_up = gibberish(GIBBERISH);
    let (mut unanswered, mut unanswered_vector) = (Vec::new(), Vec::new());
    for q in &made_up {
        let hybrid = search(client, q, SearchMode::Hybrid, 10).await?;
        unanswered.push(f64::from(u8::from(hybrid.hits.is_empty())));
        let vector = search(client, q, SearchMode::Vector, 1).await?;
        unanswered_vector.push(f64::from(u8::from(vector.hits.is_empty())));
        report
            .gibberish_scores
            .extend(vector.hits.first().map(|h| h.score));
    }
    report.gibberish_unanswered = mean(&unanswered);
    report.gibberish_unanswered_vector = mean(&unanswered_vector);
    let params = SearchParams {
        k: Some(10),
        ..SearchParams::default()
    };
    let unique: HashSet<Uuid> = sample.iter().map(|&i| points[i]).collect();
    let by_point: HashMap<Uuid, &Product> =
        sample.iter().map(|&i| (points[i], &products[i])).collect();
    let similar: Vec<f64> = futures::stream::iter(unique)
        .map(|id| {
            let params = &params;
            let kind = by_point[&id].article_type.clone();
            async move {
                let response = client
                    .similar(id, params)
                    .await
                    .with_context(|| format!("more like {id}"))?;
                let same = response
                    .hits
                    .iter()
                    .filter(|h| {
                        h.item
                            .attributes
                            .article_type
                            .as_deref()
                            .is_some_and(|t| t == kind)
                    })
                    .count();
                Ok::<_, anyhow::Error>(same as f64 / 10.0)
            }
        })
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    report.similar_type_p10 = mean(&similar);
    Ok(report)
}

impl Report {
    /// The figures as a table, a row per mode.
    pub fn table(&self) -> String {
        let cell = |v: Option<f64>| v.map_or_else(|| "    -".to_owned(), |v| format!("{v:5.3}"));
        let mut out = String::new();
        let [captions, brand_type, types, colour_types, similar] = self.questions;
        let _ = writeln!(
            out,
            "search quality through the API: {} held-out products, model {}",
            self.products, self.model
        );
        let _ = writeln!(
            out,
            "questions: {captions} captions, {brand_type} brand+type, {types} type, {colour_types} colour+type, {similar} more-like-this"
        );
        let _ = writeln!(
            out,
            "mode      caption R@1  caption R@10  brand+type P  type P@10  colour+type P@10"
        );
        for (mode, s) in &self.modes {
            let _ = writeln!(
                out,
                "{mode:<8}  {:>11}  {:>12}  {:>12}  {:>9}  {:>16}",
                cell(s.caption_r1),
                cell(s.caption_r10),
                cell(s.brand_type),
                cell(s.type_p10),
                cell(s.colour_type_p10),
            );
        }
        let _ = writeln!(
            out,
            "more like this (no words, every mode): type P@10 {}",
            cell(self.similar_type_p10)
        );
        let _ = writeln!(
            out,
            "made-up queries answered with no match (hybrid): {} (relevance floor {})",
            cell(self.gibberish_unanswered),
            self.relevance_floor
                .map_or_else(|| "none".to_owned(), |f| format!("{f:.2}"))
        );
        let _ = writeln!(
            out,
            "made-up queries answered with no match (vector): {} (relevance floor {})",
            cell(self.gibberish_unanswered_vector),
            self.vector_floor
                .map_or_else(|| "none".to_owned(), |f| format!("{f:.2}"))
        );
        if self.vector_floor.is_none()
            && let Some((floor, away)) =
                suggest_vector_floor(&self.shopper_scores, &self.gibberish_scores)
        {
            let _ = writeln!(
                out,
                "calibration (vector): a floor of {floor:.2} ({VECTOR_FLOOR_MARGIN} under the least near of {} shopper-like queries: brand+type, type, colour+type) turns away {away:.3} of made-up ones",
                self.shopper_scores.len()
            );
            let quantile = |values: &[f32], q: f64| {
                let mut sorted = values.to_vec();
                sorted.sort_by(f32::total_cmp);
                sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
            };
            let _ = writeln!(
                out,
                "  best similarity of shopper-like queries: min {:.3}, 2% {:.3}, 10% {:.3}, median {:.3}; of made-up ones: median {:.3}, 95% {:.3}, max {:.3}",
                quantile(&self.shopper_scores, 0.0),
                quantile(&self.shopper_scores, 0.02),
                quantile(&self.shopper_scores, 0.10),
                quantile(&self.shopper_scores, 0.5),
                quantile(&self.gibberish_scores, 0.5),
                quantile(&self.gibberish_scores, 0.95),
                quantile(&self.gibberish_scores, 1.0),
            );
        }
        if self.relevance_floor.is_none()
            && let Some((floor, kept)) =
                suggest_floor(&self.own_product_scores, &self.gibberish_scores)
        {
            let _ = writeln!(
                out,
                "calibration: a relevance floor of {floor:.2} (above 95% of made-up queries' best similarity) keeps {kept:.3} of the captions' own products found by meaning"
            );
        }
        out
    }

    pub fn mode(&self, mode: SearchMode) -> &Scores {
        static EMPTY: Scores = Scores {
            caption_r1: None,
            caption_r10: None,
            brand_type: None,
            type_p10: None,
            colour_type_p10: None,
            queries: 0,
        };
        self.modes.get(mode.as_str()).unwrap_or(&EMPTY)
    }
}

/// Loads the first `limit` held-out products of `dataset` into `catalogue` with the ETL, then
/// evaluates through its backend; the report, and the products loaded.
pub async fn run(
    catalogue: &local_stack::Catalogue,
    dataset: &Path,
    limit: usize,
    max_captions: usize,
) -> anyhow::Result<Report> {
    let (products, lines) = validation_products(dataset, limit)?;
    anyhow::ensure!(
        !products.is_empty(),
        "no held-out products with photos in {}",
        dataset.display()
    );
    let split = tempfile::tempdir()?;
    write_split(dataset, &lines, split.path())?;
    let timeout = std::time::Duration::from_secs(300);
    let backend_url = catalogue.backend.url();
    let clients = etl::Clients {
        backend: BackendClient::new(backend_url.clone(), timeout)?
            .with_api_key(local_stack::API_KEY),
        model: model_serving_api::ModelServingClient::new(catalogue.model.url(), timeout)?,
        store: catalogue.store()?,
    };
    let options = etl::LoadOptions {
        dataset: etl::datasets::DatasetKind::FashionProductImages,
        source: split.path().to_owned(),
        limit: None,
        batch_size: 32,
        concurrency: 2,
        dry_run: false,
        progress: false,
        max_request_pixels: etl::DEFAULT_MAX_REQUEST_PIXELS,
    };
    let summary = etl::load(&options, &clients).await?;
    anyhow::ensure!(
        summary.failed.is_empty(),
        "the ETL failed on {} products: {:?}",
        summary.failed.len(),
        summary.failed.first()
    );
    let points = products
        .iter()
        .map(|p| {
            let photo = dataset.join("images").join(format!("{}.jpg", p.id));
            let bytes = std::fs::read(&photo)?;
            Ok(etl::point_id(
                etl::datasets::DatasetKind::FashionProductImages,
                &bytes,
            ))
        })
        .collect::<anyhow::Result<Vec<Uuid>>>()?;
    let client = BackendClient::new(backend_url, timeout)?;
    evaluate(&client, &products, &points, max_captions).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_rule_is_training_s() {
        // Values of data.py's fnv1a32.
        assert_eq!(fnv1a32(""), 0x811C_9DC5);
        assert_eq!(fnv1a32("a"), 0xE40C_292C);
        assert_eq!(
            (0..1000).filter(|i| is_validation(&i.to_string())).count() / 10,
            10,
            "about one in ten"
        );
    }

    #[test]
    fn made_up_queries_are_the_same_every_run_and_a_floor_sits_above_them() {
        assert_eq!(gibberish(3), gibberish(3));
        assert!(gibberish(40).iter().all(|q| q.split(' ').count() == 2));
        let made_up: Vec<f32> = (0..100).map(|i| 0.10 + i as f32 * 0.001).collect();
        let (floor, kept) = suggest_floor(&[0.5, 0.3, 0.19], &made_up).expect("floor");
        assert!((floor - 0.20).abs() < 1e-6, "{floor}");
        assert!((kept - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(suggest_floor(&[0.5], &[]), None);
    }

    #[test]
    fn the_vector_floor_sits_under_every_shopper_query() {
        // 100 shopper-like queries from 0.405 to 0.90: the floor is 0.38 (0.405 - 0.02, down).
        let shopper: Vec<f32> = (0..100).map(|i| 0.405 + i as f32 * 0.005).collect();
        let made_up = [0.30, 0.35, 0.385, 0.50];
        let (floor, away) = suggest_vector_floor(&shopper, &made_up).expect("floor");
        assert!((floor - 0.38).abs() < 1e-6, "{floor}");
        assert!((away - 0.5).abs() < 1e-9, "{away}");
        assert!(
            shopper
                .iter()
                .all(|s| *s >= floor + VECTOR_FLOOR_MARGIN - 1e-6)
        );
        assert_eq!(suggest_vector_floor(&[], &made_up), None);
    }

    #[test]
    fn brands_are_the_first_word() {
        let p = Product {
            id: "1".into(),
            caption: "Puma Men Black Watch".into(),
            article_type: "Watches".into(),
            colour: "Black".into(),
        };
        assert_eq!(p.brand(), "puma");
        assert_eq!(brand_of(""), "");
    }
}
