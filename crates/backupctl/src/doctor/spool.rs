//! The dumper's spool: a directory this user can write, with room for the
//! next dump of every database as the dumper estimates it.

use std::path::Path;
use std::time::Duration;

use backup_core::names::DatabaseName;
use backup_core::pg::PgArgs;
use backup_core::preflight::{self, Check};
use backup_core::spool_space::{available_bytes, check_free_space};

use super::{mib, probe_name};

/// The spool: a directory this user can write (a file written, fsynced,
/// renamed and deleted: `spool.write`), with room for the next dump of
/// every database as the dumper estimates it (`spool.space`). The size of
/// each database is asked within `size_timeout`; an unreachable server
/// leaves only the dumper's fixed minimum to check.
pub async fn spool(
    dir: &Path,
    pg: &PgArgs,
    databases: &[DatabaseName],
    size_timeout: Duration,
) -> Vec<Check> {
    let write = spool_write(dir).await;
    let space = if write.ok {
        spool_space(dir, pg, databases, size_timeout).await
    } else {
        Check::not_checked("spool.space", "the spool is not usable")
    };
    vec![write, space]
}

pub async fn spool_write(dir: &Path) -> Check {
    let fix = format!(
        "make {} a directory the dumper's user owns (install -d -m 0700 -o USER {}), on a writable file system",
        dir.display(),
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Check::fail(
                "spool.write",
                format!("{} is not a directory", dir.display()),
            )
            .with_fix(fix);
        }
        Err(e) => {
            return Check::fail(
                "spool.write",
                format!("cannot use the spool {}: {e}", dir.display()),
            )
            .with_fix(fix);
        }
    }
    match preflight::write_probe(dir, &probe_name(), b"backupctl doctor probe\n").await {
        Ok(()) => Check::pass(
            "spool.write",
            format!(
                "wrote, renamed and deleted a probe file in {}",
                dir.display()
            ),
        ),
        Err(e) => Check::fail(
            "spool.write",
            format!("cannot write in the spool {}: {e}", dir.display()),
        )
        .with_fix(fix),
    }
}

pub async fn spool_space(
    dir: &Path,
    pg: &PgArgs,
    databases: &[DatabaseName],
    size_timeout: Duration,
) -> Check {
    let free = match available_bytes(dir) {
        Ok(free) => free,
        Err(e) => {
            return Check::fail("spool.space", format!("statvfs {}: {e}", dir.display()))
                .with_fix("check the spool's file system");
        }
    };
    if databases.is_empty() {
        return Check::skip(
            "spool.space",
            format!(
                "{} free; no database configured to estimate a dump",
                mib(free)
            ),
        );
    }
    let sizes = futures::future::join_all(databases.iter().map(|database| async move {
        match tokio::time::timeout(size_timeout, database_size(pg, database)).await {
            Ok(Ok(size)) => Some(size),
            _ => None,
        }
    }))
    .await;
    let mut enough = Vec::new();
    let mut problems = Vec::new();
    for (database, size) in databases.iter().zip(sizes) {
        let (size, known) = size.map_or((0, false), |size| (size, true));
        // The dumper keeps its size statistics in the database's directory.
        let db_dir = dir.join(database.as_str());
        let stats_dir = if db_dir.is_dir() {
            db_dir
        } else {
            dir.to_owned()
        };
        match check_free_space(&stats_dir, database, size) {
            Ok(()) if known => enough.push(format!("{database} ({})", mib(size))),
            Ok(()) => enough.push(format!(
                "{database} (size unknown: PostgreSQL unreachable; only the minimum checked)"
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Check::pass(
            "spool.space",
            format!(
                "{} free in {}: room for the next dump of {}",
                mib(free),
                dir.display(),
                enough.join(", ")
            ),
        )
    } else {
        Check::fail("spool.space", problems.join("; ")).with_fix(format!(
                "free space in {} or move BACKUP_SPOOL_DIR to a larger file system; artifacts that were shipped can go (the pruner keeps SPOOL_KEEP_LAST of them)",
                dir.display()
            ))
    }
}

async fn database_size(pg: &PgArgs, database: &DatabaseName) -> Result<u64, String> {
    let target = pg.target(database.as_str()).map_err(|e| e.to_string())?;
    let client = target
        .connect("backupctl-doctor")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| target.query_error(&e).to_string())?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
