//! The report from the stored events (pure, unit-tested): per database the
//! last verification, the stages failing since, the backups in flight and
//! the recent runs with their durations, the space on the remote after
//! pruning, and the recently rejected triggers.

use std::collections::{BTreeMap, BTreeSet};

use backup_core::events::{
    AnyEvent, DumpCreated, DumpFailed, DumpPruned, DumpShipped, DumpVerified, Event, Stage, subject,
};
use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};

use super::model::{BackupRun, DatabaseStatus, HISTORY, REJECTED_FOR, RejectedTrigger, Status};

/// One stored event: its subject and payload.
pub type StoredEvent = (String, Vec<u8>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use chrono_tz::Tz;
    use serde_json::json;

    use crate::status::model::ServiceStatus;

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
