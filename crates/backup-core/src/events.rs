//! The event contract (schema version 1): subjects and payloads as serde
//! types. Unknown fields are accepted so newer producers can add to the
//! contract; what is read is validated strictly (ids, names, versions).
//!
//! The contract enforces itself: every event a stage publishes
//! ([`StageEvent`]) knows its subject and derives its own `Nats-Msg-Id`, so
//! a stage that publishes the same news again (a redelivered message, a
//! restart) publishes the same id and JetStream keeps one copy. The next
//! event of a backup takes its common fields from the one before
//! ([`EventHeader::next`], [`DumpFailed::following`]), and the rules that
//! hold across fields (an artifact belongs to its event's database) are
//! checked when a stage decodes what it consumes ([`Event::check`]).

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
    /// The artifact's `.partial` is open in the spool and growing.
    pub const WRITING: &str = "dump.writing";
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
    /// The header of the first event about `backup_id` that this stage
    /// publishes from facts of its own (a trigger, a listing, a record).
    pub fn now(backup_id: BackupId, database: DatabaseName) -> Self {
        Self {
            version: SCHEMA_VERSION,
            backup_id,
            database,
            occurred_at: Utc::now(),
        }
    }

    /// The header of the event that follows this one: the same backup of
    /// the same database, written by this build, now.
    pub fn next(&self) -> Self {
        Self::now(self.backup_id.clone(), self.database.clone())
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

impl ArtifactInfo {
    /// Refuses an artifact named after another database than the event's:
    /// a stage would otherwise read or write another database's files.
    pub fn check_belongs_to(&self, database: &DatabaseName) -> Result<(), DecodeError> {
        if self.artifact.database() == database {
            Ok(())
        } else {
            Err(DecodeError::Invalid(format!(
                "artifact {} does not belong to database {database}",
                self.artifact
            )))
        }
    }
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

/// `dump.writing`: the dumper has opened `<artifact>.partial` in the spool
/// and is writing it; `dump.created` (complete, renamed) or `dump.failed`
/// (the `.partial` removed) follows. A shipper may follow the growing file
/// and upload while the dump runs; nothing else depends on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpWriting {
    #[serde(flatten)]
    pub header: EventHeader,
    #[serde(flatten)]
    pub origin: Origin,
    /// The final name; the file being written is this name plus `.partial`.
    pub artifact: ArtifactName,
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
    /// Where it went, without credentials: the first destination,
    /// `sftp://user@host:port/dir` or `s3://bucket/prefix at host`.
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
    /// The copies proven, one per destination, in the verifier's order of
    /// destinations: the one restored and the others read back whole
    /// against the manifest's size and sha256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyProven>,
    /// The copies found missing, wrong or unreadable. They do not condemn
    /// the backup (the restored copy proved it) but the copy is behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies_failed: Vec<CopyFailed>,
}

/// How a copy of a verified backup was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proof {
    /// Restored into a scratch database and checked.
    Restored,
    /// Read back whole: the manifest's size and sha256, byte for byte.
    Checksum,
}

/// One destination's copy proven by a `dump.verified`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProven {
    /// The destination's label (`sftp`, `sftp2`).
    pub label: String,
    /// As `dump.shipped` describes destinations.
    pub destination: String,
    pub proof: Proof,
}

/// One destination's copy a `dump.verified` could not prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFailed {
    pub label: String,
    pub destination: String,
    /// One line: what was missing or wrong, or why it could not be read.
    pub error: String,
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
    /// The destination this run pruned, as `dump.shipped` describes
    /// destinations; one `dump.pruned` per database and destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The label of the destination when it is not the first one; not on
    /// the wire, it keeps the runs of one backup on several destinations
    /// apart in [`DumpPruned::message_id`](StageEvent::message_id).
    #[serde(skip)]
    pub dedup_label: Option<String>,
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
    /// The shipper's: the destination that failed, as `dump.shipped`
    /// describes destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Which failures of the backup count as the same news; not on the
    /// wire, it decides [`DumpFailed::message_id`](StageEvent::message_id).
    #[serde(skip)]
    pub dedup: FailureDedup,
}

