//! The dump of one job of a trigger, from `dump.started` to `dump.created`:
//! the artifact an earlier attempt of the same trigger completed is
//! announced again, otherwise the job's writer produces it ([`database`],
//! [`globals`], [`media`]), and `dump.created` follows.
//!
//! Never a false success: an artifact is announced only once its writer
//! has finished it (see [`crate::spool`]). Retries are the caller's (see
//! the crate docs); [`DumpError::is_transient`] says which failures may
//! pass.
//!
//! [`database`]: crate::database
//! [`globals`]: crate::globals
//! [`media`]: crate::media

use std::path::Path;

use backup_core::bus::{Bus, BusError};
use backup_core::events::{ArtifactInfo, DumpCreated, DumpStarted};
use backup_core::manifest::Manifest;
use backup_core::names::{BackupId, MANIFEST_SUFFIX};
use backup_core::watchdog;

use crate::Settings;
use crate::error::DumpError;
use crate::job::Job;
use crate::writing::ForBackup;

// The reserved names, where the binary's settings look for them.
pub use crate::job::{GLOBALS_NAME, MEDIA_NAME};

/// How a dump that did not fail ended.
#[derive(Debug)]
pub enum DumpOutcome {
    Created(Box<DumpCreated>),
    /// The artifact is complete but the event could not be published.
    PublishFailed(BusError),
}

/// Produces the artifact of `job` (or finds the one an earlier attempt of
/// the same trigger completed) and publishes the `dump.created` that
/// follows `started`.
pub async fn dump_and_announce(
    settings: &Settings,
    bus: &Bus,
    job: &Job,
    started: &DumpStarted,
) -> Result<DumpOutcome, DumpError> {
    let backup_id = &started.header.backup_id;
    let backup = ForBackup::announced(bus, started);
    let dir = settings.spool_dir.join(job.name().as_str());
    let manifest = match find_existing(&dir, backup_id).await {
        Some(manifest) => {
            tracing::info!(artifact = %manifest.artifact, "already dumped for this trigger; announcing it again");
            manifest
        }
        None => match job {
            Job::Database(database) => {
                crate::database::write_dump(settings, database, &backup).await?
            }
            Job::Globals => crate::globals::write_globals(settings, &backup).await?,
            Job::Media => crate::media::write_media(settings, &backup).await?,
        },
    };
    let created = created_event(started, &manifest, settings.limits_for(job));
    match bus.publish(&created).await {
        Ok(_) => {
            tracing::info!(
                artifact = %created.artifact.artifact,
                size_bytes = created.artifact.size_bytes,
                duration_ms = created.duration_ms,
                "dump created"
            );
            Ok(DumpOutcome::Created(Box::new(created)))
        }
        Err(error) => Ok(DumpOutcome::PublishFailed(error)),
    }
}

/// `dump.created` for the artifact `manifest` describes.
fn created_event(
    started: &DumpStarted,
    manifest: &Manifest,
    limits: watchdog::Limits,
) -> DumpCreated {
    DumpCreated {
        header: started.header.next(),
        origin: started.origin.clone(),
        artifact: ArtifactInfo {
            artifact: manifest.artifact.clone(),
            size_bytes: manifest.size_bytes,
            sha256: manifest.sha256.clone(),
        },
        duration_ms: manifest.duration_ms,
        tables: manifest.tables.len() as u64,
        rows: manifest.total_rows(),
        limits: Some(limits.for_event()),
    }
}

/// A manifest in the spool for this backup id means a complete artifact.
async fn find_existing(dir: &Path, backup_id: &BackupId) -> Option<Manifest> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(MANIFEST_SUFFIX) {
            continue;
        }
        let Ok(bytes) = tokio::fs::read(entry.path()).await else {
            continue;
        };
        let Ok(manifest) = Manifest::decode(&bytes) else {
            continue;
        };
        if &manifest.backup_id == backup_id && dir.join(manifest.artifact.as_str()).exists() {
            return Some(manifest);
        }
    }
    None
}
