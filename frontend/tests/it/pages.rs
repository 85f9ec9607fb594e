//! Every page and state, rendered by the frontend in process against the real backend and
//! model-serving (with real photos loaded by the ETL), a dead port, and a backend that hangs.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use frontend::FrontendConfig;
use frontend::views::EXAMPLE_QUERIES;
use tower::ServiceExt;

use crate::helpers::{Stack, free_addr, photo};

pub struct Page {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub html: String,
}

async fn send(app: &axum::Router, request: Request<Body>) -> Page {
    let response = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(request))
        .await
        .expect("the page answers")
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Page {
        status,
        headers,
        html: String::from_utf8(bytes.to_vec()).expect("utf-8 html"),
    }
}

async fn get(app: &axum::Router, uri: &str) -> Page {
    send(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

/// A multipart upload as a browser sends it: the file part plus plain fields.
async fn upload(
    app: &axum::Router,
    file: Option<(&str, Vec<u8>)>,
    fields: &[(&str, &str)],
) -> Page {
    let boundary = "----fashion-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let request = Request::post("/search/image")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .expect("request");
    send(app, request).await
}

/// The attributes of one tag, e.g. `<li class="card" data-id="...">`.
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut attrs = HashMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit([' ', '<'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        let raw = &rest[value_start..value_start + len];
        attrs.insert(name, html_escape::decode_html_entities(raw).into_owned());
        rest = &rest[value_start + len + 1..];
    }
    attrs
}

/// Every result card: its `data-*` attributes plus the image's `src` and `alt`.
pub fn cards(html: &str) -> Vec<HashMap<String, String>> {
    let mut found = Vec::new();
    for (start, _) in html.match_indices("<li ") {
        let Some(end) = html[start..].find('>') else {
            continue;
        };
        let mut attrs = attributes(&html[start..start + end]);
        if attrs.get("class").map(String::as_str) != Some("card") {
            continue;
        }
        if let Some(img) = html[start..].find("<img ") {
            let img_start = start + img;
            let img_end = img_start + html[img_start..].find('>').unwrap_or(0);
            let img_attrs = attributes(&html[img_start..img_end]);
            for key in ["src", "alt"] {
                if let Some(v) = img_attrs.get(key) {
                    attrs.insert(format!("img-{key}"), v.clone());
                }
            }
        }
        found.push(attrs);
    }
    found
}

fn config(backend_url: String) -> FrontendConfig {
    FrontendConfig {
        page_size: 8,
        max_upload_bytes: 64 * 1024,
        ..FrontendConfig::new(backend_url)
    }
}

/// One catalogue of 24 real photos, then each page's checks in turn (the stack is the costly
/// part: nextest runs each test in its own process, so the checks share it by running in one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_against_a_running_catalogue() {
    let stack = Stack::start(24).await;
    let app = frontend::router(&config(stack.backend_url())).expect("router");
    home_page(&app).await;
    let page1 = text_results_and_paging(&app, &stack).await;
    filters_and_bad_input(&app).await;
    similar_and_product(&app, &page1[0]).await;
    likes_and_dislikes(&app, &page1[0]).await;
    photo_search(&app).await;
    clicks(&app, &page1).await;
    page_metrics(&app).await;
}

/// A card's link counts the click (where it was shown, its position) and redirects to the
/// product; a link that says neither, or names no product of this shop, is refused.
async fn clicks(app: &axum::Router, page1: &[HashMap<String, String>]) {
    for (card, position) in [(&page1[0], 1), (&page1[2], 3)] {
        let id = &card["data-id"];
        let go = get(app, &format!("/go/{id}?from=text&pos={position}")).await;
        assert_eq!(go.status, StatusCode::SEE_OTHER);
        assert_eq!(go.headers["location"], format!("/product/{id}").as_str());
    }
    let id = &page1[1]["data-id"];
    for bad in [
        format!("/go/{id}"),
        format!("/go/{id}?from=text"),
        format!("/go/{id}?from=elsewhere&pos=1"),
        format!("/go/{id}?from=text&pos=0"),
        format!("/go/{id}?from=text&pos=1001"),
        format!("/go/{id}?from=text&pos=-1"),
    ] {
        let page = get(app, &bad).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(page.html.contains("This link is broken"), "{bad}");
        assert!(!page.headers.contains_key("location"));
    }
    for elsewhere in [
        "/go/not-a-uuid?from=text&pos=1",
        "/go/https:%2F%2Fevil.example?from=text&pos=1",
        "/go/%2F%2Fevil.example?from=text&pos=1",
    ] {
        let page = get(app, elsewhere).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{elsewhere}");
        assert!(!page.headers.contains_key("location"), "{elsewhere}");
    }
    let metrics = get(app, "/metrics").await.html;
    let value = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} missing in\n{metrics}"))
    };
    assert_eq!(value("frontend_result_clicks_total{from=\"text\"}"), 2.0);
    assert_eq!(
        value("frontend_result_click_position_sum{from=\"text\"}"),
        4.0
    );
    assert_eq!(
        value("frontend_result_click_position_count{from=\"text\"}"),
        2.0
    );
    // The other sources' series exist at 0 before their first click.
    assert_eq!(value("frontend_result_clicks_total{from=\"image\"}"), 0.0);
}

