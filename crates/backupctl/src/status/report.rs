//! `backupctl status`: per configured database, the last verified backup
//! and its age, the stages failing since, backups in flight, the recent
//! backups with their durations and the space its backups use on the
//! remote; the dumper's next scheduled run; triggers the dumper rejected
//! lately (a mistyped name is an alert once, never a lasting state); and
//! whether each service is alive, judged by its durable consumer on the
//! stream (a worker waiting for work keeps a pull request open; a busy one
//! holds an unacked message).
//!
//! Everything comes from the stream; [`collect`] reads it and [`build`]
//! (pure, unit-tested) turns the events into the report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use async_nats::jetstream::consumer;
use backup_core::bus::{Bus, STREAM};
use backup_core::events::{
    AnyEvent, DumpCreated, DumpFailed, DumpPruned, DumpShipped, DumpVerified, Event, Stage, subject,
};
use backup_core::names::DatabaseName;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use serde::Serialize;

/// The services whose consumers `status` inspects.
pub const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];

/// Backups shown per database in the recent history.
pub const HISTORY: usize = 5;

/// How long a rejected trigger stays listed.
pub const REJECTED_FOR: TimeDelta = TimeDelta::days(7);

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
    /// The newest backups first, at most [`HISTORY`].
    pub recent: Vec<BackupRun>,
    /// Bytes of its artifacts on the remote after the last pruning run.
    pub remote_bytes: Option<u64>,
}

/// One backup's way through the stages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupRun {
    pub backup_id: String,
    /// When its first event was published.
    pub started_at: Option<DateTime<Utc>>,
    pub artifact: Option<String>,
    pub size_bytes: Option<u64>,
    pub dump_ms: Option<u64>,
    pub ship_ms: Option<u64>,
    pub verify_ms: Option<u64>,
    /// From the first event to `dump.verified`.
    pub total_ms: Option<u64>,
    /// `verified`, `failed at <stage>: <error>` or `in flight`.
    pub outcome: String,
    pub tag: Option<String>,
}

/// A trigger the dumper refused (a database it does not back up).
#[derive(Debug, Clone, Serialize)]
pub struct RejectedTrigger {
    pub database: String,
    pub at: DateTime<Utc>,
    pub error: String,
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
    /// Whether `databases` are the configured ones (BACKUP_DATABASES or
    /// PGDATABASE in backupctl's environment) rather than those seen in
    /// the stream.
    pub configured: bool,
    pub databases: Vec<DatabaseStatus>,
    /// The dumper's next scheduled run (BACKUP_SCHEDULE in BACKUP_TZ).
    pub next_run: Option<DateTime<Utc>>,
    /// Newest first, from the last [`REJECTED_FOR`].
    pub rejected_triggers: Vec<RejectedTrigger>,
    pub services: Vec<ServiceStatus>,
}

impl Status {
    /// Healthy when every service is alive and no database has a failing
    /// stage. Rejected triggers are not a state of the pipeline.
    pub fn healthy(&self) -> bool {
        self.services.iter().all(|s| s.alive) && self.databases.iter().all(|d| d.failing.is_empty())
    }

    /// The text `backupctl status` prints, times in `zone`.
    pub fn to_text(&self, now: DateTime<Utc>, zone: Tz) -> String {
        let mut out = String::new();
        if !self.configured {
            out.push_str(
                "(BACKUP_DATABASES and PGDATABASE are not set here: showing the databases seen in the stream)\n",
            );
        }
        for db in &self.databases {
            let last = match (&db.last_verified_artifact, db.last_verified_at) {
                (Some(artifact), Some(at)) => {
                    format!("last verified {artifact} ({} ago)", age(at, now))
                }
                _ => "never verified".to_owned(),
            };
            let _ = writeln!(out, "{}: {last}", db.database);
            if let Some(bytes) = db.remote_bytes {
                let _ = writeln!(out, "  on the remote: {}", bytes_text(bytes));
            }
            for (stage, error) in &db.failing {
                let _ = writeln!(out, "  FAILING at {stage}: {error}");
            }
            for backup in &db.in_flight {
                let _ = writeln!(out, "  in flight: {backup}");
            }
            for run in &db.recent {
                let _ = writeln!(out, "  {}", run.to_text(zone));
            }
        }
        match self.next_run {
            Some(at) => {
                let _ = writeln!(
                    out,
                    "next scheduled backup: {} (in {})",
                    crate::configured::local_time(at, zone),
                    age(now, at)
                );
            }
            None => out.push_str("next scheduled backup: none (BACKUP_SCHEDULE is off)\n"),
        }
        if !self.rejected_triggers.is_empty() {
            out.push_str(
                "recent rejected triggers (alerted once; not a failure of the pipeline):\n",
            );
            for t in &self.rejected_triggers {
                let _ = writeln!(
                    out,
                    "  {} {}: {}",
                    crate::configured::local_time(t.at, zone),
                    t.database,
                    t.error
                );
            }
        }
        for s in &self.services {
            let _ = writeln!(
                out,
                "service {:<9} {} (pending {}, working on {})",
                s.service,
                if s.alive { "alive" } else { "NOT RUNNING" },
                s.pending,
                s.working_on
            );
        }
        out
    }
}

