//! The search-quality canary: a fixed set of known questions, built from the loaded catalogue,
//! asked of the live index every interval, scored, and exported as `search_quality_*` gauges.
//! A model swapped for a random one, a broken export or a wrong preprocessing leave every latency
//! and error dashboard green; they fail these questions.
//!
//! Checks (each by meaning alone, vector mode, so keywords cannot hide a broken model):
//! - `caption_recall_at_10`, `caption_mrr`: a product's caption → that product in the top 10,
//!   and the mean reciprocal rank;
//! - `type_precision_at_10`: "<article type>" → share of the top 10 of that type, for the
//!   catalogue's commonest types;
//! - `photo_recall_at_1`: a catalogue photo, embedded again → itself first.
//!
//! The set is bounded (`CanarySettings`), drawn evenly across the catalogue in id order, and
//! rebuilt when the model or the catalogue's size changes by more than a tenth. Its questions go
//! to the index and the encoder directly, so the shopper metrics (searches, outcomes, stages) do
//! not count them; text embeddings go through the query cache, so a run with an unchanged model
//! costs index searches and a few image embeddings.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::index::{Filter, IndexQuery, SearchRequest};
use crate::metrics;
use crate::search::SearchEngine;

#[derive(Debug, Clone, Copy)]
pub struct CanarySettings {
    /// Time between runs; zero turns the canary off.
    pub interval: Duration,
    /// Captions asked per run.
    pub captions: usize,
    /// Article types asked per run (the commonest with at least `MIN_TYPE_ITEMS` products).
    pub types: usize,
    /// Photos embedded again per run.
    pub photos: usize,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            captions: 40,
            types: 8,
            photos: 4,
        }
    }
}

/// An article type is asked about only when this many products have it (so a perfect top 10
/// is possible at all).
const MIN_TYPE_ITEMS: u64 = 10;

/// What one run measured: each check's score and how many questions it asked.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryReport {
    pub scores: Vec<(&'static str, f64, usize)>,
    pub seconds: f64,
}

impl CanaryReport {
    pub fn score(&self, check: &str) -> Option<f64> {
        self.scores
            .iter()
            .find(|(c, _, _)| *c == check)
            .map(|(_, s, _)| *s)
    }
}

/// The known questions, with what they were built from.
#[derive(Debug, Clone, Default)]
struct CanarySet {
    model: String,
    points: u64,
    captions: Vec<(Uuid, String)>,
    types: Vec<String>,
    photos: Vec<(Uuid, String)>,
}

/// The canary's state between runs: its settings and question set. It holds no engine, so a
/// stopping backend is not kept alive by it.
pub struct Canary {
    settings: CanarySettings,
    set: CanarySet,
}

impl Canary {
    pub fn new(settings: CanarySettings) -> Self {
        Self {
            settings,
            set: CanarySet::default(),
        }
    }

