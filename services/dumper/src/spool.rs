//! Writing an artifact into the spool and finishing it: a unique name, a
//! `.partial` file, then the size floor, fsync and rename, a re-hash of
//! what is on disk, and the manifest beside it.
//!
//! Never a false success: a file that is too small, does not hash to what
//! was written, or lacks its manifest is removed, and a full disk is
//! reported as such. No retries here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use backup_core::app_state::AppState;
use backup_core::events::{Origin, SCHEMA_VERSION};
use backup_core::files::{self, PartialFile};
use backup_core::manifest::Manifest;
use backup_core::names::{ArtifactKind, ArtifactName, BackupId, DatabaseName, DumpFormat};
use chrono::Utc;

use crate::Settings;
use crate::compress::Written;
use crate::error::{DumpError, io_err};
use crate::writing::ForBackup;

/// Names the next artifact of `database` in `format` with the configured
/// compression and encryption, opens its `.partial` file and announces it
/// (`dump.writing`).
pub(crate) async fn open_artifact(
    settings: &Settings,
    dir: &Path,
    database: &DatabaseName,
    format: DumpFormat,
    backup: &ForBackup<'_>,
) -> Result<(ArtifactKind, ArtifactName, PartialFile, std::fs::File), DumpError> {
    let kind = ArtifactKind {
        format,
        compression: settings.codec.compression,
        encrypted: settings.codec.encrypted(),
    };
    let artifact = unique_artifact_name(dir, database, kind);
    let final_path = dir.join(artifact.as_str());
    let mut partial = PartialFile::create(&final_path)
        .await
        .map_err(io_err(&final_path))?;
    let file = std_file(&mut partial).await?;
    backup.writing(&artifact).await;
    Ok((kind, artifact, partial, file))
}

/// A second handle on the partial file for the writer thread; the
/// `PartialFile` keeps its own for fsync, rename and cleanup.
async fn std_file(partial: &mut PartialFile) -> Result<std::fs::File, DumpError> {
    let path = partial.partial_path().to_owned();
    let clone = partial.file().try_clone().await.map_err(io_err(&path))?;
    Ok(clone.into_std().await)
}

/// Combines the pass and the producer: the disk filling up explains a
/// producer's broken pipe, so it is reported first.
pub(crate) fn settle(
    copied: std::io::Result<Written>,
    produced: Result<(), DumpError>,
    dir: &Path,
    artifact: &ArtifactName,
    partial: &PartialFile,
) -> Result<Written, DumpError> {
    let written = match copied {
        Err(source) if is_no_space(&source) => {
            return Err(DumpError::NoSpace {
                dir: dir.to_owned(),
                artifact: artifact.to_string(),
            });
        }
        other => other,
    };
    produced?;
    written.map_err(|source| DumpError::Io {
        path: partial.partial_path().to_owned(),
        source,
    })
}

fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(nix::libc::ENOSPC)
        || error.kind() == std::io::ErrorKind::StorageFull
        || error.to_string().contains("No space left")
}

/// What the manifest says besides the file's size and checksum.
pub(crate) struct ArtifactFacts<'a> {
    pub(crate) database: &'a DatabaseName,
    pub(crate) backup_id: &'a BackupId,
    pub(crate) origin: &'a Origin,
    pub(crate) artifact: &'a ArtifactName,
    pub(crate) kind: ArtifactKind,
    pub(crate) server_version: String,
    pub(crate) pg_dump_version: String,
    pub(crate) started: Instant,
    pub(crate) tables: BTreeMap<String, u64>,
    pub(crate) application: Option<AppState>,
}

/// Size floor, fsync + rename, re-hash of the file on disk, manifest.
pub(crate) async fn commit_artifact(
    settings: &Settings,
    partial: PartialFile,
    written: Written,
    facts: ArtifactFacts<'_>,
) -> Result<Manifest, DumpError> {
    if written.size_bytes < settings.min_artifact_bytes {
        return Err(DumpError::TooSmall {
            database: facts.database.to_string(),
            size: written.size_bytes,
            floor: settings.min_artifact_bytes,
        });
    }
    let dir = partial
        .partial_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let final_path = dir.join(facts.artifact.as_str());
    let path = partial.commit().await.map_err(|source| {
        if is_no_space(&source) {
            DumpError::NoSpace {
                dir: dir.clone(),
                artifact: facts.artifact.to_string(),
            }
        } else {
            DumpError::Io {
                path: final_path.clone(),
                source,
            }
        }
    })?;
    // What we announce must be what is on disk, not what we meant to write.
    let (on_disk, on_disk_size) = files::hash_file(&path).await.map_err(io_err(&path))?;
    if on_disk != written.sha256 || on_disk_size != written.size_bytes {
        let _ = std::fs::remove_file(&path);
        return Err(DumpError::HashMismatch {
            path,
            written: written.sha256.to_string(),
            on_disk: on_disk.to_string(),
        });
    }
    tracing::debug!(
        artifact = %facts.artifact,
        input_bytes = written.input_bytes,
        size_bytes = written.size_bytes,
        "artifact written"
    );
    let manifest = Manifest {
        version: SCHEMA_VERSION,
        backup_id: facts.backup_id.clone(),
        database: facts.database.clone(),
        artifact: facts.artifact.clone(),
        size_bytes: written.size_bytes,
        sha256: written.sha256,
        format: facts.kind.format,
        compression: facts.kind.compression,
        encrypted: facts.kind.encrypted,
        server_version: facts.server_version,
        pg_dump_version: facts.pg_dump_version,
        created_at: Utc::now(),
        duration_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        trigger: if facts.origin.reason.as_deref() == Some(crate::SCHEDULE_REASON) {
            "schedule".into()
        } else {
            "manual".into()
        },
        origin: facts.origin.clone(),
        tables: facts.tables,
        application: facts.application,
    };
    let manifest_path = dir.join(facts.artifact.manifest_name());
    if let Err(source) = files::write_atomic(&manifest_path, &manifest.encode()).await {
        // An artifact without its manifest is not a finished backup.
        let _ = std::fs::remove_file(&path);
        return Err(if is_no_space(&source) {
            DumpError::NoSpace {
                dir,
                artifact: facts.artifact.to_string(),
            }
        } else {
            DumpError::Io {
                path: manifest_path,
                source,
            }
        });
    }
    Ok(manifest)
}

/// Two dumps of one database within a second would share a name; the
/// later one moves to the next free second.
fn unique_artifact_name(dir: &Path, database: &DatabaseName, kind: ArtifactKind) -> ArtifactName {
    let mut at = Utc::now();
    loop {
        let name = ArtifactName::new(database, at, kind);
        if !dir.join(name.as_str()).exists() && !dir.join(name.partial_name()).exists() {
            return name;
        }
        at += chrono::Duration::seconds(1);
    }
}