/// Which failures of one backup JetStream keeps apart, through the message
/// id of their `dump.failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FailureDedup {
    /// One per stage and delivery attempt,
    /// `<backup_id>:failed:<stage>:<attempt>`: a stage that fails the same
    /// delivery twice (a restart in between) reports it once.
    #[default]
    PerAttempt,
    /// One per place (a destination's label, or `spool`) and kind,
    /// `<backup_id>:failed:<stage>:<place>:retrying|final`: the shipper
    /// retries within one delivery and alerts once per destination.
    PerPlace(String),
    /// Every re-verification is news of its own,
    /// `<backup_id>:reverify-failed:<occurred_at in ms>`: it must not be
    /// taken for the first verification's failure or an earlier round's.
    Reverification,
}

impl DumpFailed {
    /// The failure of `stage` for the backup `header` names: first
    /// attempt, not retried, one per attempt. The `with_*` methods set the
    /// rest.
    pub fn new(header: EventHeader, origin: Origin, stage: Stage, error: String) -> Self {
        Self {
            header,
            origin,
            stage,
            error,
            artifact: None,
            attempt: 1,
            will_retry: false,
            aborted: None,
            destination: None,
            dedup: FailureDedup::PerAttempt,
        }
    }

    /// The failure of the stage that consumed `previous`: the same backup,
    /// what its trigger asked for and the artifact it names.
    pub fn following<E: BackupEvent>(previous: &E, stage: Stage, error: String) -> Self {
        Self {
            artifact: previous.artifact().map(|info| info.artifact.clone()),
            ..Self::new(
                previous.header().next(),
                previous.origin().clone(),
                stage,
                error,
            )
        }
    }

    /// Which delivery failed, and whether the pipeline tries again.
    pub fn with_attempt(self, attempt: u32, will_retry: bool) -> Self {
        Self {
            attempt,
            will_retry,
            ..self
        }
    }

    pub fn with_artifact(self, artifact: ArtifactName) -> Self {
        Self {
            artifact: Some(artifact),
            ..self
        }
    }

    pub fn with_aborted(self, aborted: Option<AbortedStep>) -> Self {
        Self { aborted, ..self }
    }

    pub fn with_dedup(self, dedup: FailureDedup) -> Self {
        Self { dedup, ..self }
    }

    pub fn with_destination(self, destination: Option<String>) -> Self {
        Self {
            destination,
            ..self
        }
    }
}

/// The watchdog limits of a stage, in seconds, as events carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLimits {
    pub stall_after_s: u64,
    pub deadline_s: u64,
}

/// Which step the watchdog aborted, why, and how far it had got. The
/// watchdog module builds it from its verdict (`AbortedStep::new`), as it
/// builds [`StageLimits`] (`Limits::for_event`): the contract does not
/// depend on the watchdog.
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

    /// Decodes and validates one payload, as every reader does.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = decode_object(payload)?;
        let version = event.header().version;
        if version == 0 || version > SCHEMA_VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(event)
    }

    /// The rules across fields that a stage relies on when it acts on what
    /// it consumes (see `bus::decode_event`); observers that only report
    /// (the notifier, backupctl) read without them.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// An event a stage publishes: on its own subject, under a message id
/// derived from the event itself, so that publishing the same news again
/// is recognised by JetStream as a duplicate (see docs/events.md).
pub trait StageEvent: Event {
    const SUBJECT: &'static str;

    /// The `Nats-Msg-Id` this event is published under.
    fn message_id(&self) -> String;
}

/// An event in the life of one backup, whose followers repeat its backup
/// id, database and origin (and artifact, once there is one).
pub trait BackupEvent: Event {
    fn origin(&self) -> &Origin;

