//! The shop's pages as Leptos components, rendered to HTML on the server. Plain links and forms
//! do everything (no wasm); `app.js` only adds drag & drop and paste to the photo upload.

use backend_api::{FacetValue, FacetsResponse, ImageItem, SearchHit};
use leptos::prelude::*;

/// Queries offered before the shopper has typed anything.
pub const EXAMPLE_QUERIES: &[&str] = &[
    "red summer dress",
    "white sneakers",
    "black leather handbag",
    "men's blue jeans",
    "gold watch",
    "floral kurta",
];

/// Minimum-score choices of the filter form.
const MIN_SCORES: &[&str] = &["0.1", "0.2", "0.25", "0.3", "0.4", "0.5"];

/// The filters a shopper can apply to text searches and "more like this".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub gender: Option<String>,
    pub article_type: Option<String>,
    pub colour: Option<String>,
    pub min_score: Option<f32>,
}

impl Filters {
    /// The filters as query-string pairs, for links that keep them.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(v) = &self.gender {
            pairs.push(("gender", v.clone()));
        }
        if let Some(v) = &self.article_type {
            pairs.push(("article_type", v.clone()));
        }
        if let Some(v) = &self.colour {
            pairs.push(("colour", v.clone()));
        }
        if let Some(v) = self.min_score {
            pairs.push(("min_score", v.to_string()));
        }
        pairs
    }

    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `path?k=v&...`, with the values form-encoded.
pub fn url_with(path: &str, pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return path.to_owned();
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    format!("{path}?{query}")
}

/// What the page header's forms show and keep: the text query and the filters.
#[derive(Debug, Clone, Default)]
pub struct SearchState {
    pub q: String,
    pub filters: Filters,
    /// Where the filter form submits: `/` for text search, `/similar/{id}` for "more like this".
    pub filter_action: String,
}

/// A message box: information (nothing found) or a problem (bad input, backend down).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub title: String,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoticeKind {
    Info,
    Problem,
}

/// A grid of hits, with the heading above it and the paging links below it.
#[derive(Debug, Clone, Default)]
pub struct ResultsPage {
    pub heading: String,
    pub detail: Option<String>,
    pub hits: Vec<SearchHit>,
    pub previous: Option<String>,
    pub next: Option<String>,
}

/// The whole HTML document around `main`.
pub fn document(
    title: &str,
    state: &SearchState,
    facets: Option<&FacetsResponse>,
    main: AnyView,
) -> String {
    let title = if title.is_empty() {
        "Fashion search".to_owned()
    } else {
        format!("{title} · Fashion search")
    };
    let header = view! { <SiteHeader state=state.clone() facets=facets.cloned() /> };
    let html = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <title>{title}</title>
                <link rel="stylesheet" href="/static/app.css" />
                <script src="/static/app.js" defer=true></script>
            </head>
            <body>
                <a class="skip" href="#main">"Skip to results"</a>
                {header}
                <main id="main" tabindex="-1">{main}</main>
                <footer class="site-footer">
                    <p>"Images are served by short-lived links. Results are ranked by a CLIP model."</p>
                </footer>
            </body>
        </html>
    }
    .to_html();
    format!("<!DOCTYPE html>{html}")
}

#[component]
fn SiteHeader(state: SearchState, facets: Option<FacetsResponse>) -> impl IntoView {
    let hidden_filters = state
        .filters
        .pairs()
        .into_iter()
        .map(|(name, value)| view! { <input type="hidden" name=name value=value /> })
        .collect_view();
    view! {
        <header class="site-header">
            <a class="brand" href="/">"Fashion"<span>"search"</span></a>
            <form class="search" method="get" action="/" role="search">
                <label class="field">
                    <span class="sr-only">"Search the catalogue"</span>
                    <input
                        type="search"
                        name="q"
                        value=state.q.clone()
                        placeholder="Try “red summer dress”"
                        maxlength="300"
                        autocomplete="off"
                    />
                </label>
                {hidden_filters}
                <button type="submit">"Search"</button>
            </form>
            <form
                class="upload"
                id="upload"
                method="post"
                action="/search/image"
                enctype="multipart/form-data"
            >
                <label class="field file">
                    <span>"Search with a photo"</span>
                    <input type="file" name="image" accept="image/jpeg,image/png,image/webp,image/gif" required=true />
                </label>
                {state.filters.pairs().into_iter().map(|(name, value)| view! { <input type="hidden" name=name value=value /> }).collect_view()}
                <button type="submit">"Find similar"</button>
                <p class="hint">"or drop / paste a photo here"</p>
            </form>
        </header>
        {facets.map(|f| view! { <FilterBar state=state facets=f /> })}
    }
}

