//! Durable consumers of the `BACKUPS` stream, as their service left them:
//! waiting until one has done everything it was given is how a test knows
//! that a service is finished with its messages (and will publish nothing
//! more about them).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio::time::Instant;

use super::WAIT;

/// The durable consumer's state, or `None` while it (or the stream) does
/// not exist yet.
pub async fn consumer_info(js: &jetstream::Context, durable: &str) -> Option<consumer::Info> {
    let stream = js.get_stream("BACKUPS").await.ok()?;
    stream.consumer_info(durable).await.ok()
}

/// Waits (up to [`WAIT`]) until `durable` has nothing pending and nothing
/// unacknowledged: every message stored so far on its subject was handled.
pub async fn wait_idle(js: &jetstream::Context, durable: &str) -> consumer::Info {
    wait_idle_within(js, durable, WAIT).await
}

/// [`wait_idle`] with another deadline.
pub async fn wait_idle_within(
    js: &jetstream::Context,
    durable: &str,
    timeout: Duration,
) -> consumer::Info {
    wait_consumer_within(js, durable, timeout, "to go idle", |info| {
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await
}

/// Waits (up to [`WAIT`]) until `durable` acked every message up to the
/// stream sequence `sequence`.
pub async fn wait_acked(js: &jetstream::Context, durable: &str, sequence: u64) -> consumer::Info {
    wait_consumer(js, durable, &format!("to ack #{sequence}"), |info| {
        info.ack_floor.stream_sequence >= sequence && info.num_ack_pending == 0
    })
    .await
}

/// Waits (up to [`WAIT`]) until the state of `durable` satisfies `done`;
/// panics naming `what` with the last state seen.
pub async fn wait_consumer(
    js: &jetstream::Context,
    durable: &str,
    what: &str,
    done: impl FnMut(&consumer::Info) -> bool,
) -> consumer::Info {
    wait_consumer_within(js, durable, WAIT, what, done).await
}

/// [`wait_consumer`] with another deadline.
pub async fn wait_consumer_within(
    js: &jetstream::Context,
    durable: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&consumer::Info) -> bool,
) -> consumer::Info {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(info) = consumer_info(js, durable).await {
            if done(&info) {
                return info;
            }
            last = Some(info);
        }
        assert!(
            Instant::now() < deadline,
            "consumer {durable} did not come {what} within {timeout:?}; last state: {}",
            last.as_ref().map_or_else(
                || "no such consumer".to_owned(),
                |i| format!(
                    "pending {}, ack pending {}, ack floor #{}, delivered #{}",
                    i.num_pending,
                    i.num_ack_pending,
                    i.ack_floor.stream_sequence,
                    i.delivered.stream_sequence
                )
            )
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
