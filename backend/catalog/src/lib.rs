//! What the ETL and the backend must agree on about a catalogue entry, in one place:
//!
//! - [`sniff_image`]: the image type from its first bytes (JPEG, PNG, GIF, WebP);
//! - [`content_key`]: the object key of an image, content-addressed
//!   (`images/<first two hex digits>/<sha256>.<ext>`), so identical bytes share one object;
//! - [`point_id`]: the id of the point (the product) an image is indexed under;
//! - `store` (feature `store`): [`store::ObjectStore`] over S3 and its [`store::StorageSettings`].
//!   Pre-signing GET URLs is a separate, optional capability ([`store::PresignSettings`]): the ETL
//!   only writes and configures none.
//!
//! Without the `store` feature the crate is the pure rules, with no S3 client behind them.
//!
//! # Point ids
//!
//! One scheme: `UUIDv5(NAMESPACE_URL, "{dataset}/{content_key}")`. It is derived from what both
//! writers have, the dataset name and the image's bytes: an upload through the API has no dataset
//! item key, and the ETL has the bytes before it encodes anything. So one photo loaded by the ETL
//! and added through the API is one product, adding it again is idempotent, and the ETL still skips
//! what is indexed before it calls model-serving (hashing a photo costs microseconds; encoding it,
//! a model call). It is the scheme the API already used, so ids the API handed out stay valid.
//! Within a dataset, identical photos are one product (the later attributes win; the ETL loads the
//! first it meets in a run): of the 8,007 photos of `fashion-product-images-small`, 77 are
//! byte-identical to another product's (e.g. 10200 and 10244), so that dataset loads as 7,930
//! products.
//!
//! ## Migration (indexes built before this scheme)
//!
//! Points the ETL loaded earlier were keyed `UUIDv5(NAMESPACE_OID, "{dataset}/{item key}")`.
//! They stay searchable, but the ETL no longer recognises them: a rerun on an old index loads every
//! item again under its new id, and each photo is then in the index twice. Either
//!
//! - start from an empty index (delete the index directory / collection) and rerun `etl load`
//!   (the objects in S3 are content-addressed and are simply written again, unchanged), or
//! - re-key in place, once: for each old point, `GET /v1/images/{id}`, `POST` it back through the
//!   batch API with `id = point_id(dataset, s3_key)` and the same vector, then `DELETE` the old id
//!   (the object is shared, so only delete points, never objects, while re-keying).
//!
//! Points added through the API keep their ids.

mod id;
mod key;
mod sniff;
#[cfg(feature = "store")]
pub mod store;

pub use id::point_id;
pub use key::{ImageObject, content_key, is_content_key, original_of_thumbnail, thumbnail_key};
pub use sniff::{ImageFormat, sniff_image};
