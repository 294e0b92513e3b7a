//! Client of an S3-compatible bucket (AWS S3, MinIO, Garage, Backblaze B2,
//! Scaleway, OVH...) as a backup destination: streaming multipart uploads
//! with per-part SHA-256 checksums and bounded memory, where the object
//! appears only when complete; Object Lock retention on every object
//! written; streaming reads; listings; deletes that report locked
//! objects; and the bucket's Object Lock posture.
//!
//! Built on the AWS SDK (`aws-sdk-s3`) rather than `object_store`:
//! `object_store` can neither set a per-object Object Lock retention
//! (mode and retain-until date) on a write nor read it back, and both are
//! what makes a writer unable to destroy history. The SDK signs requests
//! itself (no hand-made signer) and speaks to any endpoint.
//!
//! One concern per module: `settings` and `args` (the `S3_*` variables),
//! `client` (the SDK client, keys, descriptions), `upload` (with
//! `part_buffers`, the memory of an upload), `read`,
//! `listing`, `delete`, `posture`, `prune_identity` (the pruner's own key),
//! `error`.
//!
//! # Retries
//!
//! The SDK retries each request up to 3 times (connection errors, 5xx,
//! throttling) with a short backoff; nothing else retries here. Every
//! failure is an [`S3Error`] whose [`S3Error::is_transient`] says whether
//! trying again later may help: unreachable endpoint, timeouts, 5xx and
//! throttling may; refused credentials, a missing bucket, a denied or
//! locked object, a checksum that does not match need a human. Callers
//! own the schedule.

mod args;
mod client;
mod delete;
mod error;
mod listing;
mod part_buffers;
mod posture;
mod prune_identity;
mod read;
mod settings;
mod upload;

pub use args::{S3_HELP, S3Args, S3ConfigError};
pub use client::S3Remote;
pub use error::S3Error;
pub use listing::ObjectInfo;
pub use posture::{DefaultRetention, Posture};
pub use prune_identity::PruneS3Args;
pub use read::S3Reader;
pub use settings::{
    DEFAULT_PART_SIZE, LockMode, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, ObjectLock, S3Settings,
};
pub use upload::{PARTS_IN_FLIGHT, SHA256_METADATA};
