//! Why a restore or one of its checks failed, and what the caller should
//! do about it: [`VerifyError::is_transient`] (retry later: the path to the
//! data failed) and [`VerifyError::condemns_backup`] (the backup itself is
//! bad and must not count as verified).

use std::collections::BTreeSet;

use backup_core::events::AbortedStep;
use backup_core::pg::PgError;
use backup_core::watchdog::{Aborted, Limits};
use remote_store::StoreError;

/// Why a verification or restore failed. The message starts with the name
/// of the check that failed, and that is what `dump.failed` carries.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The destination the artifact is read from.
    #[error(transparent)]
    Remote(#[from] StoreError),
    #[error(transparent)]
    Scratch(#[from] PgError),
    #[error("manifest: {artifact}: {detail}")]
    Manifest { artifact: String, detail: String },
    #[error(
        "checksum: the stored copy of {artifact} does not match: expected sha256 {expected}, read {actual} ({bytes} bytes)"
    )]
    Checksum {
        artifact: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("decryption: {artifact}: {detail}")]
    Decrypt { artifact: String, detail: String },
    #[error("decompression: {artifact} does not decompress: {detail}")]
    Decompress { artifact: String, detail: String },
    #[error(
        "extensions: {artifact} needs extension(s) the scratch server does not have: {missing} (install them there)"
    )]
    MissingExtensions { artifact: String, missing: String },
    #[error(
        "roles: {artifact} has objects owned by or granted to role(s) missing on the target server: {roles}"
    )]
    MissingRoles { artifact: String, roles: String },
    #[error("restore: {artifact}: {detail}")]
    Restore { artifact: String, detail: String },
    #[error("row counts: {count} table(s) differ from the manifest, first {first}; all: {details}")]
    RowCounts {
        count: usize,
        first: String,
        details: String,
    },
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("operator check {name:?} failed: {detail}")]
    OperatorCheck { name: String, detail: String },
    /// Local staging of a custom-format archive (disk full, permissions).
    #[error("staging: {0}")]
    Staging(String),
    /// The watchdog stopped a step that made no progress or ran too long.
    #[error("{} of {artifact} {}", .aborted.step(), .aborted.cause())]
    Aborted {
        artifact: String,
        aborted: Aborted,
        limits: Limits,
    },
}

impl VerifyError {
    pub fn is_transient(&self) -> bool {
        match self {
            VerifyError::Remote(e) => e.is_transient(),
            VerifyError::Scratch(e) => e.is_transient(),
            VerifyError::Staging(_) => true,
            // A lock or a stalled server may be gone by the next attempt.
            VerifyError::Aborted { .. } => true,
            _ => false,
        }
    }

    /// What the watchdog stopped, for `dump.failed`.
    pub fn aborted_step(&self) -> Option<AbortedStep> {
        match self {
            VerifyError::Aborted {
                aborted, limits, ..
            } => Some(AbortedStep::new(aborted, limits)),
            _ => None,
        }
    }

    /// Whether the error is a finding about the backup itself (as opposed
    /// to the path to it): such a backup must not count as verified.
    pub fn condemns_backup(&self) -> bool {
        !matches!(
            self,
            VerifyError::Remote(_)
                | VerifyError::Scratch(_)
                | VerifyError::Staging(_)
                | VerifyError::MissingExtensions { .. }
                | VerifyError::MissingRoles { .. }
                | VerifyError::Aborted { .. }
        ) && !(matches!(self, VerifyError::Decrypt { detail, .. } if detail.contains(IDENTITY_HINT)))
    }
}

/// The setting that names the age identities. A decryption failure that
/// names it is a configuration problem, not a finding about the backup.
pub(crate) const IDENTITY_HINT: &str = "AGE_IDENTITY_FILE";

impl VerifyError {
    /// Roles the dump names that the target lacks, quoted as SQL names.
    pub(crate) fn missing_roles(artifact: String, roles: &BTreeSet<String>) -> Self {
        VerifyError::MissingRoles {
            artifact,
            roles: roles
                .iter()
                .map(|r| backup_core::pg::quote_ident(r))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn aborts_name_step_and_artifact_and_are_retried_without_condemning() {
        let error = VerifyError::Aborted {
            artifact: "db_20260101_020000.sql.gz".into(),
            aborted: Aborted::Stalled {
                step: "restore",
                bytes: 42,
                idle: Duration::from_secs(300),
            },
            limits: Limits::new(Duration::from_secs(300), Duration::from_secs(3600)),
        };
        assert_eq!(
            error.to_string(),
            "restore of db_20260101_020000.sql.gz stalled: no progress for 5m after 42 bytes; aborted"
        );
        assert!(error.is_transient());
        assert!(!error.condemns_backup());
        let step = error.aborted_step().unwrap();
        assert_eq!((step.step.as_str(), step.bytes), ("restore", 42));
        assert_eq!(step.limits.stall_after_s, 300);
    }
}
