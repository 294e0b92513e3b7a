//! The commands of `backupctl`, one module each, and the exit status every
//! command shares: 2 for bad usage or configuration, and for any error a
//! command does not turn into its own status.

use std::process::ExitCode;
use std::time::Duration;

use backup_core::config::CommonArgs;
use clap::Subcommand;

use crate::{doctor, list, prune, restore, status, trigger};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask the dumper for a backup now (all configured databases unless --database).
    Trigger(trigger::TriggerArgs),
    /// Per configured database, the last verified backup, what is failing, recent runs and
    /// space on the remote; the next scheduled run; recently rejected triggers; per service,
    /// whether it is alive. Exits 1 when a service is down or a stage is failing.
    Status(status::StatusArgs),
    /// List the backups on a destination (--from LABEL; default the first, the SFTP server).
    List(list::ListArgs),
    /// Restore a backup from a destination (--from LABEL; default the first, the SFTP server)
    /// into a database, then compare row counts.
    ///
    /// The target is RESTORE_TARGET_URL (or RESTORE_TARGET_URL_FILE), which is preferred
    /// because it may hold a password; --target-url is accepted when it holds none.
    Restore(restore::RestoreArgs),
    /// Check every piece the pipeline needs, one line each with the fix: NATS and the
    /// services' consumers, PostgreSQL, SFTP, the spool, the scratch server, age keys,
    /// alert channels, the schedule. Exits 1 when a check fails.
    Doctor(Box<doctor::DoctorArgs>),
    /// Show what retention would delete and why; deletes nothing (the pruner service does the deleting).
    Prune(prune::PruneArgs),
}

impl Command {
    /// Runs the command; an error it does not handle itself is printed on
    /// one line and exits 2.
    pub async fn run(self, common: &CommonArgs, connect_timeout: Duration) -> ExitCode {
        let result = match self {
            Command::Trigger(args) => trigger::run(common, connect_timeout, args).await,
            Command::Status(args) => status::run(common, connect_timeout, args).await,
            Command::List(args) => list::run(args).await,
            Command::Restore(args) => restore::run(args).await,
            Command::Doctor(args) => doctor::run(common, &args).await,
            Command::Prune(args) => prune::run(args).await,
        };
        result.unwrap_or_else(|error| {
            eprintln!(
                "backupctl: {}",
                backup_core::one_line(&format!("{error:#}"))
            );
            ExitCode::from(2)
        })
    }
}
