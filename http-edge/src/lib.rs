//! The HTTP edge every fashion-search service shares, written once.
//!
//! Incoming:
//! - [`error`]: the error body `{"error": {"code", "message"}}` ([`ErrorResponse`]), with
//!   `Retry-After` when the client should come back.
//! - [`reject`]: axum's JSON, query, path and multipart rejections mapped to 4xx error bodies, and
//!   the content-type dispatch of endpoints that take JSON or multipart.
//! - [`limits`]: a total request timeout, a whole-body deadline and a global concurrency limit
//!   around the API routes ([`limits::protect`]); [`panic`]: a handler panic becomes a 500.
//! - [`rate_limit`]: per-client and per-key rate limits (429 + `Retry-After`).
//! - [`serve`](mod@serve): hyper with a request-head deadline, the peer address, graceful shutdown
//!   on [`shutdown_signal`].
//!
//! Outgoing:
//! - [`client`]: JSON calls between the services (`traceparent` injected, the error body read
//!   back into [`CallError`]).
//! - [`retry`]: retry with exponential backoff (the `backon` crate) for failures that may pass.
//! - [`download`]: one resumable, checksummed, atomically written file download.
//!
//! Refusals at the edge are counted in `http_requests_rejected_total{service, reason}`
//! ([`metrics`]).

pub mod client;
pub mod download;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod panic;
pub mod rate_limit;
pub mod reject;
pub mod retry;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{CallError, send_json};
pub use error::ErrorResponse;
pub use limits::{EdgeLimits, protect};
pub use serve::{serve, shutdown_signal};
