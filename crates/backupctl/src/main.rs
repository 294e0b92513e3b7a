//! `backupctl` binary: parses the command and runs it. Exit codes: 0 done
//! (for `trigger --wait`: verified), 1 the backup failed, 2 bad usage or
//! configuration, 3 timed out waiting, 130 interrupted (the waiting stops,
//! the backup goes on). `restore`: 0 restored and the row
//! counts match the manifest, 1 the restore or a check failed, 2 bad usage,
//! configuration, or a refusal (non-empty target, no confirmation), 130
//! interrupted (Ctrl-C or SIGTERM; the target holds a partial restore).
//! `doctor`: 0 every check passed or was skipped, 1 a check failed, 2 bad
//! usage.

use std::process::ExitCode;
use std::time::Duration;

use backup_core::config::{CommonArgs, SECRETS_HELP, parse_duration};
use clap::Parser;

/// Operate the backup pipeline: trigger backups, see their status, list what is on the remote.
#[derive(Debug, Parser)]
#[command(version, after_help = SECRETS_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Give up when NATS cannot be reached within this time (exit 2).
    #[arg(long, default_value = "15s", value_parser = parse_duration, global = true)]
    connect_timeout: Duration,
    #[command(subcommand)]
    command: backupctl::Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = backup_core::config::parse_settings("backupctl");
    backup_core::telemetry::init_with_default(cli.common.log_format, "warn,backup_core::bus=error");
    cli.command.run(&cli.common, cli.connect_timeout).await
}
