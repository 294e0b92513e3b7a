//! What one database's remote directory holds, read from the listing and
//! the sidecars alone (no local state that could drift from the remote).
//! Every name is classified ([`crate::layout`]); each artifact is judged
//! from its sidecars: **verified** by the one definition of
//! [`crate::verified`], or **held** when its manifest exists but cannot be
//! read or decoded (its tag is unknown, so it is kept until an operator
//! looks).
//!
//! Retries: none here; a transient SFTP error aborts the listing and the
//! caller retries the whole run.

use std::collections::{BTreeMap, BTreeSet};

use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest};
use backup_core::names::{ArtifactName, DatabaseName};
use chrono::{DateTime, TimeDelta, Utc};
use remote_sftp::{RemoteError, SftpRemote};

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

/// Lists `dir`, the directory of `database`, and judges every artifact in
/// it; an empty catalog when the directory does not exist yet. `now` is
/// the caller's clock, for telling abandoned uploads.
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
        match classify(name, database) {
            RemoteFile::Artifact(artifact) => {
                catalog.remote_sizes.insert(artifact.clone(), entry.size);
                artifacts.insert(artifact);
            }
            RemoteFile::Partial(_) => {
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
            }
            RemoteFile::Manifest(owner) | RemoteFile::Record(owner) => {
                if !files.contains_key(owner.as_str()) {
                    catalog.orphans.push(name.to_owned());
                }
            }
            RemoteFile::Stray => catalog.foreign.push(name.to_owned()),
        }
    }
    for artifact in artifacts {
        let (backup, manifest) = judge(remote, dir, &files, artifact).await?;
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
    remote: &SftpRemote,
    dir: &str,
    files: &BTreeMap<&str, &remote_sftp::RemoteEntry>,
    artifact: ArtifactName,
) -> Result<(Backup, Option<Option<Manifest>>), RemoteError> {
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
        return Ok((backup, None));
    }
    let manifest = match read_sidecar(remote, &format!("{dir}/{manifest_name}")).await? {
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
        if let Some(record) = read_sidecar(remote, &format!("{dir}/{record_name}")).await? {
            backup.verified = is_verified(&backup.artifact, stored_size, &manifest, &record);
        }
    }
    Ok((backup, Some(Some(manifest))))
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
