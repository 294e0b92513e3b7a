//! The manifest that stands beside every artifact (`<artifact>.manifest.json`)
//! and the verification record the verifier writes after a successful
//! restore (`<artifact>.verified.json`). Both are small, self-describing JSON
//! so the remote directory alone tells what each backup holds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app_state::AppState;
use crate::events::{DecodeError, Origin, SCHEMA_VERSION};
use crate::names::{ArtifactName, BackupId, Compression, DatabaseName, DumpFormat, Sha256Hex};

/// Largest manifest or record a reader accepts; a bigger file is not ours.
pub const MAX_SIDECAR_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub backup_id: BackupId,
    pub database: DatabaseName,
    pub artifact: ArtifactName,
    pub size_bytes: u64,
    pub sha256: Sha256Hex,
    pub format: DumpFormat,
    pub compression: Compression,
    pub encrypted: bool,
    /// `server_version` as the source server reported it.
    pub server_version: String,
    /// `pg_dump --version` of the client that wrote the dump.
    pub pg_dump_version: String,
    pub created_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `manual` or `schedule`.
    pub trigger: String,
    #[serde(flatten)]
    pub origin: Origin,
    /// Exact row count of every table (`"schema"."table"` as `%I.%I`),
    /// taken in the snapshot the dump was taken from.
    pub tables: BTreeMap<String, u64>,
    /// The application state the dump holds (Django migrations, the
    /// operator's version), taken in the same snapshot; absent for a
    /// database without either, and in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<AppState>,
}

impl Manifest {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Invalid(crate::one_line(&e.to_string())))?;
        if manifest.version == 0 || manifest.version > SCHEMA_VERSION {
            return Err(DecodeError::Version(manifest.version));
        }
        if manifest.artifact.database() != &manifest.database {
            return Err(DecodeError::Invalid(format!(
                "manifest of {} names database {}",
                manifest.artifact, manifest.database
            )));
        }
        Ok(manifest)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// Written beside an artifact by the verifier once the remote copy restored
/// with matching row counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub version: u32,
    pub backup_id: BackupId,
    pub artifact: ArtifactName,
    pub sha256: Sha256Hex,
    pub verified_at: DateTime<Utc>,
    pub checks: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    pub duration_ms: u64,
    /// Milliseconds per verification step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps_ms: BTreeMap<String, u64>,
    /// What the restore deliberately did not apply (ownership, privileges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl VerificationRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let record: Self = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Invalid(crate::one_line(&e.to_string())))?;
        if record.version == 0 || record.version > SCHEMA_VERSION {
            return Err(DecodeError::Version(record.version));
        }
        Ok(record)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a record always serializes");
        bytes.push(b'\n');
        bytes
    }
}
