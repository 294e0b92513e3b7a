//! Reading the stream for `status`: every stored `dump.*` event, oldest
//! first, and the services' consumers.

use async_nats::jetstream::consumer;
use backup_core::bus::{Bus, STREAM};
use backup_core::events::subject;
use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::consumers::{looked_at, service_consumers, worker_connected};
use super::events::{StoredEvent, build};
use super::model::{ServiceStatus, Status};

#[derive(Debug, thiserror::Error)]
#[error("reading the {STREAM} stream: {0}")]
pub struct StatusError(String);

fn err(e: impl std::fmt::Display) -> StatusError {
    StatusError(backup_core::one_line(&e.to_string()))
}

/// Reads every `dump.*` event and the services' consumers.
pub async fn collect(
    bus: &Bus,
    configured: Option<&[DatabaseName]>,
    next_run: Option<DateTime<Utc>>,
) -> Result<Status, StatusError> {
    let js = bus.jetstream();
    let mut stream = js.get_stream(STREAM).await.map_err(err)?;
    let last_seq = stream.info().await.map_err(err)?.state.last_sequence;

    let mut events: Vec<StoredEvent> = Vec::new();
    if last_seq > 0 {
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject::ALL_DUMP_EVENTS.into(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        if reader.cached_info().num_pending > 0 {
            let mut messages = reader.messages().await.map_err(err)?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(err)?;
                let (seq, pending) = message
                    .info()
                    .map(|i| (i.stream_sequence, i.pending))
                    .unwrap_or((last_seq, 0));
                events.push((message.subject.to_string(), message.payload.to_vec()));
                if seq >= last_seq || pending == 0 {
                    break;
                }
            }
        }
    }

    let mut services = Vec::new();
    for name in service_consumers(&stream).await {
        let status = match looked_at(&stream, &name).await {
            Ok(info) => ServiceStatus {
                service: name.clone(),
                alive: worker_connected(&info),
                pending: info.num_pending,
                working_on: info.num_ack_pending,
                redelivered: info.num_redelivered,
            },
            Err(_) => ServiceStatus {
                service: name,
                alive: false,
                pending: 0,
                working_on: 0,
                redelivered: 0,
            },
        };
        services.push(status);
    }
    let mut status = build(&events, configured, Utc::now());
    status.next_run = next_run;
    status.services = services;
    Ok(status)
}
