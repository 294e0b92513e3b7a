//! The remote catalogue: what a destination holds and what may go. Every
//! destination is read through a [`remote_store::Store`], by database and
//! file name, so the same catalogue and plan serve each of them.
//!
//! - [`layout`]: one directory per database under the base; every file
//!   name classified (artifact, manifest, verification record, partial
//!   upload, stray); the databases present.
//! - [`listing`]: one database's directory read and judged
//!   ([`read_catalog`]), from the listing and the sidecars alone.
//! - [`verified`]: the one definition of a verified backup, shared by the
//!   pruner, `backupctl list` and `backupctl restore --latest`.
//! - [`policy`]: the retention plan, a pure function of the backups, the
//!   policy and the clock; [`retention`]: that policy as settings.
//! - [`plan`]: one database's plan with its listing, and the brake.
//!
//! Nothing here deletes or writes: the pruner service deletes what a plan
//! says, the verifier writes records. Retries: none; the store's errors
//! are returned (see [`remote_store::StoreError::is_transient`]) and the
//! caller decides.

pub mod layout;
pub mod listing;
pub mod plan;
pub mod policy;
pub mod retention;
pub mod verified;

#[cfg(test)]
mod fuzz_tests;

pub use layout::{RemoteFile, classify, database_dir, list_databases};
pub use listing::{Catalog, PARTIAL_MAX_AGE, read_catalog};
pub use plan::{Brake, DatabasePlan, plan_database};
pub use policy::{Backup, Discard, Plan, Policy, Reason};
pub use retention::{InvalidPolicy, RetentionArgs};
pub use verified::is_verified;
