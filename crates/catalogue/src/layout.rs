//! How a destination is laid out: one directory per database under the
//! base directory (`SFTP_DIR`), holding each backup's artifact and sidecars.
//! Every file name found there is classified ([`classify`]); only names the
//! pipeline writes are ever candidates for deletion:
//!
//! | name | class |
//! | --- | --- |
//! | `<artifact>` | [`RemoteFile::Artifact`]: a backup (with or without its manifest yet) |
//! | `<artifact>.manifest.json` | [`RemoteFile::Manifest`]: its manifest (tag, size, checksum) |
//! | `<artifact>.verified.json` | [`RemoteFile::Record`]: its verification record |
//! | any of the above + `.partial` (or `.<8 hex>.partial`, a write-once upload) | [`RemoteFile::Partial`]: an upload in progress or abandoned |
//! | anything else, another database's files included | [`RemoteFile::Stray`]: not ours, never touched |
//!
//! The directories themselves are the store's business ([`remote_store`]);
//! here only names are judged.
//!
//! Retries: none here; a transient error of the store is returned to the
//! caller.

use backup_core::names::{ArtifactName, DatabaseName, MANIFEST_SUFFIX, VERIFIED_SUFFIX};
use remote_store::{Store, StoreError};

/// The remote directory of `database` under the base directory `base_dir`,
/// as every writer and reader of the remote spells it.
pub use backup_core::sftp::database_dir;

/// What one file name in a database's directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteFile {
    Artifact(ArtifactName),
    /// The manifest of this artifact.
    Manifest(ArtifactName),
    /// The verification record of this artifact.
    Record(ArtifactName),
    /// An upload of this artifact or of one of its sidecars.
    Partial(ArtifactName),
    /// Not a name the pipeline writes for this database.
    Stray,
}

/// Classifies a file name found in `database`'s directory.
pub fn classify(name: &str, database: &DatabaseName) -> RemoteFile {
    let ours = |stem: &str| {
        stem.parse::<ArtifactName>()
            .ok()
            .filter(|a| a.database() == database)
    };
    if let Some(artifact) = ours(name) {
        return RemoteFile::Artifact(artifact);
    }
    // `<name>.partial`, or `<name>.<8 hex>.partial` from a write-once
    // (append-only) upload: the client's own definition of its temporary
    // names.
    if let Some(upload) = remote_sftp::partial_target(name) {
        return match sidecar_owner(upload).map_or_else(|| ours(upload), ours) {
            Some(artifact) => RemoteFile::Partial(artifact),
            None => RemoteFile::Stray,
        };
    }
    if let Some(artifact) = name.strip_suffix(MANIFEST_SUFFIX).and_then(ours) {
        return RemoteFile::Manifest(artifact);
    }
    if let Some(artifact) = name.strip_suffix(VERIFIED_SUFFIX).and_then(ours) {
        return RemoteFile::Record(artifact);
    }
    RemoteFile::Stray
}

/// The artifact name inside a sidecar's name, if it is one.
fn sidecar_owner(name: &str) -> Option<&str> {
    name.strip_suffix(MANIFEST_SUFFIX)
        .or_else(|| name.strip_suffix(VERIFIED_SUFFIX))
}

/// The databases `store` holds files of, sorted; none when nothing was
/// shipped there yet.
pub async fn list_databases(store: &Store) -> Result<Vec<DatabaseName>, StoreError> {
    store.list_databases().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_and_partials_belong_to_artifacts_of_this_database_only() {
        let db: DatabaseName = "viatique".parse().unwrap();
        let name = "viatique_20250301_013000.sql.gz";
        let artifact: ArtifactName = name.parse().unwrap();
        assert_eq!(classify(name, &db), RemoteFile::Artifact(artifact.clone()));
        assert_eq!(
            classify(&format!("{name}.manifest.json"), &db),
            RemoteFile::Manifest(artifact.clone())
        );
        assert_eq!(
            classify(&format!("{name}.verified.json"), &db),
            RemoteFile::Record(artifact.clone())
        );
        for upload in [
            format!("{name}.partial"),
            format!("{name}.manifest.json.partial"),
            format!("{name}.verified.json.partial"),
            format!("{name}.0badc0de.partial"),
            format!("{name}.manifest.json.12345678.partial"),
        ] {
            assert_eq!(
                classify(&upload, &db),
                RemoteFile::Partial(artifact.clone())
            );
        }
        for stray in [
            "other_20250301_013000.sql.gz",
            "other_20250301_013000.sql.gz.manifest.json",
            "notes.txt",
            "viatique_20250301_013000.sql.gz.bak",
            "viatique_20250301_013000.sql.gz.partial.partial",
            "viatique_20250301_013000.sql.gz.1234.partial",
            "viatique_20250301_013000.sql.gz.0BADC0DE.partial",
            "viatique_20250301_013000.sql.gz.verified.json.manifest.json",
        ] {
            assert_eq!(classify(stray, &db), RemoteFile::Stray, "{stray}");
        }
    }
}
