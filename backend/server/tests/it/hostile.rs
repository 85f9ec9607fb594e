//! Hostile traffic against the backend: URLs that point inside (SSRF), paging that overflows,
//! anonymous writes with huge bodies, inputs that must not open the breaker, and a delete racing
//! an add of the same bytes. Every address used is on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{StatusCode as AxumStatus, header};
use axum::response::IntoResponse;
use backend_api::{ErrorBody, ImageAttributes};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: ErrorBody = response.json().await.expect("JSON error body");
    (status, body.error.code, body.error.message)
}

/// A loopback web server: `/photo.jpg`, `/text`, `/big` (larger than the backend's body limit),
/// `/redirect?to=URL` and `/loop` (redirects to itself). Counts the requests it answers.
struct ImageServer {
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn image_server(photo: Vec<u8>) -> ImageServer {
    #[derive(serde::Deserialize)]
    struct To {
        to: String,
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let photo = bytes::Bytes::from(photo);
    let counted = hits.clone();
    let app = axum::Router::new()
        .route(
            "/photo.jpg",
            axum::routing::get(move || {
                let photo = photo.clone();
                async move { ([(header::CONTENT_TYPE, "image/jpeg")], photo) }
            }),
        )
        .route("/text", axum::routing::get(|| async { "hello" }))
        .route(
            "/big",
            axum::routing::get(|| async { vec![0xFF_u8; (2 << 20) + 1] }),
        )
        .route(
            "/redirect",
            axum::routing::get(|Query(To { to }): Query<To>| async move {
                (AxumStatus::FOUND, [(header::LOCATION, to)]).into_response()
            }),
        )
        .route(
            "/loop",
            axum::routing::get(|| async {
                (AxumStatus::FOUND, [(header::LOCATION, "/loop")]).into_response()
            }),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    ImageServer { port, hits }
}

async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn url_fetches_cannot_reach_inside_and_fail_alike() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let photo = std::fs::read(&products(1)[0].photo).expect("photo");
    let allowed = image_server(photo.clone()).await;
    let inside = image_server(photo.clone()).await;
    let closed = closed_port().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(data.path(), ms.addr);
    // Only this one loopback address and port is opened, as a private deployment would.
    cfg.fetch_allow = format!("127.0.0.1:{}", allowed.port)
        .parse()
        .expect("allowlist");
    let backend = start_backend(&cfg).await.expect("backend");
    let add = |url: String| {
        backend
            .http
            .post(backend.url("/v1/images"))
            .header("x-api-key", API_KEY)
            .json(&serde_json::json!({"url": url, "dataset": "by-url"}))
            .send()
    };

    let (a, i) = (allowed.port, inside.port);
    let refused = [
        // Loopback, open port, closed port, every spelling of 127.0.0.1, IPv6 forms.
        format!("http://127.0.0.1:{i}/photo.jpg"),
        format!("http://127.0.0.1:{closed}/photo.jpg"),
        format!("http://localhost:{i}/photo.jpg"),
        format!("http://2130706433:{i}/photo.jpg"),
        format!("http://0x7f000001:{i}/photo.jpg"),
        format!("http://0177.0.0.1:{i}/photo.jpg"),
        format!("http://127.1:{i}/photo.jpg"),
        format!("http://[::1]:{i}/photo.jpg"),
        format!("http://[::ffff:127.0.0.1]:{i}/photo.jpg"),
        format!("http://[::ffff:7f00:1]:{i}/photo.jpg"),
        format!("http://0.0.0.0:{i}/photo.jpg"),
        // Refused before any connection: metadata, private, CGNAT.
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/photo.jpg".to_owned(),
        "http://100.64.0.1/photo.jpg".to_owned(),
        "http://[fd00:ec2::254]/".to_owned(),
        // The allowlisted server redirecting inside, to an open and to a closed port.
        format!("http://127.0.0.1:{a}/redirect?to=http://127.0.0.1:{i}/photo.jpg"),
        format!("http://127.0.0.1:{a}/redirect?to=http://127.0.0.1:{closed}/photo.jpg"),
        format!("http://127.0.0.1:{a}/redirect?to=http://[::1]:{i}/photo.jpg"),
        // Allowlisted, but failing: too many redirects, a body over the limit.
        format!("http://127.0.0.1:{a}/loop"),
        format!("http://127.0.0.1:{a}/big"),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for url in &refused {
        let (status, code, message) = error_of(add(url.clone()).await.expect("send")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "fetch_failed"),
            "{url}"
        );
        messages.insert(message);
    }
    assert_eq!(
        messages.len(),
        1,
        "one message for every case: {messages:?}"
    );
    assert_eq!(
        inside.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the server that is not allowlisted"
    );

    // Not URLs we fetch at all: said plainly.
    for url in ["file:///etc/passwd", "gopher://127.0.0.1:70/", "nonsense"] {
        let (status, code, _) = error_of(add(url.into()).await.expect("send")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_url"),
            "{url}"
        );
    }

    // The allowlisted address works, directly and through a redirect that stays on it.
    let direct = add(format!("http://127.0.0.1:{a}/photo.jpg"))
        .await
        .expect("send");
    assert_eq!(direct.status(), StatusCode::OK);
    let item: backend_api::ImageItem = direct.json().await.expect("item");
    let stored = backend
        .engine
        .store()
        .get(&item.s3_key)
        .await
        .expect("stored");
    assert_eq!(stored, photo);
    let redirected = add(format!(
        "http://127.0.0.1:{a}/redirect?to=/redirect%3Fto%3D/photo.jpg"
    ))
    .await
    .expect("send");
    assert_eq!(
        redirected.status(),
        StatusCode::OK,
        "two redirects on the allowed host"
    );
    // Fetched, but not an image: the engine says so.
    let (status, code, _) = error_of(
        add(format!("http://127.0.0.1:{a}/text"))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert_eq!(inside.hits.load(Ordering::SeqCst), 0);
    assert!(allowed.hits.load(Ordering::SeqCst) > 0);
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

#[tokio::test]
async fn paging_depth_is_checked_without_overflow_on_every_route() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let products = products(3);
    ingest(&backend, ms.addr, &products).await;
    let id = point_id(&products[0]);
    let max = usize::MAX;
    let get = |path: String| backend.http.get(backend.url(&path)).send();
    let refused = [
        format!("/v1/search?q=dress&k=1&offset={max}"),
        format!("/v1/search?q=dress&k=100&offset={}", max - 50),
        "/v1/search?q=dress&k=100&offset=901".to_owned(),
        format!("/v1/images/{id}/similar?k=1&offset={max}"),
        format!("/v1/images?limit=1&offset={max}"),
        format!("/v1/images?limit=100&offset={}", max - 50),
        "/v1/images?limit=20&offset=981".to_owned(),
        "/v1/images?offset=100000".to_owned(),
    ];
    for path in &refused {
        let (status, code, _) = error_of(get(path.clone()).await.expect("send")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{path}"
        );
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(&products[0].photo).expect("photo"))
            .file_name("q.jpg"),
    );
    let image = backend
        .http
        .post(backend.url(&format!("/v1/search/image?k=1&offset={max}")))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(image).await.0, StatusCode::BAD_REQUEST);
    // The deepest allowed pages still answer.
    for path in [
        "/v1/search?q=dress&k=100&offset=900",
        "/v1/images?limit=20&offset=980",
    ] {
        let response = get(path.to_owned()).await.expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

/// Sends a request head announcing a body of `length` bytes and only `sent` of them, then reads
/// the answer: a server that waits for the body before answering times out here.
async fn answer_before_body(
    addr: std::net::SocketAddr,
    head: &str,
    length: usize,
    sent: usize,
) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{}",
        "[".repeat(sent)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write head");
    let mut answer = vec![0_u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
    match read {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&answer[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn writes_are_refused_before_the_body_is_read() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let id = Uuid::nil();
    let length = 2 << 20; // the body limit in these tests; never sent
    for head in [
        "POST /v1/images:batch HTTP/1.1".to_owned(),
        "POST /v1/images:batch HTTP/1.1\r\nx-api-key: wrong-key-0123456789".to_owned(),
        "POST /v1/images HTTP/1.1".to_owned(),
        format!("DELETE /v1/images/{id} HTTP/1.1"),
    ] {
        let answer = answer_before_body(backend.addr, &head, length, 16)
            .await
            .unwrap_or_else(|| panic!("no answer before the body to {head:?}"));
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{head:?} answered {answer}"
        );
    }
    // With the key, the same request waits for its body (it is read only once authorized).
    let head = format!("POST /v1/images:batch HTTP/1.1\r\nx-api-key: {API_KEY}");
    let started = std::time::Instant::now();
    assert_eq!(
        answer_before_body(backend.addr, &head, length, 16).await,
        None
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    // Reads on the same paths need no key.
    let list = backend
        .http
        .get(backend.url("/v1/images"))
        .send()
        .await
        .expect("send");
    assert_eq!(list.status(), StatusCode::OK);
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

#[tokio::test]
async fn refused_images_never_open_the_breaker() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    ingest(&backend, ms.addr, &products(4)).await;
    // A PNG signature over garbage: model-serving refuses each one (4xx). Twice the breaker's
    // threshold of faults would open it if input errors counted.
    let mut bad = b"\x89PNG\r\n\x1a\n".to_vec();
    bad.extend_from_slice(&[0xAB; 512]);
    for _ in 0..10 {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bad.clone()).file_name("bad.png"),
        );
        let response = backend
            .http
            .post(backend.url("/v1/search/image"))
            .multipart(form)
            .send()
            .await
            .expect("send");
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    assert!(!backend.engine.encoder().breaker_open());
    let page = backend
        .client
        .search_text("green kurta", &backend_api::SearchParams::default())
        .await
        .expect("search still works");
    assert_eq!(page.hits.len(), 4);
    backend.stop().await;
    ms.stop().await.expect("model-serving stops cleanly");
}

/// A backend and its model-serving for the delete/add races, and the photo they race over
/// with its content-addressed object key.
struct Race {
    ms: local_stack::Running<()>,
    _data: tempfile::TempDir,
    backend: TestBackend,
    photo: Vec<u8>,
    key: String,
}

impl Race {
    async fn start() -> Race {
        let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
        let data = tempfile::tempdir().expect("tempdir");
        let backend = start_backend(&config(data.path(), ms.addr))
            .await
            .expect("backend");
        let photo = std::fs::read(&products(1)[0].photo).expect("photo");
        let key = backend::search::content_key(&photo, "jpg");
        Race {
            ms,
            _data: data,
            backend,
            photo,
            key,
        }
    }

    async fn stop(self) {
        self.backend.stop().await;
        self.ms.stop().await.expect("model-serving stops cleanly");
    }
}

#[tokio::test]
async fn a_delete_racing_an_add_of_the_same_bytes_keeps_the_object() {
    let race = Race::start().await;
    let (engine, photo, key) = (
        race.backend.engine.clone(),
        race.photo.clone(),
        race.key.clone(),
    );
    let attributes = |dataset: &str| ImageAttributes {
        dataset: dataset.into(),
        ..Default::default()
    };
    let old = Uuid::new_v4();
    for round in 0..12 {
        engine
            .add_image(photo.clone(), attributes("old"), Some(old))
            .await
            .expect("add");
        let new = Uuid::new_v4();
        // The last point holding the object goes while a new point with the same bytes comes.
        let (deleted, added) = tokio::join!(
            engine.delete(old),
            engine.add_image(photo.clone(), attributes("new"), Some(new))
        );
        deleted.expect("delete");
        added.expect("add");
        assert!(
            engine.store().get(&key).await.is_ok(),
            "round {round}: the new point's object was deleted"
        );
        let item = engine.get(new).await.expect("new point");
        assert_eq!(
            reqwest::get(&item.url).await.expect("GET").status(),
            StatusCode::OK
        );
        engine.delete(new).await.expect("delete new");
        assert!(
            engine.store().get(&key).await.is_err(),
            "round {round}: unreferenced objects are removed"
        );
    }
    drop(engine);
    race.stop().await;
}

#[tokio::test]
async fn a_batch_cannot_name_an_object_a_racing_delete_removed() {
    use backend::search::SearchError;
    let race = Race::start().await;
    let (engine, photo, key) = (
        race.backend.engine.clone(),
        race.photo.clone(),
        race.key.clone(),
    );
    let vector = engine
        .encoder()
        .embed_images(vec![photo.clone()])
        .await
        .expect("embed")
        .value
        .remove(0);
    let item = |id: Uuid| backend_api::IngestItem {
        id,
        vector: vector.clone(),
        s3_key: key.clone(),
        attributes: ImageAttributes {
            dataset: "etl".into(),
            ..Default::default()
        },
    };

    // Deterministic: the object went with the last point; a batch naming it is refused until
    // the object is stored again.
    let old = Uuid::new_v4();
    engine
        .store()
        .put(&key, photo.clone(), "image/jpeg")
        .await
        .expect("put");
    engine.ingest(vec![item(old)], None).await.expect("ingest");
    engine.delete(old).await.expect("delete");
    let new = Uuid::new_v4();
    match engine.ingest(vec![item(new)], None).await {
        Err(SearchError::ObjectGone(gone)) => assert_eq!(gone, key),
        other => panic!("expected ObjectGone, got {other:?}"),
    }
    assert!(engine.get(new).await.is_err(), "no point was written");
    engine
        .store()
        .put(&key, photo.clone(), "image/jpeg")
        .await
        .expect("put");
    assert_eq!(
        engine.ingest(vec![item(new)], None).await.expect("ingest"),
        1
    );
    engine.delete(new).await.expect("delete");

    // Racing, as the ETL would: store the object, then the batch arrives while the last point
    // naming it is being deleted. Whichever wins, no point is left naming a missing object.
    let mut refused = 0;
    for round in 0..20 {
        engine
            .store()
            .put(&key, photo.clone(), "image/jpeg")
            .await
            .expect("put");
        let old = Uuid::new_v4();
        engine.ingest(vec![item(old)], None).await.expect("ingest");
        let new = Uuid::new_v4();
        let (deleted, ingested) =
            tokio::join!(engine.delete(old), engine.ingest(vec![item(new)], None));
        deleted.expect("delete");
        match ingested {
            Ok(1) => {
                assert!(
                    engine.store().exists(&key).await.expect("head"),
                    "round {round}: point {new} names a deleted object"
                );
                engine.delete(new).await.expect("delete new");
            }
            Err(SearchError::ObjectGone(_)) => {
                refused += 1;
                assert!(engine.get(new).await.is_err());
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    eprintln!("{refused} of 20 racing batches were refused with object_missing");
    drop(engine);
    race.stop().await;
}

#[tokio::test]
async fn thousands_of_multipart_parts_are_refused_on_uploads() {
    let ms = start_model_serving("127.0.0.1:0".parse().expect("addr")).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), ms.addr))
        .await
        .expect("backend");
    let parts = || {
        (0..5_000).fold(reqwest::multipart::Form::new(), |form, i| {
            form.text(format!("f{i}"), "x")
        })
    };
    for (path, key) in [("/v1/search/image", None), ("/v1/images", Some(API_KEY))] {
        let mut request = backend.http.post(backend.url(path)).multipart(parts());
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let (status, code, _) = error_of(request.send().await.expect("send")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "too_many_parts"),
            "{path}"
        );
    }
}
