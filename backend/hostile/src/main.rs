//! `make hostile`: the three services as separate release processes on loopback, each hostile
//! case sent once, and for each the status, the time and the peak extra memory of the services
//! that handled it; then a search soak with no metrics scraper, RSS sampled along the way.
//!
//! Settings (environment): `HOSTILE_BIN_DIR` (the release binaries), `MODEL_DIR`,
//! `ORT_DYLIB_PATH`, `DATASET_DIR` (photos to index first), `HOSTILE_SOAK_SECS` (default 600, 0
//! skips the soak), `HOSTILE_CLIENTS` (default 16), `HOSTILE_CASES` (0 runs the soak alone),
//! `HOSTILE_PHOTOS` (default 40), `HOSTILE_LATENCY` (1: search latency only, no cases or soak;
//! `HOSTILE_LATENCY_REQUESTS` per phase, `HOSTILE_SEARCH_PARAMS` added to each search). The
//! services inherit the environment, so `METRICS_UPKEEP_SECS=0` soaks them without the metrics
//! upkeep (the "before" measurement). Every process it starts is stopped by pid.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostile::process::{Service, free_addr, mb, reset_peak, status_kb};
use hostile::{Expect, Limits};
use reqwest::multipart::{Form, Part};

const KEY: &str = "hostile-run-write-key";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Row {
    case: String,
    expected: String,
    status: String,
    seconds: f64,
    extra_mb: Vec<f64>,
}

struct Run {
    http: reqwest::Client,
    services: Vec<Service>,
    rows: Vec<Row>,
    /// `HOSTILE_CASES=0`: only the soak runs (the cases are skipped, and reported as skipped).
    skip_cases: bool,
}

impl Run {
    fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| unreachable!("no service {name}"))
    }

    /// Runs one case: resets every service's peak mark, sends, and records status, time and the
    /// largest peak-over-start of any service.
    async fn case<F, Fut>(&mut self, case: &str, expected: &str, send: F)
    where
        F: FnOnce(reqwest::Client) -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        if self.skip_cases {
            return;
        }
        let before: Vec<u64> = self
            .services
            .iter()
            .map(|s| {
                reset_peak(s.pid());
                status_kb(s.pid(), "VmRSS:")
            })
            .collect();
        let started = Instant::now();
        let status = send(self.http.clone())
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        let seconds = started.elapsed().as_secs_f64();
        let extra_mb = self
            .services
            .iter()
            .zip(before)
            .map(|(s, before)| mb(status_kb(s.pid(), "VmHWM:").saturating_sub(before)))
            .collect();
        self.rows.push(Row {
            case: case.to_owned(),
            expected: expected.to_owned(),
            status,
            seconds,
            extra_mb,
        });
    }
}

async fn status_of(request: reqwest::RequestBuilder) -> Result<String, String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!(" (Retry-After {v})"))
        .unwrap_or_default();
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    Ok(format!("{status}{code}{retry}"))
}

/// Sends a large request over a plain socket while reading the answer at the same time. A server
/// that answers before reading the whole body (authorization first, a part limit) closes the
/// connection after answering; an HTTP client that writes first and reads after then sees only
/// the reset. This reads the answer as a browser would.
async fn early_answer(
    addr: SocketAddr,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<String, String> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tokio::task::spawn_blocking(move || exchange(addr, head, body))
        .await
        .map_err(|e| e.to_string())?
}

fn exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> Result<String, String> {
    let mut reader = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = reader.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && serde_json::from_str::<serde_json::Value>(body).is_ok()
        {
            break;
        }
    }
    drop(reader);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| "closed without an answer".to_owned())?;
    let code = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["error"]["code"].as_str().map(|c| format!(" {c}")))
        .unwrap_or_default();
    Ok(format!("{status}{code}"))
}

fn file_form(bytes: Vec<u8>) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name("upload"))
}

