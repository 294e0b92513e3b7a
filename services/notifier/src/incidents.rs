//! The notifier's memory: which databases have an open incident, when each
//! was last alerted, and when each database last verified. It decides what
//! deserves a message: the first failure of a kind, a reminder once the
//! interval has passed, one give-up, one recovery, one stale alert, one
//! alert per destination whose copy falls behind.
//!
//! A copy falls behind when a `dump.verified` (first verification or
//! re-verification) lists it in `copies_failed`: its incident is keyed by
//! database and destination, and closes only when a later `dump.verified`
//! proves that destination again (or no longer reports it at all: the
//! verifier stopped reading it). The shipper's `dump.shipped.destinations`
//! is not compared: it names destinations the verifier cannot read (a
//! local directory), and the shipper emits it only once every destination
//! has the artifact.
//!
//! Nothing here is persisted: at start-up the state is rebuilt from the
//! stream (see `history`), so dedup and the dead man's switch survive a
//! restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use backup_core::Stage;
use backup_core::events::{CopyFailed, DumpFailed, DumpPruned, DumpVerified};
use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};

use alert_channels::{IncidentSummary, Notice, NoticeKind};

/// What makes two failures "the same": database, stage and the cause with
/// its variable parts (numbers: ports, attempts, timestamps, ids) blurred.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IncidentKey {
    Failure {
        stage: Stage,
        cause: String,
    },
    Stale,
    /// The copy on one destination (as events describe it) is behind.
    Copy {
        destination: String,
    },
}

#[derive(Debug, Clone)]
struct Incident {
    title: String,
    first_seen: DateTime<Utc>,
    last_alerted: DateTime<Utc>,
    occurrences: u32,
    gave_up_alerted: bool,
}

#[derive(Debug, Default)]
struct DatabaseState {
    last_verified: Option<DateTime<Utc>>,
    incidents: HashMap<IncidentKey, Incident>,
}

/// Thresholds the state applies.
#[derive(Debug, Clone)]
pub struct Policy {
    pub stale_after: Duration,
    pub remind_every: Duration,
    pub alert_on_success: bool,
}

#[derive(Debug)]
pub struct Incidents {
    policy: Policy,
    /// Databases the dead man's switch watches (BACKUP_DATABASES); when
    /// empty, every database seen verifying.
    configured: BTreeSet<DatabaseName>,
    /// A database never seen verifying is stale this long after this.
    watching_since: DateTime<Utc>,
    databases: BTreeMap<DatabaseName, DatabaseState>,
}

