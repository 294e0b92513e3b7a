//! The store layer: every place backups are kept (a destination), read
//! and written through one interface that hides its layout. Callers name
//! files by `(database, name)`; a [`Store`] turns that into
//! `<base>/<database>/<name>` on an SFTP server and into
//! `<prefix>/<database>/<name>` keys in an S3 bucket, so the catalogue,
//! the verifier, the pruner and `backupctl` never spell a path themselves.
//!
//! - [`StoreTarget`] ([`target`]): one configured destination, its label
//!   (`sftp`, `sftp2`, `s3`) and its settings; [`StoreTarget::connect`] opens a
//!   [`Store`], [`StoreTarget::describe`] names it for events and logs as
//!   the shipper does in `dump.shipped` (no secrets). [`targets`] builds
//!   the list a service reads from its settings (`sftp`, then the
//!   shipper's second SFTP server `sftp2` and the bucket `s3` when
//!   configured): the one place a new destination is added.
//! - [`Store`] ([`store`]): an open connection to one destination: list a
//!   database's files ([`Entry`], with `retain_until` from S3 Object
//!   Lock), list the databases, stat, read a small file, open a
//!   streaming reader ([`StoreReader`]), write a small file atomically,
//!   remove a file, close.
//! - [`StoreError`] ([`error`]): the kinds' errors, with
//!   [`StoreError::is_transient`] and [`StoreError::is_not_found`].
//!
//! Adding a kind is one variant in [`Store`], [`TargetKind`],
//! [`StoreError`] and the reader, and one argument of [`targets`]; the
//! compiler lists every `match` to extend.
//!
//! # Retries
//!
//! None here. Every failure is a [`StoreError`] that says whether trying
//! again later may help; callers own the retry policy (JetStream
//! redelivery, the next scheduled run, or an operator), because only they
//! know the deadlines.

pub mod error;
pub mod reader;
pub mod store;
pub mod target;

pub use error::StoreError;
pub use reader::StoreReader;
pub use store::{Entry, Store};
pub use target::{
    S3_LABEL, SFTP_LABEL, SFTP2_LABEL, StoreTarget, TargetKind, UnknownTarget, find, targets,
};
