//! End to end in real headless Chromium (Debian `chromium` + `chromedriver`, installed by
//! `make system-deps`): the frontend serving pages, the real backend and model-serving with real
//! photos loaded by the ETL, and a shopper's path through them. Screenshots of each step go to
//! `var/screenshots/` for people to look at.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{Guard, Stack, free_addr, photo, workspace};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

async fn start_browser(profile: &std::path::Path) -> (Guard, Client) {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "chromium and chromedriver are missing: `make system-deps` installs them"
    );
    let port = free_addr().port();
    let driver = Guard::spawn(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start chromedriver");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // Both of rustls's crypto back-ends can be compiled in (feature unification across the
    // workspace), so the WebDriver client's is chosen explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut builder = ClientBuilder::rustls().expect("rustls connector");
        match builder
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("cannot start a Chromium session: {error}"),
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = workspace().join("var/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn snap(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The cards on the current page, as (gender, caption) pairs.
async fn cards(client: &Client) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for card in client
        .find_all(Locator::Css("li.card"))
        .await
        .expect("cards")
    {
        let gender = card
            .attr("data-gender")
            .await
            .expect("attr")
            .unwrap_or_default();
        let title = card
            .find(Locator::Css("a.title"))
            .await
            .expect("title")
            .text()
            .await
            .expect("text");
        found.push((gender, title));
    }
    found
}

/// Whether every card image really loaded in the browser (pre-signed S3 link -> pixels). Lazy
/// images below the fold are switched to eager first, so all of them are fetched.
async fn images_loaded(client: &Client) -> bool {
    let script = "const imgs = [...document.querySelectorAll('li.card img')];
                  imgs.forEach(i => { i.loading = 'eager'; });
                  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = client.execute(script, vec![]).await.expect("script");
        if loaded == json!(true) || Instant::now() > deadline {
            return loaded == json!(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_url(client: &Client, wanted: impl Fn(&url::Url) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = client.current_url().await.expect("url");
        if wanted(&url) {
            return;
        }
        assert!(Instant::now() < deadline, "the browser stayed on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the page's heading satisfies `wanted` and the document has finished loading,
/// then returns the heading. A click that navigates returns before the new page replaces the
/// old one, so a heading read too early belongs to the old page (or goes stale under us).
async fn heading_where(client: &Client, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match client.find(Locator::Css("main h1")).await {
            Ok(element) => element.text().await.ok(),
            Err(_) => None,
        };
        if let Some(text) = text.filter(|text| wanted(text)) {
            let ready = client
                .execute("return document.readyState;", vec![])
                .await
                .expect("readyState");
            if ready == json!("complete") {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the page's heading never became the one wanted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heading_is(client: &Client, wanted: &str) {
    heading_where(client, |text| text == wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_searches_uploads_and_filters_in_chromium() {
    let stack = Stack::start(24).await;
    let app =
        frontend::router(&frontend::FrontendConfig::new(stack.backend_url())).expect("router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let site = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(frontend::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let profile = tempfile::tempdir().expect("profile dir");
    let (_driver, client) = start_browser(profile.path()).await;

    // The start page, then a text search typed into the box.
    client.goto(&site).await.expect("open the shop");
    heading_is(&client, "Find it by describing it, or show us a photo").await;
    snap(&client, "1-home").await;
    let search_box = client
        .find(Locator::Css("form.search input[name=q]"))
        .await
        .expect("search box");
    search_box.send_keys("white tshirt").await.expect("type");
    client
        .find(Locator::Css("form.search button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    heading_is(&client, "Results for “white tshirt”").await;
    let url = client.current_url().await.expect("url");
    assert!(
        url.as_str().contains("q=white+tshirt"),
        "the query is in the URL: {url}"
    );
    let results = cards(&client).await;
    assert_eq!(results.len(), 24, "every loaded photo on one page of 24");
    assert!(
        images_loaded(&client).await,
        "the browser loaded every image from S3"
    );
    snap(&client, "2-text-results").await;

    // A photo upload (choosing the file submits the form): the same product comes first.
    client.goto(&site).await.expect("open the shop");
    let file = client
        .find(Locator::Css("form.upload input[type=file]"))
        .await
        .expect("file input");
    file.send_keys(&photo("10003").display().to_string())
        .await
        .expect("choose file");
    heading_is(&client, "Items like your photo").await;
    let results = cards(&client).await;
    assert_eq!(results[0].1, "Nike Women As Nike Eleme White T-Shirt");
    assert!(images_loaded(&client).await);
    snap(&client, "3-photo-results").await;

    // "More like this" on the second result.
    let more = client
        .find_all(Locator::Css("li.card a.more"))
        .await
        .expect("links");
    more[1].click().await.expect("click more like this");
    heading_where(&client, |title| title.starts_with("More like “")).await;
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .path()
            .starts_with("/similar/")
    );
    assert!(!cards(&client).await.is_empty());
    snap(&client, "4-more-like-this").await;

    // A filter: pick Men in the gender select and apply.
    client
        .find(Locator::Css(
            "form.filters select[name=gender] option[value=Men]",
        ))
        .await
        .expect("Men option")
        .click()
        .await
        .expect("select Men");
    client
        .find(Locator::Css("form.filters button"))
        .await
        .expect("apply")
        .click()
        .await
        .expect("apply filters");
    wait_for_url(&client, |url| {
        url.query().is_some_and(|q| q.contains("gender=Men"))
    })
    .await;
    heading_where(&client, |title| title.starts_with("More like “")).await;
    let filtered = cards(&client).await;
    assert!(!filtered.is_empty());
    assert!(
        filtered.iter().all(|(gender, _)| gender == "Men"),
        "{filtered:?}"
    );
    snap(&client, "5-filtered").await;

    // The product page from a card, and the back button to the filtered list.
    let caption = filtered[0].1.clone();
    client
        .find(Locator::Css("li.card a.title"))
        .await
        .expect("title link")
        .click()
        .await
        .expect("open product");
    heading_is(&client, &caption).await;
    snap(&client, "6-product").await;
    client.back().await.expect("back");
    wait_for_url(&client, |url| url.path().starts_with("/similar/")).await;

    // A phone-sized window still shows the search box and a grid.
    client.set_window_size(390, 844).await.expect("resize");
    client
        .goto(&format!("{site}/?q=shirt"))
        .await
        .expect("open");
    assert!(!cards(&client).await.is_empty());
    snap(&client, "7-phone").await;

    client.close().await.expect("close browser");
    let _ = stop.send(());
    server
        .await
        .expect("join")
        .expect("frontend stopped cleanly");
}
