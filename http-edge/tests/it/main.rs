//! Integration tests of the edge over real sockets: the limits and rate limits of incoming
//! requests, and the resumable download against a local file server.
//!
//! Each test installs a process-wide metrics recorder, so each runs in its own process (cargo
//! nextest).

mod download;
mod limits;
