//! What can go wrong, independent of transport. Each [`ErrorKind`] has a stable code (the
//! `code` of the JSON error body), a message safe to show a shopper, and a message for operators
//! and API callers. The backend maps kinds to HTTP statuses in one place (its `api::error`); a
//! caller reads the kind back from the code with [`ErrorKind::from_code`] and matches on it,
//! never on a status number.

/// One kind of failure. Codes never change once published; new kinds get new codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A parameter or body field is out of bounds, or a filter names an unknown value.
    InvalidRequest,
    /// The query string does not parse, or names a key the route does not take.
    InvalidQuery,
    /// The JSON body does not parse or misses a field.
    InvalidJson,
    /// A path id is not a UUID.
    InvalidId,
    /// A multipart body does not parse.
    InvalidMultipart,
    /// A multipart upload has no file part.
    MissingFile,
    /// A multipart upload has more parts than allowed.
    TooManyParts,
    /// A form field has the wrong type.
    InvalidField,
    /// An add-by-URL names something that is not an http(s) URL.
    InvalidUrl,
    /// An add-by-URL could not be fetched (or was refused).
    FetchFailed,
    /// An ingested vector has the wrong number of dimensions.
    DimensionMismatch,
    /// The model could not read the image (corrupt, or an extreme aspect ratio).
    InvalidImage,
    /// The image has too many pixels for the model.
    ImageTooLarge,
    /// The bytes are not an image type the model reads.
    UnsupportedImage,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request has the wrong content type.
    UnsupportedMediaType,
    /// A write without the right `x-api-key`.
    Unauthorized,
    /// Writes are off: the backend has no API key configured.
    WritesDisabled,
    /// No such image (or route).
    NotFound,
    /// A batch names an object that a delete removed meanwhile.
    ObjectMissing,
    /// Too many requests from this client or key.
    RateLimited,
    /// The request took longer than the service allows.
    Timeout,
    /// The service is shedding load.
    Overloaded,
    /// Model-serving is down or failing (circuit breaker open).
    ModelUnavailable,
    /// Model-serving is at capacity and said when to come back.
    ModelOverloaded,
    /// The vector index is unreachable.
    IndexUnavailable,
    /// Object storage is unreachable.
    StorageUnavailable,
    /// The index was made by another model than the one model-serving serves (or than the one
    /// that made a batch's vectors): searching or writing would mix two models' vectors.
    ModelMismatch,
    /// A fault of ours; the cause is logged, never sent.
    Internal,
}

