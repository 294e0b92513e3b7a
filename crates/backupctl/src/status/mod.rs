//! `backupctl status`: the pipeline's state, read from the stream, as text
//! or one JSON document. Exit 0 when every service is alive and no stage is
//! failing, 1 otherwise.
//!
//! Per configured database: the last verified backup and its age, the
//! stages failing since, backups in flight, the recent backups with their
//! durations and the space its backups use on the remote; the dumper's
//! next scheduled run; triggers the dumper rejected lately (a mistyped name
//! is an alert once, never a lasting state); and whether each service is
//! alive, judged by its durable consumer on the stream.
//!
//! Everything comes from the stream: [`collect`] ([`stream`]) reads it,
//! [`events`] turns the events into the report ([`model`]), [`consumers`]
//! judges the services, and [`text`] renders it for people.

pub mod consumers;
pub mod events;
pub mod model;
pub mod stream;
pub mod text;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::CommonArgs;

use crate::configured::{ConfiguredArgs, ScheduleArgs};

pub use consumers::{SERVICES, worker_connected};
pub use events::{StoredEvent, build};
pub use model::{BackupRun, DatabaseStatus, RejectedTrigger, ServiceStatus, Status};
pub use stream::{StatusError, collect};
pub use text::{age, bytes_text, seconds_text};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One JSON document for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub configured: ConfiguredArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

pub async fn run(
    common: &CommonArgs,
    connect_timeout: Duration,
    args: StatusArgs,
) -> anyhow::Result<ExitCode> {
    let configured = args.configured.databases().map_err(anyhow::Error::msg)?;
    let zone = args.schedule.zone.zone().map_err(anyhow::Error::msg)?;
    let now = chrono::Utc::now();
    let next_run = args.schedule.next_run(now).map_err(anyhow::Error::msg)?;
    let nats = common.nats_options().context("NATS settings")?;
    let shutdown = backup_core::shutdown::on_signals();
    let bus = crate::connect::connect(&nats, connect_timeout, &shutdown).await?;
    let status = stream::collect(
        &bus,
        configured.as_ref().map(|c| c.names.as_slice()),
        next_run,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", status.to_text(now, zone))?;
    }
    Ok(if status.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
