//! The baselines (`pg_dump > /dev/null`, `pg_dump | <filter> > file`, timed
//! under bash with pipefail) and the dataset: a database made from the
//! Korrigo-like script at the requested scale, reused while its comment
//! says the load completed. No retries: a failed command fails the
//! benchmark.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::ensure;

use crate::Args;
use crate::report::Run;

/// `pg_dump DB > /dev/null` (no filter) or `pg_dump DB | filter > file`.
pub(crate) fn shell(args: &Args, database: &str, filter: Option<&str>) -> anyhow::Result<Run> {
    let out = args.work_dir.join("pipeline.out");
    let tail = match filter {
        None => "> /dev/null".to_owned(),
        Some(filter) => format!("| {filter} > '{}'", out.display()),
    };
    let script =
        format!("set -euo pipefail; pg_dump --no-password --format=plain {database} {tail}");
    let started = Instant::now();
    let status = Command::new("bash").args(["-c", &script]).status()?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "{script} failed: {status}");
    let size_bytes = match filter {
        None => 0,
        Some(_) => {
            let size = std::fs::metadata(&out)?.len();
            std::fs::remove_file(&out)?;
            size
        }
    };
    Ok(Run {
        seconds,
        size_bytes,
        peak_rss_kib: None,
    })
}

/// Bytes of the plain dump (`pg_dump | wc -c`); also warms the page cache.
pub(crate) fn plain_size(database: &str) -> anyhow::Result<u64> {
    let script =
        format!("set -euo pipefail; pg_dump --no-password --format=plain {database} | wc -c");
    let output = Command::new("bash").args(["-c", &script]).output()?;
    ensure!(
        output.status.success(),
        "{script} failed: {}",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn psql_value(sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql")
        .args(["-X", "-At", "-d", "postgres", "-c", sql])
        .output()?;
    ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Makes (or reuses) `database` at the requested scale. A database is
/// reused only if its comment says the load completed.
pub(crate) fn prepare_database(args: &Args, database: &str) -> anyhow::Result<()> {
    let marker = format!("korrigo-dataset scale={} complete", args.scale);
    let comment = psql_value(&format!(
        "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = '{database}'"
    ))?;
    if comment == marker && !args.rebuild {
        eprintln!("reusing {database}");
        return Ok(());
    }
    ensure!(
        Path::new(&args.dataset).is_file(),
        "dataset {} not found (run from the workspace root or pass --dataset)",
        args.dataset.display()
    );
    eprintln!(
        "creating {database} at scale {} (this takes a while)…",
        args.scale
    );
    psql_value(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))?;
    psql_value(&format!("CREATE DATABASE {database}"))?;
    let status = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("scale={}", args.scale))
        .args(["-d", database, "-f"])
        .arg(&args.dataset)
        .status()?;
    ensure!(status.success(), "loading the dataset failed");
    psql_value(&format!("COMMENT ON DATABASE {database} IS '{marker}'"))?;
    Ok(())
}
