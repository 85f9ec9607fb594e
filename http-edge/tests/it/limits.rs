//! The edge layers against real connections: slow bodies and heads, slow handlers, load
//! shedding with the ops routes still answering, rate limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use http_edge::rate_limit::{Rate, RateLimit};
use http_edge::{self as edge, EdgeLimits};
use telemetry::{Readiness, ops_router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVICE: &str = "edge-it";

fn limits() -> EdgeLimits {
    EdgeLimits {
        request_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        max_concurrent: 16,
    }
}

/// `api` behind [`edge::protect`], the ops routes beside it, served by [`edge::serve`].
async fn spawn(api: Router, limits: EdgeLimits, readiness: Readiness) -> SocketAddr {
    let metrics = telemetry::install_metrics(SERVICE).expect("metrics");
    let app = Router::new()
        .merge(edge::protect(api, SERVICE, &limits))
        .merge(ops_router(metrics, readiness));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(edge::serve(
        listener,
        app,
        limits.header_timeout,
        std::future::pending(),
    ));
    addr
}

fn upload_api() -> Router {
    Router::new().route(
        "/upload",
        post(|body: Bytes| async move { body.len().to_string() }),
    )
}

/// Reads until the peer closes or `limit` passes; returns what came and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        start.elapsed(),
    )
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    let addr = spawn(upload_api(), limits(), Readiness::new()).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .expect("head");
    // One byte every 100 ms: never idle long, but 1000 bytes would take 100 s.
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), trickle)
        .await
        .ok();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""code":"body_timeout""#), "{response}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // A body that arrives in time still works.
    let ok = reqwest::Client::new()
        .post(format!("http://{addr}/upload"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("upload");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "1000");
}

#[tokio::test]
async fn a_trickled_head_loses_its_connection() {
    let addr = spawn(upload_api(), limits(), Readiness::new()).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("partial head");
    let (received, elapsed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}: {received}"
    );
    assert!(!received.contains(" 200 "), "{received}");
}

#[tokio::test]
async fn a_slow_handler_answers_503_with_retry_after() {
    let api = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let limits = EdgeLimits {
        request_timeout: Duration::from_millis(300),
        ..limits()
    };
    let addr = spawn(api, limits, Readiness::new()).await;
    let start = Instant::now();
    let response = reqwest::get(format!("http://{addr}/slow"))
        .await
        .expect("request");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "timeout");
}

#[tokio::test]
async fn excess_requests_are_shed_while_ops_routes_answer() {
    let entered = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let (in_handler, gate) = (entered.clone(), open.clone());
    let api = Router::new().route(
        "/work",
        get(move || {
            let (in_handler, gate) = (in_handler.clone(), gate.clone());
            async move {
                in_handler.fetch_add(1, Ordering::SeqCst);
                for _ in 0..1000 {
                    if gate.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                "done"
            }
        }),
    );
    let limits = EdgeLimits {
        max_concurrent: 2,
        ..limits()
    };
    let addr = spawn(api, limits, Readiness::new()).await;
    let client = reqwest::Client::new();
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(format!("http://{addr}/work")).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while entered.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "both requests reach the handler");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let shed = client
        .get(format!("http://{addr}/work"))
        .send()
        .await
        .expect("request");
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let ops = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("ops");
        assert_eq!(
            ops.status(),
            200,
            "{path} answers while the API is saturated"
        );
        if path == "/metrics" {
            let text = ops.text().await.expect("metrics");
            let shed = r#"http_requests_rejected_total{service="edge-it",reason="overloaded"} 1"#;
            assert!(text.contains(shed), "{text}");
            assert!(
                text.contains("# HELP http_requests_rejected_total "),
                "declared with its help text"
            );
        }
    }

    open.store(true, Ordering::SeqCst);
    for request in busy {
        let response = request.await.expect("task").expect("request");
        assert_eq!(response.status(), 200);
    }
    // Capacity is back.
    let response = client
        .get(format!("http://{addr}/work"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

async fn search_api(limit: &RateLimit) -> Router {
    limit.apply(Router::new().route("/search", get(|| async { "hits" })))
}

fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_do_not() {
    let rate = Rate {
        per_second: 1,
        burst: 3,
    };
    let limit = RateLimit::per_client(SERVICE, rate, Vec::new());
    let addr = spawn(search_api(&limit).await, limits(), Readiness::new()).await;
    let url = format!("http://{addr}/search");
    let first = client_from("127.0.0.1");
    for _ in 0..3 {
        let ok = first.get(&url).send().await.expect("request");
        assert_eq!(ok.status(), 200);
    }
    // The bucket refills one a second: on a loaded machine the burst may have taken that long,
    // so the refusal comes within two more requests.
    let mut refused = first.get(&url).send().await.expect("request");
    if refused.status() == 200 {
        refused = first.get(&url).send().await.expect("request");
    }
    assert_eq!(refused.status(), 429);
    let refused_at = Instant::now();
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "retry after {retry}");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");

    // An untrusted peer cannot pose as someone else.
    let spoofed = first
        .get(&url)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("request");
    // A 200 here is only right if the bucket refilled meanwhile (a loaded machine).
    assert!(
        spoofed.status() == 429 || refused_at.elapsed() >= Duration::from_secs(1),
        "a spoofed X-Forwarded-For got {} within {:?} of the refusal",
        spoofed.status(),
        refused_at.elapsed()
    );

    // Another address (all of 127/8 is loopback) has its own budget.
    let second = client_from("127.0.0.2");
    let ok = second.get(&url).send().await.expect("request");
    assert_eq!(ok.status(), 200);

    // The limit refills: after Retry-After the first client passes again.
    // A new connection: the idle one may be closing just then (the header timeout is 1 s too).
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = client_from("127.0.0.1")
        .get(&url)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let rate = Rate {
        per_second: 1,
        burst: 2,
    };
    let limit = RateLimit::per_client(SERVICE, rate, vec!["127.0.0.1".parse().expect("ip")]);
    let addr = spawn(search_api(&limit).await, limits(), Readiness::new()).await;
    let url = format!("http://{addr}/search");
    let proxy = client_from("127.0.0.1");
    let as_client = |ip: &'static str| proxy.get(&url).header("x-forwarded-for", ip).send();
    for _ in 0..2 {
        assert_eq!(as_client("198.51.100.1").await.expect("r").status(), 200);
    }
    assert_eq!(as_client("198.51.100.1").await.expect("r").status(), 429);
    assert_eq!(as_client("198.51.100.2").await.expect("r").status(), 200);
}

#[tokio::test]
async fn each_api_key_has_its_own_budget() {
    let rate = Rate {
        per_second: 1,
        burst: 2,
    };
    let limit = RateLimit::per_header(SERVICE, rate, "x-api-key".parse().expect("header"));
    let api = limit.apply(Router::new().route("/write", post(|| async { "written" })));
    // An unlimited route beside it.
    let api = api.route("/read", get(|| async { "read" }));
    let addr = spawn(api, limits(), Readiness::new()).await;
    let client = reqwest::Client::new();
    let write = |key: &'static str| {
        client
            .post(format!("http://{addr}/write"))
            .header("x-api-key", key)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(write("key-a").await.expect("r").status(), 200);
    }
    let refused = write("key-a").await.expect("r");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(write("key-b").await.expect("r").status(), 200);
    for _ in 0..5 {
        let read = client
            .get(format!("http://{addr}/read"))
            .send()
            .await
            .expect("r");
        assert_eq!(read.status(), 200);
    }
}
