//! `backupctl status`: per database, the last verified backup and its age,
//! the stages failing since, backups in flight; and whether each service is
//! alive, judged by its durable consumer on the stream (a worker waiting for
//! work keeps a pull request open; a busy one holds an unacked message).

use std::collections::BTreeMap;

use async_nats::jetstream::consumer;
use backup_core::bus::{Bus, STREAM};
use backup_core::events::{AnyEvent, DumpFailed, DumpVerified, Event, subject};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

/// The services whose consumers `status` inspects.
pub const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];

#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseStatus {
    pub database: String,
    pub last_verified_artifact: Option<String>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub last_verified_size_bytes: Option<u64>,
    /// Stage → last error, for failures newer than the last verification.
    pub failing: BTreeMap<String, String>,
    /// Backups started and neither verified nor failed for good yet.
    pub in_flight: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    /// A worker is connected: it has a pull request open or a message in hand.
    pub alive: bool,
    pub pending: u64,
    pub working_on: usize,
    pub redelivered: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub databases: Vec<DatabaseStatus>,
    pub services: Vec<ServiceStatus>,
}

impl Status {
    /// Healthy when every service is alive and no database has a failing stage.
    pub fn healthy(&self) -> bool {
        self.services.iter().all(|s| s.alive) && self.databases.iter().all(|d| d.failing.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading the {STREAM} stream: {0}")]
pub struct StatusError(String);

fn err(e: impl std::fmt::Display) -> StatusError {
    StatusError(backup_core::one_line(&e.to_string()))
}

pub async fn collect(bus: &Bus) -> Result<Status, StatusError> {
    let js = bus.jetstream();
    let mut stream = js.get_stream(STREAM).await.map_err(err)?;
    let last_seq = stream.info().await.map_err(err)?.state.last_sequence;

    let mut databases: BTreeMap<String, DatabaseStatus> = BTreeMap::new();
    // backup id → database, for backups not finished yet.
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    if last_seq > 0 {
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject::ALL_DUMP_EVENTS.into(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut messages = reader.messages().await.map_err(err)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(err)?;
            let seq = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or(last_seq);
            if let Ok(any) = AnyEvent::decode(&message.payload) {
                let database = any.header.database.to_string();
                let backup_id = any.header.backup_id.to_string();
                let entry = databases
                    .entry(database.clone())
                    .or_insert_with(|| DatabaseStatus {
                        database: database.clone(),
                        ..Default::default()
                    });
                match message.subject.as_str() {
                    subject::STARTED => {
                        open.insert(backup_id, database);
                    }
                    subject::VERIFIED => {
                        if let Ok(v) = DumpVerified::decode(&message.payload) {
                            entry.last_verified_artifact = Some(v.artifact.artifact.to_string());
                            entry.last_verified_at = Some(v.header.occurred_at);
                            entry.last_verified_size_bytes = Some(v.artifact.size_bytes);
                            entry.failing.clear();
                        }
                        open.remove(&backup_id);
                    }
                    subject::FAILED => {
                        if let Ok(f) = DumpFailed::decode(&message.payload) {
                            entry.failing.insert(f.stage.to_string(), f.error.clone());
                            if !f.will_retry {
                                open.remove(&backup_id);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if seq >= last_seq {
                break;
            }
        }
    }
    for (backup_id, database) in open {
        if let Some(entry) = databases.get_mut(&database) {
            entry.in_flight.push(backup_id);
        }
    }

    let mut services = Vec::new();
    for name in SERVICES {
        let status = match stream.consumer_info(name).await {
            Ok(info) => ServiceStatus {
                service: name.into(),
                alive: worker_connected(&info),
                pending: info.num_pending,
                working_on: info.num_ack_pending,
                redelivered: info.num_redelivered,
            },
            Err(_) => ServiceStatus {
                service: name.into(),
                alive: false,
                pending: 0,
                working_on: 0,
                redelivered: 0,
            },
        };
        services.push(status);
    }
    Ok(Status {
        databases: databases.into_values().collect(),
        services,
    })
}

/// Whether a worker is connected to a durable consumer: it has a pull
/// request open (waiting for work) or a message in hand (working).
pub fn worker_connected(info: &consumer::Info) -> bool {
    info.num_waiting > 0 || info.num_ack_pending > 0
}

/// "3h 12m" style age for people.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - since).num_seconds().max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}
