//! Moved to the `http-edge` crate; this re-export keeps callers building for one step.
#![doc(hidden)]

pub use http_edge::error::error_response;
pub use http_edge::limits::*;
pub use http_edge::serve::{peer_addr, serve};
