//! Whether each service is alive, judged by its durable consumer on the
//! stream: a worker waiting for work keeps a pull request open, a busy one
//! holds an unacked message. A consumer without either is looked at a few
//! times before its service is called not running.

use async_nats::jetstream::consumer;
use backup_core::events::subject;
use futures::StreamExt;

/// The services whose consumers `status` inspects.
pub const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];

/// The consumers `status` reports on: every service's, where each dumper
/// has its own (`DUMPER_NAME`, a consumer on `backup.trigger`); `dumper`
/// stands for them when none exists yet, so a missing dumper shows.
pub(super) async fn service_consumers(
    stream: &async_nats::jetstream::stream::Stream,
) -> Vec<String> {
    let mut dumpers = Vec::new();
    let mut consumers = stream.consumers();
    while let Some(Ok(info)) = consumers.next().await {
        if info.config.filter_subject == subject::TRIGGER && info.config.durable_name.is_some() {
            dumpers.push(info.name);
        }
    }
    dumpers.sort();
    if dumpers.is_empty() {
        dumpers.push(SERVICES[0].to_owned());
    }
    dumpers
        .into_iter()
        .chain(SERVICES[1..].iter().map(|name| (*name).to_owned()))
        .collect()
}

/// Whether a worker is connected to a durable consumer: it has a pull
/// request open (waiting for work) or a message in hand (working).
pub fn worker_connected(info: &consumer::Info) -> bool {
    info.num_waiting > 0 || info.num_ack_pending > 0
}

/// Looks at a service's consumer until a worker shows (at most
/// [`CONSUMER_LOOKS`] times, [`LOOK_INTERVAL`] apart): between acking one
/// message and asking for the next, a running worker has neither a pull
/// request open nor a message in hand.
pub(super) async fn looked_at(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
) -> Result<consumer::Info, async_nats::jetstream::context::ConsumerInfoError> {
    let mut look = 1;
    loop {
        let info = stream.consumer_info(name).await?;
        if worker_connected(&info) || look >= CONSUMER_LOOKS {
            return Ok(info);
        }
        look += 1;
        tokio::time::sleep(LOOK_INTERVAL).await;
    }
}

/// How many times `status` looks at a consumer without a worker before it
/// says the service is not running.
const CONSUMER_LOOKS: u32 = 4;
const LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
