//! The query string, read and written: the shopper's query, filters and page from a URL (or an
//! upload form's fields), the backend's search parameters, and the links to neighbouring pages.

use std::collections::HashMap;

use backend_api::SearchParams;

use crate::notices::problem;
use crate::views::{Filters, Notice, url_with};

/// The backend accepts k + offset up to 1000.
pub(crate) const MAX_RESULTS: usize = 1000;

/// The last value of each query-string key; never fails, whatever the URL holds.
pub(crate) fn parse_query(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

pub(crate) fn parse_filters(fields: &HashMap<String, String>) -> Result<Filters, Notice> {
    let min_score = match fields.get("min_score") {
        None => None,
        Some(raw) => match raw.parse::<f32>() {
            Ok(score) if (-1.0..=1.0).contains(&score) => Some(score),
            _ => {
                return Err(problem(
                    "That minimum score does not work",
                    "The minimum score must be a number between -1 and 1.",
                ));
            }
        },
    };
    Ok(Filters {
        gender: fields.get("gender").cloned(),
        article_type: fields.get("article_type").cloned(),
        colour: fields.get("colour").cloned(),
        min_score,
    })
}

pub(crate) fn parse_page(
    fields: &HashMap<String, String>,
    page_size: usize,
) -> Result<usize, Notice> {
    let last = (MAX_RESULTS / page_size).max(1);
    match fields.get("page") {
        None => Ok(1),
        Some(raw) => match raw.parse::<usize>() {
            Ok(page) if (1..=last).contains(&page) => Ok(page),
            _ => Err(problem(
                "There is no such page",
                format!("Pages go from 1 to {last}."),
            )),
        },
    }
}

/// The filters and page of a paged list (text results, "more like this").
pub(crate) fn parse_listing(
    fields: &HashMap<String, String>,
    page_size: usize,
) -> Result<(Filters, usize), Notice> {
    Ok((parse_filters(fields)?, parse_page(fields, page_size)?))
}

pub(crate) fn params(filters: &Filters, k: usize, offset: usize) -> SearchParams {
    SearchParams {
        k: Some(k),
        offset: Some(offset),
        gender: filters.gender.clone(),
        article_type: filters.article_type.clone(),
        colour: filters.colour.clone(),
        min_score: filters.min_score,
        ..SearchParams::default()
    }
}

/// Links to the neighbouring pages of a paged result, keeping the query and filters.
pub(crate) fn pager(
    path: &str,
    base: &[(&'static str, String)],
    page: usize,
    page_size: usize,
    shown: usize,
) -> (Option<String>, Option<String>) {
    let link = |p: usize| {
        let mut pairs = base.to_vec();
        if p > 1 {
            pairs.push(("page", p.to_string()));
        }
        url_with(path, &pairs)
    };
    let previous = (page > 1).then(|| link(page - 1));
    let more = shown == page_size && (page + 1) * page_size <= MAX_RESULTS;
    (previous, more.then(|| link(page + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_keeps_last_values_and_drops_empty_ones() {
        let fields = parse_query(Some("q=red+dress&gender=&q=blue%20shirt&colour=Red"));
        assert_eq!(fields.get("q").map(String::as_str), Some("blue shirt"));
        assert!(!fields.contains_key("gender"));
        assert_eq!(fields.get("colour").map(String::as_str), Some("Red"));
        assert!(parse_query(Some("%ZZ=%%&&=")).len() <= 1);
    }

    #[test]
    fn bad_min_score_and_page_are_refused() {
        let fields = parse_query(Some("min_score=2"));
        assert!(parse_filters(&fields).is_err());
        let fields = parse_query(Some("min_score=abc"));
        assert!(parse_filters(&fields).is_err());
        let fields = parse_query(Some("min_score=0.25"));
        assert_eq!(parse_filters(&fields).map(|f| f.min_score), Ok(Some(0.25)));
        assert!(parse_page(&parse_query(Some("page=0")), 24).is_err());
        assert!(parse_page(&parse_query(Some("page=42")), 24).is_err());
        assert_eq!(parse_page(&parse_query(Some("page=41")), 24), Ok(41));
    }

    #[test]
    fn pager_links_keep_the_query_and_stop_at_the_backend_limit() {
        let base = vec![("q", "red dress".to_owned())];
        let (prev, next) = pager("/", &base, 1, 24, 24);
        assert_eq!(prev, None);
        assert_eq!(next.as_deref(), Some("/?q=red+dress&page=2"));
        let (prev, next) = pager("/", &base, 2, 24, 10);
        assert_eq!(prev.as_deref(), Some("/?q=red+dress"));
        assert_eq!(next, None);
        let (_, next) = pager("/", &base, 41, 24, 24);
        assert_eq!(next, None, "page 42 would pass the 1000-result limit");
    }
}
