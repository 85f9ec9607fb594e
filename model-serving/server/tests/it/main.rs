//! model-serving integration tests: the real service on port 0 with the generated tiny model.
//! Each test runs in its own process under cargo nextest.

mod api;
mod helpers;
mod hostile;
mod hub;
mod process;
mod prune;
mod reference;
mod trained_model;
