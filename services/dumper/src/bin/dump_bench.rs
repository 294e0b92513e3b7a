//! `dump-bench`: times the dumper's dump stage against the shell pipelines
//! an operator would otherwise run, on a Korrigo-like database made with
//! `shared/bench/korrigo-dataset.sql` at a chosen scale.
//!
//! Each dumper run happens in a child process (this binary with `--stage`)
//! so its peak RSS (VmHWM) is its own. See docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use backup_core::events::Origin;
use backup_core::names::{BackupId, DatabaseName};
use backup_core::pg::PgArgs;
use clap::Parser;

/// Benchmark the dumper's dump stage against pg_dump | gzip -9, | pigz, | zstd.
#[derive(Debug, Parser)]
struct Args {
    /// Dataset scale (1 ≈ 105 MB on disk, 15 ≈ 1.5 GB).
    #[arg(long, default_value_t = 2)]
    scale: u32,
    /// The dataset script.
    #[arg(long, default_value = "../shared/bench/korrigo-dataset.sql")]
    dataset: PathBuf,
    /// Where artifacts are written (removed afterwards).
    #[arg(long, default_value = "/var/tmp/dump-bench")]
    work_dir: PathBuf,
    /// Skip the slow `pg_dump | gzip -9` baseline.
    #[arg(long)]
    skip_gzip9: bool,
    /// Drop and rebuild the database even if a complete one exists.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    pg: PgArgs,
    /// Internal: run one dumper dump stage and print its figures as JSON.
    #[arg(long, hide = true)]
    stage: Option<String>,
    #[arg(long, hide = true)]
    database: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StageReport {
    seconds: f64,
    size_bytes: u64,
    peak_rss_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(codec) = &args.stage {
        let report = tokio::runtime::Runtime::new()?.block_on(stage(&args, codec))?;
        #[allow(clippy::print_stdout)]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
        return Ok(());
    }
    bench(&args)
}

/// One dumper dump (no NATS: the stage that `dump.created` would follow).
async fn stage(args: &Args, codec: &str) -> anyhow::Result<StageReport> {
    let database: DatabaseName = args.database.clone().context("--database")?.parse()?;
    let (compression, level) =
        backup_core::config::parse_compression(codec).map_err(anyhow::Error::msg)?;
    let spool = args
        .work_dir
        .join(format!("spool-{codec}").replace(':', "-"));
    let mut settings =
        dumper::Settings::new(vec![database.clone()], spool.clone(), args.pg.clone());
    settings.codec = dumper::Codec::new(compression, level);
    let backup_id: BackupId = format!("bench-{}", std::process::id()).parse()?;
    let started = Instant::now();
    let manifest =
        dumper::database::write_dump(&settings, &database, &backup_id, &Origin::default())
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

struct Row {
    name: String,
    seconds: f64,
    size_bytes: u64,
    peak_rss_kib: Option<u64>,
}

fn bench(args: &Args) -> anyhow::Result<()> {
    let database = format!("korrigo_bench_s{}", args.scale);
    prepare_database(args, &database)?;
    std::fs::create_dir_all(&args.work_dir)?;
    let cores = dumper::compress::available_cores();
    let size_mib = psql_value(&format!("SELECT pg_database_size('{database}') >> 20"))?;

    // Warm the page cache and measure the raw dump once.
    let raw = shell_pipeline(args, &database, "cat", "raw")?;
    eprintln!(
        "raw pg_dump: {:.1} s, {} MiB",
        raw.seconds,
        raw.size_bytes >> 20
    );

    let mut rows = Vec::new();
    rows.push(dumper_stage(args, &database, "gzip")?);
    rows.push(shell_pipeline(
        args,
        &database,
        &format!("pigz -p {cores} -6"),
        "pg_dump | pigz -6",
    )?);
    if !args.skip_gzip9 {
        rows.push(shell_pipeline(
            args,
            &database,
            "gzip -9",
            "pg_dump | gzip -9",
        )?);
    }
    rows.push(dumper_stage(args, &database, "zstd")?);
    rows.push(shell_pipeline(
        args,
        &database,
        "zstd -T0 -3",
        "pg_dump | zstd -T0 -3",
    )?);

    let mut out = String::new();
    out.push_str(&format!(
        "scale {} ({database}, {size_mib} MiB on disk, plain dump {} MiB), {cores} cores\n\n",
        args.scale,
        raw.size_bytes >> 20
    ));
    out.push_str(
        "| pipeline | seconds | MiB | ratio | peak RSS MiB |\n|---|---:|---:|---:|---:|\n",
    );
    for row in &rows {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.3} | {} |\n",
            row.name.replace('|', "\\|"),
            row.seconds,
            row.size_bytes as f64 / 1048576.0,
            row.size_bytes as f64 / raw.size_bytes.max(1) as f64,
            row.peak_rss_kib
                .map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        ));
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let (Some(gzip), Some(pigz), Some(zstd), Some(zstd_cli)) = (
        find("dumper gzip"),
        find("pg_dump | pigz -6"),
        find("dumper zstd"),
        find("pg_dump | zstd -T0 -3"),
    ) else {
        bail!("missing rows");
    };
    out.push_str("\n| target | measured | goal | met |\n|---|---:|---:|---|\n");
    let mut check = |what: &str, value: f64, goal: f64| {
        out.push_str(&format!(
            "| {what} | {value:.3} | ≤ {goal} | {} |\n",
            if value <= goal { "yes" } else { "NO" }
        ));
    };
    check("gzip time / pigz time", gzip.seconds / pigz.seconds, 1.1);
    if let Some(gzip9) = find("pg_dump | gzip -9") {
        check(
            "gzip time / gzip -9 time",
            gzip.seconds / gzip9.seconds,
            0.45,
        );
    }
    check(
        "zstd time / zstd CLI time",
        zstd.seconds / zstd_cli.seconds,
        1.1,
    );
    // Larger is what matters: a smaller artifact is no regression.
    check(
        "gzip size vs pigz (% larger)",
        (gzip.size_bytes as f64 / pigz.size_bytes as f64 - 1.0) * 100.0,
        2.0,
    );
    check(
        "zstd size vs zstd CLI (% larger)",
        (zstd.size_bytes as f64 / zstd_cli.size_bytes as f64 - 1.0) * 100.0,
        2.0,
    );
    let rss = gzip.peak_rss_kib.max(zstd.peak_rss_kib).unwrap_or(0) as f64 / 1024.0;
    check("dumper peak RSS MiB", rss, 64.0);
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    let _ = std::fs::remove_dir_all(&args.work_dir);
    Ok(())
}

