//! Why a dump failed, and whether trying again may help
//! ([`DumpError::is_transient`]); the dump's caller decides the retry (see
//! the crate docs). Also reads pg_dump's stderr for the table it could not
//! lock, so a lock timeout names it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::pg::PgError;
use backup_core::pg_dump::NoMatchingPgDump;
use backup_core::spool_space::SpaceError;
use backup_core::watchdog::Aborted;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    NoMatchingPgDump(#[from] NoMatchingPgDump),
    #[error("{program} failed ({status}): {stderr}")]
    PgDump {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "could not get a lock on {} within {}",
        lock_target(.table.as_deref()),
        humantime::format_duration(*.within)
    )]
    LockTimeout {
        /// `schema.table` as pg_dump names it; `None` when the row counts
        /// (which do not say which table) timed out.
        table: Option<String>,
        within: Duration,
    },
    #[error(transparent)]
    Aborted(#[from] Aborted),
    #[error(
        "no space left in the spool {dir} while writing {artifact}; the partial file was removed"
    )]
    NoSpace { dir: PathBuf, artifact: String },
    #[error(transparent)]
    SpaceCheck(#[from] SpaceError),
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot archive the media directories: {0}")]
    Files(String),
    #[error(
        "the artifact of {database} is implausibly small ({size} bytes, floor {floor}); refusing to report it"
    )]
    TooSmall {
        database: String,
        size: u64,
        floor: u64,
    },
    #[error(
        "{path} hashes to {on_disk} on disk but {written} was written; the spool is corrupting data"
    )]
    HashMismatch {
        path: PathBuf,
        written: String,
        on_disk: String,
    },
}

impl DumpError {
    /// Worth retrying without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            DumpError::Postgres(e) => e.is_transient(),
            // A killed pg_dump or a dropped connection may pass; a bad
            // option or a permission problem will not, but stderr is the
            // only way to tell and retrying a few times costs little.
            DumpError::PgDump { .. } => true,
            // Whoever holds the lock (a migration, a long transaction) or
            // made the server stall may be gone by the next attempt.
            DumpError::LockTimeout { .. } | DumpError::Aborted(_) => true,
            DumpError::Io { .. } => true,
            DumpError::SpaceCheck(e) => e.is_transient(),
            DumpError::NoSpace { .. }
            | DumpError::NoMatchingPgDump(_)
            | DumpError::Files(_)
            | DumpError::TooSmall { .. }
            | DumpError::HashMismatch { .. } => false,
        }
    }

    /// Set when the watchdog stopped the step.
    pub fn aborted(&self) -> Option<&Aborted> {
        match self {
            DumpError::Aborted(aborted) => Some(aborted),
            _ => None,
        }
    }
}

fn lock_target(table: Option<&str>) -> String {
    match table {
        Some(table) => format!("table {table}"),
        None => "a table to count its rows".to_owned(),
    }
}

/// The table pg_dump could not lock, from its stderr: with
/// `--lock-wait-timeout` it reports `canceling statement due to statement
/// timeout` (or `lock timeout`) followed by `Query was: LOCK TABLE <table>
/// IN ACCESS SHARE MODE`; a parallel worker's NOWAIT lock says `could not
/// obtain lock on relation "<table>"`.
pub fn locked_table(stderr: &str) -> Option<String> {
    let timed_out = stderr.contains("canceling statement due to statement timeout")
        || stderr.contains("canceling statement due to lock timeout")
        || stderr.contains("could not obtain lock on relation");
    if !timed_out {
        return None;
    }
    let from_query = stderr.lines().find_map(|line| {
        let rest = &line[line.find("LOCK TABLE ")? + "LOCK TABLE ".len()..];
        let end = rest.find(" IN ").unwrap_or(rest.len());
        Some(rest[..end].trim().to_owned())
    });
    let from_relation = || {
        let rest = &stderr[stderr.find("lock on relation \"")? + "lock on relation \"".len()..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    from_query
        .or_else(from_relation)
        .filter(|table| !table.is_empty())
}

/// Maps an I/O error on `path` to [`DumpError::Io`], for `map_err`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + use<> {
    let path = path.to_owned();
    move |source| DumpError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_table_comes_from_pg_dumps_stderr() {
        // As pg_dump 15 prints it with --lock-wait-timeout.
        let stderr = "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n\
                      pg_dump: detail: Query was: LOCK TABLE \"My Schema\".\"t one\" IN ACCESS SHARE MODE";
        assert_eq!(
            locked_table(stderr).as_deref(),
            Some("\"My Schema\".\"t one\"")
        );
        let nowait = "pg_dump: error: could not obtain lock on relation \"public.audit_log\"\n\
                      This usually means that someone requested an ACCESS EXCLUSIVE lock on the table.";
        assert_eq!(locked_table(nowait).as_deref(), Some("public.audit_log"));
        // Other failures keep their own line.
        assert_eq!(
            locked_table("pg_dump: error: connection to server failed: Connection refused"),
            None
        );
        assert_eq!(
            locked_table("pg_dump: detail: Query was: LOCK TABLE public.t IN ACCESS SHARE MODE"),
            None
        );
    }

    #[test]
    fn a_lock_timeout_reads_as_one_line_naming_the_table() {
        let error = DumpError::LockTimeout {
            table: Some("grading.copy".into()),
            within: Duration::from_secs(300),
        };
        assert_eq!(
            error.to_string(),
            "could not get a lock on table grading.copy within 5m"
        );
        assert!(error.is_transient());
        let stalled = DumpError::from(Aborted::Stalled {
            step: "dump",
            bytes: 123_456,
            idle: Duration::from_secs(300),
        });
        assert_eq!(
            stalled.to_string(),
            "dump stalled: no progress for 5m after 123456 bytes; aborted"
        );
        assert!(stalled.is_transient());
        assert!(stalled.aborted().is_some());
    }
}
