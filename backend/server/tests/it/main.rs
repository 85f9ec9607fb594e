//! Backend integration tests with the real parts: model-serving (tiny generated model), the
//! embedded Qdrant engine and the embedded S3 server, on port 0 with temporary directories,
//! fed with real photos. Each test runs in its own process under cargo nextest.

mod bench_cluster;
mod canary;
mod catalogue_check;
mod compose;
mod edge;
mod engines;
mod failover;
mod helpers;
mod hostile;
mod images;
mod qdrant_cluster;
mod qdrant_live;
mod queries;
mod reindex;
mod replicas;
mod resilience;
mod search;
mod thumbnails;
