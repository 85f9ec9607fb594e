//! axum's extractor rejections as 4xx error bodies, the same in every service.
//!
//! Handlers take `Result<Json<T>, JsonRejection>` (and the like) and map the error with these
//! functions, so a malformed request never gets axum's plain-text body.

use axum::Json;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Request};
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::ErrorResponse;

/// A JSON body that is too large (413), not `application/json` (415), or not the expected value
/// (400 `invalid_json`).
pub fn json(rejection: JsonRejection) -> ErrorResponse {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorResponse::payload_too_large(rejection.body_text()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ErrorResponse::unsupported_media_type("expected Content-Type: application/json")
        }
        _ => ErrorResponse::bad_request("invalid_json", rejection.body_text()),
    }
}

/// A query string that does not parse into the expected parameters (400 `invalid_query`).
pub fn query(rejection: QueryRejection) -> ErrorResponse {
    ErrorResponse::bad_request("invalid_query", rejection.body_text())
}

/// A path segment of the wrong type (400 with `code`), e.g. `("invalid_id", "the image id must
/// be a UUID")`: axum's own text names Rust types, so the caller says what was expected.
pub fn path(_rejection: PathRejection, code: &'static str, expected: &str) -> ErrorResponse {
    ErrorResponse::bad_request(code, expected)
}

/// A request that is not `multipart/form-data` with a boundary (415).
pub fn multipart(rejection: MultipartRejection) -> ErrorResponse {
    ErrorResponse::unsupported_media_type(rejection.body_text())
}

/// A multipart body that fails while its parts are read: over the body limit (413) or malformed
/// (400 `invalid_multipart`).
pub fn multipart_field(error: MultipartError) -> ErrorResponse {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorResponse::payload_too_large(error.body_text())
    } else {
        ErrorResponse::bad_request("invalid_multipart", error.body_text())
    }
}

/// What a request body says it is, for endpoints that take either JSON or multipart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Multipart,
    /// Anything else, including no `Content-Type`: the endpoint answers 415.
    Other,
}

impl BodyKind {
    /// From the `Content-Type` header (case-insensitive, parameters ignored).
    pub fn of(headers: &HeaderMap) -> Self {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "multipart/form-data" => Self::Multipart,
            "application/json" => Self::Json,
            _ => Self::Other,
        }
    }
}

/// The body of an endpoint that takes either a JSON value or a multipart form, chosen by
/// `Content-Type`; anything else is refused with 415 before the body is read.
pub enum JsonOrMultipart<T> {
    Json(T),
    Multipart(Multipart),
}

impl<T, S> FromRequest<S> for JsonOrMultipart<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ErrorResponse;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match BodyKind::of(request.headers()) {
            BodyKind::Json => Json::<T>::from_request(request, state)
                .await
                .map(|Json(value)| Self::Json(value))
                .map_err(json),
            // The content type is multipart already: what fails is its boundary.
            BodyKind::Multipart => Multipart::from_request(request, state)
                .await
                .map(Self::Multipart)
                .map_err(|e| ErrorResponse::bad_request("invalid_multipart", e.body_text())),
            BodyKind::Other => Err(ErrorResponse::unsupported_media_type(
                "send Content-Type: application/json or multipart/form-data",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Query;

    use super::*;

    fn with_type(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().expect("header"));
        headers
    }

    #[test]
    fn body_kind_follows_the_content_type() {
        assert_eq!(BodyKind::of(&with_type("application/json")), BodyKind::Json);
        assert_eq!(
            BodyKind::of(&with_type("Application/JSON; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::of(&with_type("multipart/form-data; boundary=x")),
            BodyKind::Multipart
        );
        assert_eq!(BodyKind::of(&with_type("text/plain")), BodyKind::Other);
        assert_eq!(BodyKind::of(&HeaderMap::new()), BodyKind::Other);
    }

    fn request(content_type: &str, body: &'static str) -> Request {
        Request::builder()
            .method("POST")
            .uri("/?k=many")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request")
    }

    /// The status and code a refused extraction is answered with.
    fn answer<T, R>(extracted: Result<T, R>, map: fn(R) -> ErrorResponse) -> (StatusCode, String) {
        let error = map(extracted.err().expect("refused"));
        (error.status, error.code.into_owned())
    }

    #[tokio::test]
    async fn real_rejections_become_4xx_codes() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct K {
            k: u32,
        }
        let bad = |code: &str| (StatusCode::BAD_REQUEST, code.to_owned());
        let unsupported = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".to_owned(),
        );

        let malformed = Json::<Vec<u32>>::from_request(request("application/json", "{"), &()).await;
        assert_eq!(answer(malformed, json), bad("invalid_json"));
        let not_json = Json::<Vec<u32>>::from_request(request("text/plain", "[1]"), &()).await;
        assert_eq!(answer(not_json, json), unsupported);
        let not_a_number = Query::<K>::from_request(request("application/json", ""), &()).await;
        assert_eq!(answer(not_a_number, query), bad("invalid_query"));
        let no_boundary = Multipart::from_request(request("application/json", ""), &()).await;
        assert_eq!(answer(no_boundary, multipart), unsupported);
        let mut parts = Multipart::from_request(
            request("multipart/form-data; boundary=b", "--b\r\nnonsense"),
            &(),
        )
        .await
        .expect("a boundary is enough to start");
        let truncated = parts.next_field().await;
        assert_eq!(answer(truncated, multipart_field), bad("invalid_multipart"));
    }

    #[tokio::test]
    async fn json_or_multipart_dispatches_on_the_content_type() {
        type Body = JsonOrMultipart<Vec<u32>>;
        let json = Body::from_request(request("application/json", "[1,2]"), &()).await;
        assert!(matches!(json, Ok(JsonOrMultipart::Json(v)) if v == [1, 2]));
        let form = request("multipart/form-data; boundary=b", "--b--\r\n");
        let form = Body::from_request(form, &()).await;
        assert!(matches!(form, Ok(JsonOrMultipart::Multipart(_))));

        let text = Body::from_request(request("text/plain", "x"), &()).await;
        assert_eq!(
            answer(text, std::convert::identity).0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let no_boundary = Body::from_request(request("multipart/form-data", ""), &()).await;
        assert_eq!(
            answer(no_boundary, std::convert::identity),
            (StatusCode::BAD_REQUEST, "invalid_multipart".to_owned())
        );
    }
}
