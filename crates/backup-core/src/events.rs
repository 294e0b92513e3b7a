//! The event contract (schema version 1): subjects and payloads as serde
//! types. Unknown fields are accepted so newer producers can add to the
//! contract; what is read is validated strictly (ids, names, versions).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::names::{ArtifactName, BackupId, DatabaseName, Sha256Hex, Tag};

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// NATS subjects of the pipeline, all captured by the `BACKUPS` stream.
pub mod subject {
    pub const TRIGGER: &str = "backup.trigger";
    pub const STARTED: &str = "dump.started";
    pub const CREATED: &str = "dump.created";
    pub const SHIPPED: &str = "dump.shipped";
    pub const VERIFIED: &str = "dump.verified";
    pub const PRUNED: &str = "dump.pruned";
    pub const FAILED: &str = "dump.failed";
    /// A scheduled run found the previous dump of the database still going.
    pub const SKIPPED: &str = "dump.skipped";
    /// Every `dump.*` event, for observers such as the notifier and backupctl.
    pub const ALL_DUMP_EVENTS: &str = "dump.>";
}

/// The stage a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Trigger,
    Dump,
    Ship,
    Verify,
    Prune,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Trigger => "trigger",
            Stage::Dump => "dump",
            Stage::Ship => "ship",
            Stage::Verify => "verify",
            Stage::Prune => "prune",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload was refused. The message is what ends up in `dump.failed`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    #[error("payload must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("invalid payload: {0}")]
    Invalid(String),
    #[error("schema version {0} is not supported (this build reads 1 to {SCHEMA_VERSION})")]
    Version(u32),
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventHeader {
    pub version: u32,
    pub backup_id: BackupId,
    pub database: DatabaseName,
    pub occurred_at: DateTime<Utc>,
}

impl EventHeader {
    pub fn now(backup_id: BackupId, database: DatabaseName) -> Self {
        Self {
            version: SCHEMA_VERSION,
            backup_id,
            database,
            occurred_at: Utc::now(),
        }
    }
}

/// What the trigger asked for, carried through every later event so the
/// notifier, backupctl and the pruner can see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// Correlates a trigger with the backups it started (`backupctl --wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<BackupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Payload of `backup.trigger`. Empty payload: every configured database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseName>,
    #[serde(flatten)]
    pub origin: Origin,
}

impl TriggerRequest {
    /// Parses a trigger. An empty (or blank) payload is a valid request for
    /// every database; anything else must be a JSON object.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let request: Self = decode_object(payload)?;
        if let Some(reason) = &request.origin.reason
            && (reason.chars().count() > 500 || reason.chars().any(char::is_control))
        {
            return Err(DecodeError::Invalid(
                "reason must be one line of at most 500 characters".into(),
            ));
        }
        Ok(request)
    }
}

/// The artifact fields shared by `dump.created`, `dump.shipped` and
/// `dump.verified`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub artifact: ArtifactName,
    pub size_bytes: u64,
    pub sha256: Sha256Hex,
}

/// `dump.started`: the dumper accepted a trigger and will dump `database`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpStarted {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    /// Every database this trigger covers, so a waiter knows when it is done.
    pub batch: Vec<DatabaseName>,
}

/// `dump.created`: an artifact and its manifest are complete in the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpCreated {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub artifact: ArtifactInfo,
    pub duration_ms: u64,
    pub tables: u64,
    pub rows: u64,
    /// The watchdog limits the dump ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StageLimits>,
}

/// `dump.shipped`: the artifact and its manifest are on the remote under
/// their final names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpShipped {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub artifact: ArtifactInfo,
    /// Where it went, without credentials: `sftp://user@host:port/dir`.
    pub destination: String,
    /// Every destination that has it (the one above first), when the
    /// shipper copies to several (3-2-1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    pub duration_ms: u64,
    /// The watchdog limits the upload ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StageLimits>,
}

/// `dump.verified`: the remote copy was read back, checksummed,
/// decompressed and restored into a scratch database with matching rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpVerified {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub artifact: ArtifactInfo,
    pub checks: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    pub duration_ms: u64,
    /// Milliseconds per verification step (`download`, `restore`,
    /// `row_counts`, ...); steps may overlap.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub steps_ms: std::collections::BTreeMap<String, u64>,
    /// What the restore deliberately did not apply (ownership, privileges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// A periodic re-verification of an older backup, not the first one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reverification: bool,
    /// The watchdog limits download and restore ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StageLimits>,
}

/// `dump.pruned`: retention ran for one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpPruned {
    #[serde(flatten)]
    pub header: EventHeader,
    pub deleted: Vec<ArtifactName>,
    pub kept: Vec<ArtifactName>,
    /// Why each kept artifact was kept (rule names), by artifact name.
    #[serde(default)]
    pub kept_reasons: std::collections::BTreeMap<String, Vec<String>>,
    /// Bytes of the kept artifacts on the remote after this run (sidecars
    /// not counted): what the daily digest reports as space used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_bytes: Option<u64>,
    pub dry_run: bool,
}

