//! `backupctl list`: the remote catalog, read from SFTP alone through the
//! same catalogue the pruner reads, so "verified" means the same thing
//! everywhere: a verification record that matches the artifact and its
//! manifest (see `catalogue::verified`), not merely one that is present.
//! The text shows when each backup was taken in BACKUP_TZ; `--json` keeps
//! UTC (`taken_at`) for scripts.

use backup_core::names::DatabaseName;
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

/// Every backup of `databases` that has its manifest on the remote.
pub async fn catalog(
    remote: &SftpRemote,
    sftp: &SftpArgs,
    databases: &[DatabaseName],
) -> Result<Vec<CatalogEntry>, RemoteError> {
    let now = chrono::Utc::now();
    let mut entries = Vec::new();
    for database in databases {
        let dir = catalogue::database_dir(&sftp.dir, database);
        let catalog = catalogue::read_catalog(remote, &dir, database, now).await?;
        for backup in &catalog.backups {
            let Some(manifest) = catalog.manifests.get(&backup.artifact) else {
                continue;
            };
            entries.push(CatalogEntry {
                database: database.to_string(),
                artifact: backup.artifact.to_string(),
                size_bytes: catalog
                    .remote_sizes
                    .get(&backup.artifact)
                    .copied()
                    .unwrap_or_default(),
                taken_at: backup.artifact.taken_at().to_rfc3339(),
                verified: backup.verified,
                tag: backup.tag.as_ref().map(ToString::to_string),
                sha256: manifest.as_ref().map(|m| m.sha256.to_string()),
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
    catalogue::list_databases(remote, &sftp.dir).await
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
