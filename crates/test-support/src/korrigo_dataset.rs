//! The Korrigo-like benchmark database: `shared/bench/korrigo-dataset.sql`
//! loaded at a scale into `korrigo_bench_s<scale>` on the machine's
//! PostgreSQL, and reused while the database's comment says that load
//! completed. The same name and marker as the dumper's `dump-bench`
//! (`services/dumper/src/bin/dump_bench/pipelines.rs`), so each reuses a
//! database the other made. Loading scale 15 takes several minutes. No
//! retries: a failed step panics with psql's stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::postgres::{ensure_postgres_running, pg_env};
use crate::process::workspace_root;

/// `korrigo_bench_s<scale>`.
pub fn database_name(scale: u32) -> String {
    format!("korrigo_bench_s{scale}")
}

/// `../shared/bench/korrigo-dataset.sql` from the workspace root, where
/// `dump-bench` looks for it by default.
pub fn default_script() -> PathBuf {
    workspace_root().join("../shared/bench/korrigo-dataset.sql")
}

/// Makes (or reuses) `korrigo_bench_s<scale>` from `script` and returns
/// its name.
pub fn prepare(scale: u32, script: &Path) -> String {
    ensure_postgres_running();
    let database = database_name(scale);
    let marker = format!("korrigo-dataset scale={scale} complete");
    let comment = psql(
        "postgres",
        &format!(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') \
             FROM pg_database WHERE datname = '{database}'"
        ),
    );
    if comment == marker {
        eprintln!("reusing {database}");
        return database;
    }
    assert!(
        script.is_file(),
        "dataset {} not found (set the path or put shared/ beside the workspace)",
        script.display()
    );
    eprintln!("creating {database} at scale {scale} (this takes a while)…");
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {database}"));
    let output = Command::new("psql")
        .envs(pg_env())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("scale={scale}"))
        .args(["-d", &database, "-f"])
        .arg(script)
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "loading {} into {database} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    psql(
        "postgres",
        &format!("COMMENT ON DATABASE {database} IS '{marker}'"),
    );
    database
}

/// One statement through `psql -At`, its trimmed output.
fn psql(database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .envs(pg_env())
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database])
        .args(["-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
