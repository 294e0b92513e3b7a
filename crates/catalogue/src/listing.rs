//! What one database's remote directory holds, read from the listing and
//! the sidecars alone (no local state that could drift from the remote).
//! Every name is classified ([`crate::layout`]); each artifact is judged
//! from its sidecars: **verified** by the one definition of
//! [`crate::verified`], or **held** when its manifest exists but cannot be
//! read or decoded (its tag is unknown, so it is kept until an operator
//! looks).
//!
//! Storage that locks objects (S3 Object Lock) gives each file a
//! `retain_until`: a backup is locked until the latest date among its
//! artifact and sidecars (deleting part of it would leave a backup that
//! can neither be used nor removed), and a locked leftover is not offered
//! for deletion.
//!
//! Retries: none here; a transient error of the store aborts the listing
//! and the caller retries the whole run.

use std::collections::{BTreeMap, BTreeSet};

use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest};
use backup_core::names::{ArtifactName, DatabaseName};
use chrono::{DateTime, TimeDelta, Utc};
use remote_store::{Entry, Store, StoreError};

use crate::layout::{RemoteFile, classify};
use crate::policy::Backup;
use crate::verified::is_verified;

/// A `.partial` upload untouched for this long, both by the pruner's clock
/// and next to the newest file on the remote, was abandoned.
pub const PARTIAL_MAX_AGE: TimeDelta = TimeDelta::days(1);

/// One database's directory, judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Every artifact of the database, in name order.
    pub backups: Vec<Backup>,
    /// Size of every artifact on the remote, for the spool's "shipped" test.
    pub remote_sizes: BTreeMap<ArtifactName, u64>,
    /// The manifest of every artifact that has one: `None` when it cannot
    /// be read or decoded, or describes another artifact (the backup is
    /// then held).
    pub manifests: BTreeMap<ArtifactName, Option<Manifest>>,
    /// Manifests and records whose artifact is gone (an interrupted delete).
    pub orphans: Vec<String>,
    /// `.partial` uploads older than [`PARTIAL_MAX_AGE`].
    pub stale_partials: Vec<String>,
    /// Names that are not ours; reported, never touched.
    pub foreign: Vec<String>,
}

