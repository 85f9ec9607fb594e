//! The shop's pages as Leptos components, rendered to HTML on the server. Plain links and forms
//! do everything (no wasm); `app.js` only adds drag & drop and paste to the photo upload.

use backend_api::{FacetValue, FacetsResponse, Filters, ImageItem, SearchHit};
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

/// What narrows a list (text results, photo results, "more like this"): the attribute filters —
/// the backend's one [`Filters`] type, so a newly indexed field reaches the shop without a copy
/// here — and a minimum score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refinement {
    pub filters: Filters,
    pub min_score: Option<f32>,
}

impl Refinement {
    /// The refinement as query-string pairs, for links and forms that keep it.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<(&'static str, String)> = self
            .filters
            .iter()
            .map(|(field, value)| (field, value.to_owned()))
            .collect();
        if let Some(v) = self.min_score {
            pairs.push(("min_score", v.to_string()));
        }
        pairs
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.min_score.is_none()
    }
}

/// The shop's label for a filter field; a field the shop has no word for shows as it is spelled.
pub fn field_label(field: &str) -> &str {
    match field {
        "dataset" => "Catalogue",
        "gender" => "Gender",
        "category" => "Category",
        "article_type" => "Type",
        "colour" => "Colour",
        "season" => "Season",
        "usage" => "Usage",
        other => other,
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
    pub refinement: Refinement,
    /// Where the filter form submits: `/` for text search, `/similar/{id}` for "more like this".
    pub filter_action: String,
}

/// A message box: information (nothing found) or a problem (bad input, backend down).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub title: String,
    pub detail: String,
    /// Searches to try instead: (words, link).
    pub suggestions: Vec<(String, String)>,
}

