//! `dumper` binary: configuration, tracing, NATS, then [`dumper::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{
    SECRETS_HELP, ServiceArgs, exit_status, parse_compression, parse_duration,
};
use backup_core::names::{DatabaseName, DumpFormat};
use backup_core::pg::PgArgs;
use clap::Parser;

/// Dumps PostgreSQL databases into the spool on `backup.trigger` and announces them with `dump.created`.
#[derive(Debug, Parser)]
#[command(version, after_help = SECRETS_HELP)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    pg: PgArgs,
    /// Databases to back up, comma-separated (default: PGDATABASE).
    #[arg(long, env = "BACKUP_DATABASES", value_delimiter = ',')]
    databases: Vec<String>,
    /// Database to back up when BACKUP_DATABASES is empty (libpq's variable).
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pg_database: Option<String>,
    /// Where finished artifacts wait for the shipper.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    spool_dir: PathBuf,
    /// gzip or zstd, with an optional :LEVEL.
    #[arg(long, env = "BACKUP_COMPRESSION", default_value = "gzip", value_parser = parse_compression)]
    compression: (backup_core::names::Compression, Option<u32>),
    /// Use the pg_dump in this directory instead of the best installed match.
    #[arg(long, env = "PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
    /// plain (SQL for psql) or custom (pg_dump's archive for pg_restore).
    #[arg(long, env = "BACKUP_FORMAT", default_value = "plain", value_parser = parse_format)]
    format: DumpFormat,
    /// When to back up every database: five cron fields in BACKUP_TZ, or `off`.
    #[arg(long, env = "BACKUP_SCHEDULE", default_value = "0 2 * * *")]
    schedule: String,
    /// IANA time zone of the schedule (e.g. Europe/Paris).
    #[arg(long, env = "BACKUP_TZ", default_value = "UTC")]
    tz: String,
    /// age X25519 public keys (age1...), separated by commas or spaces; artifacts get `.age`.
    #[arg(long, env = "BACKUP_AGE_RECIPIENTS", default_value = "")]
    age_recipients: String,
    /// Compression threads (default: every core).
    #[arg(long, env = "BACKUP_COMPRESSION_THREADS")]
    compression_threads: Option<usize>,
    /// Databases (and globals, media) dumped at once for one trigger.
    #[arg(long, env = "BACKUP_MAX_PARALLEL", default_value_t = 2)]
    max_parallel: usize,
    /// Also dump the cluster globals (roles, tablespaces) with every full backup.
    #[arg(long, env = "BACKUP_GLOBALS", default_value_t = false, action = clap::ArgAction::Set)]
    globals: bool,
    /// Directories (the media volume) archived with every full backup, comma-separated.
    #[arg(long, env = "BACKUP_FILES_DIRS", value_delimiter = ',')]
    files_dirs: Vec<PathBuf>,
    /// Smallest plausible artifact, in bytes.
    #[arg(long, env = "BACKUP_MIN_SIZE", default_value_t = dumper::DEFAULT_MIN_ARTIFACT_BYTES)]
    min_size: u64,
    /// Refuse to start a dump the spool has obviously no room for.
    #[arg(long, env = "BACKUP_SPACE_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    space_check: bool,
    /// How long pg_dump waits for a table lock before failing (naming the table), or `off`.
    #[arg(long, env = "BACKUP_LOCK_WAIT_TIMEOUT", default_value = "5m", value_parser = dumper::parse_lock_wait)]
    lock_wait_timeout: dumper::LockWait,
    /// Abort a dump when pg_dump has written nothing for this long.
    #[arg(long, env = "BACKUP_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Abort a dump that runs longer than this, progress or not.
    #[arg(long, env = "BACKUP_DUMP_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    dump_deadline: Duration,
}

fn parse_format(text: &str) -> Result<DumpFormat, String> {
    match text.trim() {
        "plain" => Ok(DumpFormat::Plain),
        "custom" => Ok(DumpFormat::Custom),
        other => Err(format!("unknown format {other:?}; use plain or custom")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = backup_core::config::parse_settings("dumper");
    if args.common.health_probe {
        return backup_core::health::probe(&args.common).await;
    }
    backup_core::telemetry::init(args.common.log_format);
    exit_status("dumper", run(args).await.map_err(|e| format!("{e:#}")))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // An empty BACKUP_DATABASES (compose passes one) means "use PGDATABASE".
    let mut names: Vec<String> = args
        .databases
        .iter()
        .filter(|n| !n.trim().is_empty())
        .cloned()
        .collect();
    if names.is_empty() {
        names.extend(args.pg_database.clone());
    }
    anyhow::ensure!(
        !names.is_empty(),
        "no database to back up: set BACKUP_DATABASES (or PGDATABASE)"
    );
    let databases = names
        .into_iter()
        .map(|name| DatabaseName::try_from(name.trim().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .context("BACKUP_DATABASES")?;
    args.pg.target("postgres").context("PostgreSQL settings")?;
    let nats = args.common.nats_options().context("NATS settings")?;
    let schedule = match args.schedule.trim() {
        "" | "off" | "none" => None,
        pattern => Some(dumper::Schedule::parse(pattern, &args.tz)?),
    };
    let mut codec = dumper::Codec::new(args.compression.0, args.compression.1);
    codec.recipients = dumper::compress::parse_recipients(&args.age_recipients)
        .map_err(anyhow::Error::msg)
        .context("BACKUP_AGE_RECIPIENTS")?;
    if let Some(threads) = args.compression_threads {
        anyhow::ensure!(threads > 0, "BACKUP_COMPRESSION_THREADS must be at least 1");
        codec.threads = threads;
    }
    anyhow::ensure!(
        args.max_parallel > 0,
        "BACKUP_MAX_PARALLEL must be at least 1"
    );
    for reserved in [dumper::dump::GLOBALS_NAME, dumper::dump::MEDIA_NAME] {
        anyhow::ensure!(
            !databases.iter().any(|d| d.as_str() == reserved),
            "BACKUP_DATABASES: {reserved} is reserved for the {reserved} artifacts"
        );
    }
    anyhow::ensure!(
        !args.stall_timeout.is_zero() && !args.dump_deadline.is_zero(),
        "BACKUP_STALL_TIMEOUT and BACKUP_DUMP_DEADLINE must be longer than zero"
    );
    let settings = dumper::Settings {
        lock_wait_timeout: args.lock_wait_timeout.0,
        limits: backup_core::watchdog::Limits::new(args.stall_timeout, args.dump_deadline),
        format: args.format,
        codec,
        pg_bin_dir: args.pg_bin_dir,
        grace: args.common.shutdown_grace,
        max_parallel: args.max_parallel,
        schedule,
        globals: args.globals,
        files_dirs: args.files_dirs,
        min_artifact_bytes: args.min_size,
        space_check: args.space_check,
        ..dumper::Settings::new(databases, args.spool_dir, args.pg)
    };
    let shutdown = backup_core::shutdown::on_signals();
    let Some(bus) = backup_core::bus::Bus::connect_service(&nats, "dumper", &shutdown)
        .await
        .context("NATS")?
    else {
        return Ok(());
    };
    backup_core::health::serve(&args.common, &bus)
        .await
        .context("HEALTH_LISTEN")?;
    dumper::run(bus, settings, shutdown)
        .await
        .context("dumper")?;
    Ok(())
}
