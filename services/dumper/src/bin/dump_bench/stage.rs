//! The dumper's dump stage, one run per child process: the parent starts
//! this binary with `--stage <codec>`, the child runs the stage (no NATS:
//! what `dump.created` would follow) and prints its time, size and peak RSS
//! as JSON. No retries: a failed stage fails the benchmark.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};
use backup_core::events::Origin;
use backup_core::names::{BackupId, DatabaseName};
use dumper::writing::ForBackup;

use crate::Args;
use crate::report::Run;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StageReport {
    seconds: f64,
    size_bytes: u64,
    peak_rss_kib: u64,
}

/// Runs the stage with `codec` in a child and reads its report.
pub(crate) fn run(args: &Args, database: &str, codec: &str) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .args(["--stage", codec, "--database", database, "--work-dir"])
        .arg(&args.work_dir)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(output.status.success(), "dumper {codec} stage failed");
    let report: StageReport = serde_json::from_slice(&output.stdout)?;
    Ok(Run {
        seconds: report.seconds,
        size_bytes: report.size_bytes,
        peak_rss_kib: Some(report.peak_rss_kib),
    })
}

/// The child's side: one stage, its report on stdout.
pub(crate) fn run_child(args: &Args, codec: &str) -> anyhow::Result<()> {
    let report = tokio::runtime::Runtime::new()?.block_on(stage(args, codec))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// One dumper dump: `default` keeps the settings' own codec, anything else
/// is a `BACKUP_COMPRESSION` value.
async fn stage(args: &Args, codec: &str) -> anyhow::Result<StageReport> {
    let database: DatabaseName = args.database.clone().context("--database")?.parse()?;
    let spool = args
        .work_dir
        .join(format!("spool-{codec}").replace(':', "-"));
    let mut settings =
        dumper::Settings::new(vec![database.clone()], spool.clone(), args.pg.clone());
    if codec != "default" {
        let (compression, level) =
            backup_core::config::parse_compression(codec).map_err(anyhow::Error::msg)?;
        settings.codec = dumper::Codec::new(compression, level);
    }
    let backup_id: BackupId = format!("bench-{}", std::process::id()).parse()?;
    let started = Instant::now();
    let manifest = dumper::database::write_dump(
        &settings,
        &database,
        &ForBackup::quiet(&backup_id, &Origin::default()),
    )
    .await
    .context("dumper dump stage")?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kib = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&spool);
    Ok(StageReport {
        seconds,
        size_bytes: manifest.size_bytes,
        peak_rss_kib,
    })
}