impl ErrorKind {
    pub const ALL: &'static [ErrorKind] = &[
        Self::InvalidRequest,
        Self::InvalidQuery,
        Self::InvalidJson,
        Self::InvalidId,
        Self::InvalidMultipart,
        Self::MissingFile,
        Self::TooManyParts,
        Self::InvalidField,
        Self::InvalidUrl,
        Self::FetchFailed,
        Self::DimensionMismatch,
        Self::InvalidImage,
        Self::ImageTooLarge,
        Self::UnsupportedImage,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Unauthorized,
        Self::WritesDisabled,
        Self::NotFound,
        Self::ObjectMissing,
        Self::RateLimited,
        Self::Timeout,
        Self::Overloaded,
        Self::ModelUnavailable,
        Self::ModelOverloaded,
        Self::IndexUnavailable,
        Self::StorageUnavailable,
        Self::ModelMismatch,
        Self::Internal,
    ];

    /// The stable code, the `code` of the JSON error body.
    pub const fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidQuery => "invalid_query",
            Self::InvalidJson => "invalid_json",
            Self::InvalidId => "invalid_id",
            Self::InvalidMultipart => "invalid_multipart",
            Self::MissingFile => "missing_file",
            Self::TooManyParts => "too_many_parts",
            Self::InvalidField => "invalid_field",
            Self::InvalidUrl => "invalid_url",
            Self::FetchFailed => "fetch_failed",
            Self::DimensionMismatch => "dimension_mismatch",
            Self::InvalidImage => "invalid_image",
            Self::ImageTooLarge => "image_too_large",
            Self::UnsupportedImage => "unsupported_image",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::WritesDisabled => "writes_disabled",
            Self::NotFound => "not_found",
            Self::ObjectMissing => "object_missing",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::ModelUnavailable => "model_unavailable",
            Self::ModelOverloaded => "model_overloaded",
            Self::IndexUnavailable => "index_unavailable",
            Self::StorageUnavailable => "storage_unavailable",
            Self::ModelMismatch => "model_mismatch",
            Self::Internal => "internal",
        }
    }

    /// The kind of a code from an error body; `None` for a code this version does not know.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.code() == code)
    }

    /// What a shopper may be shown: plain words, no internals, no routes.
    pub const fn shopper_message(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::InvalidQuery
            | Self::InvalidJson
            | Self::InvalidId
            | Self::InvalidField
            | Self::DimensionMismatch => {
                "That search could not be run as asked; change it and try again."
            }
            Self::InvalidMultipart | Self::MissingFile | Self::TooManyParts => {
                "Choose one photo to upload."
            }
            Self::InvalidUrl | Self::FetchFailed => "That link could not be used for a photo.",
            Self::InvalidImage => "That photo could not be read; try another one.",
            Self::ImageTooLarge | Self::PayloadTooLarge => {
                "That photo is too large; try a smaller one."
            }
            Self::UnsupportedImage | Self::UnsupportedMediaType => {
                "That file is not a photo we can read (JPEG, PNG, WebP or GIF)."
            }
            Self::Unauthorized | Self::WritesDisabled => "That action is not allowed.",
            Self::NotFound => "That product is no longer in the catalogue.",
            Self::ObjectMissing => "That product changed meanwhile; try again.",
            Self::RateLimited => "Too many searches at once; wait a moment and try again.",
            Self::Timeout
            | Self::Overloaded
            | Self::ModelUnavailable
            | Self::ModelOverloaded
            | Self::IndexUnavailable
            | Self::StorageUnavailable => "Search is busy right now; please try again in a moment.",
            Self::ModelMismatch => "Search is being updated; please try again in a moment.",
            Self::Internal => "Something went wrong on our side; please try again.",
        }
    }

    /// What an operator or API caller reads: which part failed and what to do. The body of a
    /// 5xx answer says only this (the cause is logged once where it happened).
    pub const fn operator_message(self) -> &'static str {
        match self {
            Self::InvalidRequest => {
                "a parameter or field is out of bounds or names an unknown value"
            }
            Self::InvalidQuery => "the query string does not parse or names an unknown key",
            Self::InvalidJson => "the JSON body does not parse",
            Self::InvalidId => "the image id must be a UUID",
            Self::InvalidMultipart => "the multipart body does not parse",
            Self::MissingFile => "send the image as a multipart file field named \"file\"",
            Self::TooManyParts => "too many multipart parts",
            Self::InvalidField => "a form field has the wrong type",
            Self::InvalidUrl => "not an http(s) URL",
            Self::FetchFailed => "the image could not be fetched from that URL",
            Self::DimensionMismatch => "the vector's dimensions differ from the index's",
            Self::InvalidImage => "the model could not decode the image",
            Self::ImageTooLarge => "the image has too many pixels for the model",
            Self::UnsupportedImage => "not an image type the model reads",
            Self::PayloadTooLarge => "the request body is too large",
            Self::UnsupportedMediaType => "wrong content type",
            Self::Unauthorized => "a valid x-api-key header is required for writes",
            Self::WritesDisabled => "writes are disabled: the backend has no API_KEY configured",
            Self::NotFound => "no such image",
            Self::ObjectMissing => "an object was deleted meanwhile; store it again, then retry",
            Self::RateLimited => "rate limited; retry after the delay given",
            Self::Timeout => "the request timed out; retry shortly",
            Self::Overloaded => "the service is shedding load; retry shortly",
            Self::ModelUnavailable => "the model service is unavailable; retry shortly",
            Self::ModelOverloaded => {
                "the model service is at capacity; retry after the delay given"
            }
            Self::IndexUnavailable => "the index is unavailable; retry shortly",
            Self::StorageUnavailable => "image storage is unavailable; retry shortly",
            Self::ModelMismatch => {
                "the index was made by another model: re-index, or serve the index's model"
            }
            Self::Internal => "internal error",
        }
    }

    /// A fault of the service or a dependency (retry later), not of the request.
    pub const fn is_fault(self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::Overloaded
                | Self::ModelUnavailable
                | Self::ModelOverloaded
                | Self::IndexUnavailable
                | Self::StorageUnavailable
                | Self::ModelMismatch
                | Self::Internal
        )
    }

    /// Whether a fault's own message may be sent with it. Only [`Self::ModelMismatch`]'s: it
    /// names the two models and their fingerprints, which the operator needs and which say
    /// nothing of addresses or internals. Every other fault's body is its operator message.
    pub const fn detail_is_public(self) -> bool {
        matches!(self, Self::ModelMismatch)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_read_back() {
        let mut codes: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(*kind));
            let shopper = kind.shopper_message();
            assert!(!shopper.contains("/v1") && !shopper.contains("x-api-key"));
        }
        assert_eq!(ErrorKind::from_code("no_such_code"), None);
    }
}
