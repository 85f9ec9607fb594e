//! Composed queries with the real parts and the project's trained model, on 300 real products:
//! words left out (`-blue`, `not=`), a photo refined by words ("in red"), like / dislike lists,
//! and two images compared (by id and by upload).

use backend_api::{SearchMode, SearchParams, SearchResponse};

use crate::helpers::*;

/// Whether a caption has `word` as a whole word, any case (what the caption's text index
/// matches).
fn has_word(caption: &str, word: &str) -> bool {
    caption
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(word))
}

fn count(response: &SearchResponse, keep: impl Fn(&backend_api::ImageItem) -> bool) -> usize {
    response.hits.iter().filter(|h| keep(&h.item)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composed_queries_leave_out_refine_recommend_and_compare() {
    let folder = tempfile::tempdir().expect("tempdir");
    // Without its relevance floors: what is checked here is composition, not which queries
    // reach a floor (on 300 products "blue shirt" by meaning alone may not).
    let unfloored =
        local_stack::model_without_floors(&local_stack::trained_model_dir(), folder.path())
            .expect("model copy");
    let model = start_model_serving_with(free_addr(), unfloored).await;
    let data = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&config(data.path(), model.addr))
        .await
        .expect("backend");
    let products = products(300);
    let stored = ingest(&backend, model.addr, &products).await;
    let params = SearchParams {
        k: Some(20),
        ..SearchParams::default()
    };

    // Words left out: none of them in any hit's caption, in every mode, by `-word` or `not`.
    for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Keyword] {
        let plain = backend
            .client
            .search_text_as("blue shirt", mode, &params)
            .await
            .expect("search");
        assert!(
            count(&plain, |i| has_word(&i.attributes.caption, "blue")) > 0,
            "{mode:?}: the plain query finds blue things, so leaving them out can show"
        );
        let without = backend
            .client
            .search_text_as("shirt -Blue", mode, &params)
            .await
            .expect("search");
        assert_eq!(without.without, ["blue"]);
        assert!(!without.hits.is_empty(), "{mode:?}");
        assert_eq!(
            count(&without, |i| has_word(&i.attributes.caption, "blue")),
            0,
            "{mode:?}"
        );
    }
    let response: SearchResponse = backend
        .http
        .get(backend.url("/v1/search?q=shirt&not=blue,navy&k=20"))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(response.without, ["blue", "navy"]);
    assert_eq!(
        count(&response, |i| has_word(&i.attributes.caption, "blue")
            || has_word(&i.attributes.caption, "navy")),
        0
    );
    let only_negative = backend
        .http
        .get(backend.url("/v1/search?q=-blue"))
        .send()
        .await
        .expect("search");
    let (status, code, _) = error_of(only_negative).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "invalid_request"));

    // A photo refined by words: "in red" brings red products up.
    let not_red: Vec<&Product> = products
        .iter()
        .filter(|p| {
            p.attributes.colour.as_deref() != Some("Red")
                && p.attributes.article_type.as_deref() == Some("Tshirts")
        })
        .take(5)
        .collect();
    assert_eq!(not_red.len(), 5);
    let red = |r: &SearchResponse| count(r, |i| i.attributes.colour.as_deref() == Some("Red"));
    let (mut plain_red, mut refined_red) = (0, 0);
    for product in &not_red {
        let photo = std::fs::read(&product.photo).expect("photo");
        let plain = backend
            .client
            .search_image(photo.clone(), &params)
            .await
            .expect("photo search");
        let refined: SearchResponse = backend
            .http
            .post(backend.url("/v1/search/image?q=in+red&k=20"))
            .multipart(reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(photo).file_name("p.jpg"),
            ))
            .send()
            .await
            .expect("refined search")
            .json()
            .await
            .expect("json");
        assert!(
            refined
                .embedded_text
                .as_deref()
                .is_some_and(|t| t.contains("red"))
        );
        plain_red += red(&plain);
        refined_red += red(&refined);
    }
    println!(
        "red products in the top 20 of 5 t-shirt photos: {plain_red} alone, {refined_red} refined by \"in red\""
    );
    assert!(
        refined_red > plain_red,
        "refining by \"in red\" found {refined_red} red products, the photo alone {plain_red}"
    );

    // Like / dislike: more like a liked t-shirt, the items themselves left out.
    let shirt = point_id(not_red[0]);
    let dislike = products
        .iter()
        .find(|p| p.attributes.article_type.as_deref() == Some("Watches"))
        .map(point_id)
        .expect("a watch");
    let liked: SearchResponse = backend
        .http
        .get(backend.url(&format!(
            "/v1/search/recommend?like={shirt}&dislike={dislike}&k=10"
        )))
        .send()
        .await
        .expect("recommend")
        .json()
        .await
        .expect("json");
    assert_eq!(liked.hits.len(), 10);
    assert!(
        liked
            .hits
            .iter()
            .all(|h| h.item.id != shirt && h.item.id != dislike)
    );
    let tshirts = count(&liked, |i| {
        i.attributes.article_type.as_deref() == Some("Tshirts")
    });
    assert!(tshirts >= 5, "{tshirts} of 10 like a t-shirt are t-shirts");
    let watches = count(&liked, |i| {
        i.attributes.article_type.as_deref() == Some("Watches")
    });
    assert_eq!(watches, 0);
    for (query, status, code) in [
        ("like=nope".to_owned(), 400, "invalid_id"),
        (format!("dislike={shirt}"), 400, "invalid_request"),
        (format!("like={}", uuid::Uuid::nil()), 404, "not_found"),
        (
            format!("like={}", vec![shirt.to_string(); 17].join(",")),
            400,
            "invalid_request",
        ),
    ] {
        let response = backend
            .http
            .get(backend.url(&format!("/v1/search/recommend?{query}")))
            .send()
            .await
            .expect("recommend");
        let got = error_of(response).await;
        assert_eq!((got.0.as_u16(), got.1.as_str()), (status, code), "{query}");
    }

    // Compare: an item with itself is 1; its own photo uploaded is the same; another type less.
    let compare = |query: String| {
        let http = backend.http.clone();
        let url = backend.url(&format!("/v1/compare?{query}"));
        async move {
            http.get(url)
                .send()
                .await
                .expect("compare")
                .json::<backend_api::CompareResponse>()
                .await
                .expect("json")
        }
    };
    let same = compare(format!("a={shirt}&b={shirt}")).await;
    assert!((same.similarity - 1.0).abs() < 1e-4, "{same:?}");
    let other = compare(format!("a={shirt}&b={dislike}")).await;
    assert!(other.similarity < 0.9, "{other:?}");
    let photo = stored.get(&shirt).expect("stored photo").clone();
    let uploaded: backend_api::CompareResponse = backend
        .http
        .post(backend.url(&format!("/v1/compare?b={shirt}")))
        .multipart(reqwest::multipart::Form::new().part(
            "a",
            reqwest::multipart::Part::bytes(photo).file_name("a.jpg"),
        ))
        .send()
        .await
        .expect("compare upload")
        .json()
        .await
        .expect("json");
    assert!(uploaded.similarity > 0.999, "{uploaded:?}");
    assert_eq!(uploaded.model, "fashion-clip-mini");
    let missing = backend
        .http
        .post(backend.url("/v1/compare"))
        .multipart(reqwest::multipart::Form::new().text("x", "y"))
        .send()
        .await
        .expect("compare");
    let (status, code, _) = error_of(missing).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "missing_file"));

    backend.stop().await;
    model.stop().await.expect("stop");
}
