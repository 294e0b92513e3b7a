//! Whether the dumper's spool can hold the next dump of a database, as the
//! dumper estimates it before each dump and `backupctl doctor` checks it
//! ahead of time: the database's size × the compression ratio of its last
//! dump (remembered in [`STATS_FILE`]) × a margin, plus some slack, against
//! the space the file system has for unprivileged users.
//!
//! No retries: the estimate reads the file system once; the caller decides
//! what a shortfall means (the dumper refuses to start the dump).

use std::path::{Path, PathBuf};

use crate::names::DatabaseName;

/// Compression ratio assumed before any dump of a database was seen.
const DEFAULT_RATIO: f64 = 0.5;
/// Room kept beyond the estimate: ratios drift, and the manifest and the
/// filesystem's own needs take space too.
const SPACE_MARGIN: f64 = 1.25;
const SPACE_SLACK_BYTES: u64 = 16 << 20;
/// Where the dumper remembers each database's last size ratio.
pub const STATS_FILE: &str = ".dumper-stats.json";

/// The sizes of a database and of its last artifact, kept in [`STATS_FILE`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct SizeStats {
    pub database_bytes: u64,
    pub artifact_bytes: u64,
}

fn read_stats(dir: &Path) -> Option<SizeStats> {
    serde_json::from_slice(&std::fs::read(dir.join(STATS_FILE)).ok()?).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(
        "not enough free space in the spool {dir}: about {needed_mib} MiB needed for {database} (database size {database_mib} MiB × compression ratio {ratio:.2} + margin), {free_mib} MiB free; refusing to start"
    )]
    Short {
        dir: PathBuf,
        database: String,
        needed_mib: u64,
        database_mib: u64,
        ratio: f64,
        free_mib: u64,
    },
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SpaceError {
    /// A file system that does not answer may come back; a full one waits
    /// for someone to free space.
    pub fn is_transient(&self) -> bool {
        matches!(self, SpaceError::Io { .. })
    }
}

/// Bytes of `dir`'s file system available to unprivileged users.
#[allow(clippy::useless_conversion)] // the field types differ between platforms
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(u64::from(stat.blocks_available()) * u64::from(stat.fragment_size()))
}

/// Refuses when the spool `dir` (where the database's statistics are
/// kept) obviously cannot hold a dump of a `database_bytes` database.
pub fn check_free_space(
    dir: &Path,
    database: &DatabaseName,
    database_bytes: u64,
) -> Result<(), SpaceError> {
    let ratio = read_stats(dir)
        .filter(|s| s.database_bytes > 0)
        .map_or(DEFAULT_RATIO, |s| {
            s.artifact_bytes as f64 / s.database_bytes as f64
        });
    let needed = (database_bytes as f64 * ratio * SPACE_MARGIN) as u64 + SPACE_SLACK_BYTES;
    let free = available_bytes(dir).map_err(|source| SpaceError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if free < needed {
        return Err(SpaceError::Short {
            dir: dir.to_owned(),
            database: database.to_string(),
            needed_mib: needed >> 20,
            database_mib: database_bytes >> 20,
            ratio,
            free_mib: free >> 20,
        });
    }
    Ok(())
}

/// Remembers the sizes of the dump just taken, the next estimate's ratio.
pub async fn remember_sizes(dir: &Path, database_bytes: u64, artifact_bytes: u64) {
    let stats = SizeStats {
        database_bytes,
        artifact_bytes,
    };
    if let Ok(bytes) = serde_json::to_vec(&stats) {
        // Only an input to the next free-space estimate; losing it is harmless.
        let _ = crate::files::write_atomic(&dir.join(STATS_FILE), &bytes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_ratio_decides_and_a_huge_database_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let db = DatabaseName::try_from("app".to_owned()).unwrap();
        assert!(check_free_space(dir.path(), &db, 1 << 20).is_ok());
        let error = check_free_space(dir.path(), &db, u64::MAX >> 8).unwrap_err();
        assert!(!error.is_transient());
        assert!(error.to_string().contains("ratio 0.50"), "{error}");
        let stats = SizeStats {
            database_bytes: 100,
            artifact_bytes: 25,
        };
        std::fs::write(
            dir.path().join(STATS_FILE),
            serde_json::to_vec(&stats).unwrap(),
        )
        .unwrap();
        let error = check_free_space(dir.path(), &db, u64::MAX >> 8).unwrap_err();
        assert!(error.to_string().contains("ratio 0.25"), "{error}");
        let missing = check_free_space(&dir.path().join("absent"), &db, 1).unwrap_err();
        assert!(missing.is_transient(), "{missing}");
    }
}
