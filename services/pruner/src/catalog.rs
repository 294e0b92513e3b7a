//! What one database's remote directory holds, read from the listing and
//! the sidecars alone (no local state that could drift from the remote).
//!
//! Every file name is classified; only names the pipeline writes are ever
//! candidates for deletion:
//!
//! | name | meaning |
//! | --- | --- |
//! | `<artifact>` | a backup (with or without its manifest yet) |
//! | `<artifact>.manifest.json` | its manifest (tag, size, checksum) |
//! | `<artifact>.verified.json` | its verification record |
//! | any of the above + `.partial` | an upload in progress or abandoned |
//! | anything else | not ours: never touched |
//!
//! A backup is **verified** only when its record decodes, names the same
//! artifact, and agrees with the manifest's checksum, and the artifact on
//! the remote has the size the manifest states. A backup whose manifest
//! exists but cannot be read or decoded is **held**: its tag is unknown, so
//! it is kept until an operator looks.
//!
//! Retries: none here; a transient SFTP error aborts the listing and the
//! caller retries the whole run.

use std::collections::{BTreeMap, BTreeSet};

use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest, VerificationRecord};
use backup_core::names::{
    ArtifactName, DatabaseName, MANIFEST_SUFFIX, PARTIAL_SUFFIX, VERIFIED_SUFFIX,
};
use chrono::{DateTime, TimeDelta, Utc};
use remote_sftp::{RemoteError, SftpRemote};

use crate::policy::Backup;

/// A `.partial` upload untouched for this long, both by the pruner's clock
/// and next to the newest file on the remote, was abandoned.
pub const PARTIAL_MAX_AGE: TimeDelta = TimeDelta::days(1);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub backups: Vec<Backup>,
    /// Size of every artifact on the remote, for the spool's "shipped" test.
    pub remote_sizes: BTreeMap<ArtifactName, u64>,
    /// Manifests and records whose artifact is gone (an interrupted delete).
    pub orphans: Vec<String>,
    /// `.partial` uploads older than [`PARTIAL_MAX_AGE`].
    pub stale_partials: Vec<String>,
    /// Names that are not ours; reported, never touched.
    pub foreign: Vec<String>,
}

/// The artifact a sidecar or `.partial` name belongs to, if it is one of ours.
fn owner_of(name: &str, database: &DatabaseName) -> Option<ArtifactName> {
    let stem = name
        .strip_suffix(MANIFEST_SUFFIX)
        .or_else(|| name.strip_suffix(VERIFIED_SUFFIX))
        .unwrap_or(name);
    stem.parse::<ArtifactName>()
        .ok()
        .filter(|a| a.database() == database)
}

pub async fn read_catalog(
    remote: &SftpRemote,
    dir: &str,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Catalog, RemoteError> {
    let entries = match remote.list_dir(dir).await {
        Ok(entries) => entries,
        Err(RemoteError::NotFound { .. }) => return Ok(Catalog::default()),
        Err(e) => return Err(e),
    };
    let files: BTreeMap<&str, &remote_sftp::RemoteEntry> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e.name.as_str(), e))
        .collect();
    let mut catalog = Catalog::default();
    let mut artifacts = BTreeSet::new();
    // The server's own clock: an upload is abandoned only if it is also
    // old next to the newest file there, so a pruner whose clock jumped
    // ahead does not remove an upload in progress.
    let newest_write = files.values().filter_map(|e| e.modified).max();
    for (&name, entry) in &files {
        if let Ok(artifact) = name.parse::<ArtifactName>()
            && artifact.database() == database
        {
            catalog.remote_sizes.insert(artifact.clone(), entry.size);
            artifacts.insert(artifact);
        } else if let Some(upload) = name.strip_suffix(PARTIAL_SUFFIX)
            && owner_of(upload, database).is_some()
        {
            let since = |at: DateTime<Utc>| {
                entry
                    .modified
                    .map(|m| at - DateTime::<Utc>::from(m))
                    .unwrap_or(TimeDelta::zero())
            };
            let behind_newest = newest_write.map_or(TimeDelta::zero(), |n| since(n.into()));
            if since(now) > PARTIAL_MAX_AGE && behind_newest > PARTIAL_MAX_AGE {
                catalog.stale_partials.push(name.to_owned());
            }
        } else if let Some(owner) = owner_of(name, database)
            && name != owner.as_str()
        {
            if !files.contains_key(owner.as_str()) {
                catalog.orphans.push(name.to_owned());
            }
        } else {
            catalog.foreign.push(name.to_owned());
        }
    }
    for artifact in artifacts {
        let backup = judge(remote, dir, &files, artifact).await?;
        catalog.backups.push(backup);
    }
    Ok(catalog)
}

/// Reads the sidecars of one artifact and decides what it is.
async fn judge(
    remote: &SftpRemote,
    dir: &str,
    files: &BTreeMap<&str, &remote_sftp::RemoteEntry>,
    artifact: ArtifactName,
) -> Result<Backup, RemoteError> {
    let mut backup = Backup {
        verified: false,
        tag: None,
        held: None,
        artifact,
    };
    let manifest_name = backup.artifact.manifest_name();
    if !files.contains_key(manifest_name.as_str()) {
        // Still being shipped, or the shipper gave up: unverified, and
        // aged out like any other unverified backup.
        return Ok(backup);
    }
    let manifest = match read_sidecar(remote, &format!("{dir}/{manifest_name}")).await? {
        Some(bytes) => Manifest::decode(&bytes).ok(),
        None => None,
    };
    let Some(manifest) = manifest.filter(|m| m.artifact == backup.artifact) else {
        backup.held = Some("manifest unreadable, so its tag is unknown".into());
        return Ok(backup);
    };
    backup.tag = manifest.origin.tag.clone();
    let record_name = backup.artifact.verified_name();
    if !files.contains_key(record_name.as_str()) {
        return Ok(backup);
    }
    let size_matches = files
        .get(backup.artifact.as_str())
        .is_some_and(|e| e.size == manifest.size_bytes);
    let record = match read_sidecar(remote, &format!("{dir}/{record_name}")).await? {
        Some(bytes) => VerificationRecord::decode(&bytes).ok(),
        None => None,
    };
    backup.verified = size_matches
        && record.is_some_and(|r| r.artifact == backup.artifact && r.sha256 == manifest.sha256);
    Ok(backup)
}

/// `None` when the file vanished or cannot be read for a lasting reason.
async fn read_sidecar(remote: &SftpRemote, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
    match remote.read_file(path, MAX_SIDECAR_BYTES).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot read a sidecar");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_and_partials_belong_to_artifacts_of_this_database_only() {
        let db: DatabaseName = "viatique".parse().unwrap();
        let artifact = "viatique_20250301_013000.sql.gz";
        assert_eq!(
            owner_of(&format!("{artifact}.manifest.json"), &db).map(|a| a.to_string()),
            Some(artifact.to_owned())
        );
        assert!(owner_of(&format!("{artifact}.verified.json"), &db).is_some());
        assert!(owner_of("other_20250301_013000.sql.gz.manifest.json", &db).is_none());
        assert!(owner_of("notes.txt", &db).is_none());
        assert!(owner_of("viatique_20250301_013000.sql.gz.bak", &db).is_none());
    }
}
