//! `backupctl status`: the pipeline's state, read from the stream, as text
//! or one JSON document. Exit 0 when every service is alive and no stage is
//! failing, 1 otherwise. What is shown and how it is gathered is in
//! [`report`].

pub mod report;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::CommonArgs;

use crate::configured::{ConfiguredArgs, ScheduleArgs};

pub use report::{SERVICES, age, bytes_text, seconds_text, worker_connected};

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
    let status = report::collect(
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
