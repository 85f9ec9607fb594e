//! What a shopper is told: the page's status and its message box, including the mapping from a
//! backend call's [`Trouble`] to a page.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::calls::Trouble;
use crate::views::{Notice, NoticeKind};

/// A rendered page with its status; 503s say when to retry.
pub(crate) fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

pub(crate) fn problem(title: &str, detail: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Problem,
        title: title.to_owned(),
        detail: detail.into(),
    }
}

pub(crate) fn info(title: impl Into<String>, detail: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Info,
        title: title.into(),
        detail: detail.into(),
    }
}

/// What a shopper is told when a backend call fails, and the page's status.
pub(crate) fn trouble_notice(
    trouble: Trouble,
    timeout: Duration,
    subject: &str,
) -> (StatusCode, Notice) {
    match trouble {
        Trouble::Slow => (
            StatusCode::SERVICE_UNAVAILABLE,
            problem(
                "Search is taking longer than usual",
                format!(
                    "We stopped waiting after {:.0} seconds. Please try again in a moment.",
                    timeout.as_secs_f64()
                ),
            ),
        ),
        Trouble::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            problem(
                "Search is temporarily unavailable",
                "We could not reach the search service. Please try again in a moment.",
            ),
        ),
        Trouble::Rejected { status: 404, .. } => (
            StatusCode::NOT_FOUND,
            problem(
                "We could not find that product",
                "It may have been removed from the catalogue.",
            ),
        ),
        Trouble::Rejected { status: 413, .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            problem("That photo is too large", "Please try a smaller photo."),
        ),
        Trouble::Rejected { status: 429, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            problem(
                "Too many searches at once",
                "Please wait a few seconds and try again.",
            ),
        ),
        Trouble::Rejected { status, message } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            problem(&format!("We could not use that {subject}"), message),
        ),
    }
}