/// No query yet: example queries to click, the catalogue's size, filters from the facets.
async fn home_page(app: &axum::Router) {
    let home = get(app, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    for q in EXAMPLE_QUERIES {
        let href = format!("href=\"/?q={}\"", q.replace(' ', "+").replace('\'', "%27"));
        assert!(home.html.contains(&href), "example {q} links to {href}");
    }
    assert!(home.html.contains("24 products in the catalogue"));
    // A select for each filter field with a choice in this catalogue (all 24 are one dataset's
    // Apparel, so those two offer none).
    for field in ["gender", "article_type", "colour", "season", "usage"] {
        assert!(
            home.html.contains(&format!("<select name=\"{field}\">")),
            "{field} select"
        );
    }
    for field in ["category", "dataset"] {
        assert!(!home.html.contains(&format!("<select name=\"{field}\">")));
    }
    assert!(
        home.html
            .contains("<option value=\"Women\">Women (13)</option>"),
        "facet counts from the backend"
    );
    assert!(
        home.html.contains("enctype=\"multipart/form-data\""),
        "a plain upload form"
    );
}

/// A text search: a page of cards with image, caption as alt text, type, colour, score; paging.
async fn text_results_and_paging(
    app: &axum::Router,
    stack: &Stack,
) -> Vec<HashMap<String, String>> {
    let first = get(app, "/?q=white+skirt").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.html.contains("value=\"white skirt\""),
        "the query stays in the box"
    );
    assert!(first.html.contains("Results for “white skirt”"));
    let page1 = cards(&first.html);
    assert_eq!(page1.len(), 8, "a full page of 8");
    for (i, card) in page1.iter().enumerate() {
        let src = &card["img-src"];
        assert!(
            src.starts_with(&format!("http://{}/", stack.s3)) && src.contains("X-Amz-Signature="),
            "pre-signed: {src}"
        );
        assert!(!card["img-alt"].is_empty(), "alt text from the caption");
        assert!(!card["data-article-type"].is_empty() && !card["data-colour"].is_empty());
        let id = &card["data-id"];
        assert!(
            first.html.contains(&format!("href=\"/similar/{id}\"")),
            "more like this"
        );
        assert!(
            first
                .html
                .contains(&format!("href=\"/go/{id}?from=text&amp;pos={}\"", i + 1)),
            "detail link through the click counter, with the card's position"
        );
    }
    let scores: Vec<f32> = page1
        .iter()
        .map(|c| c["data-score"].parse().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    // The image behind a card's pre-signed link is the real JPEG.
    let image = reqwest::get(&page1[0]["img-src"]).await.expect("image");
    assert_eq!(
        image.status(),
        200,
        "{}: {}",
        page1[0]["img-src"],
        image.text().await.unwrap_or_default()
    );
    assert!(
        image
            .bytes()
            .await
            .expect("bytes")
            .starts_with(&[0xFF, 0xD8])
    );

    // Pagination: page 2 has the next 8, with links both ways.
    assert!(
        first.html.contains("href=\"/?q=white+skirt&amp;page=2\""),
        "next page link"
    );
    let second = get(app, "/?q=white+skirt&page=2").await;
    let page2 = cards(&second.html);
    assert_eq!(page2.len(), 8);
    assert!(
        page2
            .iter()
            .all(|c| page1.iter().all(|p| p["data-id"] != c["data-id"])),
        "no repeats"
    );
    assert!(
        second.html.contains("href=\"/?q=white+skirt\""),
        "previous page link"
    );
    let last = cards(&get(app, "/?q=white+skirt&page=3").await.html);
    assert_eq!(last.len(), 8, "24 = 3 pages of 8");
    page1
}

/// Filters narrow every card; no results is information; bad input a 400 page.
async fn filters_and_bad_input(app: &axum::Router) {
    // Filters: every card matches; the selects show what is applied.
    let men = get(app, "/?q=shirt&gender=Men").await;
    let men_cards = cards(&men.html);
    assert!(!men_cards.is_empty());
    assert!(
        men_cards.iter().all(|c| c["data-gender"] == "Men"),
        "only Men"
    );
    assert!(
        men.html.contains("<option value=\"Men\" selected>"),
        "the filter stays selected"
    );
    assert!(men.html.contains("Clear filters"));
    assert!(
        men.html
            .contains("type=\"hidden\" name=\"gender\" value=\"Men\""),
        "a new query keeps the filter"
    );

    // Every indexed field filters, season and usage too; a field in force keeps its select.
    let summer = get(app, "/?q=skirt&season=Summer&usage=Casual&category=Apparel").await;
    assert_eq!(summer.status, StatusCode::OK, "{}", summer.html);
    let summer_cards = cards(&summer.html);
    assert!(!summer_cards.is_empty());
    assert!(
        summer_cards
            .iter()
            .all(|c| c["data-season"] == "Summer" && c["data-usage"] == "Casual"),
        "only Summer, Casual"
    );
    assert!(summer.html.contains("<select name=\"category\">"));
    assert!(summer.html.contains("<option value=\"Summer\" selected>"));
    assert!(
        summer
            .html
            .contains("type=\"hidden\" name=\"usage\" value=\"Casual\""),
        "a new query keeps every filter"
    );

    // No results: a minimum score nothing reaches is an info message, not an error.
    let none = get(app, "/?q=shirt&min_score=1").await;
    assert_eq!(none.status, StatusCode::OK);
    assert!(cards(&none.html).is_empty());
    assert!(none.html.contains("No results for “shirt”") && none.html.contains("role=\"status\""));

    // Bad input: a clear message with 400, and the page still renders.
    let bad = get(app, "/?q=shirt&min_score=7").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.html.contains("between -1 and 1") && bad.html.contains("role=\"alert\""));
    assert_eq!(
        get(app, "/?q=shirt&page=0").await.status,
        StatusCode::BAD_REQUEST
    );
    // A value the catalogue does not hold is the backend's refusal, in shopper's words: the
    // backend's own message (for API callers, naming its routes) stays off the page.
    let unknown = get(app, "/?q=shirt&colour=Plaid").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.html.contains("We could not use that query"),
        "{}",
        unknown.html
    );
    assert!(
        backend_api::ErrorKind::ALL
            .iter()
            .any(|kind| unknown.html.contains(kind.shopper_message())),
        "{}",
        unknown.html
    );
    assert!(!unknown.html.contains("/v1/"), "{}", unknown.html);

    // What the shopper typed is text, never markup.
    let hostile = get(app, "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert!(!hostile.html.contains("<script>alert(1)"));
    assert!(
        hostile
            .html
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
}

/// More like this, from one card, and that card's product page.
async fn similar_and_product(app: &axum::Router, card: &HashMap<String, String>) {
    // More like this: the source product's caption in the heading, similar cards, paging.
    let id = card["data-id"].clone();
    let caption = card["img-alt"].clone();
    let similar = get(app, &format!("/similar/{id}")).await;
    assert_eq!(similar.status, StatusCode::OK);
    assert!(similar.html.contains(&format!("More like “{caption}”")));
    assert_eq!(cards(&similar.html).len(), 8);
    assert!(
        similar.html.contains(&format!("action=\"/similar/{id}\"")),
        "filters refine the same list"
    );
    let similar_women = cards(&get(app, &format!("/similar/{id}?gender=Women")).await.html);
    assert!(!similar_women.is_empty() && similar_women.iter().all(|c| c["data-gender"] == "Women"));

    // Product detail: big image, attributes, similar items without itself.
    let product = get(app, &format!("/product/{id}")).await;
    assert_eq!(product.status, StatusCode::OK);
    assert!(product.html.contains(&format!("<h1>{caption}</h1>")));
    assert!(product.html.contains("<th scope=\"row\">Colour</th>"));
    assert!(product.html.contains("Similar items"));
    let related = cards(&product.html);
    assert!(!related.is_empty() && related.iter().all(|c| c["data-id"] != id));
    assert_eq!(
        get(app, "/product/not-a-uuid").await.status,
        StatusCode::NOT_FOUND
    );
    let gone = get(app, &format!("/product/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.html.contains("We could not find that product"));
    assert_eq!(
        get(app, "/no/such/page").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The `href` of every link with class `class`, in page order.
fn links(html: &str, class: &str) -> Vec<String> {
    html.match_indices("<a ")
        .filter_map(|(start, _)| {
            let end = start + html[start..].find('>')?;
            let attrs = attributes(&html[start..end]);
            (attrs.get("class").map(String::as_str) == Some(class))
                .then(|| attrs.get("href").cloned())
                .flatten()
        })
        .collect()
}

/// "More like this" / "Less like this" on each card build a like / dislike list in the URL;
/// the list's page recommends by it, leaves its items out, keeps filters, and refuses a list
/// that is not one.
async fn likes_and_dislikes(app: &axum::Router, card: &HashMap<String, String>) {
    let id = card["data-id"].clone();
    let similar = get(app, &format!("/similar/{id}")).await;
    let more = links(&similar.html, "more");
    let less = links(&similar.html, "less");
    let shown = cards(&similar.html);
    assert_eq!((more.len(), less.len()), (shown.len(), shown.len()));
    let other = shown[0]["data-id"].clone();
    assert_eq!(more[0], format!("/taste?like={id}%2C{other}"));
    assert_eq!(less[0], format!("/taste?like={id}&dislike={other}"));

    let liked = get(app, &more[0]).await;
    assert_eq!(liked.status, StatusCode::OK, "{}", liked.html);
    assert!(liked.html.contains("More like your 2 picks"));
    let picks = cards(&liked.html);
    assert!(!picks.is_empty());
    assert!(
        picks
            .iter()
            .all(|c| c["data-id"] != id && c["data-id"] != other)
    );
    let disliked = get(app, &less[0]).await;
    assert_eq!(disliked.status, StatusCode::OK);
    assert!(
        disliked
            .html
            .contains("More like your pick, less like 1 other<")
    );
    assert!(cards(&disliked.html).iter().all(|c| c["data-id"] != other));
    // Each card there extends the lists; the only liked item cannot be disliked away.
    let next_more = links(&disliked.html, "more");
    assert!(
        next_more[0].starts_with(&format!("/taste?like={id}%2C")),
        "{}",
        next_more[0]
    );
    assert!(next_more[0].contains(&format!("dislike={other}")));
    let women = get(app, &format!("/taste?like={id}&gender=Women")).await;
    assert!(
        cards(&women.html)
            .iter()
            .all(|c| c["data-gender"] == "Women")
    );
    for bad in [
        "/taste",
        "/taste?like=nope",
        &format!("/taste?dislike={id}"),
    ] {
        let page = get(app, bad).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            page.html.contains("That list of items does not work"),
            "{bad}"
        );
    }
    let unknown = get(app, &format!("/taste?like={}", uuid::Uuid::new_v4())).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// Search by photo, and each upload problem's page.
async fn photo_search(app: &axum::Router) {
    // Search by photo: the indexed photo itself comes back first, at similarity ~1.
    let bytes = std::fs::read(photo("10000")).expect("photo 10000");
    let found = upload(app, Some(("skirt.jpg", bytes.clone())), &[]).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.html);
    let hits = cards(&found.html);
    assert!(!hits.is_empty());
    assert!(
        hits[0]["img-alt"].contains("Palm Tree Girls Sp Jace Sko White Skirts"),
        "{:?}",
        hits[0]
    );
    assert!(hits[0]["data-score"].parse::<f32>().expect("score") > 0.999);
    let filtered = cards(
        &upload(
            app,
            Some(("skirt.jpg", bytes.clone())),
            &[("gender", "Men")],
        )
        .await
        .html,
    );
    assert!(!filtered.is_empty() && filtered.iter().all(|c| c["data-gender"] == "Men"));
    // Words beside the photo refine it, and say so.
    let refined = upload(
        app,
        Some(("skirt.jpg", bytes.clone())),
        &[("q", "in red -floral")],
    )
    .await;
    assert_eq!(refined.status, StatusCode::OK, "{}", refined.html);
    assert!(
        refined.html.contains("searched as “a photo of in red”"),
        "{}",
        refined.html
    );
    assert!(refined.html.contains("without “floral”"));
    assert!(
        refined.html.contains("name=\"q\""),
        "the photo form has the refine field"
    );

    // Upload problems: each a clear message with its own status.
    let missing = upload(app, None, &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.html.contains("Please choose a photo"));
    let not_image = upload(app, Some(("notes.txt", b"just some text".to_vec())), &[]).await;
    assert_eq!(not_image.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(not_image.html.contains("not a photo we can read"));
    let mut huge = vec![0xFF, 0xD8, 0xFF, 0xE0];
    huge.resize(200 * 1024, 0);
    let too_large = upload(app, Some(("huge.jpg", huge)), &[]).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(too_large.html.contains("That photo is too large"));
    let corrupt = upload(
        app,
        Some(("broken.jpg", bytes[..bytes.len() / 3].to_vec())),
        &[],
    )
    .await;
    assert!(corrupt.status.is_client_error(), "{}", corrupt.status);
    assert!(
        corrupt.html.contains("We could not use that photo"),
        "{}",
        corrupt.html
    );
}

/// The page and backend-call metrics (after the checks above), and health.
async fn page_metrics(app: &axum::Router) {
    // Telemetry: the page and backend-call metrics, health.
    let metrics = get(app, "/metrics").await.html;
    for name in frontend::metrics::ALL {
        assert!(
            metrics.contains(&format!("# HELP {name}")),
            "{name} declared"
        );
    }
    assert!(metrics.contains("frontend_backend_calls_total{call=\"search_text\",outcome=\"ok\"}"));
    assert!(metrics.contains("frontend_pages_total{page=\"results\",shown=\"empty\"}"));
    assert!(metrics.contains(
        "http_requests_total{service=\"frontend\",method=\"GET\",route=\"/similar/{id}\""
    ));
    assert_eq!(get(app, "/health/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn pages_when_the_backend_is_down_or_hangs() {
    // Down: nothing listens on the backend's port.
    let dead = free_addr();
    let app = frontend::router(&config(format!("http://{dead}"))).expect("router");
    let home = get(&app, "/").await;
    assert_eq!(
        home.status,
        StatusCode::OK,
        "the start page renders without the backend"
    );
    assert!(home.html.contains("Try one of these"));
    let down = get(&app, "/?q=red+dress").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers[header::RETRY_AFTER], "5");
    assert!(down.html.contains("Search is temporarily unavailable"));
    assert!(
        down.html.contains("value=\"red dress\""),
        "the page, with the query, still renders"
    );
    let product = get(&app, &format!("/product/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(product.status, StatusCode::SERVICE_UNAVAILABLE);

    // Hangs: a backend that accepts connections and never answers; the page gives up in time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let slow = FrontendConfig {
        search_timeout_ms: 300,
        ..config(format!("http://{hung}"))
    };
    let app = frontend::router(&slow).expect("router");
    let started = std::time::Instant::now();
    let page = get(&app, "/?q=red+dress").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.html.contains("Search is taking longer than usual"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the timeout, not hung"
    );
    let metrics = get(&app, "/metrics").await.html;
    assert!(
        metrics.contains("frontend_backend_calls_total{call=\"search_text\",outcome=\"timeout\"}")
    );
    holder.abort();
}