#[component]
fn FilterBar(state: SearchState, facets: FacetsResponse) -> impl IntoView {
    let select = |name: &'static str, label: &'static str, field: &str, current: Option<String>| {
        let values: Vec<FacetValue> = facets.facets.get(field).cloned().unwrap_or_default();
        let options = values
            .into_iter()
            .map(|v| {
                let selected = current.as_deref() == Some(v.value.as_str());
                let text = format!("{} ({})", v.value, v.count);
                view! { <option value=v.value selected=selected>{text}</option> }
            })
            .collect_view();
        view! {
            <label class="filter">
                <span>{label}</span>
                <select name=name>
                    <option value="">"Any"</option>
                    {options}
                </select>
            </label>
        }
    };
    let current_min = state.filters.min_score.map(|s| s.to_string());
    let scores = MIN_SCORES
        .iter()
        .map(|s| {
            let selected = current_min.as_deref() == Some(*s);
            view! { <option value=*s selected=selected>{format!("≥ {s}")}</option> }
        })
        .collect_view();
    view! {
        <form class="filters" method="get" action=state.filter_action.clone() aria-label="Filters">
            {(!state.q.is_empty()).then(|| view! { <input type="hidden" name="q" value=state.q.clone() /> })}
            {select("gender", "Gender", "gender", state.filters.gender.clone())}
            {select("article_type", "Type", "article_type", state.filters.article_type.clone())}
            {select("colour", "Colour", "colour", state.filters.colour.clone())}
            <label class="filter">
                <span>"Minimum score"</span>
                <select name="min_score">
                    <option value="">"Any"</option>
                    {scores}
                </select>
            </label>
            <button type="submit">"Apply filters"</button>
            {(!state.filters.is_empty()).then(|| view! {
                <a class="clear" href=clear_filters(&state)>"Clear filters"</a>
            })}
        </form>
    }
}

fn clear_filters(state: &SearchState) -> String {
    if state.q.is_empty() {
        state.filter_action.clone()
    } else {
        url_with(&state.filter_action, &[("q", state.q.clone())])
    }
}

/// The page before any query: example queries to click.
pub fn home(catalogue_size: Option<u64>) -> AnyView {
    let examples = EXAMPLE_QUERIES
        .iter()
        .map(|q| {
            view! { <li><a class="chip" href=url_with("/", &[("q", (*q).to_owned())])>{*q}</a></li> }
        })
        .collect_view();
    let size = match catalogue_size {
        Some(0) => "The catalogue is empty: load a dataset with `etl load`.".to_owned(),
        Some(n) => format!("{n} products in the catalogue."),
        None => String::new(),
    };
    view! {
        <section class="home">
            <h1>"Find it by describing it, or show us a photo"</h1>
            <p class="lead">"Type what you are looking for, or upload a photo of something you like."</p>
            <h2>"Try one of these"</h2>
            <ul class="examples">{examples}</ul>
            <p class="catalogue">{size}</p>
        </section>
    }
    .into_any()
}

/// A notice on its own (nothing found, bad input, backend trouble).
pub fn notice(notice: Notice) -> AnyView {
    let (class, role) = match notice.kind {
        NoticeKind::Info => ("notice info", "status"),
        NoticeKind::Problem => ("notice problem", "alert"),
    };
    view! {
        <section class=class role=role>
            <h1>{notice.title}</h1>
            <p>{notice.detail}</p>
            <p><a href="/">"Back to the start"</a></p>
        </section>
    }
    .into_any()
}

