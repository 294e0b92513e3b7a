//! `backupctl trigger`: ask the dumper for a backup now and, with `--wait`,
//! follow it to verified or failed. Exit 0 published (with `--wait`:
//! verified), 1 the backup failed, 2 a refused `--database`, 3 no outcome
//! within `--timeout`, 130 interrupted (the waiting stops, the backup goes
//! on). The publishing and the following are in [`request`].

pub mod request;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{CommonArgs, parse_duration};
use backup_core::names::{DatabaseName, Tag};

use crate::configured::ConfiguredArgs;
use request::{TriggerError, WaitResult};

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Back up only this database (default: every database the dumper is configured for).
    #[arg(long)]
    pub database: Option<DatabaseName>,
    /// Label kept with the backup; `pre-deploy` backups are never pruned.
    #[arg(long)]
    pub tag: Option<Tag>,
    /// Free text recorded in the events and the manifest.
    #[arg(long)]
    pub reason: Option<String>,
    /// Follow the backup and exit 0 only once it is verified.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 3).
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub configured: ConfiguredArgs,
}

/// Publishes the trigger, prints its id and, with `--wait`, one line per
/// step until the outcome.
pub async fn run(
    common: &CommonArgs,
    connect_timeout: Duration,
    args: TriggerArgs,
) -> anyhow::Result<ExitCode> {
    let configured = args.configured.databases().map_err(anyhow::Error::msg)?;
    let checked = match (&args.database, &configured) {
        (Some(db), Some(c)) => {
            if let Err(refusal) = request::check_database(db, &c.names, c.variable) {
                eprintln!("backupctl: {refusal}");
                return Ok(ExitCode::from(2));
            }
            ""
        }
        (Some(_), None) => {
            "; not checked against the configured databases (BACKUP_DATABASES and PGDATABASE are not set here): the dumper rejects an unknown name"
        }
        (None, _) => "",
    };
    let nats = common.nats_options().context("NATS settings")?;
    let shutdown = backup_core::shutdown::on_signals();
    let bus = crate::connect::connect(&nats, connect_timeout, &shutdown).await?;
    let (request_id, seq) = request::publish(&bus, args.database, args.tag, args.reason).await?;
    writeln!(
        std::io::stdout().lock(),
        "trigger {request_id} accepted (stream sequence {seq}){checked}"
    )?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    // Ctrl-C or SIGTERM stops the waiting, not the backup: the trigger is
    // already in the stream.
    let waiting = request::wait(&bus, &request_id, seq, args.timeout, |line| {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    });
    let result = tokio::select! {
        result = waiting => result,
        () = shutdown.cancelled() => {
            eprintln!("backupctl: interrupted; the backup goes on (see backupctl status)");
            return Ok(ExitCode::from(130));
        }
    };
    match result {
        Ok(WaitResult::Verified(_)) => Ok(ExitCode::SUCCESS),
        Ok(WaitResult::Failed(causes)) => {
            for cause in causes {
                eprintln!("backupctl: {cause}");
            }
            Ok(ExitCode::from(1))
        }
        Err(TriggerError::Timeout(after)) => {
            eprintln!(
                "backupctl: no outcome within {after:?}; the pipeline goes on (see backupctl status)"
            );
            Ok(ExitCode::from(3))
        }
        Err(error) => Err(error.into()),
    }
}
