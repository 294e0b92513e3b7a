//! `backupctl list`: the remote catalog, read from SFTP alone. The text
//! shows when each backup was taken in BACKUP_TZ; `--json` keeps UTC
//! (`taken_at`) for scripts.

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

/// The table `backupctl list` prints, times in `zone`.
pub fn to_text(entries: &[CatalogEntry], zone: chrono_tz::Tz) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<45} {:>12}  {:<25} {:<9} TAG\n",
        "ARTIFACT",
        "BYTES",
        format!("TAKEN ({zone})"),
        "VERIFIED"
    );
    for e in entries {
        let taken = chrono::DateTime::parse_from_rfc3339(&e.taken_at)
            .map(|t| crate::configured::local_time(t.with_timezone(&chrono::Utc), zone))
            .unwrap_or_else(|_| e.taken_at.clone());
        let _ = writeln!(
            out,
            "{:<45} {:>12}  {:<25} {:<9} {}",
            e.artifact,
            e.size_bytes,
            taken,
            if e.verified { "yes" } else { "no" },
            e.tag.as_deref().unwrap_or("-")
        );
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_the_zone() {
        let entry = CatalogEntry {
            database: "viatique".into(),
            artifact: "viatique_20261121_224004.sql.gz".into(),
            size_bytes: 1700505,
            taken_at: "2026-11-21T22:40:04+00:00".into(),
            verified: true,
            tag: None,
            sha256: None,
        };
        let text = to_text(&[entry], "Europe/Paris".parse().unwrap());
        assert!(text.contains("TAKEN (Europe/Paris)"), "{text}");
        assert!(text.contains("2026-11-21 23:40:04 CET"), "{text}");
    }
}
