//! `make bench` for the backend.
//!
//! A. With the tiny model, model-serving and the backend in process (real HTTP on loopback),
//!    10,000 indexed vectors: search latency p50/p99 at 1 and 16 concurrent clients; the ratio
//!    end-to-end / (encode + index search) from the same run; cached-query p50.
//! B. The embedded index alone at 100,000 vectors (512-d, clustered like real embeddings):
//!    recall@10 against exact search and latency p50/p99, for a few `hnsw_ef` values.
//!
//! Every loop is bounded in count; traffic stays on loopback.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backend::index::edge::EdgeIndex;
use backend::index::{
    Filter, IndexQuery, Point, SearchRequest, SearchTuning, StoredPayload, VectorIndex,
};
use backend_api::{BackendClient, ImageAttributes, IngestItem, SearchMode, SearchParams};
use model_serving_api::ModelServingClient;
use uuid::Uuid;

/// SplitMix64: a small, seedable generator (repeatable runs without a rand dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Points around `clusters` random centres: closer to real embeddings than uniform noise.
fn clustered(rng: &mut Rng, centres: &[Vec<f32>], spread: f32) -> Vec<f32> {
    let c = &centres[(rng.next_u64() % centres.len() as u64) as usize];
    normalise(c.iter().map(|x| x + spread * rng.gaussian()).collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        percentile(&samples, 50.0) * 1e3,
        percentile(&samples, 99.0) * 1e3,
    )
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `make bench`)"))
}

/// Words a catalogue's captions are made of, so keyword and hybrid searches have terms to
/// match (a product name: brand, colour, type).
const BRANDS: [&str; 8] = [
    "Puma", "Nike", "Titan", "Fabindia", "Adidas", "Fastrack", "Biba", "Roadster",
];
const COLOURS: [&str; 6] = ["Red", "Blue", "Black", "White", "Green", "Pink"];
const TYPES: [&str; 8] = [
    "Dress", "Jacket", "Watch", "Kurta", "Sneakers", "Shirt", "Jeans", "Handbag",
];

fn payload(key: &str, i: usize) -> StoredPayload {
    StoredPayload {
        s3_key: key.to_owned(),
        created_at: "2026-11-21T00:00:00Z".into(),
        thumbnail: None,
        attributes: ImageAttributes {
            dataset: "bench".into(),
            caption: format!(
                "{} {} {} {i}",
                BRANDS[i % BRANDS.len()],
                COLOURS[(i / 8) % COLOURS.len()],
                TYPES[(i / 48) % TYPES.len()]
            ),
            gender: Some(if i.is_multiple_of(2) { "Men" } else { "Women" }.into()),
            ..Default::default()
        },
    }
}

/// 16 clients, `each` searches each, every query new (`query(client, i)`): the latencies and
/// the searches per second.
async fn sixteen_clients(
    client: &BackendClient,
    params: &SearchParams,
    each: usize,
    mode: SearchMode,
    query: impl Fn(usize, usize) -> String + Clone + Send + 'static,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let (client, params, query) = (client.clone(), params.clone(), query.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..each {
                    let t = Instant::now();
                    client.search_text_as(&query(c, i), mode, &params).await?;
                    out.push(t.elapsed().as_secs_f64());
                }
                Ok::<_, anyhow::Error>(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, rate))
}

/// A first-page top-10 index search for `query`, unfiltered.
fn top10(query: IndexQuery) -> SearchRequest {
    SearchRequest {
        query,
        limit: 10,
        offset: 0,
        filter: Filter::default(),
        min_score: None,
        exclude: Vec::new(),
    }
}

fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init_with("backend-bench", telemetry::TelemetryConfig::quiet())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        pipeline().await?;
        // BACKEND_BENCH_RECALL=0 skips (B), the 100,000-vector index (a few minutes).
        if std::env::var("BACKEND_BENCH_RECALL").as_deref() == Ok("0") {
            return Ok(());
        }
        recall().await
    })
}

