//! The query string, read and written: the shopper's query, filters and page from a URL (or an
//! upload form's fields), the backend's search parameters, and the links to neighbouring pages.

use std::collections::HashMap;

use backend_api::{Filters, MAX_RESULT_DEPTH, SearchParams};

use crate::notices::problem;
use crate::views::{Notice, Refinement, url_with};

/// The last value of each query-string key; never fails, whatever the URL holds.
pub(crate) fn parse_query(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The refinement a URL or form asks for: a value for each of [`Filters::FIELDS`] it names (other
/// keys are not filters and are ignored), and a minimum score, refused unless in -1..=1.
pub(crate) fn parse_refinement(fields: &HashMap<String, String>) -> Result<Refinement, Notice> {
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
    let mut filters = Filters::default();
    for field in Filters::FIELDS {
        if let Some(value) = fields.get(*field) {
            filters.set(field, Some(value.clone()));
        }
    }
    Ok(Refinement { filters, min_score })
}

pub(crate) fn parse_page(
    fields: &HashMap<String, String>,
    page_size: usize,
) -> Result<usize, Notice> {
    let last = (MAX_RESULT_DEPTH / page_size).max(1);
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

/// The refinement and page of a paged list (text results, "more like this").
pub(crate) fn parse_listing(
    fields: &HashMap<String, String>,
    page_size: usize,
) -> Result<(Refinement, usize), Notice> {
    Ok((parse_refinement(fields)?, parse_page(fields, page_size)?))
}

pub(crate) fn params(refinement: &Refinement, k: usize, offset: usize) -> SearchParams {
    SearchParams {
        k: Some(k),
        offset: Some(offset),
        min_score: refinement.min_score,
        model: None,
        filters: refinement.filters.clone(),
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
    let more = shown == page_size && (page + 1) * page_size <= MAX_RESULT_DEPTH;
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
        assert!(parse_refinement(&fields).is_err());
        let fields = parse_query(Some("min_score=abc"));
        assert!(parse_refinement(&fields).is_err());
        let fields = parse_query(Some("min_score=0.25"));
        assert_eq!(
            parse_refinement(&fields).map(|f| f.min_score),
            Ok(Some(0.25))
        );
        assert!(parse_page(&parse_query(Some("page=0")), 24).is_err());
        assert!(parse_page(&parse_query(Some("page=42")), 24).is_err());
        assert_eq!(parse_page(&parse_query(Some("page=41")), 24), Ok(41));
    }

    #[test]
    fn every_filter_field_is_read_and_other_keys_are_not() {
        let fields = parse_query(Some(
            "q=shirt&page=2&k=100&s3_key=x&dataset=fashion-product-images&gender=Men\
             &category=Apparel&article_type=Tshirts&colour=Navy+Blue&season=Fall&usage=Sports",
        ));
        let refinement = parse_refinement(&fields).expect("valid");
        let read: Vec<&str> = refinement.filters.iter().map(|(field, _)| field).collect();
        assert_eq!(read, Filters::FIELDS, "each field, nothing else");
        assert_eq!(refinement.filters.get("colour"), Some("Navy Blue"));
        assert_eq!(refinement.min_score, None);

        // What the links carry reads back as the same refinement.
        let url = url_with("/", &refinement.pairs());
        let again = parse_query(url.split_once('?').map(|(_, query)| query));
        assert_eq!(parse_refinement(&again), Ok(refinement.clone()));

        // The backend gets the filters, the page's depth and the minimum score.
        let search = params(&refinement, 24, 48);
        assert_eq!((search.k, search.offset), (Some(24), Some(48)));
        assert_eq!(search.filters, refinement.filters);
    }

    #[test]
    fn the_last_page_is_the_backend_depth() {
        assert_eq!(MAX_RESULT_DEPTH, 1000);
        let page = |raw: &str, size| parse_page(&parse_query(Some(raw)), size);
        assert_eq!(page("", 24), Ok(1));
        assert_eq!(page("page=1000", 1), Ok(1000));
        assert!(page("page=1001", 1).is_err());
        assert_eq!(
            page("page=1", 5000),
            Ok(1),
            "a page larger than the depth still has page 1"
        );
        assert!(page("page=-1", 24).is_err() && page("page=two", 24).is_err());
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