/// `dump.failed`: a stage failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpFailed {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    pub stage: Stage,
    /// One line, human readable.
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactName>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Whether the pipeline will try again by itself.
    pub will_retry: bool,
    /// Set when the watchdog aborted a step that hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortedStep>,
}

/// The watchdog limits of a stage, in seconds, as events carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLimits {
    pub stall_after_s: u64,
    pub deadline_s: u64,
}

/// Which step the watchdog aborted, why, and how far it had got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedStep {
    /// `dump`, `upload`, `download`, `restore`, ...
    pub step: String,
    /// `stalled` or `deadline`.
    pub reason: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub limits: StageLimits,
}

impl AbortedStep {
    pub fn new(aborted: &crate::watchdog::Aborted, limits: &crate::watchdog::Limits) -> Self {
        Self {
            step: aborted.step().to_owned(),
            reason: match aborted {
                crate::watchdog::Aborted::Stalled { .. } => "stalled",
                crate::watchdog::Aborted::DeadlineExceeded { .. } => "deadline",
            }
            .to_owned(),
            bytes: aborted.bytes(),
            limits: limits.for_event(),
        }
    }
}

/// `dump.skipped`: a scheduled run of a database did not start because the
/// previous dump of it is still running. Not a failure by itself, but a
/// sign that dumps take longer than the schedule allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpSkipped {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    /// Why the run did not start, one line. Not `reason`: that name is the
    /// trigger's own (flattened from `origin`).
    pub cause: String,
    /// The backup still in progress.
    pub running_backup_id: BackupId,
    pub running_since: DateTime<Utc>,
}

/// The header of any event, for code that only needs to route or correlate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyEvent {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
}

/// Types that are decoded from the bus and carry the common header.
pub trait Event: Serialize + DeserializeOwned {
    fn header(&self) -> &EventHeader;

    /// Decodes and validates one payload.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = decode_object(payload)?;
        let version = event.header().version;
        if version == 0 || version > SCHEMA_VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(event)
    }
}

macro_rules! impl_event {
    ($($ty:ty),*) => {$(
        impl Event for $ty {
            fn header(&self) -> &EventHeader {
                &self.header
            }
        }
    )*};
}
impl_event!(
    DumpStarted,
    DumpCreated,
    DumpShipped,
    DumpVerified,
    DumpPruned,
    DumpFailed,
    DumpSkipped,
    AnyEvent
);

fn decode_object<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::Json(crate::one_line(&e.to_string())))?;
    let kind = match &value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Null => Some("null"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Array(_) => Some("an array"),
    };
    if let Some(kind) = kind {
        return Err(DecodeError::NotAnObject(kind));
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid(crate::one_line(&e.to_string())))
}

/// Best-effort correlation for a payload that failed to decode, so its
/// `dump.failed` still names the database and backup when they are legible.
pub fn salvage_ids(payload: &[u8]) -> (Option<DatabaseName>, Option<BackupId>) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(payload)
    else {
        return (None, None);
    };
    let field = |name: &str| map.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    (
        field("database").and_then(|s| DatabaseName::try_from(s).ok()),
        field("backup_id").and_then(|s| BackupId::try_from(s).ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_trigger_means_every_database() {
        assert_eq!(
            TriggerRequest::decode(b"").unwrap(),
            TriggerRequest::default()
        );
        assert_eq!(
            TriggerRequest::decode(b" \n").unwrap(),
            TriggerRequest::default()
        );
        assert_eq!(
            TriggerRequest::decode(b"{}").unwrap(),
            TriggerRequest::default()
        );
    }

    #[test]
    fn trigger_fields_are_validated() {
        let t = TriggerRequest::decode(
            br#"{"database":"viatique","tag":"pre-deploy","reason":"release 1.2","extra":1}"#,
        )
        .unwrap();
        assert_eq!(t.database.unwrap().as_str(), "viatique");
        assert_eq!(t.origin.tag.unwrap().as_str(), "pre-deploy");
        for bad in [
            &br#"[1]"#[..],
            br#""viatique""#,
            br#"{"database":"x; DROP TABLE y"}"#,
            br#"{"database":42}"#,
            br#"{"tag":"../../etc"}"#,
            br#"{"reason":"a\nb"}"#,
            b"{not json",
        ] {
            let err = TriggerRequest::decode(bad).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn events_round_trip_and_ignore_unknown_fields() {
        let header = EventHeader::now("db-1".parse().unwrap(), "db".parse().unwrap());
        let failed = DumpFailed {
            header,
            origin: Origin::default(),
            stage: Stage::Ship,
            error: "connection refused".into(),
            artifact: None,
            attempt: 1,
            will_retry: true,
            aborted: None,
        };
        let mut value = serde_json::to_value(&failed).unwrap();
        assert_eq!(value["stage"], "ship");
        assert_eq!(value["version"], 1);
        value["future_field"] = serde_json::json!({"x": 1});
        let back = DumpFailed::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(back, failed);
    }

    #[test]
    fn newer_schema_versions_are_refused() {
        let payload = br#"{"version":2,"backup_id":"a","database":"db","occurred_at":"2026-01-01T00:00:00Z"}"#;
        assert!(matches!(
            AnyEvent::decode(payload),
            Err(DecodeError::Version(2))
        ));
    }
}
