//! The CLI's NATS connection: unlike the services, which wait for NATS
//! forever, a command gives up after `--connect-timeout` (exit 2). Like
//! them it takes any server of a `NATS_URL` seed list that answers.

use std::time::Duration;

use anyhow::Context;
use backup_core::bus::{Bus, NatsOptions};
use backup_core::shutdown::CancellationToken;

/// Connects as `backupctl`, or says where NATS could not be reached.
pub async fn connect(
    nats: &NatsOptions,
    within: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Bus> {
    match tokio::time::timeout(within, Bus::connect(nats, "backupctl", shutdown)).await {
        Ok(bus) => bus.context("NATS"),
        Err(_) => anyhow::bail!(
            "NATS is unreachable at {} (gave up after {within:?})",
            nats.shown_url()
        ),
    }
}
