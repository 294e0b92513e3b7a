//! `backupctl list`: the remote catalog, read from one destination alone
//! through the same catalogue the pruner reads, so "verified" means the same thing
//! everywhere: a verification record that matches the artifact and its
//! manifest (see `catalogue::verified`), not merely one that is present.
//! The text shows when each backup was taken in BACKUP_TZ; `--json` keeps
//! UTC (`taken_at`) for scripts.

use backup_core::app_state::AppState;
use backup_core::names::DatabaseName;
use remote_store::{Store, StoreError};
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
    /// The manifest's application state (Django migrations, version).
    pub application: Option<AppState>,
}

/// Every backup of `databases` that has its manifest on the remote.
pub async fn catalog(
    remote: &Store,
    databases: &[DatabaseName],
) -> Result<Vec<CatalogEntry>, StoreError> {
    let now = chrono::Utc::now();
    let mut entries = Vec::new();
    for database in databases {
        let catalog = catalogue::read_catalog(remote, database, now).await?;
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
                application: manifest.as_ref().and_then(|m| m.application.clone()),
            });
        }
    }
    entries.sort_by(|a, b| (&a.database, &a.artifact).cmp(&(&b.database, &b.artifact)));
    Ok(entries)
}

/// The table `backupctl list` prints, times in `zone`. The application
/// state's short form comes before the tag, so the tag stays the last
/// column for scripts (`awk '$NF == "pre-deploy"'`).
pub fn to_text(entries: &[CatalogEntry], zone: chrono_tz::Tz) -> String {
    use std::fmt::Write as _;
    let apps: Vec<String> = entries
        .iter()
        .map(|e| {
            e.application
                .as_ref()
                .map(AppState::summary)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into())
        })
        .collect();
    let width = apps
        .iter()
        .map(|a| a.chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = format!(
        "{:<45} {:>12}  {:<25} {:<9} {:<width$} TAG\n",
        "ARTIFACT",
        "BYTES",
        format!("TAKEN ({zone})"),
        "VERIFIED",
        "APP",
    );
    for (e, app) in entries.iter().zip(&apps) {
        let taken = chrono::DateTime::parse_from_rfc3339(&e.taken_at)
            .map(|t| crate::configured::local_time(t.with_timezone(&chrono::Utc), zone))
            .unwrap_or_else(|_| e.taken_at.clone());
        let _ = writeln!(
            out,
            "{:<45} {:>12}  {:<25} {:<9} {:<width$} {}",
            e.artifact,
            e.size_bytes,
            taken,
            if e.verified { "yes" } else { "no" },
            app,
            e.tag.as_deref().unwrap_or("-")
        );
    }
    out
}

/// Databases present on the destination (under SFTP_DIR, a directory
/// named after each).
pub async fn remote_databases(remote: &Store) -> Result<Vec<DatabaseName>, StoreError> {
    catalogue::list_databases(remote).await
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
            application: None,
        };
        let text = to_text(
            std::slice::from_ref(&entry),
            "Europe/Paris".parse().unwrap(),
        );
        assert!(text.contains("TAKEN (Europe/Paris)"), "{text}");
        assert!(text.contains("2026-11-21 23:40:04 CET"), "{text}");

        let django = backup_core::app_state::DjangoMigrations::from_applied(
            [("auth", "0001_initial"), ("grading", "0042_drop_comment")]
                .map(|(a, n)| (a.to_owned(), n.to_owned())),
        );
        let tagged = CatalogEntry {
            tag: Some("pre-deploy".into()),
            application: AppState::recorded(None, Some(django)),
            ..entry.clone()
        };
        let text = to_text(&[entry, tagged], chrono_tz::UTC);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(" APP                  TAG"), "{text}");
        assert!(lines[1].ends_with(" -                    -"), "{text}");
        assert!(
            lines[2].ends_with(" grading 0042, 2 apps pre-deploy"),
            "{text}"
        );
    }
}
