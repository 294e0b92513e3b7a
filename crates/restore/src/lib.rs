//! The restore engine: one stored artifact into a database, streaming, and
//! the checks that prove the restored database is the one that was dumped.
//! The verifier restores into scratch databases with it, `backupctl
//! restore` into the operator's target.
//!
//! The bytes as stored (from the SFTP server, or from anywhere that reads)
//! are hashed as they arrive (`download`), decrypted and decompressed
//! (`decode`), and fed to `psql` through the [`sqlfilter`] (plain format)
//! or staged for `pg_restore -j` (custom format) ([`stream`]). Globals
//! scripts and media archives are parsed, not restored ([`archive`]).
//! Memory stays flat whatever the size of the dump. Then [`checks`]
//! compares every table's row count with the manifest and checks
//! sequences, large objects, materialized views and the operator's own
//! invariants.
//!
//! Everything that moves is counted in a [`Meter`]. The verifier runs the
//! whole pipeline under [`backup_core::watchdog::guard`] on that meter; an
//! abort drops it, which kills `psql` / `pg_restore` with their whole
//! process group and stops the download task. [`restore_stream`]
//! (`backupctl restore`) runs no watchdog and leaves the children in the
//! caller's process group, where Ctrl-C reaches them.
//!
//! Scratch databases ([`scratch`]) are named `<prefix>_<12 hex digits>`;
//! the start-up check that the scratch server lets a role create and drop
//! one is shared by the verifier and `backupctl doctor`.
//!
//! Retries: none here. Errors are classified by
//! [`VerifyError::is_transient`] and the caller decides.

pub mod archive;
pub mod checks;
mod decode;
mod download;
pub mod error;
pub mod meter;
pub mod options;
mod pg_restore;
mod psql;
pub mod scratch;
pub mod sqlfilter;
pub mod stream;

use std::time::Duration;

pub use archive::check_archive;
pub use checks::{CheckReport, ManifestExtras, OperatorCheck, run_checks};
pub use error::VerifyError;
pub use meter::{Meter, Phase, ProgressFn, RestoreProgress};
pub use options::{RestoreOptions, RestoreReport, RestoreSource};
pub use scratch::{SCRATCH_PREFIX, valid_scratch_prefix};
pub use stream::{restore_stream, restore_stream_metered};

/// Size of the buffers that carry the artifact from one stage to the next.
const CHUNK: usize = 256 * 1024;

/// A duration in whole milliseconds, as reports and records carry steps.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
