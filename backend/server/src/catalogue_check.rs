//! Catalogue health, sampled: every interval a few points and a few stored objects are checked
//! against each other, and the pre-signed URLs shoppers get are fetched.
//!
//! - `missing_object`: a sampled point whose object is gone from S3 (the shop shows a broken
//!   image);
//! - `presign_failed`: a sampled point whose object exists but whose pre-signed URL does not
//!   answer (a public endpoint S3 does not serve, clock skew, keys rotated): every image in the
//!   shop is broken. A public host this process cannot resolve (a browser-facing name) is
//!   checked through the internal endpoint with the public `Host` header, so the signature is
//!   judged as S3 judges the browser's; whether browsers reach that name is not seen from here;
//! - `orphan_object`: a sampled object, older than `orphan_min_age`, that no point references
//!   (storage paid for nothing; an interrupted delete or load). Younger ones may be a load in
//!   flight (the ETL stores objects before it indexes their points).
//!
//! Each run samples different points and objects (a rotating start), so over time the whole
//! catalogue is covered while one run stays bounded: `sample` points and `sample` objects.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::index::Filter;
use crate::metrics;
use crate::search::SearchEngine;

#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    /// Time between runs; zero turns the check off.
    pub interval: Duration,
    /// Points, and objects, checked per run.
    pub sample: usize,
    /// Objects younger than this are not called orphans.
    pub orphan_min_age: Duration,
    /// How long a pre-signed URL may take to answer.
    pub fetch_timeout: Duration,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            sample: 20,
            orphan_min_age: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// What one run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub points_checked: usize,
    pub objects_checked: usize,
    pub missing_objects: usize,
    pub presign_failures: usize,
    pub orphan_objects: usize,
}

pub struct CatalogueCheck {
    settings: CheckSettings,
    http: reqwest::Client,
    runs: u64,
    last_key: String,
}

impl CatalogueCheck {
    pub fn new(settings: CheckSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            settings,
            http,
            runs: 0,
            last_key: String::new(),
        })
    }

    /// Runs every interval while the backend runs (it holds the engine only during a run).
    pub fn spawn(engine: &Arc<SearchEngine>, settings: CheckSettings) -> anyhow::Result<()> {
        if settings.interval.is_zero() {
            return Ok(());
        }
        let mut check = Self::new(settings)?;
        let weak = Arc::downgrade(engine);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                match check.run(&engine).await {
                    Ok(report) => tracing::info!(?report, "catalogue check ran"),
                    Err(error) => tracing::warn!(%error, "catalogue check failed"),
                }
            }
        });
        Ok(())
    }

    pub async fn run(&mut self, engine: &SearchEngine) -> anyhow::Result<CheckReport> {
        let mut report = CheckReport::default();
        let index = engine.index();
        let store = engine.store();
        let points = index.count(&Filter::default()).await?;
        let n = self.settings.sample as u64;
        if points > 0 && n > 0 {
            // Spread over the catalogue, from a start that moves each run.
            let step = (points / n).max(1);
            let start = (self.runs.wrapping_mul(7919)) % points;
            let mut seen = std::collections::HashSet::new();
            for i in 0..n.min(points) {
                let offset = (start + i * step) % points;
                let Some(record) = index
                    .list(offset as usize, 1, &Filter::default())
                    .await?
                    .into_iter()
                    .next()
                else {
                    continue;
                };
                if !seen.insert(record.id) {
                    continue;
                }
                report.points_checked += 1;
                let key = &record.payload.s3_key;
                if !store.exists(key).await? {
                    report.missing_objects += 1;
                    continue;
                }
                // What a shopper's browser does: GET the pre-signed URL (one byte of it); sent
                // to the internal endpoint when the public name does not resolve in here.
                let (url, host) = store.presigned_probe(key)?;
                let mut request = self.http.get(&url).header("range", "bytes=0-0");
                if let Some(host) = host {
                    request = request.header(reqwest::header::HOST, host);
                }
                let answered = request.send().await.is_ok_and(|r| r.status().is_success());
                if !answered {
                    report.presign_failures += 1;
                }
            }
        }
        // Objects in key order from where the last run stopped, wrapping at the end.
        let mut keys = store
            .list_keys(&self.last_key, self.settings.sample)
            .await?;
        if keys.is_empty() && !self.last_key.is_empty() {
            keys = store.list_keys("", self.settings.sample).await?;
        }
        self.last_key = keys.last().map(|(k, _)| k.clone()).unwrap_or_default();
        let now = SystemTime::now();
        for (key, written) in keys {
            let old = written
                .and_then(|w| now.duration_since(w).ok())
                .is_some_and(|age| age >= self.settings.orphan_min_age);
            if !old {
                continue;
            }
            report.objects_checked += 1;
            // A thumbnail belongs to its original's points.
            let original = ::catalog::original_of_thumbnail(&key).unwrap_or(key);
            if index.count(&Filter::s3_key(original)).await? == 0 {
                report.orphan_objects += 1;
            }
        }
        self.runs += 1;
        let at = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::catalogue_check(&report, at);
        Ok(report)
    }
}
