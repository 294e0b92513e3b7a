//! `dump-bench`: times the dumper's dump stage against `pg_dump > /dev/null`
//! and the shell pipelines an operator would otherwise run, on a
//! Korrigo-like database made with `shared/bench/korrigo-dataset.sql` at a
//! chosen scale, and tabulates every gzip and zstd level it is given: time,
//! size, and what that size costs to upload.
//!
//! Each dumper run happens in a child process (this binary with `--stage`)
//! so its peak RSS (VmHWM) is its own. Every row runs once per round, the
//! rounds interleaved so a burst of load elsewhere lands on one run of each
//! row rather than on every run of one; the table shows the median. See
//! docs/benchmarks.md. No retries: a failed run ends the benchmark.

mod pipelines;
mod report;
mod stage;

use std::path::PathBuf;

use backup_core::pg::PgArgs;
use clap::Parser;
use dumper::compress::{DEFAULT_GZIP_LEVEL, available_cores};

use crate::report::{Kind, Row};

/// Benchmark the dumper's dump stage at every compression level against
/// pg_dump > /dev/null, pigz, gzip -9 and the zstd CLI.
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
    /// gzip levels of the dumper to tabulate.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9")]
    gzip_levels: Vec<u32>,
    /// zstd levels of the dumper to tabulate.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    zstd_levels: Vec<u32>,
    /// Runs of every row; the table shows the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the slow `pg_dump | gzip -9` baseline.
    #[arg(long)]
    skip_gzip9: bool,
    /// Drop and rebuild the database even if a complete one exists.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    pg: PgArgs,
    /// Internal: run one dumper dump stage (`default`, `gzip:N`, `zstd:N`)
    /// and print its figures as JSON.
    #[arg(long, hide = true)]
    stage: Option<String>,
    #[arg(long, hide = true)]
    database: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(codec) = &args.stage {
        return stage::run_child(&args, codec);
    }
    bench(&args)
}

/// The rows of one invocation, in the order each round runs them.
fn rows(args: &Args) -> Vec<Row> {
    let cores = available_cores();
    let mut rows = vec![
        Row::new(Kind::DevNull, "pg_dump > /dev/null"),
        Row::new(
            Kind::Dumper("default".into()),
            &format!("dumper, default settings (gzip:{DEFAULT_GZIP_LEVEL})"),
        ),
    ];
    for level in &args.gzip_levels {
        let codec = format!("gzip:{level}");
        rows.push(Row::new(
            Kind::Dumper(codec.clone()),
            &format!("dumper {codec}"),
        ));
    }
    for level in [1, 6] {
        rows.push(Row::new(
            Kind::Filter(format!("pigz -p {cores} -{level}")),
            &format!("pg_dump | pigz -{level}"),
        ));
    }
    if !args.skip_gzip9 {
        rows.push(Row::new(
            Kind::Filter("gzip -9".into()),
            "pg_dump | gzip -9",
        ));
    }
    for level in &args.zstd_levels {
        let codec = format!("zstd:{level}");
        rows.push(Row::new(
            Kind::Dumper(codec.clone()),
            &format!("dumper {codec}"),
        ));
    }
    for level in [1, 3] {
        rows.push(Row::new(
            Kind::Filter(format!("zstd -q -T0 -{level}")),
            &format!("pg_dump | zstd -T0 -{level}"),
        ));
    }
    rows
}

fn bench(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let database = format!("korrigo_bench_s{}", args.scale);
    pipelines::prepare_database(args, &database)?;
    std::fs::create_dir_all(&args.work_dir)?;
    let size_mib = pipelines::psql_value(&format!("SELECT pg_database_size('{database}') >> 20"))?;
    // Warms the page cache and measures the plain dump once, untimed.
    let plain_bytes = pipelines::plain_size(&database)?;
    eprintln!("plain pg_dump: {} MiB", plain_bytes >> 20);

    let load_before = pipelines::load_average();
    let mut rows = rows(args);
    for round in 1..=args.rounds {
        for row in &mut rows {
            eprintln!("round {round}/{}: {}…", args.rounds, row.name);
            let run = match &row.kind {
                Kind::DevNull => pipelines::shell(args, &database, None)?,
                Kind::Filter(filter) => pipelines::shell(args, &database, Some(filter))?,
                Kind::Dumper(codec) => stage::run(args, &database, codec)?,
            };
            // Each figure as it comes, so an interrupted run still tells.
            eprintln!(
                "  {:.2} s, {} bytes{}",
                run.seconds,
                run.size_bytes,
                run.peak_rss_kib
                    .map_or_else(String::new, |k| format!(", peak RSS {k} KiB"))
            );
            row.record(run);
        }
    }
    let load_after = pipelines::load_average();
    let header = format!(
        "scale {} ({database}, {size_mib} MiB on disk, plain dump {} MiB), {} cores, \
         median of {} rounds; load average before {load_before}, after {load_after}",
        args.scale,
        plain_bytes >> 20,
        available_cores(),
        args.rounds,
    );
    let out = report::render(&header, &rows, plain_bytes)?;
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    let _ = std::fs::remove_dir_all(&args.work_dir);
    Ok(())
}
