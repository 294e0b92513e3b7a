//! What `backupctl status` reports, as the JSON document `--json` prints:
//! per database, per backup run, rejected triggers and services, and when
//! the whole is healthy.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

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
}
