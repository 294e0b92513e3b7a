//! `backupctl trigger`: publish `backup.trigger` and, with `--wait`, follow
//! every backup it started through created, shipped and verified.
//!
//! Which databases exist is the dumper's to know (BACKUP_DATABASES, or
//! PGDATABASE). When backupctl has the same variables in its environment it
//! checks `--database` against them and refuses an unknown name before
//! publishing anything ([`check_database`]); otherwise it says the name was
//! not checked, and the dumper rejects an unknown one (a `dump.failed` at
//! stage `trigger`: one alert, shown by `--wait` and by `backupctl status`
//! under "recent rejected triggers").
//!
//! While waiting, each stage event is one line, each failure the pipeline
//! retries by itself is one line, and a quiet stage gets a line every
//! [`QUIET_LINE_EVERY`] saying what is awaited and for how long (the shipper
//! retries a short outage without an event). A failure for good is not
//! printed here: it is the result, which the caller prints once.

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

/// A line while a stage is quiet this long, then again as long after.
pub const QUIET_LINE_EVERY: Duration = Duration::from_secs(15);

/// Why `--database` is refused before publishing: the configured databases
/// are known here and the name is not one of them.
pub fn check_database(
    database: &DatabaseName,
    configured: &[DatabaseName],
    variable: &str,
) -> Result<(), String> {
    if configured.contains(database) {
        return Ok(());
    }
    Err(format!(
        "database {database} is not configured for backup ({variable}: {}); nothing triggered",
        configured
            .iter()
            .map(DatabaseName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ))
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
    let seq = bus.publish_trigger(&request, request_id.as_str()).await?;
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
    // Per database: what it waits for next, and since when.
    let mut awaiting: BTreeMap<DatabaseName, (&'static str, tokio::time::Instant)> =
        BTreeMap::new();
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut quiet = tokio::time::interval_at(started + QUIET_LINE_EVERY, QUIET_LINE_EVERY);
    quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if batch
            .as_ref()
            .is_some_and(|batch| batch.iter().all(|db| done.contains_key(db)))
        {
            break;
        }
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, messages.next()) => {
                next.map_err(|_| TriggerError::Timeout(timeout))?
            }
            now = quiet.tick() => {
                if awaiting.is_empty() && batch.is_none() {
                    report(&format!(
                        "waiting for the dumper to take the trigger ({} so far)",
                        crate::status::seconds_text(millis(now - started))
                    ));
                }
                for (db, (what, since)) in &awaiting {
                    if now - *since >= QUIET_LINE_EVERY {
                        report(&format!(
                            "{db}: {what} ({} so far, no event yet)",
                            crate::status::seconds_text(millis(now - *since))
                        ));
                    }
                }
                continue;
            }
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| TriggerError::JetStream(e.to_string()))?;
        let Ok(any) = AnyEvent::decode(&message.payload) else {
            continue;
        };
        if any.origin.request_id.as_ref() != Some(request_id) {
            continue;
        }
        let db = any.header.database.clone();
        let now = tokio::time::Instant::now();
        match message.subject.as_str() {
            subject::STARTED => {
                awaiting.insert(db.clone(), ("dumping", now));
            }
            subject::CREATED => {
                awaiting.insert(db.clone(), ("shipping", now));
            }
            subject::SHIPPED => {
                awaiting.insert(db.clone(), ("verifying", now));
            }
            subject::VERIFIED => {
                awaiting.remove(&db);
            }
            _ => {}
        }
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
                        "{db}: created {} ({} dumped, {} tables, {} rows) in {}",
                        e.artifact.artifact,
                        crate::status::bytes_text(e.artifact.size_bytes),
                        e.tables,
                        e.rows,
                        crate::status::seconds_text(e.duration_ms)
                    ));
                }
            }
            subject::SHIPPED => {
                if let Ok(e) = DumpShipped::decode(&message.payload) {
                    report(&format!(
                        "{db}: shipped to {} ({} uploaded) in {}",
                        e.destination,
                        crate::status::bytes_text(e.artifact.size_bytes),
                        crate::status::seconds_text(e.duration_ms)
                    ));
                }
            }
            subject::VERIFIED => {
                if let Ok(e) = DumpVerified::decode(&message.payload) {
                    let line = format!(
                        "{db}: verified {} ({} read back and restored, {} tables, {} rows) in {}",
                        e.artifact.artifact,
                        crate::status::bytes_text(e.artifact.size_bytes),
                        e.tables,
                        e.rows,
                        crate::status::seconds_text(e.duration_ms)
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
                        // The result: printed once, by the caller.
                        awaiting.remove(&db);
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfigured_database_is_refused_naming_the_variable() {
        let name = |n: &str| DatabaseName::try_from(n.to_owned()).unwrap();
        let configured = [name("viatique")];
        assert!(check_database(&name("viatique"), &configured, "BACKUP_DATABASES").is_ok());
        assert_eq!(
            check_database(&name("viatique_ncc"), &configured, "BACKUP_DATABASES").unwrap_err(),
            "database viatique_ncc is not configured for backup (BACKUP_DATABASES: viatique); nothing triggered"
        );
    }
}
