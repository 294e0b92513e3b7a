//! What a restore is given and what it gives back: how to restore
//! ([`RestoreOptions`]), the bytes to restore ([`RestoreSource`]) and what
//! the restore established ([`RestoreReport`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use backup_core::manifest::Manifest;
use backup_core::names::{DumpFormat, Sha256Hex};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `psql` for plain-format dumps.
    pub psql: PathBuf,
    /// `pg_restore` for custom-format archives.
    pub pg_restore: PathBuf,
    /// Parallel jobs for `pg_restore -j` (custom format only).
    pub jobs: u32,
    /// age identities, needed for encrypted artifacts.
    pub age_identity: Option<PathBuf>,
    /// Where a private directory is made for staging custom-format
    /// archives. The system temporary directory when `None`.
    pub staging_dir: Option<PathBuf>,
    /// Restore owners and privileges as dumped (a restore an application
    /// will use). Every role the dump names must exist on the target: a
    /// custom-format archive is checked before anything is restored, a
    /// plain script is restored in one transaction that is rolled back
    /// when a role is missing. `false` (the verifier's scratch restore):
    /// objects belong to the role that restores, privileges are left out.
    pub keep_owners: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            psql: "psql".into(),
            pg_restore: "pg_restore".into(),
            jobs: 2,
            age_identity: None,
            staging_dir: None,
            keep_owners: false,
        }
    }
}

/// The stored artifact bytes and the manifest that describes them.
#[derive(Debug)]
pub struct RestoreSource<R> {
    pub reader: R,
    pub manifest: Manifest,
}

/// What a restore established.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub sha256: Sha256Hex,
    pub bytes: u64,
    pub format: DumpFormat,
    /// What was deliberately not applied (ownership, privileges...).
    pub skipped: Vec<String>,
    /// Extensions the dump created.
    pub extensions: Vec<String>,
    pub checks: Vec<String>,
    /// Milliseconds per step (`download`, `restore`, ...). Steps overlap
    /// for plain dumps: the download runs while psql restores.
    pub steps: BTreeMap<String, u64>,
}
