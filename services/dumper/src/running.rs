//! Which dumps are running, and which ran lately, so that a scheduled run
//! that comes while the previous dump of the same database is still going
//! does not start a second one.
//!
//! Two places consult it. The scheduler, right after publishing a slot's
//! trigger, announces `dump.skipped` for every dump still running, so the
//! operator hears of it while it is true. The trigger handler, which only
//! sees that trigger once the running dump is over (one trigger at a time),
//! skips the jobs that were running when it was published, and announces
//! the skip itself if the scheduler did not (another instance published the
//! slot). Both use the same message id, so JetStream stores one event.
//!
//! Retries: publishing `dump.skipped` is tried once from the scheduler; if
//! that fails the handler publishes it when it skips.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use backup_core::bus::Bus;
use backup_core::events::{DumpSkipped, EventHeader, Origin};
use backup_core::names::{BackupId, DatabaseName};
use chrono::{DateTime, Utc};

/// A dump in progress or recently finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub backup_id: BackupId,
    pub since: DateTime<Utc>,
    /// `None` while it runs.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct State {
    /// The current or last run of each job.
    runs: HashMap<DatabaseName, Run>,
    /// (trigger stream sequence, job) pairs whose skip was announced.
    announced: HashSet<(u64, DatabaseName)>,
}

/// Shared between the trigger handler and the scheduler.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Mutex<State>>);

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `name` started dumping; the returned guard records the
    /// end when dropped, however the dump ends.
    pub fn start(&self, name: &DatabaseName, backup_id: &BackupId) -> RunGuard {
        self.state().runs.insert(
            name.clone(),
            Run {
                backup_id: backup_id.clone(),
                since: Utc::now(),
                until: None,
            },
        );
        RunGuard {
            activity: self.clone(),
            name: name.clone(),
            backup_id: backup_id.clone(),
        }
    }

    /// The dumps running now.
    pub fn running(&self) -> Vec<(DatabaseName, Run)> {
        self.state()
            .runs
            .iter()
            .filter(|(_, run)| run.until.is_none())
            .map(|(name, run)| (name.clone(), run.clone()))
            .collect()
    }

    /// The run of `name` that was in progress at `published` (the second
    /// JetStream stored a trigger, truncated), if any, other than `own`:
    /// the trigger's own earlier attempt, which a redelivery must not
    /// mistake for somebody else's dump.
    pub fn running_at(
        &self,
        name: &DatabaseName,
        published: DateTime<Utc>,
        own: &BackupId,
    ) -> Option<Run> {
        let state = self.state();
        let run = state.runs.get(name).filter(|run| &run.backup_id != own)?;
        // `published` is truncated to the second: a run that started within
        // that second counts as already running, one that ended within it
        // as still running. Either way a dump that fresh makes another one
        // pointless.
        let started_before = run.since < published + chrono::Duration::seconds(1);
        let ended_after = run.until.is_none_or(|until| until >= published);
        (started_before && ended_after).then(|| run.clone())
    }

    /// Marks the skip of `name` for trigger `seq` as announced; false if it
    /// already was.
    fn mark_announced(&self, seq: u64, name: &DatabaseName) -> bool {
        self.state().announced.insert((seq, name.clone()))
    }

    /// Announces `dump.skipped` for job `name` of the trigger at stream
    /// sequence `seq`, unless this process already did.
    pub async fn announce_skip(
        &self,
        bus: &Bus,
        seq: u64,
        name: &DatabaseName,
        run: &Run,
        origin: &Origin,
    ) {
        if !self.mark_announced(seq, name) {
            return;
        }
        let skipped = skipped_event(seq, name, run, origin);
        tracing::warn!(
            database = %name,
            running_backup_id = %run.backup_id,
            running_since = %run.since,
            trigger_seq = seq,
            "scheduled dump skipped: the previous dump is still running"
        );
        if let Err(error) = bus.publish(&skipped).await {
            tracing::error!(%error, database = %name, "could not publish dump.skipped");
            // Let the handler try again when it gets to the trigger.
            self.state().announced.remove(&(seq, name.clone()));
        }
    }
}

/// The event, with an id derived from the trigger's stream sequence so the
/// scheduler and the handler (and two instances) name it alike.
pub fn skipped_event(seq: u64, name: &DatabaseName, run: &Run, origin: &Origin) -> DumpSkipped {
    let backup_id = BackupId::try_from(format!("{name}-skipped-t{seq}"))
        .expect("database names and numbers are valid id characters");
    DumpSkipped {
        header: EventHeader::now(backup_id, name.clone()),
        origin: origin.clone(),
        cause: format!(
            "the previous dump ({}, running since {}) is still running",
            run.backup_id,
            run.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        running_backup_id: run.backup_id.clone(),
        running_since: run.since,
    }
}

/// Records the end of a run when dropped.
#[derive(Debug)]
pub struct RunGuard {
    activity: Activity,
    name: DatabaseName,
    backup_id: BackupId,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let mut state = self.activity.state();
        if let Some(run) = state.runs.get_mut(&self.name)
            && run.backup_id == self.backup_id
            && run.until.is_none()
        {
            run.until = Some(Utc::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> DatabaseName {
        "viatique".parse().unwrap()
    }

    #[test]
    fn a_run_covers_the_triggers_published_while_it_ran() {
        let activity = Activity::new();
        let other: BackupId = "viatique-2".parse().unwrap();
        let before = Utc::now() - chrono::Duration::seconds(5);
        let guard = activity.start(&name(), &"viatique-1".parse().unwrap());
        assert!(activity.running_at(&name(), before, &other).is_none());
        let during = Utc::now();
        assert_eq!(activity.running().len(), 1);
        assert!(activity.running_at(&name(), during, &other).is_some());
        // A redelivered trigger does not skip because of its own attempt.
        assert!(
            activity
                .running_at(&name(), during, &"viatique-1".parse().unwrap())
                .is_none()
        );
        drop(guard);
        assert!(activity.running().is_empty());
        // Still known to have covered `during` after it ended...
        assert!(activity.running_at(&name(), during, &other).is_some());
        // ...but not a trigger published after it ended.
        let after = Utc::now() + chrono::Duration::seconds(5);
        assert!(activity.running_at(&name(), after, &other).is_none());
    }

    #[test]
    fn a_skip_is_announced_once_per_trigger_and_job() {
        let activity = Activity::new();
        assert!(activity.mark_announced(7, &name()));
        assert!(!activity.mark_announced(7, &name()));
        assert!(activity.mark_announced(8, &name()));
    }

    #[test]
    fn the_event_names_the_running_backup() {
        let run = Run {
            backup_id: "viatique-20260301T020000Z-t4".parse().unwrap(),
            since: "2026-03-01T02:00:01Z".parse().unwrap(),
            until: None,
        };
        let origin = Origin {
            reason: Some(crate::SCHEDULE_REASON.to_owned()),
            ..Origin::default()
        };
        let event = skipped_event(9, &name(), &run, &origin);
        assert_eq!(event.header.backup_id.as_str(), "viatique-skipped-t9");
        // The trigger's reason travels; the event reads back as written.
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json.matches("\"reason\"").count(), 1, "{json}");
        assert_eq!(event.origin.reason.as_deref(), Some(crate::SCHEDULE_REASON));
        use backup_core::events::Event;
        assert_eq!(DumpSkipped::decode(json.as_bytes()).unwrap(), event);
        assert_eq!(event.running_backup_id, run.backup_id);
        assert!(
            event
                .cause
                .contains("viatique-20260301T020000Z-t4, running since 2026-03-01T02:00:01Z"),
            "{}",
            event.cause
        );
    }
}
