//! Whether the spool can hold the next dump of a database, checked before
//! it starts: the database's size × the compression ratio of its last dump
//! (remembered beside its artifacts) × a margin, plus some slack, against
//! the space free in the spool. `backupctl doctor` checks ahead of time
//! with the same rule.
//!
//! No retries: a shortfall waits for someone to free space.

use std::path::Path;

use backup_core::files;
use backup_core::names::DatabaseName;

use crate::error::DumpError;

/// Compression ratio assumed before any dump of a database was seen.
const DEFAULT_RATIO: f64 = 0.5;
/// Room kept beyond the estimate: ratios drift, and the manifest and the
/// filesystem's own needs take space too.
const SPACE_MARGIN: f64 = 1.25;
const SPACE_SLACK_BYTES: u64 = 16 << 20;
/// Where the dumper remembers each database's last size ratio.
const STATS_FILE: &str = ".dumper-stats.json";

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct SizeStats {
    database_bytes: u64,
    artifact_bytes: u64,
}

fn read_stats(dir: &Path) -> Option<SizeStats> {
    serde_json::from_slice(&std::fs::read(dir.join(STATS_FILE)).ok()?).ok()
}

/// Refuses to start when the spool obviously cannot hold the dump.
pub fn check_free_space(
    dir: &Path,
    database: &DatabaseName,
    database_bytes: u64,
) -> Result<(), DumpError> {
    let ratio = read_stats(dir)
        .filter(|s| s.database_bytes > 0)
        .map_or(DEFAULT_RATIO, |s| {
            s.artifact_bytes as f64 / s.database_bytes as f64
        });
    let needed = (database_bytes as f64 * ratio * SPACE_MARGIN) as u64 + SPACE_SLACK_BYTES;
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| DumpError::Io {
        path: dir.to_owned(),
        source: e.into(),
    })?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
    if free < needed {
        return Err(DumpError::SpaceCheck {
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
pub(crate) async fn remember_sizes(dir: &Path, database_bytes: u64, artifact_bytes: u64) {
    let stats = SizeStats {
        database_bytes,
        artifact_bytes,
    };
    if let Ok(bytes) = serde_json::to_vec(&stats) {
        // Only an input to the next free-space estimate; losing it is harmless.
        let _ = files::write_atomic(&dir.join(STATS_FILE), &bytes).await;
    }
}