    /// Runs every interval until the engine is the last holder gone (the backend stopped).
    pub fn spawn(engine: &Arc<SearchEngine>, settings: CanarySettings) {
        if settings.interval.is_zero() {
            return;
        }
        let weak = Arc::downgrade(engine);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut canary = Canary::new(settings);
            loop {
                ticks.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                match canary.run(&engine).await {
                    Ok(Some(report)) => tracing::info!(
                        scores = ?report.scores,
                        seconds = report.seconds,
                        "search-quality canary ran"
                    ),
                    Ok(None) => tracing::debug!("search-quality canary: nothing to ask yet"),
                    Err(error) => tracing::warn!(%error, "search-quality canary failed"),
                }
            }
        });
    }

    /// One run: rebuilds the set when needed, asks every question, exports the gauges.
    /// `None` when the catalogue or the model gives nothing to ask yet.
    pub async fn run(&mut self, engine: &SearchEngine) -> anyhow::Result<Option<CanaryReport>> {
        let started = Instant::now();
        let index = engine.index().clone();
        let encoder = engine.encoder();
        let points = index.count(&Filter::default()).await?;
        // The model is known after its first call: the first caption asked sets it. Its
        // fingerprint names it (a model changed in place is another model).
        let model = encoder
            .model()
            .map(|model| model.fingerprint)
            .unwrap_or_default();
        let stale = self.set.model != model
            || self.set.points == 0
            || points.abs_diff(self.set.points) * 10 > self.set.points;
        if stale {
            self.set = self.build(engine, points, model).await?;
        }
        if self.set.captions.is_empty() && self.set.photos.is_empty() {
            return Ok(None);
        }

        let mut scores = Vec::new();
        let (mut hits, mut reciprocal) = (0usize, 0.0f64);
        for (id, caption) in &self.set.captions {
            let (_, vector) = encoder.embed_query(caption).await?.value;
            let found = nearest(engine, vector, 10).await?;
            if let Some(rank) = found.iter().position(|(hit, _)| hit == id) {
                hits += 1;
                reciprocal += 1.0 / (rank + 1) as f64;
            }
        }
        let n = self.set.captions.len();
        if n > 0 {
            scores.push(("caption_recall_at_10", hits as f64 / n as f64, n));
            scores.push(("caption_mrr", reciprocal / n as f64, n));
        }

        let mut precision = 0.0;
        for kind in &self.set.types {
            let (_, vector) = encoder.embed_query(kind).await?.value;
            let found = nearest(engine, vector, 10).await?;
            let right = found
                .iter()
                .filter(|(_, t)| t.as_deref() == Some(kind.as_str()))
                .count();
            precision += right as f64 / found.len().max(1) as f64;
        }
        if !self.set.types.is_empty() {
            let n = self.set.types.len();
            scores.push(("type_precision_at_10", precision / n as f64, n));
        }

        let mut first = 0usize;
        let mut asked = 0usize;
        for (id, key) in &self.set.photos {
            // A photo deleted since the set was built is skipped, not counted as a miss.
            let Ok(bytes) = engine.store().get(key).await else {
                continue;
            };
            let vectors = encoder.embed_images(vec![bytes]).await?.value;
            let Some(vector) = vectors.into_iter().next() else {
                continue;
            };
            asked += 1;
            if nearest(engine, vector, 1)
                .await?
                .first()
                .map(|(hit, _)| hit)
                == Some(id)
            {
                first += 1;
            }
        }
        if asked > 0 {
            scores.push(("photo_recall_at_1", first as f64 / asked as f64, asked));
        }

        let report = CanaryReport {
            scores,
            seconds: started.elapsed().as_secs_f64(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::search_quality(&report.scores, report.seconds, now);
        Ok(Some(report))
    }

    /// Draws the questions evenly across the catalogue in id order (the same set for the same
    /// catalogue, whatever the order it was loaded in).
    async fn build(
        &self,
        engine: &SearchEngine,
        points: u64,
        model: String,
    ) -> anyhow::Result<CanarySet> {
        let index = engine.index();
        let s = self.settings;
        let mut set = CanarySet {
            model,
            points,
            ..CanarySet::default()
        };
        let want = s.captions.max(s.photos) as u64;
        if points == 0 || want == 0 {
            return Ok(set);
        }
        let step = (points / want).max(1);
        let mut offset = 0u64;
        while offset < points && (set.captions.len() < s.captions || set.photos.len() < s.photos) {
            let page = index.list(offset as usize, 1, &Filter::default()).await?;
            let Some(record) = page.into_iter().next() else {
                break;
            };
            let caption = record.payload.attributes.caption.trim();
            if set.captions.len() < s.captions && !caption.is_empty() {
                // At most 200 characters: what a shopper might paste, and a bounded query.
                let caption: String = caption.chars().take(200).collect();
                set.captions.push((record.id, caption));
            }
            if set.photos.len() < s.photos {
                set.photos.push((record.id, record.payload.s3_key.clone()));
            }
            offset += step;
        }
        set.types = index
            .facet("article_type", s.types)
            .await?
            .into_iter()
            .filter(|(_, n)| *n >= MIN_TYPE_ITEMS)
            .map(|(kind, _)| kind)
            .take(s.types)
            .collect();
        tracing::info!(
            points,
            captions = set.captions.len(),
            types = set.types.len(),
            photos = set.photos.len(),
            "search-quality canary set built"
        );
        Ok(set)
    }
}

/// The `limit` nearest points to `vector`: ids and article types.
async fn nearest(
    engine: &SearchEngine,
    vector: Vec<f32>,
    limit: usize,
) -> anyhow::Result<Vec<(Uuid, Option<String>)>> {
    let hits = engine
        .index()
        .search(SearchRequest {
            query: IndexQuery::Vector(vector),
            limit,
            offset: 0,
            filter: Filter::default(),
            min_score: None,
            exclude: Vec::new(),
        })
        .await?;
    Ok(hits
        .into_iter()
        .map(|h| (h.id, h.payload.attributes.article_type))
        .collect())
}
