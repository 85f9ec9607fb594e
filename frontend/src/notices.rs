//! What a shopper is told: the page's status and its message box, including the mapping from a
//! backend call's [`Trouble`] to a page.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use backend_api::ErrorKind;

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
        suggestions: Vec::new(),
    }
}

pub(crate) fn info(title: impl Into<String>, detail: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Info,
        title: title.into(),
        detail: detail.into(),
        suggestions: Vec::new(),
    }
}

/// What a shopper is told when a backend call fails, and the page's status: the one place the
/// frontend turns a [`Trouble`] into a page. A refusal shows its kind's shopper-safe message, never
/// the backend's own words.
pub(crate) fn trouble_notice(
    trouble: Trouble,
    timeout: Duration,
    subject: &str,
) -> (StatusCode, Notice) {
    let kind = match trouble {
        Trouble::Slow => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                problem(
                    "Search is taking longer than usual",
                    format!(
                        "We stopped waiting after {:.0} seconds. Please try again in a moment.",
                        timeout.as_secs_f64()
                    ),
                ),
            );
        }
        Trouble::Down => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                problem(
                    "Search is temporarily unavailable",
                    "We could not reach the search service. Please try again in a moment.",
                ),
            );
        }
        Trouble::Refused(kind) => kind,
    };
    let (status, title) = match kind {
        ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            "We could not find that product".to_owned(),
        ),
        ErrorKind::PayloadTooLarge | ErrorKind::ImageTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "That photo is too large".to_owned(),
        ),
        ErrorKind::UnsupportedImage | ErrorKind::UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "That file is not a photo we can read".to_owned(),
        ),
        ErrorKind::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many searches at once".to_owned(),
        ),
        kind if kind.is_fault() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Search is temporarily unavailable".to_owned(),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            format!("We could not use that {subject}"),
        ),
    };
    (status, problem(&title, kind.shopper_message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(8);

    #[test]
    fn each_refusal_has_its_page_and_shopper_words() {
        let cases = [
            (
                ErrorKind::NotFound,
                StatusCode::NOT_FOUND,
                "We could not find that product",
            ),
            (
                ErrorKind::PayloadTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "That photo is too large",
            ),
            (
                ErrorKind::ImageTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "That photo is too large",
            ),
            (
                ErrorKind::UnsupportedImage,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "That file is not a photo we can read",
            ),
            (
                ErrorKind::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many searches at once",
            ),
            (
                ErrorKind::InvalidImage,
                StatusCode::BAD_REQUEST,
                "We could not use that photo",
            ),
            (
                ErrorKind::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "We could not use that photo",
            ),
            (
                ErrorKind::ModelUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Search is temporarily unavailable",
            ),
        ];
        for (kind, status, title) in cases {
            let (got, notice) = trouble_notice(Trouble::Refused(kind), TIMEOUT, "photo");
            assert_eq!((got, notice.title.as_str()), (status, title), "{kind}");
            assert_eq!(notice.detail, kind.shopper_message(), "{kind}");
            assert_eq!(notice.kind, NoticeKind::Problem);
        }
    }

    #[test]
    fn every_kind_maps_to_a_page_a_shopper_can_read() {
        for kind in ErrorKind::ALL {
            let (status, notice) = trouble_notice(Trouble::Refused(*kind), TIMEOUT, "query");
            if kind.is_fault() {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kind}");
            } else {
                assert!(status.is_client_error(), "{kind}: {status}");
            }
            for text in [&notice.title, &notice.detail] {
                assert!(
                    !text.contains("/v1") && !text.contains(kind.code()),
                    "{kind}: {text}"
                );
            }
        }
    }

    #[test]
    fn unknown_codes_are_a_refusal_of_the_request() {
        assert_eq!(
            Trouble::refused("not_found"),
            Trouble::Refused(ErrorKind::NotFound)
        );
        assert_eq!(
            Trouble::refused("a_code_from_a_newer_backend"),
            Trouble::Refused(ErrorKind::InvalidRequest)
        );
    }

    #[test]
    fn slow_and_down_are_503_and_say_so() {
        let (status, notice) = trouble_notice(Trouble::Slow, TIMEOUT, "query");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            notice.detail.contains("after 8 seconds"),
            "{}",
            notice.detail
        );
        let (status, notice) = trouble_notice(Trouble::Down, TIMEOUT, "query");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(notice.title, "Search is temporarily unavailable");
    }

    #[test]
    fn retry_after_only_when_coming_back_helps() {
        for (status, retry) in [
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::OK, false),
        ] {
            let response = page(status, String::new());
            assert_eq!(response.status(), status);
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                retry,
                "{status}"
            );
        }
    }
}
