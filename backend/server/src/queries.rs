//! The operators' query summary (opt-in, `BACKEND_QUERY_SUMMARY`): the most asked text queries
//! and the most asked that found nothing. Bounded: queries are normalised and cut to
//! [`MAX_SUMMARY_QUERY_CHARS`], at most a fixed number of distinct ones are kept (later new ones
//! are only counted), and nothing is logged. Query text never becomes a metric label.

use std::collections::HashMap;
use std::sync::Mutex;

use backend_api::{MAX_SUMMARY_QUERY_CHARS, QueryCount, QuerySummaryResponse};

#[derive(Debug, Default)]
struct Counts {
    searches: u64,
    zero: u64,
}

#[derive(Debug, Default)]
struct Inner {
    queries: HashMap<String, Counts>,
    searches: u64,
    not_kept: u64,
}

#[derive(Debug)]
pub struct QuerySummary {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// Trimmed, lower case, runs of whitespace as one space, at most [`MAX_SUMMARY_QUERY_CHARS`]
/// characters (an ellipsis marks a cut).
pub fn normalise(query: &str) -> String {
    let lower = crate::encoder::normalise_query(query);
    if lower.chars().count() <= MAX_SUMMARY_QUERY_CHARS {
        return lower;
    }
    let mut cut: String = lower.chars().take(MAX_SUMMARY_QUERY_CHARS - 1).collect();
    cut.push('…');
    cut
}

impl QuerySummary {
    /// At most `capacity` distinct queries are kept.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Counts one text search for `query`; `found_nothing` when it answered no hits.
    pub fn record(&self, query: &str, found_nothing: bool) {
        let key = normalise(query);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.searches += 1;
        let room = inner.queries.len() < self.capacity;
        match inner.queries.get_mut(&key) {
            Some(counts) => {
                counts.searches += 1;
                counts.zero += u64::from(found_nothing);
            }
            None if room => {
                inner.queries.insert(
                    key,
                    Counts {
                        searches: 1,
                        zero: u64::from(found_nothing),
                    },
                );
            }
            None => inner.not_kept += 1,
        }
    }

    /// The `limit` most asked queries, and the `limit` most asked that found nothing (ties by
    /// query, so the answer is stable).
    pub fn snapshot(&self, limit: usize) -> QuerySummaryResponse {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ranked = |count: &dyn Fn(&Counts) -> u64| {
            let mut list: Vec<QueryCount> = inner
                .queries
                .iter()
                .filter(|(_, c)| count(c) > 0)
                .map(|(q, c)| QueryCount {
                    query: q.clone(),
                    searches: count(c),
                })
                .collect();
            list.sort_by(|a, b| {
                b.searches
                    .cmp(&a.searches)
                    .then_with(|| a.query.cmp(&b.query))
            });
            list.truncate(limit);
            list
        };
        QuerySummaryResponse {
            searches: inner.searches,
            distinct: inner.queries.len(),
            not_kept: inner.not_kept,
            top: ranked(&|c| c.searches),
            zero_results: ranked(&|c| c.zero),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_normalised_queries_and_keeps_a_bounded_number() {
        let summary = QuerySummary::new(3);
        for (q, nothing) in [
            ("Red Dress", false),
            ("  red   dress ", false),
            ("red dress", false),
            ("blue jeans", false),
            ("qorvex blint", true),
            ("qorvex blint", true),
            ("one too many", false),
            ("one too many", false),
        ] {
            summary.record(q, nothing);
        }
        let s = summary.snapshot(10);
        assert_eq!((s.searches, s.distinct, s.not_kept), (8, 3, 2));
        assert_eq!(
            s.top,
            vec![
                QueryCount {
                    query: "red dress".into(),
                    searches: 3
                },
                QueryCount {
                    query: "qorvex blint".into(),
                    searches: 2
                },
                QueryCount {
                    query: "blue jeans".into(),
                    searches: 1
                },
            ]
        );
        assert_eq!(
            s.zero_results,
            vec![QueryCount {
                query: "qorvex blint".into(),
                searches: 2
            }]
        );
        assert_eq!(summary.snapshot(1).top.len(), 1);
    }

    #[test]
    fn long_queries_are_cut() {
        let long = "é".repeat(500);
        let cut = normalise(&long);
        assert_eq!(cut.chars().count(), MAX_SUMMARY_QUERY_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(normalise("Short"), "short");
    }
}
