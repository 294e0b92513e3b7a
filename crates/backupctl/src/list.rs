//! `backupctl list`: the remote catalog, read from SFTP alone.

use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest};
use backup_core::names::{ArtifactName, DatabaseName};
use backup_core::sftp::SftpArgs;
use remote_sftp::{RemoteError, SftpRemote};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub database: String,
    pub artifact: String,
    pub size_bytes: u64,
    pub taken_at: String,
    pub verified: bool,
    pub tag: Option<String>,
    pub sha256: Option<String>,
}

pub async fn catalog(
    remote: &SftpRemote,
    sftp: &SftpArgs,
    databases: &[DatabaseName],
) -> Result<Vec<CatalogEntry>, RemoteError> {
    let mut entries = Vec::new();
    for database in databases {
        let dir = sftp.database_dir(database);
        let listing = match remote.list_dir(&dir).await {
            Ok(listing) => listing,
            Err(RemoteError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let names: std::collections::BTreeSet<&str> =
            listing.iter().map(|e| e.name.as_str()).collect();
        for entry in &listing {
            let Ok(artifact) = entry.name.parse::<ArtifactName>() else {
                continue;
            };
            if !names.contains(artifact.manifest_name().as_str()) {
                continue;
            }
            let manifest = remote
                .read_file(
                    &format!("{dir}/{}", artifact.manifest_name()),
                    MAX_SIDECAR_BYTES,
                )
                .await
                .ok()
                .and_then(|bytes| Manifest::decode(&bytes).ok());
            entries.push(CatalogEntry {
                database: database.to_string(),
                artifact: artifact.to_string(),
                size_bytes: entry.size,
                taken_at: artifact.taken_at().to_rfc3339(),
                verified: names.contains(artifact.verified_name().as_str()),
                tag: manifest
                    .as_ref()
                    .and_then(|m| m.origin.tag.as_ref().map(ToString::to_string)),
                sha256: manifest.map(|m| m.sha256.to_string()),
            });
        }
    }
    entries.sort_by(|a, b| (&a.database, &a.artifact).cmp(&(&b.database, &b.artifact)));
    Ok(entries)
}

/// Databases present under SFTP_DIR (each is a directory named after one).
pub async fn remote_databases(
    remote: &SftpRemote,
    sftp: &SftpArgs,
) -> Result<Vec<DatabaseName>, RemoteError> {
    let listing = match remote.list_dir(&sftp.dir).await {
        Ok(listing) => listing,
        Err(RemoteError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(listing
        .into_iter()
        .filter(|e| e.is_dir)
        .filter_map(|e| DatabaseName::try_from(e.name).ok())
        .collect())
}
