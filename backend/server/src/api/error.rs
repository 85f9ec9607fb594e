//! The one place where an [`ErrorKind`] becomes an HTTP status. Handlers and extractors return
//! [`ApiError`]s (a kind and a message); engine errors arrive through `From<SearchError>`, which
//! logs their cause once. A 5xx body says only the kind's operator message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backend_api::{ErrorBody, ErrorKind};

use crate::encoder::EncoderError;
use crate::index::IndexError;
use crate::search::SearchError;
use crate::storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
    /// Seconds, sent as `Retry-After` (503 answers always carry one).
    retry_after: Option<u64>,
}

impl ApiError {
    /// `kind` with a message about this request (4xx: the caller's input).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `kind` with its operator message.
    pub fn of(kind: ErrorKind) -> Self {
        Self::new(kind, kind.operator_message())
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// HTTP status of each kind: one arm per kind.
pub fn status(kind: ErrorKind) -> StatusCode {
    use ErrorKind as K;
    match kind {
        K::InvalidRequest
        | K::InvalidQuery
        | K::InvalidJson
        | K::InvalidId
        | K::InvalidMultipart
        | K::MissingFile
        | K::TooManyParts
        | K::InvalidField
        | K::InvalidUrl
        | K::FetchFailed
        | K::DimensionMismatch
        | K::InvalidImage => StatusCode::BAD_REQUEST,
        K::Unauthorized => StatusCode::UNAUTHORIZED,
        K::WritesDisabled => StatusCode::FORBIDDEN,
        K::NotFound => StatusCode::NOT_FOUND,
        K::ObjectMissing => StatusCode::CONFLICT,
        K::ImageTooLarge | K::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::UnsupportedImage | K::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        K::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        K::Timeout
        | K::Overloaded
        | K::ModelUnavailable
        | K::ModelOverloaded
        | K::IndexUnavailable
        | K::StorageUnavailable
        | K::ModelMismatch => StatusCode::SERVICE_UNAVAILABLE,
        K::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The shared HTTP edge's rejections (malformed JSON, query or multipart; a wrong content type)
/// by their code; a code this version does not know keeps its status's nearest kind.
impl From<http_edge::ErrorResponse> for ApiError {
    fn from(error: http_edge::ErrorResponse) -> Self {
        let kind = ErrorKind::from_code(&error.code).unwrap_or(match error.status {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
            status if status.is_client_error() => ErrorKind::InvalidRequest,
            _ => ErrorKind::Internal,
        });
        let api = Self::new(kind, error.message);
        match error.retry_after_secs {
            Some(secs) => api.retry_after(secs),
            None => api,
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> Self {
        let kind = error.kind();
        match &error {
            SearchError::Encoder(EncoderError::Unavailable { .. })
            | SearchError::Index(IndexError::Unavailable(_))
            | SearchError::Storage(StorageError::Unavailable(_)) => {
                tracing::warn!(%error, code = kind.code(), "dependency unavailable");
            }
            _ if kind == ErrorKind::Internal => {
                tracing::error!(%error, "internal error");
            }
            _ => {}
        }
        let retry_after = error.retry_after().map(|d| d.as_secs());
        let api = Self::new(kind, error.to_string());
        match retry_after {
            Some(secs) => api.retry_after(secs),
            None => api,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(self.kind);
        let message = if status.is_server_error() && !self.kind.detail_is_public() {
            self.kind.operator_message().to_owned()
        } else {
            self.message
        };
        let retry_after = match (self.retry_after, status) {
            (None, StatusCode::SERVICE_UNAVAILABLE) => Some(1),
            (retry_after, _) => retry_after,
        };
        let mut response = (status, Json(ErrorBody::new(self.kind, message))).into_response();
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_5xx_with_generic_bodies_and_a_retry_after_when_503() {
        for kind in ErrorKind::ALL {
            assert_eq!(status(*kind).is_server_error(), kind.is_fault(), "{kind}");
        }
        let response =
            ApiError::new(ErrorKind::ModelUnavailable, "connect 10.0.0.7:8000").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::of(ErrorKind::NotFound).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_edge_rejections_keep_their_codes_and_statuses() {
        use http_edge::ErrorResponse;
        for edge in [
            ErrorResponse::bad_request("invalid_json", "expected a value"),
            ErrorResponse::bad_request("invalid_query", "k: invalid digit"),
            ErrorResponse::bad_request("invalid_multipart", "truncated"),
            ErrorResponse::payload_too_large("body over 1 MiB"),
            ErrorResponse::unsupported_media_type("send application/json"),
        ] {
            let api = ApiError::from(edge.clone());
            assert_eq!(api.kind().code(), edge.code, "{edge:?}");
            assert_eq!(status(api.kind()), edge.status, "{edge:?}");
        }
        let unknown = ApiError::from(ErrorResponse::bad_request("brand_new", "?"));
        assert_eq!(unknown.kind(), ErrorKind::InvalidRequest);
    }
}

// The error responses the handlers document, in the groups they come in (documentation only:
// `#[utoipa::path(responses(...))]` lists them by type).

/// 400.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum InvalidInput {
    #[response(status = 400, description = "invalid input")]
    Invalid(ErrorBody),
}

/// 401 and 403: the write key.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum WriteRefused {
    #[response(status = 401, description = "x-api-key missing or wrong")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "writes disabled (no API_KEY configured)")]
    Forbidden(ErrorBody),
}

/// 404.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum NotFound {
    #[response(status = 404, description = "no such image")]
    NotFound(ErrorBody),
}

/// 408, 413 and 415: a request body refused.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum BodyRefused {
    #[response(status = 408, description = "the request body was not sent in time")]
    Timeout(ErrorBody),
    #[response(status = 413, description = "body or image too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "wrong content type or not an image")]
    Unsupported(ErrorBody),
}

/// 429.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum RateLimited {
    #[response(status = 429, description = "rate limited",
        headers(("Retry-After" = u64, description = "seconds to wait")))]
    RateLimited(ErrorBody),
}

/// 500 and 503: every endpoint's faults.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum Faults {
    #[response(status = 500, description = "internal error")]
    Internal(ErrorBody),
    #[response(status = 503, description = "a dependency is unavailable or busy, or the request timed out",
        headers(("Retry-After" = u64, description = "seconds to wait")))]
    Unavailable(ErrorBody),
}
