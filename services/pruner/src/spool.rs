//! Local spool retention: the newest `SPOOL_KEEP_LAST` artifacts of each
//! database stay for fast restores; an older one goes only once it has been
//! shipped to every destination the pruner reads: "shipped" means every
//! destination's listing shows the artifact with exactly the local size. Files whose names are not artifacts (or their
//! manifests) of this database are never touched; `.partial` files belong
//! to the dumper.
//!
//! Retries: none; a file that cannot be removed is logged and tried again on
//! the next run.

use std::collections::BTreeMap;
use std::path::Path;

use backup_core::names::{ArtifactName, DatabaseName};

/// Removes what may go; returns the artifacts removed.
pub fn trim(
    spool_dir: &Path,
    database: &DatabaseName,
    keep_last: usize,
    remote_sizes: &BTreeMap<ArtifactName, u64>,
) -> Vec<ArtifactName> {
    let dir = spool_dir.join(database.as_str());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut local: Vec<(ArtifactName, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let artifact = entry.file_name().to_str()?.parse::<ArtifactName>().ok()?;
            let metadata = entry.metadata().ok()?;
            (artifact.database() == database && metadata.is_file())
                .then_some((artifact, metadata.len()))
        })
        .collect();
    local.sort_by(|a, b| b.0.cmp(&a.0));
    let mut removed = Vec::new();
    for (artifact, size) in local.into_iter().skip(keep_last) {
        if remote_sizes.get(&artifact) != Some(&size) {
            tracing::info!(%artifact, "kept in the spool: not on the remote with the same size");
            continue;
        }
        // Artifact first: a manifest without its artifact is harmless, the
        // other way round would look like a complete dump to the shipper.
        match std::fs::remove_file(dir.join(artifact.as_str())) {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(%artifact, %error, "cannot remove from the spool");
                continue;
            }
        }
        let _ = std::fs::remove_file(dir.join(artifact.manifest_name()));
        tracing::info!(%artifact, "removed from the local spool (shipped)");
        removed.push(artifact);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_anything_not_shipped_with_the_same_size() {
        let spool = tempfile::tempdir().unwrap();
        let db: DatabaseName = "viatique".parse().unwrap();
        let dir = spool.path().join("viatique");
        std::fs::create_dir(&dir).unwrap();
        let names: Vec<ArtifactName> = (1..=5)
            .map(|d| {
                format!("viatique_2026010{d}_020000.sql.gz")
                    .parse()
                    .unwrap()
            })
            .collect();
        for name in &names {
            std::fs::write(dir.join(name.as_str()), b"12345").unwrap();
            std::fs::write(dir.join(name.manifest_name()), b"{}").unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        let mut remote = BTreeMap::new();
        remote.insert(names[0].clone(), 5); // shipped
        remote.insert(names[1].clone(), 4); // truncated on the remote
        // names[2] not on the remote at all; names[3], [4] are the newest two.
        remote.insert(names[3].clone(), 5);
        remote.insert(names[4].clone(), 5);
        let removed = trim(spool.path(), &db, 2, &remote);
        assert_eq!(removed, [names[0].clone()]);
        assert!(!dir.join(names[0].manifest_name()).exists());
        for kept in &names[1..] {
            assert!(dir.join(kept.as_str()).exists(), "{kept}");
        }
        assert!(dir.join("notes.txt").exists());
    }
}