/// Sends headers and then trickles the body one byte a second; returns what the server says and
/// when, or that it kept waiting past `limit`.
fn slowloris(addr: SocketAddr, path: &str, limit: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=x\r\ncontent-length: 100000\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < limit {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        if stream.write_all(b"-").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(950));
    }
    let text = String::from_utf8_lossy(&answer);
    match text.split_whitespace().nth(1) {
        Some(status) => Ok(format!(
            "{status} after {:.1} s",
            started.elapsed().as_secs_f64()
        )),
        None if started.elapsed() >= limit => Ok(format!("still open after {} s", limit.as_secs())),
        None => Ok("closed without an answer".into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bins = PathBuf::from(env_or("HOSTILE_BIN_DIR", "target/release"));
    let model_dir = env_or("MODEL_DIR", "var/models/tiny");
    let ort = std::env::var("ORT_DYLIB_PATH").context("ORT_DYLIB_PATH")?;
    let dataset = PathBuf::from(env_or("DATASET_DIR", ""));
    let soak_secs: u64 = env_or("HOSTILE_SOAK_SECS", "600").parse()?;
    let clients: usize = env_or("HOSTILE_CLIENTS", "16").parse()?;
    let latency_only = env_or("HOSTILE_LATENCY", "0") == "1";
    let footprint_only = env_or("HOSTILE_FOOTPRINT", "0") == "1";

    let work = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    println!("hostile run: logs and data in {}", work.display());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;

    // Rate limits off: every case and the soak come from one loopback client, and the cases are
    // about what one request costs (rate limits have their own tests).
    let common = vec![
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("BACKEND_SEARCH_RATE_PER_SEC", "0".to_owned()),
        ("BACKEND_WRITE_RATE_PER_SEC", "0".to_owned()),
        ("FRONTEND_SEARCH_RATE_PER_SEC", "0".to_owned()),
    ];
    let mut model_serving = Service::start(
        "model-serving",
        &bins.join("model-serving"),
        &["serve"],
        Some("MODEL_SERVING_ADDR"),
        &[
            common.clone(),
            vec![
                ("MODEL_DIR", model_dir.clone()),
                ("ORT_DYLIB_PATH", ort.clone()),
            ],
        ]
        .concat(),
        &work,
    )?;
    let mut cold = vec![(
        "model-serving".to_owned(),
        model_serving.wait_healthy(&http).await?,
    )];
    let mut backend = Service::start(
        "backend",
        &bins.join("backend"),
        &[],
        Some("BACKEND_ADDR"),
        &[
            common.clone(),
            vec![
                (
                    "MODEL_SERVING_URL",
                    format!("http://{}", model_serving.addr),
                ),
                ("DATA_DIR", work.join("data").display().to_string()),
                ("S3_EMBEDDED_ADDR", free_addr()?.to_string()),
                ("S3_ACCESS_KEY", "hostile-access".to_owned()),
                ("S3_SECRET_KEY", "hostile-secret-key-0123456789".to_owned()),
                ("API_KEY", KEY.to_owned()),
            ],
        ]
        .concat(),
        &work,
    )?;
    cold.push((
        "backend (empty catalogue)".to_owned(),
        backend.wait_healthy(&http).await?,
    ));
    let mut frontend = Service::start(
        "frontend",
        &bins.join("frontend"),
        &[],
        Some("FRONTEND_ADDR"),
        &[
            common,
            vec![("BACKEND_URL", format!("http://{}", backend.addr))],
        ]
        .concat(),
        &work,
    )?;
    cold.push(("frontend".to_owned(), frontend.wait_healthy(&http).await?));

    // A small catalogue, so searches return hits.
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dataset.join("images"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    photos.sort();
    photos.truncate(env_or("HOSTILE_PHOTOS", "40").parse()?);
    for photo in &photos {
        let bytes = std::fs::read(photo)?;
        let response = http
            .post(backend.url("/v1/images"))
            .header("x-api-key", KEY)
            .multipart(
                file_form(bytes)
                    .text("dataset", "hostile")
                    .text("caption", "a catalogue photo"),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("loading {} answered {}", photo.display(), response.status());
        }
    }
    println!("indexed {} photos", photos.len());

    let mut run = Run {
        http,
        services: vec![model_serving, backend, frontend],
        rows: Vec::new(),
        skip_cases: latency_only || footprint_only || env_or("HOSTILE_CASES", "1") == "0",
    };
    let backend_url = |path: &str| run.service("backend").url(path);
    let search_image = backend_url("/v1/search/image?k=5");
    let images_url = backend_url("/v1/images");
    let offset_url = backend_url("/v1/search?q=red+dress&k=1&offset=18446744073709551615");
    let list_url = backend_url("/v1/images?offset=100000000&limit=100");
    let search_url = backend_url("/v1/search?k=10");
    let backend_addr = run.service("backend").addr;
    let frontend_upload = run.service("frontend").url("/search/image");
    let frontend_addr = run.service("frontend").addr;
    let model_addr = run.service("model-serving").addr;

    for case in hostile::images(Limits::default(), true) {
        let expected = match case.expect {
            Expect::Accepted => "200".to_owned(),
            Expect::Refused(s) => s.to_string(),
        };
        let (url, bytes) = (search_image.clone(), case.bytes);
        run.case(&format!("image: {}", case.name), &expected, |http| {
            status_of(http.post(url).multipart(file_form(bytes)))
        })
        .await;
    }
    // The same bomb through the shop's upload form.
    let bomb = hostile::png_gray_strip(hostile::WRAPPING_WIDTH, 1);
    run.case("shop upload: png_1bit_wrapping_width", "400", |http| {
        status_of(
            http.post(frontend_upload).multipart(
                Form::new().part(
                    "file",
                    Part::bytes(bomb)
                        .file_name("bomb.png")
                        .mime_str("image/png")
                        .unwrap_or_else(|_| Part::bytes(Vec::new())),
                ),
            ),
        )
    })
    .await;

    // Requests, not images.
    let huge_json = format!(
        "{{\"items\": [{}]}}",
        vec!["{\"id\":\"x\"}"; 1_500_000].join(",")
    );
    run.case("anonymous 30 MB batch JSON", "401", |_| {
        early_answer(
            backend_addr,
            "/v1/images:batch",
            "application/json",
            huge_json.into_bytes(),
        )
    })
    .await;
    let url = offset_url.clone();
    run.case("search offset 2^64-1", "400", |http| {
        status_of(http.get(url))
    })
    .await;
    let url = list_url.clone();
    run.case("list offset 1e8", "400", |http| status_of(http.get(url)))
        .await;
    let many_parts: String = (0..20_000)
        .map(|i| format!("--b\r\ncontent-disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n"))
        .chain(std::iter::once("--b--\r\n".to_owned()))
        .collect();
    run.case("20,000 multipart parts", "400", |_| {
        early_answer(
            backend_addr,
            "/v1/search/image?k=5",
            "multipart/form-data; boundary=b",
            many_parts.into_bytes(),
        )
    })
    .await;
    let image_server = TcpListener::bind("127.0.0.1:0")?;
    let image_addr = image_server.local_addr()?;
    for (name, target) in [
        ("loopback", format!("http://{image_addr}/red.png")),
        (
            "loopback decimal",
            format!("http://2130706433:{}/red.png", image_addr.port()),
        ),
        (
            "loopback hex",
            format!("http://0x7f000001:{}/red.png", image_addr.port()),
        ),
        (
            "ipv4-mapped ipv6",
            format!("http://[::ffff:127.0.0.1]:{}/red.png", image_addr.port()),
        ),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("private", "http://10.0.0.1/a.png".to_owned()),
        ("closed port", "http://127.0.0.1:1/a.png".to_owned()),
    ] {
        let url = images_url.clone();
        let body = serde_json::json!({ "url": target, "dataset": "hostile" }).to_string();
        run.case(&format!("SSRF: {name}"), "400", |http| {
            status_of(
                http.post(url)
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(body),
            )
        })
        .await;
    }
    drop(image_server);
    for (name, addr, path) in [
        (
            "slowloris: backend image search",
            backend_addr,
            "/v1/search/image",
        ),
        ("slowloris: shop upload", frontend_addr, "/search/image"),
        (
            "slowloris: model-serving encode",
            model_addr,
            "/encode_image",
        ),
    ] {
        run.case(name, "408", |_| async move {
            tokio::task::spawn_blocking(move || slowloris(addr, path, Duration::from_secs(90)))
                .await
                .map_err(|e| e.to_string())?
        })
        .await;
    }
    let url = search_url.clone();
    run.case("search right after", "200", |http| {
        status_of(http.get(format!("{url}&q=red+dress")))
    })
    .await;

    println!();
    println!(
        "| case | expected | answered | seconds | model-serving peak +MB | backend peak +MB | frontend peak +MB |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    let mut worst = (0.0f64, 0.0f64);
    for row in &run.rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.1} |",
            row.case,
            row.expected,
            row.status,
            row.seconds,
            row.extra_mb[0],
            row.extra_mb[1],
            row.extra_mb[2]
        );
        if !row.case.starts_with("slowloris") {
            worst.0 = worst.0.max(row.seconds);
        }
        worst.1 = row.extra_mb.iter().fold(worst.1, |a, &b| a.max(b));
    }
    let mismatches = run
        .rows
        .iter()
        .filter(|r| !r.status.starts_with(&r.expected))
        .count();
    println!(
        "\nworst time (slowloris excluded) {:.3} s (target 2 s); worst peak extra {:.1} MB (target 256 MB); {} of {} cases answered other than expected",
        worst.0,
        worst.1,
        mismatches,
        run.rows.len()
    );
    for service in &mut run.services {
        let alive = service.alive();
        println!("{} alive after the cases: {alive}", service.name);
    }

    if footprint_only {
        let secs = env_or("HOSTILE_FOOTPRINT_SECS", "20").parse()?;
        footprint(&mut run, cold, photos.len(), &photos, clients, secs).await?;
    } else if latency_only {
        // HOSTILE_SEARCH_PARAMS (e.g. "&mode=vector") is added to every latency search, so a
        // build can be compared with an older one on the same kind of search.
        let search_url = format!("{search_url}{}", env_or("HOSTILE_SEARCH_PARAMS", ""));
        latency(&run, &search_url).await;
    } else if soak_secs > 0 {
        let shop_url = run.service("frontend").url("/");
        soak(&run, &search_url, &shop_url, soak_secs, clients).await;
    }
    drop(run);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `HOSTILE_FOOTPRINT=1` (a `make bench` step): each service's cold start (process start to
/// ready; the backend again after a restart over the catalogue just loaded), resident memory at
/// idle, and peak resident memory under `clients` closed-loop clients (text searches through
/// the API, each new so it reaches model-serving; image searches; shop pages) for `secs`.
async fn footprint(
    run: &mut Run,
    mut cold: Vec<(String, Duration)>,
    indexed: usize,
    photos: &[PathBuf],
    clients: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let backend = run
        .services
        .iter_mut()
        .find(|s| s.name == "backend")
        .context("no backend")?;
    backend.restart()?;
    let again = backend.wait_healthy(&run.http).await?;
    cold.insert(2, (format!("backend ({indexed} images)"), again));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = run.services.iter().map(|s| s.rss_mb()).collect();
    run.services.iter().for_each(|s| s.reset_peak());

    let photos: Arc<Vec<Vec<u8>>> = Arc::new(
        photos
            .iter()
            .take(32)
            .map(std::fs::read)
            .collect::<Result<_, _>>()?,
    );
    let search = run.service("backend").url("/v1/search?k=10&q=");
    let image = run.service("backend").url("/v1/search/image?k=10");
    let shop = run.service("frontend").url("/?q=");
    let http = run.http.clone();
    let nonce = std::process::id();
    let stats = hostile::process::closed_loop(
        clients,
        (secs * 2000).max(100),
        Duration::from_secs(secs),
        move |i| match i % 4 {
            0 | 1 => http.get(format!("{search}footprint+{nonce}+{i}")),
            2 => http
                .post(&image)
                .multipart(file_form(photos[i as usize % photos.len()].clone())),
            _ => http.get(format!("{shop}red+dress+{i}")),
        },
    )
    .await;
    let peak: Vec<f64> = run.services.iter().map(|s| s.peak_mb()).collect();

    println!("\ncold start: process start to ready");
    println!("| service | ms |");
    println!("|---|---:|");
    for (name, took) in &cold {
        println!("| {name} | {:.0} |", took.as_secs_f64() * 1e3);
    }
    println!(
        "\nresident memory (MB): idle, and peak under {clients} clients for {secs} s \
         ({} requests, {} failed, {:.0}/s: text searches, image searches, shop pages)",
        stats.ok,
        stats.failed,
        stats.per_second()
    );
    println!("| service | idle | peak under load |");
    println!("|---|---:|---:|");
    for (service, (idle, peak)) in run.services.iter().zip(idle.iter().zip(&peak)) {
        println!("| {} | {idle:.0} | {peak:.0} |", service.name);
    }
    println!(
        "| whole stack | {:.0} | {:.0} |",
        idle.iter().sum::<f64>(),
        peak.iter().sum::<f64>()
    );
    Ok(())
}

/// `clients` loops of text searches (varied, so some miss the cache) for `secs`, no scraper;
/// RSS of each service every tenth of the run.
async fn soak(run: &Run, search_url: &str, shop_url: &str, secs: u64, clients: usize) {
    println!("\nsoak: {clients} clients of text search for {secs} s, nothing scraping /metrics");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let words = [
        "red", "blue", "black", "white", "green", "dress", "shirt", "shoes", "watch", "bag",
    ];
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, stop, done, failed) =
                (run.http.clone(), stop.clone(), done.clone(), failed.clone());
            let (search_url, shop_url) = (search_url.to_owned(), shop_url.to_owned());
            // Even clients call the backend's API, odd ones the shop's search page (which calls
            // the backend), so all three services carry load.
            let base = if c % 2 == 0 {
                format!("{search_url}&q=")
            } else {
                format!("{shop_url}?q=")
            };
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    i += 7;
                    // 2,000 distinct queries: the query cache fills in the first tenth, and the
                    // misses before that reach model-serving.
                    let q = format!("{} {} {}", words[i % 10], words[(i / 10) % 10], i % 2000);
                    let ok = http
                        .get(format!("{base}{}", q.replace(' ', "+")))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                }
            })
        })
        .collect();
    let pids: Vec<(&str, u32)> = run.services.iter().map(|s| (s.name, s.pid())).collect();
    let sample = || {
        pids.iter()
            .map(|&(_, pid)| mb(status_kb(pid, "VmRSS:")))
            .collect::<Vec<_>>()
    };
    let mut first = None;
    println!(
        "| t (s) | requests | {} |",
        pids.iter()
            .map(|p| format!("{} RSS MB", p.0))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---:|---:|{}", "---:|".repeat(pids.len()));
    let step = Duration::from_secs((secs / 10).max(1));
    let started = Instant::now();
    let mut last = sample();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(step).await;
        last = sample();
        // Growth is measured from the end of the first tenth (caches and pools warm up first).
        first.get_or_insert_with(|| last.clone());
        println!(
            "| {:.0} | {} | {} |",
            started.elapsed().as_secs_f64(),
            done.load(Ordering::Relaxed),
            last.iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let first = first.unwrap_or_else(|| last.clone());
    println!(
        "soak: {} searches ({} failed); RSS change from the first tenth to the end (target within 10%): {}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        pids.iter()
            .zip(first.iter().zip(&last))
            .map(|(p, (a, b))| format!("{} {:+.1}%", p.0, (b - a) / a.max(1.0) * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `HOSTILE_LATENCY=1`: text-search latency through the backend's API at 1 and 16 clients,
/// uncached (every query new, so it is embedded by model-serving) and cached (20 queries asked
/// before); each phase bounded to `HOSTILE_LATENCY_REQUESTS` requests (default 400) and 60 s.
/// Run it against two builds (`HOSTILE_BIN_DIR`) to compare them.
async fn latency(run: &Run, search_url: &str) {
    let warm: Vec<String> = (0..20).map(|i| format!("warm query {i}")).collect();
    for q in &warm {
        let _ = run
            .http
            .get(format!("{search_url}&q={}", q.replace(' ', "+")))
            .send()
            .await;
    }
    println!("\nlatency: text search through the backend API (k=10)");
    println!("| clients | queries | requests | failed | p50 ms | p99 ms | searches/s |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let nonce = std::process::id();
    let requests: u64 = env_or("HOSTILE_LATENCY_REQUESTS", "400")
        .parse()
        .unwrap_or(400);
    for clients in [1usize, 16] {
        for cached in [false, true] {
            let budget = Arc::new(AtomicU64::new(requests));
            let started = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let (http, budget, warm) = (run.http.clone(), budget.clone(), warm.clone());
                    let base = format!("{search_url}&q=");
                    tokio::spawn(async move {
                        let mut times = Vec::new();
                        let mut failed = 0u64;
                        let mut i = 0usize;
                        while budget
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                b.checked_sub(1)
                            })
                            .is_ok()
                            && started.elapsed() < Duration::from_secs(60)
                        {
                            i += 1;
                            let q = if cached {
                                warm[(c + i) % warm.len()].clone()
                            } else {
                                format!("latency {nonce} {clients} {c} {i}")
                            };
                            let sent = Instant::now();
                            let ok = http
                                .get(format!("{base}{}", q.replace(' ', "+")))
                                .send()
                                .await
                                .is_ok_and(|r| r.status().is_success());
                            if ok {
                                times.push(sent.elapsed().as_secs_f64() * 1000.0);
                            } else {
                                failed += 1;
                            }
                        }
                        (times, failed)
                    })
                })
                .collect();
            let mut times = Vec::new();
            let mut failed = 0;
            for task in tasks {
                if let Ok((t, f)) = task.await {
                    times.extend(t);
                    failed += f;
                }
            }
            let elapsed = started.elapsed().as_secs_f64();
            times.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                times
                    .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            println!(
                "| {clients} | {} | {} | {failed} | {:.1} | {:.1} | {:.0} |",
                if cached { "cached" } else { "uncached" },
                times.len(),
                pct(0.5),
                pct(0.99),
                times.len() as f64 / elapsed.max(1e-9)
            );
        }
    }
}