/// Lists the files of `database` in `store` and judges every artifact
/// among them; an empty catalog when nothing was stored yet. `now` is the
/// caller's clock, for telling abandoned uploads and object locks.
pub async fn read_catalog(
    store: &Store,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Catalog, StoreError> {
    let entries = store.list(database).await?;
    let files: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut catalog = Catalog::default();
    let mut artifacts = BTreeSet::new();
    // The server's own clock: an upload is abandoned only if it is also
    // old next to the newest file there, so a pruner whose clock jumped
    // ahead does not remove an upload in progress.
    let newest_write = files.values().filter_map(|e| e.modified).max();
    for (&name, entry) in &files {
        match classify(name, database) {
            RemoteFile::Artifact(artifact) => {
                catalog.remote_sizes.insert(artifact.clone(), entry.size);
                artifacts.insert(artifact);
            }
            RemoteFile::Partial(_) => {
                let since =
                    |at: DateTime<Utc>| entry.modified.map(|m| at - m).unwrap_or(TimeDelta::zero());
                let behind_newest = newest_write.map_or(TimeDelta::zero(), since);
                if since(now) > PARTIAL_MAX_AGE
                    && behind_newest > PARTIAL_MAX_AGE
                    && !entry.locked_at(now)
                {
                    catalog.stale_partials.push(name.to_owned());
                }
            }
            RemoteFile::Manifest(owner) | RemoteFile::Record(owner) => {
                if !files.contains_key(owner.as_str()) && !entry.locked_at(now) {
                    catalog.orphans.push(name.to_owned());
                }
            }
            RemoteFile::Stray => catalog.foreign.push(name.to_owned()),
        }
    }
    for artifact in artifacts {
        let (mut backup, manifest) = judge(store, database, &files, artifact).await?;
        backup.locked_until = locked_until(&files, &backup.artifact, now);
        if let Some(manifest) = manifest {
            catalog.manifests.insert(backup.artifact.clone(), manifest);
        }
        catalog.backups.push(backup);
    }
    Ok(catalog)
}

/// Reads the sidecars of one artifact and decides what it is. Also
/// returns its manifest, if it has one (`Some(None)`: unreadable).
async fn judge(
    store: &Store,
    database: &DatabaseName,
    files: &BTreeMap<&str, &Entry>,
    artifact: ArtifactName,
) -> Result<(Backup, Option<Option<Manifest>>), StoreError> {
    let mut backup = Backup {
        verified: false,
        tag: None,
        held: None,
        locked_until: None,
        artifact,
    };
    let manifest_name = backup.artifact.manifest_name();
    if !files.contains_key(manifest_name.as_str()) {
        // Still being shipped, or the shipper gave up: unverified, and
        // aged out like any other unverified backup.
        return Ok((backup, None));
    }
    let manifest = match read_sidecar(store, database, &manifest_name).await? {
        Some(bytes) => Manifest::decode(&bytes).ok(),
        None => None,
    };
    let Some(manifest) = manifest.filter(|m| m.artifact == backup.artifact) else {
        backup.held = Some("manifest unreadable, so its tag is unknown".into());
        return Ok((backup, Some(None)));
    };
    backup.tag = manifest.origin.tag.clone();
    let record_name = backup.artifact.verified_name();
    if files.contains_key(record_name.as_str()) {
        let stored_size = files.get(backup.artifact.as_str()).map_or(0, |e| e.size);
        if let Some(record) = read_sidecar(store, database, &record_name).await? {
            backup.verified = is_verified(&backup.artifact, stored_size, &manifest, &record);
        }
    }
    Ok((backup, Some(Some(manifest))))
}

/// The latest `retain_until` still ahead of `now` among the artifact and
/// its sidecars: until then the destination refuses to delete some of it.
fn locked_until(
    files: &BTreeMap<&str, &Entry>,
    artifact: &ArtifactName,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    [
        artifact.to_string(),
        artifact.manifest_name(),
        artifact.verified_name(),
    ]
    .iter()
    .filter_map(|name| files.get(name.as_str()))
    .filter_map(|e| e.retain_until)
    .filter(|until| *until > now)
    .max()
}

/// `None` when the file vanished or cannot be read for a lasting reason.
async fn read_sidecar(
    store: &Store,
    database: &DatabaseName,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    match store.read_small(database, name, MAX_SIDECAR_BYTES).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            let path = format!("{}/{name}", store.location(database));
            tracing::warn!(path, error = %e, "cannot read a sidecar");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, retain_until: Option<DateTime<Utc>>) -> Entry {
        Entry {
            name: name.to_owned(),
            size: 1,
            modified: None,
            retain_until,
        }
    }

    #[test]
    fn a_backup_is_locked_until_the_last_lock_of_its_files() {
        let artifact: ArtifactName = "viatique_20250301_013000.sql.gz".parse().unwrap();
        let now = "2025-03-10T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let day = |d: u32| {
            format!("2025-03-{d:02}T00:00:00Z")
                .parse::<DateTime<Utc>>()
                .unwrap()
        };
        let entries = [
            file(artifact.as_str(), Some(day(20))),
            file(&artifact.manifest_name(), Some(day(21))),
            file(&artifact.verified_name(), Some(day(5))),
            file("viatique_20250302_013000.sql.gz", Some(day(30))),
        ];
        let files: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(locked_until(&files, &artifact, now), Some(day(21)));
        assert_eq!(locked_until(&files, &artifact, day(21)), None);
        let unlocked = [file(artifact.as_str(), None)];
        let files: BTreeMap<&str, &Entry> = unlocked.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(locked_until(&files, &artifact, now), None);
    }
}