fn dumper_stage(args: &Args, database: &str, codec: &str) -> anyhow::Result<Row> {
    eprintln!("dumper {codec}…");
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .args(["--stage", codec, "--database", database, "--work-dir"])
        .arg(&args.work_dir)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(output.status.success(), "dumper {codec} stage failed");
    let report: StageReport = serde_json::from_slice(&output.stdout)?;
    Ok(Row {
        name: format!("dumper {codec}"),
        seconds: report.seconds,
        size_bytes: report.size_bytes,
        peak_rss_kib: Some(report.peak_rss_kib),
    })
}

/// `pg_dump DB | <filter> > file`, timed, with pipefail.
fn shell_pipeline(args: &Args, database: &str, filter: &str, name: &str) -> anyhow::Result<Row> {
    eprintln!("{name}…");
    let out = args.work_dir.join("pipeline.out");
    let script = format!(
        "set -euo pipefail; pg_dump --no-password --format=plain {database} | {filter} > '{}'",
        out.display()
    );
    let started = Instant::now();
    let status = Command::new("bash").args(["-c", &script]).status()?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "{name} failed: {status}");
    let size_bytes = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok(Row {
        name: name.to_owned(),
        seconds,
        size_bytes,
        peak_rss_kib: None,
    })
}

fn psql_value(sql: &str) -> anyhow::Result<String> {
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
fn prepare_database(args: &Args, database: &str) -> anyhow::Result<()> {
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