async fn pipeline() -> anyhow::Result<()> {
    let model_dir = env_path("TEST_MODEL_DIR")?;
    let ort = env_path("ORT_DYLIB_PATH")?;
    let dataset = env_path("DATASET_DIR")?;
    let model_serving = local_stack::start_model_serving(
        local_stack::loopback().await?,
        local_stack::encoder_config(model_dir, ort),
        model_serving::HttpLimits {
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            ..model_serving::HttpLimits::default()
        },
    )
    .await?;
    let ms_addr = model_serving.addr;

    let data = tempfile::tempdir()?;
    let key = "bench-api-key-0123456789";
    let config = backend::config::BackendConfig {
        optimize_after_secs: 3600,
        timeout_secs: 30,
        query_cache_entries: 10_000,
        ..local_stack::backend_config(data.path(), ms_addr, key)
    };
    let backend = local_stack::start_backend(&config, local_stack::loopback().await?).await?;
    let engine = backend.engine.clone();
    let addr = backend.addr();
    let client =
        BackendClient::new(format!("http://{addr}"), Duration::from_secs(30))?.with_api_key(key);
    let model = ModelServingClient::new(format!("http://{ms_addr}"), Duration::from_secs(30))?;

    // 10,000 vectors: real photos stored once, vectors spread around the real embeddings.
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dataset.join("images"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(64);
    let bytes: Vec<Vec<u8>> = photos.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let seeds = model.encode_images(bytes.clone()).await?.embeddings;
    let mut keys = Vec::new();
    for b in &bytes {
        let key = backend::search::content_key(b, "jpg");
        engine.store().put(&key, b.clone(), "image/jpeg").await?;
        keys.push(key);
    }
    let mut rng = Rng(7);
    let total = 10_000;
    let started = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let items = chunk
            .iter()
            .map(|&i| IngestItem {
                id: Uuid::from_u128(i as u128 + 1),
                vector: clustered(&mut rng, &seeds, 0.05),
                s3_key: keys[i % keys.len()].clone(),
                attributes: payload("", i).attributes,
            })
            .collect();
        client.ingest_batch(items).await?;
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    engine.index().optimize().await?;
    let optimize_s = started.elapsed().as_secs_f64();
    // The backend makes a thumbnail per indexed image in the background (decode, resize,
    // encode, store): measured beside it, searches shared the CPU with it (a fifth of the
    // samples were the JPEG encoder) for as long as it ran, one mode more than the other.
    // Wait for it, bounded.
    let started = Instant::now();
    while !engine.index().missing_thumbnails(1).await?.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "thumbnails still being made after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "backend benchmark — tiny model, embedded Qdrant + embedded S3, real HTTP on loopback"
    );
    println!(
        "\n(A) {total} vectors ingested through the batch API in {ingest_s:.2} s ({:.0}/s); HNSW built in {optimize_s:.2} s; thumbnails made in the background in {:.1} s more (measured after)",
        total as f64 / ingest_s,
        started.elapsed().as_secs_f64()
    );

    let params = SearchParams {
        k: Some(10),
        ..Default::default()
    };
    // Warm-up (connections, model info).
    client
        .search_text_as("warm up", SearchMode::Vector, &params)
        .await?;

    // 1 client, distinct queries (cache misses), end to end.
    let queries: Vec<String> = (0..200)
        .map(|i| format!("red summer dress number {i}"))
        .collect();
    let mut e2e = Vec::new();
    for q in &queries {
        let t = Instant::now();
        client
            .search_text_as(q, SearchMode::Vector, &params)
            .await?;
        e2e.push(t.elapsed().as_secs_f64());
    }
    // The two stages alone, same queries' shapes: encode through model-serving, index search.
    let mut encode = Vec::new();
    let mut vectors = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let v = model
            .encode_text(&[format!("a photo of {q} again")])
            .await?
            .embeddings;
        encode.push(t.elapsed().as_secs_f64());
        vectors.extend(v);
    }
    let mut search = Vec::new();
    for v in &vectors {
        let t = Instant::now();
        engine
            .index()
            .search(top10(IndexQuery::Vector(v.clone())))
            .await?;
        search.push(t.elapsed().as_secs_f64());
    }
    let (e2e50, e2e99) = ms(e2e);
    let (enc50, _) = ms(encode);
    let (idx50, idx99) = ms(search);
    println!("    1 client, uncached     p50 {e2e50:>7.2} ms   p99 {e2e99:>7.2} ms");

    // 16 clients, distinct queries.
    let (all, rate) = sixteen_clients(&client, &params, 40, SearchMode::Vector, |c, i| {
        format!("blue denim jacket {c} {i}")
    })
    .await?;
    let (c50, c99) = ms(all);
    println!(
        "    16 clients, uncached   p50 {c50:>7.2} ms   p99 {c99:>7.2} ms   ({rate:.0} searches/s)"
    );

    let mut cached = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client
            .search_text_as("red summer dress number 0", SearchMode::Vector, &params)
            .await?;
        cached.push(t.elapsed().as_secs_f64());
    }
    let (h50, h99) = ms(cached);
    println!("    cached query           p50 {h50:>7.2} ms   p99 {h99:>7.2} ms");
    println!(
        "    stages alone           encode p50 {enc50:.2} ms, index search p50 {idx50:.3} ms (p99 {idx99:.3} ms)"
    );
    println!(
        "    end-to-end / (encode + index search) at p50   {:.2}   (target <= 1.2)",
        e2e50 / (enc50 + idx50)
    );

    // Hybrid (the default) against vector-only, same queries, same load: words found in the
    // catalogue's captions, so both rankings have candidates.
    println!(
        "\n(C) hybrid vs vector-only text search, uncached (target: hybrid p99 <= 1.3x vector)"
    );
    // One pass's p99 ratio moved between 1.11 and 1.52 on a quiet machine, too wide to judge a
    // 1.3 target by: several passes, each mode in turn, and the ratios' median and range.
    let passes = match std::env::var("BACKEND_BENCH_PASSES") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=20).contains(&n))
            .ok_or_else(|| anyhow::anyhow!("BACKEND_BENCH_PASSES must be 1 to 20, not {v:?}"))?,
        Err(_) => 5,
    };
    let (mut one_ratios, mut many_ratios) = (Vec::new(), Vec::new());
    for pass in 0..passes {
        let mut p99s = Vec::new();
        for mode in [SearchMode::Vector, SearchMode::Hybrid] {
            // Distinct per mode and pass too: the query cache must not serve one mode's
            // embeddings to the other, nor one pass's to the next.
            let word_query = move |c: usize, i: usize| {
                format!(
                    "{} {} {} {}-{pass}-{c}-{i}",
                    COLOURS[i % COLOURS.len()].to_lowercase(),
                    TYPES[(i + c) % TYPES.len()].to_lowercase(),
                    BRANDS[c % BRANDS.len()].to_lowercase(),
                    mode.as_str()
                )
            };
            // Warm-up: the first searches of a mode touch what the timed ones reuse (the
            // keyword tokenizer, the sparse index's pages); without it they were the 1-client
            // p99.
            for i in 0..20 {
                client
                    .search_text_as(&word_query(98, i), mode, &params)
                    .await?;
            }
            // Enough searches that a p99 is not the 2nd-slowest of 200 (as it was): 2,000 for
            // one client, 16 x 150 at once.
            let mut one = Vec::new();
            for i in 0..2000 {
                let t = Instant::now();
                client
                    .search_text_as(&word_query(99, i), mode, &params)
                    .await?;
                one.push(t.elapsed().as_secs_f64());
            }
            let (many, rate) = sixteen_clients(&client, &params, 150, mode, move |c, i| {
                word_query(c, 10_000 + i)
            })
            .await?;
            let (o50, o99) = ms(one);
            let (m50, m99) = ms(many);
            println!(
                "    pass {} {:<7} 1 client p50 {o50:>6.2} ms p99 {o99:>6.2} ms   16 clients p50 {m50:>6.2} ms p99 {m99:>6.2} ms ({rate:.0}/s)",
                pass + 1,
                mode.as_str()
            );
            p99s.push((o99, m99));
        }
        one_ratios.push(p99s[1].0 / p99s[0].0);
        many_ratios.push(p99s[1].1 / p99s[0].1);
    }
    for (clients, mut ratios) in [("1 client  ", one_ratios), ("16 clients", many_ratios)] {
        ratios.sort_by(f64::total_cmp);
        println!(
            "    hybrid / vector p99, {clients}: median {:.2}, range {:.2}-{:.2} over {passes} passes (target <= 1.3)",
            percentile(&ratios, 50.0),
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }

    // The index alone, same query vectors, one caller: what hybrid adds inside the engine,
    // and its parts (each ranking alone at the hybrid prefetch depth).
    let words: Vec<backend::index::keywords::SparseVector> = (0..vectors.len())
        .map(|i| {
            backend::index::keywords::query(&format!(
                "{} {} {}",
                COLOURS[i % COLOURS.len()],
                TYPES[i % TYPES.len()],
                BRANDS[i % BRANDS.len()]
            ))
        })
        .collect::<Result<_, _>>()?;
    let (meaning_depth, words_depth) = IndexQuery::prefetch_depths(10);
    for part in ["vector", "vector@depth", "keywords@depth", "hybrid"] {
        let mut took = Vec::new();
        // 10 passes over the 200 queries: a p99 of 2,000.
        for _ in 0..10 {
            for (v, w) in vectors.iter().zip(&words) {
                let (query, limit) = match part {
                    "vector" => (IndexQuery::Vector(v.clone()), 10),
                    "vector@depth" => (IndexQuery::Vector(v.clone()), meaning_depth),
                    "keywords@depth" => (IndexQuery::Keywords(w.clone()), words_depth),
                    _ => (
                        IndexQuery::Hybrid {
                            vector: v.clone(),
                            keywords: w.clone(),
                        },
                        10,
                    ),
                };
                let request = SearchRequest {
                    limit,
                    ..top10(query)
                };
                let t = Instant::now();
                engine.index().search(request).await?;
                took.push(t.elapsed().as_secs_f64());
            }
        }
        let (p50, p99) = ms(took);
        println!("    index alone, {part:<14}  p50 {p50:>6.3} ms p99 {p99:>6.3} ms");
    }

    drop(engine);
    backend.stop().await?;
    model_serving.stop().await?;
    Ok(())
}

