//! `pruner` binary: configuration, tracing, NATS, then [`pruner::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{SECRETS_HELP, ServiceArgs, exit_status, parse_duration};
use backup_core::sftp::SftpArgs;
use clap::Parser;

/// Applies the retention policy on the SFTP server after each `dump.verified` and on a schedule, and emits `dump.pruned`.
#[derive(Debug, Parser)]
#[command(version, after_help = SECRETS_HELP)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    sftp: SftpArgs,
    #[command(flatten)]
    retention: pruner::RetentionArgs,
    /// Report what would be deleted, and why, without deleting anything.
    #[arg(long, env = "RETENTION_DRY_RUN", default_value_t = false)]
    dry_run: bool,
    /// When to prune every database on the remote besides after each verified backup: cron (five fields, in BACKUP_TZ) or "off".
    #[arg(long, env = "PRUNE_SCHEDULE", default_value = "30 4 * * *")]
    schedule: String,
    /// Prune on this fixed interval instead of PRUNE_SCHEDULE (e.g. 6h).
    #[arg(long, env = "PRUNE_INTERVAL", value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Local spool, trimmed to the newest SPOOL_KEEP_LAST artifacts plus any not yet shipped.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    spool_dir: PathBuf,
    /// Local artifacts of each database kept for fast restores (older ones go once shipped).
    #[arg(long, env = "SPOOL_KEEP_LAST", default_value_t = 2)]
    spool_keep_last: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = backup_core::config::parse_settings("pruner");
    if args.common.health_probe {
        return backup_core::health::probe(&args.common).await;
    }
    backup_core::telemetry::init(args.common.log_format);
    exit_status("pruner", run(args).await.map_err(|e| format!("{e:#}")))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sftp_settings = args.sftp.settings().context("SFTP settings")?;
    let policy = args
        .retention
        .policy()
        .map_err(anyhow::Error::msg)
        .context("retention settings")?;
    let schedule = pruner::Schedule::parse(&args.schedule, args.interval, policy.timezone)
        .map_err(anyhow::Error::msg)
        .context("prune schedule")?;
    let nats = args.common.nats_options().context("NATS settings")?;
    let settings = pruner::Settings {
        sftp: args.sftp,
        sftp_settings,
        policy,
        dry_run: args.dry_run,
        force: args.retention.force,
        spool_dir: args.spool_dir,
        spool_keep_last: args.spool_keep_last,
        schedule,
        grace: args.common.shutdown_grace,
    };
    let shutdown = backup_core::shutdown::on_signals();
    let Some(bus) = backup_core::bus::Bus::connect_service(&nats, "pruner", &shutdown)
        .await
        .context("NATS")?
    else {
        return Ok(());
    };
    backup_core::health::serve(&args.common, &bus)
        .await
        .context("HEALTH_LISTEN")?;
    pruner::run(bus, settings, shutdown)
        .await
        .context("pruner")?;
    Ok(())
}
