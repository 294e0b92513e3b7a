//! What "verified" means, in one place, for the pruner, `backupctl list`
//! and `backupctl restore --latest`: a backup is verified only when its
//! `.verified.json` record decodes, names the same artifact and agrees with
//! the manifest's checksum, and the artifact on the remote has the size the
//! manifest states. A record that is merely present proves nothing: it may
//! be truncated, belong to an older upload of the same name, or describe
//! other content.

use backup_core::manifest::{Manifest, VerificationRecord};
use backup_core::names::ArtifactName;

/// Whether `record` (the bytes of the `.verified.json` beside `artifact`)
/// verifies `artifact`, stored on the remote with `stored_size` bytes and
/// described by `manifest`.
pub fn is_verified(
    artifact: &ArtifactName,
    stored_size: u64,
    manifest: &Manifest,
    record: &[u8],
) -> bool {
    manifest.artifact == *artifact
        && stored_size == manifest.size_bytes
        && VerificationRecord::decode(record)
            .is_ok_and(|r| r.artifact == *artifact && r.sha256 == manifest.sha256)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backup_core::events::Origin;
    use backup_core::names::{Compression, DumpFormat, Sha256Hex};
    use chrono::{TimeZone, Utc};

    use super::*;

    fn artifact(second: u32) -> ArtifactName {
        format!("viatique_20250301_0130{second:02}.sql.gz")
            .parse()
            .unwrap()
    }

    fn sha(digit: char) -> Sha256Hex {
        digit.to_string().repeat(64).parse().unwrap()
    }

    fn manifest(of: &ArtifactName) -> Manifest {
        Manifest {
            version: 1,
            backup_id: "b-1".parse().unwrap(),
            database: "viatique".parse().unwrap(),
            artifact: of.clone(),
            size_bytes: 100,
            sha256: sha('a'),
            format: DumpFormat::Plain,
            compression: Compression::Gzip,
            encrypted: false,
            server_version: "15.8".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 15.8".into(),
            created_at: Utc.with_ymd_and_hms(2025, 3, 1, 1, 30, 0).unwrap(),
            duration_ms: 1,
            trigger: "manual".into(),
            origin: Origin::default(),
            tables: BTreeMap::new(),
            application: None,
        }
    }

    fn record(of: &ArtifactName, sha256: Sha256Hex) -> Vec<u8> {
        VerificationRecord {
            version: 1,
            backup_id: "b-1".parse().unwrap(),
            artifact: of.clone(),
            sha256,
            verified_at: Utc.with_ymd_and_hms(2025, 3, 1, 2, 0, 0).unwrap(),
            checks: vec!["restore".into()],
            tables: 0,
            rows: 0,
            duration_ms: 1,
            steps_ms: BTreeMap::new(),
            skipped: Vec::new(),
        }
        .encode()
    }

    #[test]
    fn only_a_record_that_matches_the_manifest_and_the_stored_size_verifies() {
        let ours = artifact(0);
        let manifest = manifest(&ours);
        assert!(is_verified(&ours, 100, &manifest, &record(&ours, sha('a'))));
        // Present, but of other content, of another artifact, or not a record.
        assert!(!is_verified(
            &ours,
            100,
            &manifest,
            &record(&ours, sha('b'))
        ));
        assert!(!is_verified(
            &ours,
            100,
            &manifest,
            &record(&artifact(1), sha('a'))
        ));
        assert!(!is_verified(&ours, 100, &manifest, b"[\"not a record\"]"));
        assert!(!is_verified(&ours, 100, &manifest, b""));
        // The stored copy is truncated.
        assert!(!is_verified(&ours, 99, &manifest, &record(&ours, sha('a'))));
        // The manifest describes another artifact.
        let other = self::manifest(&artifact(1));
        assert!(!is_verified(&ours, 100, &other, &record(&ours, sha('a'))));
    }
}