async fn recall() -> anyhow::Result<()> {
    const N: usize = 100_000;
    const DIM: usize = 512;
    const QUERIES: usize = 200;
    let mut rng = Rng(42);
    let centres: Vec<Vec<f32>> = (0..2000)
        .map(|_| normalise((0..DIM).map(|_| rng.gaussian()).collect()))
        .collect();
    let vectors: Vec<Vec<f32>> = (0..N)
        .map(|_| clustered(&mut rng, &centres, 0.04))
        .collect();
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| clustered(&mut rng, &centres, 0.04))
        .collect();

    // Exact top 10 by brute force (cosine = dot product of unit vectors).
    let truth: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
                .collect();
            scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
            scored[..10].iter().map(|s| s.1).collect()
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let tuning = |hnsw_ef| SearchTuning {
        hnsw_ef,
        exact: false,
        threads: 1,
    };
    let started = Instant::now();
    {
        let index = EdgeIndex::open(dir.path(), tuning(128))?;
        for (c, chunk) in vectors.chunks(5000).enumerate() {
            let points = chunk
                .iter()
                .enumerate()
                .map(|(j, v)| Point {
                    id: Uuid::from_u128((c * 5000 + j) as u128 + 1),
                    vector: v.clone(),
                    payload: payload("k", c * 5000 + j),
                })
                .collect();
            index.upsert(points).await?;
        }
        let upserted = started.elapsed().as_secs_f64();
        let started = Instant::now();
        index.optimize().await?;
        index.flush().await?;
        println!(
            "\n(B) embedded index, {N} vectors × {DIM}: upsert {:.0} points/s, HNSW build {:.1} s",
            N as f64 / upserted,
            started.elapsed().as_secs_f64()
        );
    }
    for ef in [64, 128, 256] {
        let index = EdgeIndex::open(dir.path(), tuning(ef))?;
        // One untimed pass: page the graph in, as a serving process would have.
        for q in &queries {
            index
                .search(SearchRequest {
                    query: IndexQuery::Vector(q.clone()),
                    limit: 10,
                    offset: 0,
                    filter: Filter::default(),
                    min_score: None,
                    exclude: Vec::new(),
                })
                .await?;
        }
        let mut latencies = Vec::new();
        let mut found = 0;
        for (q, want) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let hits = index
                .search(SearchRequest {
                    query: IndexQuery::Vector(q.clone()),
                    limit: 10,
                    offset: 0,
                    filter: Filter::default(),
                    min_score: None,
                    exclude: Vec::new(),
                })
                .await?;
            latencies.push(t.elapsed().as_secs_f64());
            found += hits
                .iter()
                .filter(|h| want.contains(&((h.id.as_u128() - 1) as usize)))
                .count();
        }
        let (p50, p99) = ms(latencies);
        println!(
            "    hnsw_ef {ef:>3}   recall@10 {:.3}   p50 {p50:.2} ms   p99 {p99:.2} ms   (target recall >= 0.97, p99 <= 5 ms)",
            found as f64 / (QUERIES * 10) as f64
        );
    }
    Ok(())
}