/// Blurs numbers so retries of the same failure share a key
/// ("port 50123" and "attempt 3" differ between attempts, the cause does not).
pub fn cause_class(error: &str) -> String {
    let mut class = String::new();
    let mut in_number = false;
    for c in error.chars().take(160) {
        if c.is_ascii_digit() {
            if !in_number {
                class.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            class.extend(c.to_lowercase());
        }
    }
    class
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

/// A copy `verified` could not prove: the first notice of its
/// destination's incident, a reminder once the interval has passed, or
/// nothing (already alerted).
fn copy_behind(
    state: &mut DatabaseState,
    verified: &DumpVerified,
    copy: &CopyFailed,
    now: DateTime<Utc>,
    remind_every: Duration,
) -> Option<Notice> {
    let key = IncidentKey::Copy {
        destination: copy.destination.clone(),
    };
    let Some(incident) = state.incidents.get_mut(&key) else {
        state.incidents.insert(
            key,
            Incident {
                title: format!(
                    "copy on {} ({}) behind: {}",
                    copy.label,
                    copy.destination,
                    backup_core::clip(&copy.error, 200)
                ),
                first_seen: now,
                last_alerted: now,
                occurrences: 1,
                gave_up_alerted: true,
            },
        );
        return Some(Notice::copy_behind(
            verified,
            copy,
            NoticeKind::CopyBehind,
            1,
            now,
        ));
    };
    incident.occurrences += 1;
    if elapsed(incident.last_alerted, now) < remind_every {
        tracing::info!(
            database = %verified.header.database,
            destination = %copy.destination,
            occurrences = incident.occurrences,
            "copy still behind; already alerted"
        );
        return None;
    }
    incident.last_alerted = now;
    Some(Notice::copy_behind(
        verified,
        copy,
        NoticeKind::Reminder,
        incident.occurrences,
        incident.first_seen,
    ))
}

impl Incidents {
    pub fn new(
        policy: Policy,
        configured: impl IntoIterator<Item = DatabaseName>,
        watching_since: DateTime<Utc>,
    ) -> Self {
        Self {
            policy,
            configured: configured.into_iter().collect(),
            watching_since,
            databases: BTreeMap::new(),
        }
    }

    /// A `dump.failed`: a message for the first of its kind, a reminder
    /// after the interval, one more when the pipeline gives up; otherwise
    /// nothing.
    pub fn on_failure(&mut self, failure: &DumpFailed, now: DateTime<Utc>) -> Option<Notice> {
        if failure.stage == Stage::Trigger && !failure.will_retry {
            // A trigger the dumper refused (a database it does not back
            // up) is one alert, not a state: no incident stays open, and
            // nothing will ever resolve it.
            return Some(Notice::failure(failure, NoticeKind::Failure, 1, now));
        }
        let key = IncidentKey::Failure {
            stage: failure.stage,
            cause: cause_class(&failure.error),
        };
        let state = self
            .databases
            .entry(failure.header.database.clone())
            .or_default();
        let Some(incident) = state.incidents.get_mut(&key) else {
            state.incidents.insert(
                key,
                Incident {
                    title: format!(
                        "{} failed: {}",
                        failure.stage,
                        backup_core::clip(&failure.error, 200)
                    ),
                    first_seen: now,
                    last_alerted: now,
                    occurrences: 1,
                    gave_up_alerted: !failure.will_retry,
                },
            );
            return Some(Notice::failure(failure, NoticeKind::Failure, 1, now));
        };
        incident.occurrences += 1;
        let kind = if !failure.will_retry && !incident.gave_up_alerted {
            incident.gave_up_alerted = true;
            NoticeKind::GaveUp
        } else if elapsed(incident.last_alerted, now) >= self.policy.remind_every {
            NoticeKind::Reminder
        } else {
            tracing::info!(
                database = %failure.header.database,
                stage = %failure.stage,
                occurrences = incident.occurrences,
                "same failure again; already alerted"
            );
            return None;
        };
        incident.last_alerted = now;
        Some(Notice::failure(
            failure,
            kind,
            incident.occurrences,
            incident.first_seen,
        ))
    }

    /// A `dump.verified`: alerts each copy it could not prove (once per
    /// destination, then reminders), closes the incidents it settles (one
    /// recovery message), or is a plain success. A first verification
    /// settles every incident of the database but the copies still behind;
    /// a re-verification, which says nothing about whether today's backups
    /// work, settles only the copies it proves (and sends no success).
    pub fn on_verified(&mut self, verified: &DumpVerified, now: DateTime<Utc>) -> Vec<Notice> {
        let remind_every = self.policy.remind_every;
        let alert_on_success = self.policy.alert_on_success;
        let state = self
            .databases
            .entry(verified.header.database.clone())
            .or_default();
        // The age of the newest verified backup is what matters, not when
        // the verification ran.
        let at = verified.artifact.artifact.taken_at();
        state.last_verified = Some(state.last_verified.map_or(at, |last| last.max(at)));
        let mut notices: Vec<Notice> = verified
            .copies_failed
            .iter()
            .filter_map(|copy| copy_behind(state, verified, copy, now, remind_every))
            .collect();
        let proven: BTreeSet<&str> = verified
            .copies
            .iter()
            .map(|c| c.destination.as_str())
            .collect();
        let failing: BTreeSet<&str> = verified
            .copies_failed
            .iter()
            .map(|c| c.destination.as_str())
            .collect();
        // Events of a verifier that does not report copies settle none.
        let reports_copies = !proven.is_empty() || !failing.is_empty();
        let settled: Vec<IncidentKey> = state
            .incidents
            .keys()
            .filter(|key| match key {
                IncidentKey::Copy { destination } => {
                    proven.contains(destination.as_str())
                        || (reports_copies && !failing.contains(destination.as_str()))
                }
                _ => !verified.reverification,
            })
            .cloned()
            .collect();
        let mut closed: Vec<Incident> = settled
            .iter()
            .filter_map(|key| state.incidents.remove(key))
            .collect();
        if !closed.is_empty() {
            closed.sort_by_key(|i| i.first_seen);
            let summaries: Vec<IncidentSummary> = closed
                .into_iter()
                .map(|i| IncidentSummary {
                    title: i.title,
                    first_seen: i.first_seen,
                    occurrences: i.occurrences,
                })
                .collect();
            notices.push(Notice::resolved(verified, &summaries));
        } else if !verified.reverification {
            notices.push(Notice::success(verified, alert_on_success));
        }
        notices
    }

    /// A `dump.pruned` that really ran proves pruning works again; it does
    /// not prove anything about dumps, so only prune incidents close
    /// (silently: the next verified backup reports the rest).
    pub fn on_pruned(&mut self, pruned: &DumpPruned) {
        if pruned.dry_run {
            return;
        }
        if let Some(state) = self.databases.get_mut(&pruned.header.database) {
            state.incidents.retain(|key, _| {
                !matches!(
                    key,
                    IncidentKey::Failure {
                        stage: Stage::Prune,
                        ..
                    }
                )
            });
        }
    }

    /// The database's open incidents, oldest first (for the digest).
    pub fn open(&self, database: &DatabaseName) -> Vec<IncidentSummary> {
        let mut open: Vec<IncidentSummary> = self
            .databases
            .get(database)
            .map(|state| {
                state
                    .incidents
                    .values()
                    .map(|i| IncidentSummary {
                        title: i.title.clone(),
                        first_seen: i.first_seen,
                        occurrences: i.occurrences,
                    })
                    .collect()
            })
            .unwrap_or_default();
        open.sort_by_key(|i| i.first_seen);
        open
    }

    /// When the newest verified backup of `database` was taken.
    pub fn last_verified(&self, database: &DatabaseName) -> Option<DateTime<Utc>> {
        self.databases.get(database)?.last_verified
    }

    /// Every database with something remembered, and the watched ones.
    pub fn databases(&self) -> impl Iterator<Item = &DatabaseName> {
        self.configured.iter().chain(
            self.databases
                .keys()
                .filter(|d| !self.configured.contains(*d)),
        )
    }

    /// Records a verification without deciding anything (events the
    /// consumer has yet to deliver, read at start-up).
    pub fn note_verified(&mut self, database: &DatabaseName, at: DateTime<Utc>) {
        let state = self.databases.entry(database.clone()).or_default();
        state.last_verified = Some(state.last_verified.map_or(at, |last| last.max(at)));
    }

    /// The dead man's switch: a stale alert for each watched database with
    /// no verification within the threshold, then a reminder per interval.
    pub fn check_stale(&mut self, now: DateTime<Utc>) -> Vec<Notice> {
        let watched: Vec<DatabaseName> = if self.configured.is_empty() {
            self.databases
                .iter()
                .filter(|(_, s)| s.last_verified.is_some())
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            self.configured.iter().cloned().collect()
        };
        let mut notices = Vec::new();
        for database in watched {
            let state = self.databases.entry(database.clone()).or_default();
            let reference = state.last_verified.unwrap_or(self.watching_since);
            let silent_for = elapsed(reference, now);
            if silent_for < self.policy.stale_after {
                continue;
            }
            match state.incidents.get_mut(&IncidentKey::Stale) {
                None => {
                    state.incidents.insert(
                        IncidentKey::Stale,
                        Incident {
                            title: "no verified backup".to_owned(),
                            first_seen: now,
                            last_alerted: now,
                            occurrences: 1,
                            gave_up_alerted: true,
                        },
                    );
                    notices.push(Notice::stale(
                        &database,
                        state.last_verified,
                        silent_for,
                        false,
                    ));
                }
                Some(incident)
                    if elapsed(incident.last_alerted, now) >= self.policy.remind_every =>
                {
                    incident.last_alerted = now;
                    incident.occurrences += 1;
                    notices.push(Notice::stale(
                        &database,
                        state.last_verified,
                        silent_for,
                        true,
                    ));
                }
                Some(_) => {}
            }
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::events::{Event, EventHeader, Origin};

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> Policy {
        Policy {
            stale_after: 26 * HOUR,
            remind_every: 6 * HOUR,
            alert_on_success: false,
        }
    }

    fn t0() -> DateTime<Utc> {
        "2026-03-01T02:00:00Z".parse().unwrap()
    }

    fn failed(error: &str, attempt: u32, will_retry: bool) -> DumpFailed {
        DumpFailed::new(
            EventHeader::now("db-1".parse().unwrap(), "viatique".parse().unwrap()),
            Origin::default(),
            Stage::Ship,
            error.to_owned(),
        )
        .with_attempt(attempt, will_retry)
    }

    fn verified(at: DateTime<Utc>) -> DumpVerified {
        let artifact = format!("viatique_{}.sql.gz", at.format("%Y%m%d_%H%M%S"));
        DumpVerified::decode(
            serde_json::json!({
                "version": 1, "backup_id": "db-2", "database": "viatique",
                "occurred_at": at, "artifact": artifact, "size_bytes": 10,
                "sha256": "a".repeat(64), "checks": [], "tables": 1, "rows": 1,
                "duration_ms": 1,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn kinds(notices: &[Notice]) -> Vec<NoticeKind> {
        notices.iter().map(|n| n.kind).collect()
    }

    /// A verification that proved the copies `proven` and not `failed`.
    fn with_copies(
        at: DateTime<Utc>,
        proven: &[&str],
        failed: &[&str],
        reverification: bool,
    ) -> DumpVerified {
        use backup_core::events::{CopyProven, Proof};
        let mut event = verified(at);
        event.copies = proven
            .iter()
            .map(|label| CopyProven {
                label: (*label).to_owned(),
                destination: format!("sftp://b@{label}:22/b"),
                proof: Proof::Checksum,
            })
            .collect();
        event.copies_failed = failed
            .iter()
            .map(|label| CopyFailed {
                label: (*label).to_owned(),
                destination: format!("sftp://b@{label}:22/b"),
                error: "checksum: the stored copy does not match".to_owned(),
            })
            .collect();
        event.reverification = reverification;
        event
    }

    #[test]
    fn a_copy_behind_alerts_once_per_destination_until_proven_again() {
        let mut state = Incidents::new(policy(), [], t0());
        let db: DatabaseName = "viatique".parse().unwrap();
        let first = state.on_verified(&with_copies(t0(), &["sftp"], &["nas"], false), t0());
        assert_eq!(kinds(&first), [NoticeKind::CopyBehind, NoticeKind::Success]);
        assert!(
            first[0].subject.contains("sftp://b@nas:22/b"),
            "{}",
            first[0].subject
        );
        assert!(first[0].health.is_none(), "the backup itself is proven");
        // Behind again within the interval: nothing new; the next
        // verification settles nothing else either.
        let again = state.on_verified(
            &with_copies(t0() + HOUR, &["sftp"], &["nas"], false),
            t0() + HOUR,
        );
        assert_eq!(kinds(&again), [NoticeKind::Success]);
        assert_eq!(state.open(&db).len(), 1);
        // A re-verification finds another copy behind, and a reminder is due.
        let reverified = state.on_verified(
            &with_copies(t0() + 7 * HOUR, &["sftp"], &["nas", "s3"], true),
            t0() + 7 * HOUR,
        );
        assert_eq!(
            kinds(&reverified),
            [NoticeKind::Reminder, NoticeKind::CopyBehind]
        );
        assert_eq!(state.open(&db).len(), 2);
        // A failure of the pipeline is not settled by a copy proven in a
        // re-verification, only by a first verification.
        let failure = state.on_failure(&failed("permission denied", 1, true), t0() + 8 * HOUR);
        assert_eq!(failure.unwrap().kind, NoticeKind::Failure);
        let proven = state.on_verified(
            &with_copies(t0() + 9 * HOUR, &["sftp", "nas"], &["s3"], true),
            t0() + 9 * HOUR,
        );
        assert_eq!(kinds(&proven), [NoticeKind::Resolved]);
        assert!(proven[0].body.contains("copy on nas"), "{}", proven[0].body);
        assert_eq!(state.open(&db).len(), 2, "s3 and the failure stay open");
        // A verifier that stopped reading s3 settles it; so does a first
        // verification for the failure.
        let settled = state.on_verified(
            &with_copies(t0() + 10 * HOUR, &["sftp", "nas"], &[], false),
            t0() + 10 * HOUR,
        );
        assert_eq!(kinds(&settled), [NoticeKind::Resolved]);
        assert!(state.open(&db).is_empty());
        // Events without copies (an older verifier) leave copy incidents be.
        state.on_verified(
            &with_copies(t0() + 11 * HOUR, &["sftp"], &["nas"], false),
            t0(),
        );
        state.on_verified(&verified(t0() + 12 * HOUR), t0() + 12 * HOUR);
        assert_eq!(state.open(&db).len(), 1);
    }

    #[test]
    fn retries_of_one_failure_alert_once_then_remind_then_give_up() {
        let mut state = Incidents::new(policy(), [], t0());
        let first = state.on_failure(&failed("connect 127.0.0.1:2201: refused", 1, true), t0());
        assert_eq!(first.unwrap().kind, NoticeKind::Failure);
        for attempt in 2..=9 {
            let again = failed(
                &format!("connect 127.0.0.1:{}: refused", 2200 + attempt),
                attempt,
                true,
            );
            assert!(state.on_failure(&again, t0() + HOUR).is_none());
        }
        let later = state.on_failure(
            &failed("connect 127.0.0.1:9: refused", 10, true),
            t0() + 7 * HOUR,
        );
        assert_eq!(later.unwrap().kind, NoticeKind::Reminder);
        let last = state.on_failure(
            &failed("connect 127.0.0.1:9: refused", 11, false),
            t0() + 8 * HOUR,
        );
        assert_eq!(last.unwrap().kind, NoticeKind::GaveUp);
        // A different cause is a different incident.
        let other = state.on_failure(&failed("permission denied", 1, true), t0() + 8 * HOUR);
        assert_eq!(other.unwrap().kind, NoticeKind::Failure);
        let resolved = state.on_verified(&verified(t0() + 9 * HOUR), t0() + 9 * HOUR);
        assert_eq!(kinds(&resolved), [NoticeKind::Resolved]);
        assert!(
            resolved[0].body.contains("11 times"),
            "{}",
            resolved[0].body
        );
        assert_eq!(
            kinds(&state.on_verified(&verified(t0() + 10 * HOUR), t0() + 10 * HOUR)),
            [NoticeKind::Success]
        );
    }

    /// Issue 16: a mistyped `backupctl trigger --database` is one alert,
    /// not an incident that stays open (nor a database the dead man's
    /// switch then watches).
    #[test]
    fn a_rejected_trigger_alerts_each_time_and_opens_nothing() {
        let mut state = Incidents::new(policy(), [], t0());
        let mut rejected = failed(
            "database viatique_ncc is not configured for backup",
            1,
            false,
        );
        rejected.stage = Stage::Trigger;
        rejected.header.database = "viatique_ncc".parse().unwrap();
        for hour in [0, 1] {
            let notice = state.on_failure(&rejected, t0() + hour * HOUR);
            assert_eq!(notice.unwrap().kind, NoticeKind::Failure);
        }
        let name: DatabaseName = "viatique_ncc".parse().unwrap();
        assert!(state.open(&name).is_empty());
        assert_eq!(state.databases().count(), 0);
        assert!(state.check_stale(t0() + 400 * 24 * HOUR).is_empty());
    }

    #[test]
    fn dead_mans_switch_fires_without_events_and_reminds() {
        let db: DatabaseName = "viatique".parse().unwrap();
        let mut state = Incidents::new(policy(), [db], t0());
        assert!(state.check_stale(t0() + 25 * HOUR).is_empty());
        let stale = state.check_stale(t0() + 27 * HOUR);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].kind, NoticeKind::Stale);
        assert!(state.check_stale(t0() + 30 * HOUR).is_empty());
        assert_eq!(
            state.check_stale(t0() + 34 * HOUR)[0].kind,
            NoticeKind::StaleReminder
        );
        assert_eq!(
            kinds(&state.on_verified(&verified(t0() + 35 * HOUR), t0() + 35 * HOUR)),
            [NoticeKind::Resolved]
        );
        assert!(state.check_stale(t0() + 36 * HOUR).is_empty());
    }
}
