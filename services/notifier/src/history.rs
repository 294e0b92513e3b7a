//! Rebuilds the notifier's memory from the `BACKUPS` stream at start-up, so
//! a restart neither repeats alerts already sent nor forgets when each
//! database last verified (the dead man's switch needs no state of its own),
//! nor the sizes and durations the digest's trends compare, nor the
//! `/metrics` gauges (last success and failure per stage, durations, sizes).
//!
//! Events the notifier's durable consumer already acked are replayed
//! silently through [`Incidents`]; later ones will be delivered by the
//! consumer, and only their verification times are noted now so the stale
//! check does not fire on a backlog. The digest's [`Ledger`] takes every
//! event, acked or not: it counts each fact once however often it is read.
//! Reading is best effort: if the stream
//! cannot be read, the notifier starts with an empty memory (at worst one
//! repeated alert) rather than not at all.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use backup_core::bus::{Bus, BusError};
use backup_core::events::subject;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::Message;
use crate::digest::Ledger;
use crate::incidents::Incidents;

fn js_error(e: impl std::fmt::Display) -> BusError {
    BusError::JetStream(backup_core::one_line(&e.to_string()))
}

fn to_chrono(unix_seconds: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(unix_seconds, 0)
}

/// What the replay found, for the start-up log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replayed {
    pub acked_events: u64,
    pub pending_events: u64,
}

/// Builds the incidents with `make(first event time in the stream)` and
/// replays the stream into them and into a new digest ledger.
pub async fn rebuild(
    bus: &Bus,
    durable: &str,
    make: impl FnOnce(Option<DateTime<Utc>>) -> Incidents,
) -> Result<(Incidents, Ledger, Replayed), BusError> {
    let mut stream = bus.ensure_stream().await?;
    let state = stream.info().await.map_err(js_error)?.state.clone();
    let first = (state.messages > 0)
        .then(|| to_chrono(state.first_timestamp.unix_timestamp()))
        .flatten();
    let mut incidents = make(first);
    let mut ledger = Ledger::default();
    let mut replayed = Replayed::default();
    if state.messages == 0 {
        return Ok((incidents, ledger, replayed));
    }
    let last_sequence = state.last_sequence;
    let ack_floor = match stream.get_consumer::<consumer::pull::Config>(durable).await {
        Ok(mut existing) => {
            existing
                .info()
                .await
                .map_err(js_error)?
                .ack_floor
                .stream_sequence
        }
        Err(_) => 0,
    };
    let reader = stream
        .create_consumer(consumer::pull::Config {
            description: Some("notifier start-up replay".into()),
            filter_subject: subject::ALL_DUMP_EVENTS.to_owned(),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(js_error)?;
    if reader.cached_info().num_pending == 0 {
        return Ok((incidents, ledger, replayed));
    }
    let mut messages = reader.messages().await.map_err(js_error)?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => return Err(js_error(error)),
            // Nothing more within the filter (the tail may be triggers).
            Ok(None) | Err(_) => break,
        };
        let Ok(info) = message.info() else { continue };
        let sequence = info.stream_sequence;
        let last = sequence >= last_sequence || info.pending == 0;
        // Later events update the metrics when the consumer delivers them.
        if sequence <= ack_floor {
            bus.health()
                .remember_event(message.subject.as_str(), &message.payload);
        }
        // A dump.failed that does not decode was terminated as poison;
        // nothing to remember of it.
        let Ok(event) = Message::decode(message.subject.as_str(), &message.payload) else {
            if last {
                break;
            }
            continue;
        };
        ledger.record(&event);
        if sequence <= ack_floor {
            replayed.acked_events += 1;
            match event {
                Message::Failed(failure) => {
                    let _ = incidents.on_failure(&failure, failure.header.occurred_at);
                }
                Message::Verified(verified) => {
                    let _ = incidents.on_verified(&verified, verified.header.occurred_at);
                }
                Message::Pruned(pruned) => incidents.on_pruned(&pruned),
                _ => {}
            }
        } else {
            replayed.pending_events += 1;
            if let Message::Verified(verified) = event {
                incidents.note_verified(
                    &verified.header.database,
                    verified.artifact.artifact.taken_at(),
                );
            }
        }
        if last {
            break;
        }
    }
    Ok((incidents, ledger, replayed))
}