    fn artifact(&self) -> Option<&ArtifactInfo> {
        None
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
impl_event!(DumpStarted, DumpPruned, DumpFailed, DumpSkipped, AnyEvent);

/// The events about one artifact: it must belong to their database.
macro_rules! impl_artifact_event {
    ($($ty:ty),*) => {$(
        impl Event for $ty {
            fn header(&self) -> &EventHeader {
                &self.header
            }

            fn check(&self) -> Result<(), DecodeError> {
                self.artifact.check_belongs_to(&self.header.database)
            }
        }

        impl BackupEvent for $ty {
            fn origin(&self) -> &Origin {
                &self.origin
            }

            fn artifact(&self) -> Option<&ArtifactInfo> {
                Some(&self.artifact)
            }
        }
    )*};
}
impl_artifact_event!(DumpCreated, DumpShipped, DumpVerified);

impl BackupEvent for DumpStarted {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

impl Event for DumpWriting {
    fn header(&self) -> &EventHeader {
        &self.header
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.artifact.database() == &self.header.database {
            Ok(())
        } else {
            Err(DecodeError::Invalid(format!(
                "artifact {} does not belong to database {}",
                self.artifact, self.header.database
            )))
        }
    }
}

impl BackupEvent for DumpWriting {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// `<backup_id>:<what>`: one event of its kind per backup.
fn once_per_backup(header: &EventHeader, what: &str) -> String {
    format!("{}:{what}", header.backup_id)
}

impl StageEvent for DumpStarted {
    const SUBJECT: &'static str = subject::STARTED;

    fn message_id(&self) -> String {
        once_per_backup(&self.header, "started")
    }
}

impl StageEvent for DumpWriting {
    const SUBJECT: &'static str = subject::WRITING;

    /// A retry of the same trigger writes a new artifact: news again.
    fn message_id(&self) -> String {
        once_per_backup(&self.header, &format!("writing:{}", self.artifact))
    }
}

impl StageEvent for DumpCreated {
    const SUBJECT: &'static str = subject::CREATED;

    fn message_id(&self) -> String {
        once_per_backup(&self.header, "created")
    }
}

impl StageEvent for DumpShipped {
    const SUBJECT: &'static str = subject::SHIPPED;

    /// The same for every delivery of `dump.created`: a redelivery that
    /// finds the artifact everywhere answers again, and one is kept.
    fn message_id(&self) -> String {
        once_per_backup(&self.header, "shipped")
    }
}

impl StageEvent for DumpVerified {
    const SUBJECT: &'static str = subject::VERIFIED;

    /// A re-verification is news at every round: its id carries its time
    /// (the time of the verification record it wrote).
    fn message_id(&self) -> String {
        if self.reverification {
            format!(
                "{}:reverified:{}",
                self.header.backup_id,
                self.header.occurred_at.timestamp()
            )
        } else {
            once_per_backup(&self.header, "verified")
        }
    }
}

impl StageEvent for DumpPruned {
    const SUBJECT: &'static str = subject::PRUNED;

    /// A dry run and a real run for the same backup are different news,
    /// and so are the runs on each destination: the first destination's
    /// is `<backup_id>:pruned`, another's `<backup_id>:pruned:<label>`.
    fn message_id(&self) -> String {
        let what = if self.dry_run {
            "pruned-dry-run"
        } else {
            "pruned"
        };
        match &self.dedup_label {
            None => once_per_backup(&self.header, what),
            Some(label) => once_per_backup(&self.header, &format!("{what}:{label}")),
        }
    }
}

impl StageEvent for DumpSkipped {
    const SUBJECT: &'static str = subject::SKIPPED;

    /// The id is derived from the trigger, so the scheduler and the
    /// handler (and two instances) announce one skip.
    fn message_id(&self) -> String {
        once_per_backup(&self.header, "skipped")
    }
}

impl StageEvent for DumpFailed {
    const SUBJECT: &'static str = subject::FAILED;

    fn message_id(&self) -> String {
        let backup_id = &self.header.backup_id;
        match &self.dedup {
            FailureDedup::PerAttempt => {
                format!("{backup_id}:failed:{}:{}", self.stage, self.attempt)
            }
            FailureDedup::PerPlace(place) => format!(
                "{backup_id}:failed:{}:{place}:{}",
                self.stage,
                if self.will_retry { "retrying" } else { "final" }
            ),
            FailureDedup::Reverification => format!(
                "{backup_id}:reverify-failed:{}",
                self.header.occurred_at.timestamp_millis()
            ),
        }
    }
}

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
        let failed = DumpFailed::new(
            header,
            Origin::default(),
            Stage::Ship,
            "connection refused".into(),
        )
        .with_attempt(1, true);
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
    fn header() -> EventHeader {
        EventHeader {
            occurred_at: "2026-11-22T02:09:12.568593Z".parse().unwrap(),
            ..EventHeader::now("viatique-t42".parse().unwrap(), "viatique".parse().unwrap())
        }
    }

    fn artifact(name: &str) -> ArtifactInfo {
        ArtifactInfo {
            artifact: name.parse().unwrap(),
            size_bytes: 10,
            sha256: "a".repeat(64).parse().unwrap(),
        }
    }

    fn created() -> DumpCreated {
        DumpCreated {
            header: header(),
            origin: Origin {
                reason: Some("demo".into()),
                ..Origin::default()
            },
            artifact: artifact("viatique_20261122_020000.sql.gz"),
            duration_ms: 1,
            tables: 1,
            rows: 1,
            limits: None,
        }
    }

    #[test]
    fn dump_writing_names_an_artifact_of_its_own_database() {
        let created = created();
        let writing = DumpWriting {
            header: created.header,
            origin: Origin::default(),
            artifact: created.artifact.artifact,
        };
        let decoded = DumpWriting::decode(&serde_json::to_vec(&writing).unwrap()).unwrap();
        assert_eq!(decoded, writing);
        let mut other = serde_json::to_value(&writing).unwrap();
        other["database"] = "another".into();
        let other = DumpWriting::decode(&serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(other.check().is_err(), "an artifact of another database");
        assert!(decoded.check().is_ok());
    }

    #[test]
    fn every_stage_event_names_its_subject_and_message_id_as_documented() {
        let started = DumpStarted {
            header: header(),
            origin: Origin::default(),
            batch: Vec::new(),
        };
        assert_eq!(DumpStarted::SUBJECT, "dump.started");
        assert_eq!(started.message_id(), "viatique-t42:started");
        let created = created();
        let writing = DumpWriting {
            header: started.header.next(),
            origin: Origin::default(),
            artifact: created.artifact.artifact.clone(),
        };
        assert_eq!(DumpWriting::SUBJECT, "dump.writing");
        assert_eq!(
            writing.message_id(),
            format!("viatique-t42:writing:{}", created.artifact.artifact)
        );
        assert_eq!(DumpCreated::SUBJECT, "dump.created");
        assert_eq!(created.message_id(), "viatique-t42:created");
        let shipped = DumpShipped {
            header: created.header.next(),
            origin: created.origin.clone(),
            artifact: created.artifact.clone(),
            destination: "file:///backups".into(),
            destinations: Vec::new(),
            duration_ms: 1,
            limits: None,
        };
        assert_eq!(DumpShipped::SUBJECT, "dump.shipped");
        assert_eq!(shipped.message_id(), "viatique-t42:shipped");
        let mut verified = DumpVerified {
            header: header(),
            origin: Origin::default(),
            artifact: created.artifact.clone(),
            checks: Vec::new(),
            tables: 1,
            rows: 1,
            duration_ms: 1,
            steps_ms: Default::default(),
            skipped: Vec::new(),
            reverification: false,
            limits: None,
            copies: Vec::new(),
            copies_failed: Vec::new(),
        };
        assert_eq!(DumpVerified::SUBJECT, "dump.verified");
        assert_eq!(verified.message_id(), "viatique-t42:verified");
        verified.reverification = true;
        assert_eq!(verified.message_id(), "viatique-t42:reverified:1795313352");
        let mut pruned = DumpPruned {
            header: header(),
            deleted: Vec::new(),
            kept: Vec::new(),
            kept_reasons: Default::default(),
            kept_bytes: None,
            dry_run: false,
            destination: None,
            dedup_label: None,
        };
        assert_eq!(DumpPruned::SUBJECT, "dump.pruned");
        assert_eq!(pruned.message_id(), "viatique-t42:pruned");
        pruned.dry_run = true;
        assert_eq!(pruned.message_id(), "viatique-t42:pruned-dry-run");
        pruned.dedup_label = Some("s3".into());
        assert_eq!(pruned.message_id(), "viatique-t42:pruned-dry-run:s3");
        let skipped = DumpSkipped {
            header: header(),
            origin: Origin::default(),
            cause: "still running".into(),
            running_backup_id: "viatique-t41".parse().unwrap(),
            running_since: header().occurred_at,
        };
        assert_eq!(DumpSkipped::SUBJECT, "dump.skipped");
        assert_eq!(skipped.message_id(), "viatique-t42:skipped");

        let failed = DumpFailed::new(header(), Origin::default(), Stage::Dump, "x".into())
            .with_attempt(3, true);
        assert_eq!(DumpFailed::SUBJECT, "dump.failed");
        assert_eq!(failed.message_id(), "viatique-t42:failed:dump:3");
        let shipping = DumpFailed::following(&created, Stage::Ship, "x".into())
            .with_attempt(7, true)
            .with_dedup(FailureDedup::PerPlace("sftp2".into()));
        assert_eq!(
            shipping.message_id(),
            "viatique-t42:failed:ship:sftp2:retrying"
        );
        let given_up = shipping.with_attempt(9, false);
        assert_eq!(
            given_up.message_id(),
            "viatique-t42:failed:ship:sftp2:final"
        );
        let reverified = DumpFailed::new(header(), Origin::default(), Stage::Verify, "x".into())
            .with_dedup(FailureDedup::Reverification);
        assert_eq!(
            reverified.message_id(),
            "viatique-t42:reverify-failed:1795313352568"
        );
    }

    #[test]
    fn a_failure_follows_the_event_it_consumed() {
        let created = created();
        let failed = DumpFailed::following(&created, Stage::Ship, "refused".into());
        assert_eq!(failed.header.backup_id, created.header.backup_id);
        assert_eq!(failed.header.database, created.header.database);
        assert!(failed.header.occurred_at > created.header.occurred_at);
        assert_eq!(failed.origin, created.origin);
        assert_eq!(failed.artifact.as_ref(), Some(&created.artifact.artifact));
        assert_eq!((failed.attempt, failed.will_retry), (1, false));
    }

    #[test]
    fn a_ship_failure_reads_on_the_wire_as_before_with_its_destination_last() {
        let failed = DumpFailed::new(header(), Origin::default(), Stage::Ship, "stalled".into())
            .with_artifact("viatique_20261122_020000.sql.gz".parse().unwrap())
            .with_attempt(1, true)
            .with_aborted(Some(AbortedStep {
                step: "upload".into(),
                reason: "stalled".into(),
                bytes: 5,
                limits: StageLimits {
                    stall_after_s: 300,
                    deadline_s: 21600,
                },
            }))
            .with_destination(Some("sftp://u@h:22/b".into()))
            .with_dedup(FailureDedup::PerPlace("sftp".into()));
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            concat!(
                r#"{"version":1,"backup_id":"viatique-t42","database":"viatique","#,
                r#""occurred_at":"2026-11-22T02:09:12.568593Z","stage":"ship","error":"stalled","#,
                r#""artifact":"viatique_20261122_020000.sql.gz","attempt":1,"will_retry":true,"#,
                r#""aborted":{"step":"upload","reason":"stalled","bytes":5,"stall_after_s":300,"#,
                r#""deadline_s":21600},"destination":"sftp://u@h:22/b"}"#
            )
        );
        // What is read back is the same failure, counted once per attempt.
        let back = DumpFailed::decode(&serde_json::to_vec(&failed).unwrap()).unwrap();
        assert_eq!(back.destination, failed.destination);
        assert_eq!(back.dedup, FailureDedup::PerAttempt);
    }

    #[test]
    fn an_artifact_of_another_database_fails_the_check() {
        let mut created = created();
        assert!(created.check().is_ok());
        created.artifact = artifact("other_20261122_020000.sql.gz");
        let error = created.check().unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid payload: artifact other_20261122_020000.sql.gz does not belong to database viatique"
        );
        // Readers that only report still read it.
        let payload = serde_json::to_vec(&created).unwrap();
        assert!(DumpCreated::decode(&payload).is_ok());
    }

    #[test]
    fn copies_of_a_verified_backup_are_additive_fields() {
        let base = serde_json::json!({
            "version": 1, "backup_id": "db-2", "database": "viatique",
            "occurred_at": "2026-03-01T02:00:00Z",
            "artifact": "viatique_20260301_020000.sql.gz", "size_bytes": 10,
            "sha256": "a".repeat(64), "checks": [], "tables": 1, "rows": 1,
            "duration_ms": 1,
        });
        let old = DumpVerified::decode(base.to_string().as_bytes()).unwrap();
        assert!(old.copies.is_empty() && old.copies_failed.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("copies"));
        let mut with = base;
        with["copies"] = serde_json::json!([
            {"label": "sftp", "destination": "sftp://b@h:22/b", "proof": "restored"},
            {"label": "sftp2", "destination": "sftp://b@n:22/b", "proof": "checksum"},
        ]);
        with["copies_failed"] = serde_json::json!([
            {"label": "sftp3", "destination": "sftp://b@m:22/b", "error": "missing"},
        ]);
        let new = DumpVerified::decode(with.to_string().as_bytes()).unwrap();
        assert_eq!(new.copies[1].proof, Proof::Checksum);
        assert_eq!(new.copies_failed[0].error, "missing");
        let again: serde_json::Value = serde_json::to_value(&new).unwrap();
        assert_eq!(again["copies"], with["copies"]);
        assert_eq!(again["copies_failed"], with["copies_failed"]);
    }
}
