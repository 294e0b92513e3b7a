//! The built-in timer: `BACKUP_SCHEDULE` (five cron fields, croner) in
//! `BACKUP_TZ` (an IANA zone, chrono-tz). At each slot it publishes a
//! `backup.trigger` with reason `schedule` and `Nats-Msg-Id:
//! schedule:<slot>`, so several dumper instances publish the slot once.
//!
//! Daylight saving: croner resolves local times. A job whose time falls in
//! the spring-forward gap runs once, at the first instant after the gap; a
//! job whose time happens twice on the fall-back night runs once, at the
//! first of the two.
//!
//! Catch-up (like systemd's `Persistent=true`): at start-up, a database
//! whose last successful dump (the newest `dump.created` in the stream, or
//! the newest manifest in the spool) is older than one schedule period is
//! triggered at once. A database never dumped is not: there was nothing to
//! miss.
//!
//! A slot that comes while a dump is still running announces
//! `dump.skipped` for it right after its trigger is stored (see
//! [`crate::running`]); the handler will not dump it again.
//!
//! Retries: publishing a trigger retries with backoff until it is stored or
//! shutdown; the message id makes a retried publish harmless.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backup_core::bus::Bus;
use backup_core::events::{DumpCreated, Origin, TriggerRequest, subject};
use backup_core::manifest::Manifest;
use backup_core::names::{DatabaseName, MANIFEST_SUFFIX};
use backup_core::retry::Backoff;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::SCHEDULE_REASON;
use crate::running::Activity;

pub use backup_core::clock::{Clock, ManualClock, SystemClock};
pub use backup_core::schedule::{Schedule, ScheduleError};

/// The message id of the trigger for `slot`: the same in every instance.
pub fn slot_msg_id(slot: DateTime<Utc>) -> String {
    format!(
        "schedule:{}",
        slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

const PUBLISH_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Returns the trigger's stream sequence, `None` at shutdown.
async fn publish_trigger(
    bus: &Bus,
    msg_id: &str,
    request: &TriggerRequest,
    shutdown: &CancellationToken,
) -> Option<u64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match bus.publish_trigger(request, msg_id).await {
            Ok(seq) => {
                tracing::info!(msg_id, seq, "scheduled trigger published");
                return Some(seq);
            }
            Err(error) => {
                let delay = PUBLISH_RETRY.delay(attempt);
                tracing::warn!(%error, msg_id, retry_in = ?delay, "could not publish the scheduled trigger");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn schedule_request(database: Option<DatabaseName>) -> TriggerRequest {
    TriggerRequest {
        database,
        origin: Origin {
            reason: Some(SCHEDULE_REASON.to_owned()),
            ..Origin::default()
        },
    }
}

/// Publishes one trigger per slot until shutdown. When the clock jumps over
/// several slots (a suspended machine), they make one trigger, not a burst.
pub async fn run_scheduler(
    bus: Bus,
    schedule: Schedule,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    run_scheduler_with(bus, schedule, clock, Activity::new(), shutdown).await;
}

/// [`run_scheduler`] that announces `dump.skipped` for the dumps `activity`
/// shows running when a slot comes.
pub async fn run_scheduler_with(
    bus: Bus,
    schedule: Schedule,
    clock: Arc<dyn Clock>,
    activity: Activity,
    shutdown: CancellationToken,
) {
    let mut cursor = clock.now();
    loop {
        let slot = match schedule.next_after(cursor) {
            Ok(slot) => slot,
            Err(error) => {
                tracing::error!(%error, "the schedule has no next slot; scheduler stopped");
                return;
            }
        };
        tracing::info!(next = %slot, schedule = schedule.pattern(), "next scheduled backup");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = clock.sleep_until(slot) => {}
        }
        // The newest slot that has passed: that is the one due.
        let now = clock.now();
        let due = schedule
            .previous_at_or_before(now)
            .filter(|due| *due >= slot)
            .unwrap_or(slot);
        let request = schedule_request(None);
        let Some(seq) = publish_trigger(&bus, &slot_msg_id(due), &request, &shutdown).await else {
            return;
        };
        for (name, run) in activity.running() {
            activity
                .announce_skip(&bus, seq, &name, &run, &request.origin)
                .await;
        }
        cursor = due;
    }
}

/// The newest successful dump of each database the stream remembers,
/// looking back `window` from `now`.
pub async fn last_dumps_in_stream(
    bus: &Bus,
    since: DateTime<Utc>,
) -> Result<BTreeMap<DatabaseName, DateTime<Utc>>, String> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let stream = bus
        .jetstream()
        .get_stream(backup_core::bus::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp(since.timestamp()).map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject::CREATED.to_owned(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut latest = BTreeMap::new();
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        if let Ok(created) = serde_json::from_slice::<DumpCreated>(&message.payload) {
            let at = created.header.occurred_at;
            let entry = latest.entry(created.header.database).or_insert(at);
            *entry = (*entry).max(at);
        }
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if pending == 0 {
            break;
        }
    }
    Ok(latest)
}

/// The newest manifest of `database` in the spool.
pub fn last_dump_in_spool(spool: &Path, database: &DatabaseName) -> Option<DateTime<Utc>> {
    std::fs::read_dir(spool.join(database.as_str()))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(MANIFEST_SUFFIX))
        .filter_map(|e| Manifest::decode(&std::fs::read(e.path()).ok()?).ok())
        .filter(|m| &m.database == database)
        .map(|m| m.created_at)
        .max()
}

/// Triggers the databases whose last dump is older than one period.
pub async fn catch_up(
    bus: &Bus,
    schedule: &Schedule,
    clock: &dyn Clock,
    spool: &Path,
    databases: &[DatabaseName],
    shutdown: &CancellationToken,
) -> Vec<DatabaseName> {
    let now = clock.now();
    let period = schedule.period(now);
    let Some(missed_slot) = schedule.previous_at_or_before(now) else {
        return Vec::new();
    };
    let look_back =
        now - chrono::Duration::from_std(period * 3).unwrap_or(chrono::Duration::days(3));
    let from_stream = match last_dumps_in_stream(bus, look_back).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(%error, "cannot read past dumps from the stream; using the spool only");
            BTreeMap::new()
        }
    };
    let mut late = Vec::new();
    for database in databases {
        let last = [
            from_stream.get(database).copied(),
            last_dump_in_spool(spool, database),
        ]
        .into_iter()
        .flatten()
        .max();
        let Some(last) = last else {
            tracing::info!(database = %database, "no earlier dump found; nothing to catch up");
            continue;
        };
        let age = (now - last).to_std().unwrap_or_default();
        if age > period {
            tracing::warn!(database = %database, last = %last, "the last dump is older than one schedule period; catching up now");
            let msg_id = format!(
                "catch-up:{database}:{}",
                missed_slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            publish_trigger(
                bus,
                &msg_id,
                &schedule_request(Some(database.clone())),
                shutdown,
            )
            .await;
            late.push(database.clone());
        }
    }
    late
}
