//! `verifier` binary: configuration, tracing, NATS, then [`verifier::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{
    ExposeSecret, SECRETS_HELP, ServiceArgs, exit_status, parse_duration, secret_from_env,
};
use backup_core::pg::{PgArgs, PgTarget};
use backup_core::sftp::SftpArgs;
use clap::Parser;

/// Reads each shipped artifact back from the SFTP server, restores it into a scratch database and emits `dump.verified`.
#[derive(Debug, Parser)]
#[command(version, after_help = SECRETS_HELP)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    sftp: SftpArgs,
    /// Used for the scratch server when VERIFY_DATABASE_URL is not set.
    #[command(flatten)]
    pg: PgArgs,
    /// psql used for plain-format restores.
    #[arg(long, env = "PSQL", default_value = "psql")]
    psql: PathBuf,
    /// pg_restore used for custom-format archives.
    #[arg(long, env = "PG_RESTORE", default_value = "pg_restore")]
    pg_restore: PathBuf,
    /// Parallel jobs for pg_restore (custom-format archives).
    #[arg(
        long = "restore-jobs",
        env = "VERIFY_RESTORE_JOBS",
        default_value_t = 2
    )]
    restore_jobs: u32,
    /// age identity file for encrypted artifacts (a missing one fails
    /// their verification).
    #[arg(long = "age-identity-file", env = "AGE_IDENTITY_FILE")]
    age_identity_file: Option<PathBuf>,
    /// SQL file of operator checks: queries that must each return true,
    /// separated by `;`, each named by the `--` comment line before it.
    #[arg(long = "sql-file", env = "VERIFY_SQL_FILE")]
    sql_file: Option<PathBuf>,
    /// Re-verify one older backup per database this often (e.g. `24h`,
    /// `7d`); `off` disables it.
    #[arg(
        long = "reverify-every",
        env = "VERIFY_REVERIFY_EVERY",
        default_value = "24h"
    )]
    reverify_every: String,
    /// Scratch databases are named `<prefix>_<12 hex digits>`; those left
    /// behind are dropped at start-up.
    #[arg(long = "scratch-prefix", env = "VERIFY_SCRATCH_PREFIX", default_value = verifier::SCRATCH_PREFIX)]
    scratch_prefix: String,
    /// Where custom-format archives are staged for pg_restore (a private
    /// directory is made inside and removed afterwards).
    #[arg(long = "staging-dir", env = "VERIFY_STAGING_DIR")]
    staging_dir: Option<PathBuf>,
    /// A verification during which nothing moved for this long (no byte
    /// read from the remote or fed to psql/pg_restore, no query working on
    /// the scratch server) is aborted and retried.
    #[arg(long = "stall-timeout", env = "VERIFY_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Longest one verification (download, restore, checks) may take,
    /// progress or not.
    #[arg(long = "deadline", env = "VERIFY_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    deadline: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = backup_core::config::parse_settings("verifier");
    if args.common.health_probe {
        return backup_core::health::probe(&args.common).await;
    }
    backup_core::telemetry::init(args.common.log_format);
    exit_status("verifier", run(args).await.map_err(|e| format!("{e:#}")))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sftp_settings = args.sftp.settings().context("SFTP settings")?;
    // The URL may hold a password, so it is read like any other secret.
    let scratch = match secret_from_env("VERIFY_DATABASE_URL").context("VERIFY_DATABASE_URL")? {
        Some(url) => PgTarget::from_url(url.expose_secret()).context("VERIFY_DATABASE_URL")?,
        None => args.pg.target("postgres").context("PostgreSQL settings")?,
    };
    let nats = args.common.nats_options().context("NATS settings")?;
    // Zero would abort every verification before its first byte.
    anyhow::ensure!(
        args.stall_timeout >= Duration::from_secs(1) && args.deadline >= Duration::from_secs(1),
        "VERIFY_STALL_TIMEOUT and VERIFY_DEADLINE must be at least 1s"
    );
    anyhow::ensure!(
        verifier::valid_scratch_prefix(&args.scratch_prefix),
        "VERIFY_SCRATCH_PREFIX must be [a-z][a-z0-9_]*, at most 40 characters"
    );
    let operator_checks = match &args.sql_file {
        Some(path) => verifier::checks::load_operator_checks(path)
            .with_context(|| format!("VERIFY_SQL_FILE {}", path.display()))?,
        None => Vec::new(),
    };
    let reverify_every = match args.reverify_every.trim() {
        "off" | "0" | "" => None,
        text => Some(
            backup_core::config::parse_duration(text)
                .map_err(anyhow::Error::msg)
                .context("VERIFY_REVERIFY_EVERY")?,
        ),
    };
    let settings = verifier::Settings {
        sftp: args.sftp,
        sftp_settings,
        scratch,
        scratch_prefix: args.scratch_prefix,
        restore: verifier::RestoreOptions {
            psql: args.psql,
            pg_restore: args.pg_restore,
            jobs: args.restore_jobs.max(1),
            age_identity: args.age_identity_file,
            staging_dir: args.staging_dir,
            // The scratch server need not have the source's roles.
            keep_owners: false,
        },
        operator_checks,
        reverify_every,
        grace: args.common.shutdown_grace,
        limits: backup_core::watchdog::Limits::new(args.stall_timeout, args.deadline),
    };
    let shutdown = backup_core::shutdown::on_signals();
    let Some(bus) = backup_core::bus::Bus::connect_service(&nats, "verifier", &shutdown)
        .await
        .context("NATS")?
    else {
        return Ok(());
    };
    backup_core::health::serve(&args.common, &bus)
        .await
        .context("HEALTH_LISTEN")?;
    verifier::run(bus, settings, shutdown)
        .await
        .context("verifier")?;
    Ok(())
}
