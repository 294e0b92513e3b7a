//! `backupctl trigger`: publish `backup.trigger` and, with `--wait`, follow
//! every backup it started through created, shipped and verified.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer;
use backup_core::bus::{Bus, STREAM};
use backup_core::events::{
    AnyEvent, DumpCreated, DumpFailed, DumpShipped, DumpStarted, DumpVerified, Event, Origin,
    TriggerRequest, subject,
};
use backup_core::names::{BackupId, DatabaseName, Tag};
use futures::StreamExt;
use rand::Rng;

/// How a waited-for trigger ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitResult {
    /// Every backup of the trigger was verified.
    Verified(Vec<String>),
    /// At least one failed; the causes, one line each.
    Failed(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(transparent)]
    Bus(#[from] backup_core::bus::BusError),
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("no outcome within {0:?}; the backup may still be running (see backupctl status)")]
    Timeout(Duration),
}

/// Publishes a trigger and returns its request id and stream sequence.
pub async fn publish(
    bus: &Bus,
    database: Option<DatabaseName>,
    tag: Option<Tag>,
    reason: Option<String>,
) -> Result<(BackupId, u64), TriggerError> {
    let request_id = BackupId::try_from(format!(
        "req-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::rng().random::<u32>()
    ))
    .expect("generated ids are valid");
    let request = TriggerRequest {
        database,
        origin: Origin {
            request_id: Some(request_id.clone()),
            tag,
            reason,
        },
    };
    bus.ensure_stream().await?;
    let seq = bus
        .publish(subject::TRIGGER, request_id.as_str(), &request)
        .await?;
    Ok((request_id, seq))
}

/// Follows the events of `request_id` from stream sequence `from_seq` until
/// every database of the trigger is verified or has failed for good.
/// Failures the pipeline retries by itself are reported and waited through.
/// `report` is called with one human line per stage event.
pub async fn wait(
    bus: &Bus,
    request_id: &BackupId,
    from_seq: u64,
    timeout: Duration,
    mut report: impl FnMut(&str),
) -> Result<WaitResult, TriggerError> {
    let stream = bus
        .jetstream()
        .get_stream(STREAM)
        .await
        .map_err(|e| TriggerError::JetStream(e.to_string()))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject::ALL_DUMP_EVENTS.into(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from_seq,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| TriggerError::JetStream(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| TriggerError::JetStream(e.to_string()))?;
    let mut batch: Option<Vec<DatabaseName>> = None;
    // Per database: Some(Ok(line)) verified, Some(Err(line)) failed for good.
    let mut done: BTreeMap<DatabaseName, Result<String, String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if batch
            .as_ref()
            .is_some_and(|batch| batch.iter().all(|db| done.contains_key(db)))
        {
            break;
        }
        let next = tokio::time::timeout_at(deadline, messages.next())
            .await
            .map_err(|_| TriggerError::Timeout(timeout))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| TriggerError::JetStream(e.to_string()))?;
        let Ok(any) = AnyEvent::decode(&message.payload) else {
            continue;
        };
        if any.origin.request_id.as_ref() != Some(request_id) {
            continue;
        }
        let db = any.header.database.clone();
        match message.subject.as_str() {
            subject::STARTED => {
                if let Ok(started) = DumpStarted::decode(&message.payload) {
                    report(&format!(
                        "{db}: dump started ({})",
                        started.header.backup_id
                    ));
                    batch.get_or_insert(started.batch);
                }
            }
            subject::CREATED => {
                if let Ok(e) = DumpCreated::decode(&message.payload) {
                    report(&format!(
                        "{db}: created {} ({} bytes, {} tables, {} rows) in {} ms",
                        e.artifact.artifact, e.artifact.size_bytes, e.tables, e.rows, e.duration_ms
                    ));
                }
            }
            subject::SHIPPED => {
                if let Ok(e) = DumpShipped::decode(&message.payload) {
                    report(&format!(
                        "{db}: shipped to {} in {} ms",
                        e.destination, e.duration_ms
                    ));
                }
            }
            subject::VERIFIED => {
                if let Ok(e) = DumpVerified::decode(&message.payload) {
                    let line = format!(
                        "{db}: verified {} ({} tables, {} rows) in {} ms",
                        e.artifact.artifact, e.tables, e.rows, e.duration_ms
                    );
                    report(&line);
                    done.insert(db, Ok(line));
                }
            }
            subject::FAILED => {
                if let Ok(e) = DumpFailed::decode(&message.payload) {
                    let line = format!(
                        "{db}: {} failed (attempt {}): {}",
                        e.stage, e.attempt, e.error
                    );
                    // A trigger refused outright has no dump.started.
                    batch.get_or_insert_with(|| vec![db.clone()]);
                    if e.will_retry {
                        // The pipeline retries by itself; the backup may still succeed.
                        report(&format!("{line} (retrying)"));
                    } else {
                        report(&line);
                        done.insert(db, Err(line));
                    }
                }
            }
            _ => {}
        }
    }
    let failures: Vec<String> = done.values().filter_map(|r| r.clone().err()).collect();
    if failures.is_empty() {
        Ok(WaitResult::Verified(
            done.into_values().filter_map(Result::ok).collect(),
        ))
    } else {
        Ok(WaitResult::Failed(failures))
    }
}