impl Notice {
    pub fn suggesting(mut self, suggestions: Vec<(String, String)>) -> Self {
        self.suggestions = suggestions;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoticeKind {
    Info,
    Problem,
}

/// A grid of hits, with the heading above it and the paging links below it.
#[derive(Debug, Clone, Default)]
pub struct ResultsPage {
    /// Where the hits came from, for click counting: one of [`crate::metrics::CLICK_SOURCES`].
    pub source: &'static str,
    /// The 1-based position of the first hit in the whole ranking (page offset + 1).
    pub first_position: usize,
    pub heading: String,
    pub detail: Option<String>,
    pub hits: Vec<SearchHit>,
    pub previous: Option<String>,
    pub next: Option<String>,
    /// What each card's "more like this" / "less like this" links lead to.
    pub links: CardLinks,
}

/// Most items a like or dislike list in a URL keeps (the backend's bound); adding one more
/// drops the oldest.
pub const MAX_TASTE: usize = 16;

/// A card's "more like this" and "less like this" links.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CardLinks {
    /// "More like this": the item's own similar page; no "less like this".
    #[default]
    Similar,
    /// A like / dislike list, kept in the URL (`/taste?like=..&dislike=..`): "more like this"
    /// adds the item to the likes, "less like this" to the dislikes. Filters are kept.
    Taste {
        like: Vec<uuid::Uuid>,
        dislike: Vec<uuid::Uuid>,
        refinement: Box<Refinement>,
    },
}

/// `list` with `id` added last (and no longer elsewhere), at most [`MAX_TASTE`] long.
fn with_id(list: &[uuid::Uuid], id: uuid::Uuid) -> Vec<uuid::Uuid> {
    let mut out: Vec<uuid::Uuid> = list.iter().copied().filter(|x| *x != id).collect();
    out.push(id);
    let extra = out.len().saturating_sub(MAX_TASTE);
    out.split_off(extra)
}

/// The `/taste` page of a like / dislike list.
pub fn taste_url(like: &[uuid::Uuid], dislike: &[uuid::Uuid], refinement: &Refinement) -> String {
    let join = |ids: &[uuid::Uuid]| {
        ids.iter()
            .map(uuid::Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut pairs = vec![("like", join(like))];
    if !dislike.is_empty() {
        pairs.push(("dislike", join(dislike)));
    }
    pairs.extend(refinement.pairs());
    url_with("/taste", &pairs)
}

impl CardLinks {
    /// `(more like this, less like this)` for the item `id`.
    fn for_item(&self, id: uuid::Uuid) -> (String, Option<String>) {
        match self {
            Self::Similar => (format!("/similar/{id}"), None),
            Self::Taste {
                like,
                dislike,
                refinement,
            } => {
                let not_disliked: Vec<uuid::Uuid> =
                    dislike.iter().copied().filter(|x| *x != id).collect();
                let not_liked: Vec<uuid::Uuid> =
                    like.iter().copied().filter(|x| *x != id).collect();
                let more = taste_url(&with_id(like, id), &not_disliked, refinement);
                // A list must keep one like: disliking the only liked item is not offered.
                let less = (!not_liked.is_empty())
                    .then(|| taste_url(&not_liked, &with_id(dislike, id), refinement));
                (more, less)
            }
        }
    }
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
        .refinement
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
                <label class="field refine">
                    <span class="sr-only">"Words to refine the photo search"</span>
                    <input
                        type="text"
                        name="q"
                        placeholder="and… “in red”, “-floral”"
                        maxlength="300"
                        autocomplete="off"
                    />
                </label>
                {state.refinement.pairs().into_iter().map(|(name, value)| view! { <input type="hidden" name=name value=value /> }).collect_view()}
                <button type="submit">"Find similar"</button>
                <p class="hint">"or drop / paste a photo here"</p>
            </form>
        </header>
        {facets.map(|f| view! { <FilterBar state=state facets=f /> })}
    }
}

/// A select per filter field offering a choice: the fields with at least two facet values, in
/// [`Filters::FIELDS`] order (one value filters nothing out, e.g. a single dataset), plus any
/// field the shopper has already set, so it can be seen and changed.
fn offered_fields(facets: &FacetsResponse, filters: &Filters) -> Vec<&'static str> {
    Filters::FIELDS
        .iter()
        .copied()
        .filter(|field| {
            let values = facets.facets.get(*field).map_or(0, Vec::len);
            values >= 2 || filters.get(field).is_some()
        })
        .collect()
}

#[component]
fn FilterBar(state: SearchState, facets: FacetsResponse) -> impl IntoView {
    let filters = &state.refinement.filters;
    let selects = offered_fields(&facets, filters)
        .into_iter()
        .map(|field| {
            let current = filters.get(field).map(str::to_owned);
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
                    <span>{field_label(field).to_owned()}</span>
                    <select name=field>
                        <option value="">"Any"</option>
                        {options}
                    </select>
                </label>
            }
        })
        .collect_view();
    let current_min = state.refinement.min_score.map(|s| s.to_string());
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
            {selects}
            <label class="filter">
                <span>"Minimum similarity"</span>
                <select name="min_score">
                    <option value="">"Any"</option>
                    {scores}
                </select>
            </label>
            <button type="submit">"Apply filters"</button>
            {(!state.refinement.is_empty()).then(|| view! {
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

/// Searches to suggest when nothing matches: the catalogue's most common article types.
pub fn suggestions(facets: Option<&FacetsResponse>) -> Vec<(String, String)> {
    const SUGGESTED: usize = 6;
    facets
        .and_then(|f| f.facets.get("article_type"))
        .map(|values| {
            values
                .iter()
                .take(SUGGESTED)
                .map(|v| {
                    let href = format!(
                        "/?{}",
                        form_urlencoded::Serializer::new(String::new())
                            .append_pair("q", &v.value)
                            .finish()
                    );
                    (v.value.clone(), href)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A notice on its own (nothing found, bad input, backend trouble).
pub fn notice(notice: Notice) -> AnyView {
    let (class, role) = match notice.kind {
        NoticeKind::Info => ("notice info", "status"),
        NoticeKind::Problem => ("notice problem", "alert"),
    };
    let suggestions = (!notice.suggestions.is_empty()).then(|| {
        let links = notice
            .suggestions
            .into_iter()
            .map(|(words, href)| view! { <li><a href=href>{words}</a></li> })
            .collect_view();
        view! { <ul class="suggestions" aria-label="Try instead">{links}</ul> }
    });
    view! {
        <section class=class role=role>
            <h1>{notice.title}</h1>
            <p>{notice.detail}</p>
            {suggestions}
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
    let (source, first) = (page.source, page.first_position.max(1));
    let links = page.links;
    let cards = page
        .hits
        .into_iter()
        .enumerate()
        .map(|(i, hit)| {
            let open = click_link(hit.item.id, source, first + i);
            let (more, less) = links.for_item(hit.item.id);
            view! { <Card hit=hit open=open more=more less=less /> }
        })
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

/// A card's link to its product through `/go/{id}`, which counts the click (source and
/// position, no query) and redirects to `/product/{id}`.
fn click_link(id: uuid::Uuid, source: &str, position: usize) -> String {
    format!("/go/{id}?from={source}&pos={position}")
}

#[component]
fn Card(hit: SearchHit, open: String, more: String, less: Option<String>) -> impl IntoView {
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
            data-category=a.category.unwrap_or_default()
            data-season=a.season.unwrap_or_default()
            data-usage=a.usage.unwrap_or_default()
            data-score=format!("{:.4}", hit.score)
        >
            <a class="thumb" href=open.clone()>
                <img src=item.thumbnail_url.unwrap_or(item.url) alt=caption.clone() loading="lazy" />
            </a>
            <div class="body">
                <a class="title" href=open>{caption}</a>
                <p class="meta">{meta}</p>
                <p class="score" title="similarity to your query">{format!("match {:.2}", hit.score)}</p>
                <p class="taste">
                    <a class="more" href=more>"More like this"</a>
                    {less.map(|href| view! { " · " <a class="less" href=href>"Less like this"</a> })}
                </p>
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
            let links = CardLinks::Taste {
                like: vec![id],
                dislike: Vec::new(),
                refinement: Box::default(),
            };
            let cards = hits
                .into_iter()
                .filter(|h| h.item.id != id)
                .enumerate()
                .map(|(i, hit)| {
                    let open = click_link(hit.item.id, "product", i + 1);
                    let (more, less) = links.for_item(hit.item.id);
                    view! { <Card hit=hit open=open more=more less=less /> }
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facets(fields: &[(&str, &[&str])]) -> FacetsResponse {
        FacetsResponse {
            facets: fields
                .iter()
                .map(|(field, values)| {
                    let values = values
                        .iter()
                        .map(|v| FacetValue {
                            value: (*v).to_owned(),
                            count: 3,
                        })
                        .collect();
                    ((*field).to_owned(), values)
                })
                .collect(),
        }
    }

    #[test]
    fn no_good_matches_suggests_the_commonest_types_as_searches() {
        let facets = facets(&[("article_type", &["Tshirts", "Casual Shoes", "Watches"])]);
        let suggested = suggestions(Some(&facets));
        assert_eq!(suggested.len(), 3);
        assert_eq!(
            suggested[1],
            ("Casual Shoes".to_owned(), "/?q=Casual+Shoes".to_owned())
        );
        assert!(suggestions(None).is_empty());
        let empty = Notice {
            kind: NoticeKind::Info,
            title: "No good matches for “qorvex”".into(),
            detail: "Nothing in the catalogue is close enough to it.".into(),
            suggestions: suggested,
        };
        let html = document("", &SearchState::default(), None, notice(empty));
        assert!(
            html.contains("<a href=\"/?q=Casual+Shoes\">Casual Shoes</a>"),
            "{html}"
        );
        assert!(html.contains("No good matches for “qorvex”"));
    }

    #[test]
    fn the_filter_bar_offers_every_field_with_a_choice() {
        let facets = facets(&[
            ("dataset", &["fashion-product-images"]),
            ("gender", &["Men", "Women"]),
            ("category", &["Apparel"]),
            ("season", &["Fall", "Summer", "Spring"]),
            ("usage", &["Casual", "Sports"]),
            ("not_a_filter", &["a", "b"]),
        ]);
        let none = Filters::default();
        assert_eq!(
            offered_fields(&facets, &none),
            ["gender", "season", "usage"],
            "one value is no choice; unknown facets are not filters"
        );
        let chosen = Filters {
            category: Some("Apparel".into()),
            ..Filters::default()
        };
        assert_eq!(
            offered_fields(&facets, &chosen),
            ["gender", "category", "season", "usage"],
            "a filter in force stays visible"
        );

        let state = SearchState {
            q: "shirt".into(),
            refinement: Refinement {
                filters: Filters {
                    season: Some("Summer".into()),
                    ..Filters::default()
                },
                min_score: Some(0.25),
            },
            filter_action: "/".into(),
        };
        let html = document("", &state, Some(&facets), home(None));
        for field in ["gender", "season", "usage", "min_score"] {
            assert!(
                html.contains(&format!("<select name=\"{field}\">")),
                "{field}"
            );
        }
        assert!(html.contains("<span>Season</span>"));
        assert!(!html.contains("<select name=\"dataset\">"));
        assert!(html.contains("<option value=\"Summer\" selected>Summer (3)</option>"));
        assert!(
            html.contains("type=\"hidden\" name=\"season\" value=\"Summer\""),
            "a new query keeps the filter"
        );
        assert!(
            html.contains("href=\"/?q=shirt\""),
            "clear filters keeps the query"
        );
    }

    #[test]
    fn refinement_pairs_follow_the_field_list() {
        let refinement = Refinement {
            filters: Filters {
                usage: Some("Sports".into()),
                dataset: Some("fashion-product-images".into()),
                gender: Some("  ".into()),
                ..Filters::default()
            },
            min_score: Some(0.3),
        };
        assert_eq!(
            refinement.pairs(),
            [
                ("dataset", "fashion-product-images".to_owned()),
                ("usage", "Sports".to_owned()),
                ("min_score", "0.3".to_owned()),
            ]
        );
        assert!(!refinement.is_empty());
        assert!(Refinement::default().is_empty());
        for field in Filters::FIELDS {
            assert_ne!(field_label(field), *field, "{field} has a label");
        }
    }
}