impl BackupRun {
    /// `2026-12-04 02:00:03 CET  verified  12.3 MiB  dump 4.1s, ship 2.0s, verify 6.2s, total 13.0s`
    pub fn to_text(&self, zone: Tz) -> String {
        let mut line = match self.started_at {
            Some(at) => crate::configured::local_time(at, zone),
            None => "?".to_owned(),
        };
        let _ = write!(line, "  {}", self.outcome);
        if let Some(size) = self.size_bytes {
            let _ = write!(line, "  {}", bytes_text(size));
        }
        let steps: Vec<String> = [
            ("dump", self.dump_ms),
            ("ship", self.ship_ms),
            ("verify", self.verify_ms),
            ("total", self.total_ms),
        ]
        .iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name} {}", seconds_text(ms))))
        .collect();
        if !steps.is_empty() {
            let _ = write!(line, "  {}", steps.join(", "));
        }
        if let Some(tag) = &self.tag {
            let _ = write!(line, "  [{tag}]");
        }
        line
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading the {STREAM} stream: {0}")]
pub struct StatusError(String);

fn err(e: impl std::fmt::Display) -> StatusError {
    StatusError(backup_core::one_line(&e.to_string()))
}

/// One stored event: its subject and payload.
pub type StoredEvent = (String, Vec<u8>);

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
    for name in SERVICES {
        let status = match looked_at(&stream, name).await {
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
    let mut status = build(&events, configured, Utc::now());
    status.next_run = next_run;
    status.services = services;
    Ok(status)
}

/// The report from the stored events, oldest first. `configured`: the
/// databases the dumper backs up, when known; otherwise every database
/// that had a backup start (a rejected trigger alone does not make one).
pub fn build(
    events: &[StoredEvent],
    configured: Option<&[DatabaseName]>,
    now: DateTime<Utc>,
) -> Status {
    let mut databases: BTreeMap<String, DatabaseStatus> = BTreeMap::new();
    let mut runs: BTreeMap<String, (String, BackupRun)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut rejected: Vec<RejectedTrigger> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();

    for (subject, payload) in events {
        let Ok(any) = AnyEvent::decode(payload) else {
            continue;
        };
        let database = any.header.database.to_string();
        let backup_id = any.header.backup_id.to_string();
        let at = any.header.occurred_at;
        if subject.as_str() == subject::FAILED
            && let Ok(f) = DumpFailed::decode(payload)
            && f.stage == Stage::Trigger
        {
            rejected.push(RejectedTrigger {
                database,
                at,
                error: f.error,
            });
            continue;
        }
        seen.insert(database.clone());
        let entry = databases
            .entry(database.clone())
            .or_insert_with(|| DatabaseStatus {
                database: database.clone(),
                ..Default::default()
            });
        if subject.as_str() == subject::PRUNED {
            if let Ok(p) = DumpPruned::decode(payload)
                && !p.dry_run
                && p.kept_bytes.is_some()
            {
                entry.remote_bytes = p.kept_bytes;
            }
            continue;
        }
        if subject.as_str() == subject::SKIPPED {
            continue;
        }
        let verified = if subject.as_str() == subject::VERIFIED {
            match DumpVerified::decode(payload) {
                Ok(v) => {
                    entry.last_verified_artifact = Some(v.artifact.artifact.to_string());
                    entry.last_verified_at = Some(v.header.occurred_at);
                    entry.last_verified_size_bytes = Some(v.artifact.size_bytes);
                    entry.failing.clear();
                    if v.reverification {
                        // A re-check of an older backup, not a run of its own.
                        continue;
                    }
                    Some(v)
                }
                Err(_) => continue,
            }
        } else {
            None
        };
        let run = &mut runs
            .entry(backup_id.clone())
            .or_insert_with(|| {
                order.push(backup_id.clone());
                (
                    database.clone(),
                    BackupRun {
                        backup_id: backup_id.clone(),
                        started_at: Some(at),
                        outcome: "in flight".into(),
                        tag: any.origin.tag.as_ref().map(ToString::to_string),
                        ..Default::default()
                    },
                )
            })
            .1;
        match subject.as_str() {
            subject::CREATED => {
                if let Ok(e) = DumpCreated::decode(payload) {
                    run.artifact = Some(e.artifact.artifact.to_string());
                    run.size_bytes = Some(e.artifact.size_bytes);
                    run.dump_ms = Some(e.duration_ms);
                }
            }
            subject::SHIPPED => {
                if let Ok(e) = DumpShipped::decode(payload) {
                    run.ship_ms = Some(e.duration_ms);
                }
            }
            subject::VERIFIED => {
                if let Some(v) = verified {
                    run.verify_ms = Some(v.duration_ms);
                    run.artifact = Some(v.artifact.artifact.to_string());
                    run.size_bytes = Some(v.artifact.size_bytes);
                    run.total_ms = run.started_at.map(|s| {
                        u64::try_from((v.header.occurred_at - s).num_milliseconds()).unwrap_or(0)
                    });
                    run.outcome = "verified".into();
                }
            }
            subject::FAILED => {
                if let Ok(f) = DumpFailed::decode(payload) {
                    entry.failing.insert(f.stage.to_string(), f.error.clone());
                    if !f.will_retry {
                        run.outcome = format!(
                            "failed at {}: {}",
                            f.stage,
                            backup_core::clip(&f.error, 120)
                        );
                    }
                }
            }
            _ => {}
        }
    }

    let wanted: Vec<String> = match configured {
        Some(names) => names.iter().map(ToString::to_string).collect(),
        None => seen.iter().cloned().collect(),
    };
    let mut per_db: BTreeMap<String, Vec<BackupRun>> = BTreeMap::new();
    for id in order.iter().rev() {
        if let Some((db, run)) = runs.remove(id) {
            per_db.entry(db).or_default().push(run);
        }
    }
    let databases = wanted
        .into_iter()
        .map(|name| {
            let mut status = databases.remove(&name).unwrap_or_else(|| DatabaseStatus {
                database: name.clone(),
                ..Default::default()
            });
            let runs = per_db.remove(&name).unwrap_or_default();
            status.in_flight = runs
                .iter()
                .filter(|r| r.outcome == "in flight")
                .map(|r| r.backup_id.clone())
                .collect();
            status.recent = runs.into_iter().take(HISTORY).collect();
            status
        })
        .collect();
    rejected.retain(|r| now - r.at <= REJECTED_FOR);
    rejected.reverse();
    Status {
        configured: configured.is_some(),
        databases,
        next_run: None,
        rejected_triggers: rejected,
        services: Vec::new(),
    }
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
async fn looked_at(
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

/// `1.4 MiB`: the digest's units, so both read alike.
pub fn bytes_text(bytes: u64) -> String {
    backup_core::human::human_bytes(bytes)
}

/// `4.1s`, `2m 03s`.
pub fn seconds_text(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, ms % 60_000 / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(minutes: i64) -> DateTime<Utc> {
        "2026-12-01T01:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(minutes)
    }

    // By value: callers write `json!` literals inline.
    #[allow(clippy::needless_pass_by_value)]
    fn event(subject: &str, value: serde_json::Value) -> StoredEvent {
        (subject.to_owned(), serde_json::to_vec(&value).unwrap())
    }

    fn backup(db: &str, id: &str, start: i64) -> Vec<StoredEvent> {
        let artifact = format!("{db}_20261201_0{start}0000.sql.gz");
        let at = |minutes: i64| {
            json!({"version": 1, "backup_id": id, "database": db, "occurred_at": t(start + minutes),
                   "artifact": artifact, "size_bytes": 1_500_000, "sha256": "ab".repeat(32)})
        };
        let with = |mut base: serde_json::Value, extra: serde_json::Value| {
            for (k, v) in extra.as_object().unwrap() {
                base[k] = v.clone();
            }
            base
        };
        vec![
            event(
                "dump.started",
                json!({"version": 1, "backup_id": id, "database": db, "occurred_at": t(start), "batch": [db]}),
            ),
            event(
                "dump.created",
                with(at(1), json!({"duration_ms": 4100, "tables": 3, "rows": 10})),
            ),
            event(
                "dump.shipped",
                with(at(2), json!({"destination": "sftp", "duration_ms": 2000})),
            ),
            event(
                "dump.verified",
                with(
                    at(3),
                    json!({"checks": [], "tables": 3, "rows": 10, "duration_ms": 6200}),
                ),
            ),
        ]
    }

    fn rejected(db: &str, at: DateTime<Utc>) -> StoredEvent {
        event(
            "dump.failed",
            json!({"version": 1, "backup_id": format!("{db}-trigger-1"), "database": db,
                   "occurred_at": at, "stage": "trigger",
                   "error": format!("database {db} is not configured for backup (BACKUP_DATABASES: viatique)"),
                   "attempt": 1, "will_retry": false}),
        )
    }

    /// Issue 16: one mistyped trigger made status FAILING for 400 days.
    #[test]
    fn a_rejected_trigger_is_listed_recently_and_never_fails_status() {
        let mut events = backup("viatique", "viatique-1", 0);
        events.push(rejected("viatique_ncc", t(10)));
        let configured = [DatabaseName::try_from("viatique".to_owned()).unwrap()];
        for configured in [Some(&configured[..]), None] {
            let mut status = build(&events, configured, t(60));
            status.services = vec![ServiceStatus {
                service: "dumper".into(),
                alive: true,
                pending: 0,
                working_on: 0,
                redelivered: 0,
            }];
            assert!(status.healthy(), "{status:?}");
            let names: Vec<&str> = status
                .databases
                .iter()
                .map(|d| d.database.as_str())
                .collect();
            assert_eq!(names, ["viatique"]);
            assert_eq!(status.rejected_triggers.len(), 1);
            let text = status.to_text(t(60), chrono_tz::UTC);
            assert!(text.contains("recent rejected triggers"), "{text}");
            assert!(!text.contains("FAILING"), "{text}");
        }
        // After a week it is no longer listed.
        let status = build(&events, None, t(10) + REJECTED_FOR + TimeDelta::minutes(1));
        assert!(status.rejected_triggers.is_empty());
    }

    #[test]
    fn a_configured_database_without_events_is_listed_as_never_verified() {
        let configured = [
            DatabaseName::try_from("viatique".to_owned()).unwrap(),
            DatabaseName::try_from("other".to_owned()).unwrap(),
        ];
        let status = build(
            &backup("viatique", "viatique-1", 0),
            Some(&configured),
            t(60),
        );
        let text = status.to_text(t(60), chrono_tz::UTC);
        assert!(text.contains("other: never verified"), "{text}");
    }

    #[test]
    fn history_has_durations_sizes_and_local_times_and_space_on_the_remote() {
        let mut events = backup("viatique", "viatique-1", 0);
        events.extend(backup("viatique", "viatique-2", 5));
        events.push(event(
            "dump.failed",
            json!({"version": 1, "backup_id": "viatique-3", "database": "viatique",
                   "occurred_at": t(9), "stage": "ship", "error": "connection refused",
                   "attempt": 1, "will_retry": true}),
        ));
        events.push(event(
            "dump.pruned",
            json!({"version": 1, "backup_id": "prune-1", "database": "viatique",
                   "occurred_at": t(8), "deleted": [], "kept": [], "kept_bytes": 3_000_000,
                   "dry_run": false}),
        ));
        let mut status = build(&events, None, t(60));
        status.next_run = Some(t(24 * 60));
        let db = &status.databases[0];
        assert_eq!(db.recent.len(), 3);
        assert_eq!(db.recent[0].backup_id, "viatique-3");
        assert_eq!(db.in_flight, ["viatique-3"]);
        assert_eq!(db.remote_bytes, Some(3_000_000));
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let text = status.to_text(t(60), paris);
        assert!(
            text.contains(
                "2026-12-01 02:05:00 CET  verified  1.4 MiB  dump 4.1s, ship 2.0s, verify 6.2s, total 3m 00s"
            ),
            "{text}"
        );
        assert!(text.contains("on the remote: 2.9 MiB"), "{text}");
        assert!(
            text.contains("FAILING at ship: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("next scheduled backup: 2026-12-02 02:00:00 CET (in 23h 0m)"),
            "{text}"
        );
    }
}
