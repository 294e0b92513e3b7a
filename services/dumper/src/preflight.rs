//! The dumper's start-up checks: every configured database answers and has
//! a pg_dump that can dump it, and the spool takes files. They run as the
//! dumps do (same connection settings, same pg_dump choice, same spool
//! directory); `backup_core::preflight` retries them while they fail.

use backup_core::files;
use backup_core::preflight::{self, Check};

use crate::Settings;

/// Runs the dumper's start-up checks once, each bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let mut checks = Vec::new();
    for database in &settings.databases {
        let name = format!("postgres.{database}");
        checks
            .extend(preflight::bounded(&name, postgres(settings, database.as_str(), &name)).await);
    }
    checks.extend(preflight::bounded("spool", spool(settings)).await);
    checks
}

async fn postgres(settings: &Settings, database: &str, name: &str) -> Vec<Check> {
    let target = match settings.pg.target(database) {
        Ok(target) => target,
        Err(e) => return vec![Check::fail(name, e.to_string())],
    };
    let client = match target.connect("backup-dumper-preflight").await {
        Ok(client) => client,
        Err(e) => return vec![Check::fail(name, e.to_string())],
    };
    let version_num: i32 = match client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => return vec![Check::fail(name, target.query_error(&e).to_string())],
    };
    let major = crate::pg_dump::server_major(u32::try_from(version_num).unwrap_or(0));
    match crate::pg_dump::select(major, settings.pg_bin_dir.as_deref()).await {
        Ok((path, version)) => vec![Check::pass(
            name,
            format!(
                "{} reachable (PostgreSQL {major}); {version} at {}",
                target.describe(),
                path.display()
            ),
        )],
        Err(e) => vec![Check::fail(format!("{name}.pg_dump"), e.to_string())],
    }
}

async fn spool(settings: &Settings) -> Vec<Check> {
    let dir = &settings.spool_dir;
    // The dumper makes the spool itself, so a missing one is not a failure.
    if let Err(e) = files::ensure_private_dir(dir) {
        return vec![Check::fail(
            "spool",
            format!("cannot use the spool {}: {e}", dir.display()),
        )];
    }
    vec![preflight::dir_writable("spool", dir, "dumper").await]
}