/// A results grid with heading and paging; an info notice when there are no hits.
pub fn results(page: ResultsPage, empty: Notice) -> AnyView {
    if page.hits.is_empty() && page.previous.is_none() {
        return notice(empty);
    }
    let cards = page
        .hits
        .into_iter()
        .map(|hit| view! { <Card hit=hit /> })
        .collect_view();
    view! {
        <section class="results" aria-labelledby="results-heading">
            <h1 id="results-heading">{page.heading}</h1>
            {page.detail.map(|d| view! { <p class="detail">{d}</p> })}
            <ul class="grid">{cards}</ul>
            <nav class="pager" aria-label="Pages">
                {page.previous.map(|href| view! { <a rel="prev" href=href>"← Previous"</a> })}
                {page.next.map(|href| view! { <a rel="next" href=href>"Next →"</a> })}
            </nav>
        </section>
    }
    .into_any()
}

fn describe(item: &ImageItem) -> String {
    let a = &item.attributes;
    [
        a.article_type.as_deref(),
        a.colour.as_deref(),
        a.gender.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" · ")
}

pub fn caption_of(item: &ImageItem) -> String {
    if item.attributes.caption.trim().is_empty() {
        item.attributes
            .article_type
            .clone()
            .unwrap_or_else(|| "Catalogue item".to_owned())
    } else {
        item.attributes.caption.clone()
    }
}

#[component]
fn Card(hit: SearchHit) -> impl IntoView {
    let item = hit.item;
    let id = item.id;
    let caption = caption_of(&item);
    let meta = describe(&item);
    let a = item.attributes.clone();
    view! {
        <li
            class="card"
            data-id=id.to_string()
            data-gender=a.gender.unwrap_or_default()
            data-article-type=a.article_type.unwrap_or_default()
            data-colour=a.colour.unwrap_or_default()
            data-score=format!("{:.4}", hit.score)
        >
            <a class="thumb" href=format!("/product/{id}")>
                <img src=item.url alt=caption.clone() loading="lazy" />
            </a>
            <div class="body">
                <a class="title" href=format!("/product/{id}")>{caption}</a>
                <p class="meta">{meta}</p>
                <p class="score" title="similarity to your query">{format!("match {:.2}", hit.score)}</p>
                <a class="more" href=format!("/similar/{id}")>"More like this"</a>
            </div>
        </li>
    }
}

/// One product, big, with its attributes, and similar items under it.
pub fn product(item: ImageItem, similar: Result<Vec<SearchHit>, Notice>) -> AnyView {
    let id = item.id;
    let caption = caption_of(&item);
    let a = item.attributes.clone();
    let rows = [
        ("Gender", a.gender),
        ("Category", a.category),
        ("Type", a.article_type),
        ("Colour", a.colour),
        ("Season", a.season),
        ("Usage", a.usage),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| view! { <tr><th scope="row">{k}</th><td>{v}</td></tr> }))
    .collect_view();
    let similar = match similar {
        Ok(hits) => {
            let cards = hits
                .into_iter()
                .filter(|h| h.item.id != id)
                .map(|hit| view! { <Card hit=hit /> })
                .collect_view();
            view! {
                <section class="results" aria-labelledby="similar-heading">
                    <h2 id="similar-heading">"Similar items"</h2>
                    <ul class="grid">{cards}</ul>
                    <p><a class="more" href=format!("/similar/{id}")>"See more like this"</a></p>
                </section>
            }
            .into_any()
        }
        Err(problem) => notice(problem),
    };
    view! {
        <article class="product">
            <img class="hero" src=item.url alt=caption.clone() />
            <div class="facts">
                <h1>{caption}</h1>
                <table>{rows}</table>
                <a class="button" href=format!("/similar/{id}")>"More like this"</a>
            </div>
        </article>
        {similar}
    }
    .into_any()
}
