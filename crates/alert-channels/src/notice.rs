//! What the notifier says: one [`Notice`] per incident step (first failure,
//! reminder, give-up, recovery, stale database, a copy behind, success),
//! written once and
//! rendered for each channel — a full email, a short Telegram/Slack text,
//! and a healthchecks.io ping.

use std::time::Duration;

use backup_core::Stage;
use backup_core::events::{CopyFailed, DumpFailed, DumpSkipped, DumpVerified};
use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};

/// Where the operator's next step is written.
pub const RUNBOOK: &str = "docs/runbooks/database-restore.md";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The first failure of an incident.
    Failure,
    /// The same failure still happening after the reminder interval.
    Reminder,
    /// The pipeline stopped retrying an incident already reported.
    GaveUp,
    /// A database that had an open incident verified again.
    Resolved,
    /// A backup verified, but its copy on one destination is missing or
    /// wrong (the first notice of that destination's incident; reminders
    /// are [`NoticeKind::Reminder`]).
    CopyBehind,
    /// No `dump.verified` for a database within the staleness threshold.
    Stale,
    /// Still stale after the reminder interval.
    StaleReminder,
    /// A backup verified with no incident open (people hear of it only
    /// with `ALERT_ON_SUCCESS`; healthchecks always).
    Success,
    /// A scheduled dump did not start because the previous one was still
    /// running: a warning, not an incident (nothing to resolve).
    Skipped,
    /// The daily digest of every database (`ALERT_DIGEST_SCHEDULE`).
    Digest,
}

/// The healthchecks.io-style signal a notice carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthPing {
    Success,
    Fail,
}

/// One message, rendered for every channel.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: NoticeKind,
    /// The database it is about; `None` for the digest, which covers all.
    pub database: Option<DatabaseName>,
    /// Email subject: one line.
    pub subject: String,
    /// Email body: everything the on-call needs without opening anything.
    pub body: String,
    /// Telegram and Slack: a few short lines.
    pub short: String,
    /// Whether email, Telegram, Slack (or the log) carry it.
    pub for_people: bool,
    pub health: Option<HealthPing>,
}

impl Notice {
    /// The database for logs, or "all databases".
    pub fn scope(&self) -> &str {
        self.database
            .as_ref()
            .map_or("all databases", DatabaseName::as_str)
    }
}

/// The runbook section that tells what to do after a failure of `stage`.
pub fn runbook_section(stage: Stage) -> &'static str {
    match stage {
        Stage::Trigger | Stage::Dump => "When a dump fails",
        Stage::Ship => "When shipping fails",
        Stage::Verify => "When verification fails",
        Stage::Prune => "When pruning refuses to run",
    }
}

fn next_step(section: &str) -> String {
    format!("Next step: {RUNBOOK}, section \"{section}\".")
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `26h`, `3days 2h`: rounded to the minute so it reads well.
pub fn age(duration: Duration) -> String {
    let minutes = Duration::from_secs(duration.as_secs() / 60 * 60);
    if minutes.is_zero() {
        return "under a minute".to_owned();
    }
    humantime::format_duration(minutes).to_string()
}

/// What repeated failures looked like, for reminders and recoveries.
#[derive(Debug, Clone)]
pub struct IncidentSummary {
    pub title: String,
    pub first_seen: DateTime<Utc>,
    pub occurrences: u32,
}

impl Notice {
    /// A failure of any stage: first alert, reminder or give-up.
    pub fn failure(
        failure: &DumpFailed,
        kind: NoticeKind,
        occurrences: u32,
        since: DateTime<Utc>,
    ) -> Notice {
        let database = &failure.header.database;
        let stage = failure.stage;
        let section = runbook_section(stage);
        let (label, emoji) = match kind {
            NoticeKind::Reminder => ("STILL FAILING", "🔁"),
            NoticeKind::GaveUp => ("GAVE UP", "⛔"),
            _ => ("FAILED", "🔴"),
        };
        let subject = format!(
            "[backup] {label} {database} at {stage}: {}",
            backup_core::clip(&failure.error, 120)
        );
        let retry = if failure.will_retry {
            "yes (the pipeline retries by itself)"
        } else {
            "no (the pipeline has stopped retrying)"
        };
        let mut body = format!(
            "Backup of database {database} failed at stage {stage}.\n\n\
             Cause: {}\n\n\
             Backup id: {}\nAttempt: {}\nWill retry: {retry}\n",
            failure.error, failure.header.backup_id, failure.attempt,
        );
        if let Some(artifact) = &failure.artifact {
            body.push_str(&format!("Artifact: {artifact}\n"));
        }
        if let Some(tag) = &failure.origin.tag {
            body.push_str(&format!("Tag: {tag}\n"));
        }
        body.push_str(&format!(
            "When: {}\n",
            failure.header.occurred_at.to_rfc3339()
        ));
        if occurrences > 1 {
            body.push_str(&format!(
                "This failure has happened {occurrences} times since {}.\n",
                when(since)
            ));
        }
        body.push_str(&format!("\n{}\n", next_step(section)));

        let mut short = format!(
            "{emoji} {database}: {stage} failed{}\nCause: {}\nBackup {} · attempt {} · {}\n",
            match kind {
                NoticeKind::Reminder =>
                    format!(" again ({occurrences} times since {})", when(since)),
                NoticeKind::GaveUp => " and will not be retried".to_owned(),
                _ => String::new(),
            },
            backup_core::clip(&failure.error, 600),
            failure.header.backup_id,
            failure.attempt,
            if failure.will_retry {
                "will retry"
            } else {
                "no more retries"
            },
        );
        short.push_str(&format!("Next: runbook \"{section}\""));
        Notice {
            kind,
            database: Some(database.clone()),
            subject,
            body,
            short,
            for_people: true,
            health: Some(HealthPing::Fail),
        }
    }

    /// A verified backup whose copy on one destination could not be
    /// proven: [`NoticeKind::CopyBehind`] first, then
    /// [`NoticeKind::Reminder`] while it stays behind. No healthcheck
    /// ping: the backup itself is proven.
    pub fn copy_behind(
        verified: &DumpVerified,
        copy: &CopyFailed,
        kind: NoticeKind,
        occurrences: u32,
        since: DateTime<Utc>,
    ) -> Notice {
        let database = &verified.header.database;
        let section = runbook_section(Stage::Verify);
        let label = if kind == NoticeKind::Reminder {
            "STILL BEHIND"
        } else {
            "COPY BEHIND"
        };
        let subject = format!(
            "[backup] {label} {database}: the copy on {} ({}): {}",
            copy.label,
            copy.destination,
            backup_core::clip(&copy.error, 120)
        );
        let mut body = format!(
            "Backup {} of database {database} was verified from another copy, but its copy on \
             destination {} ({}) could not be proven.\n\n\
             Cause: {}\n\n\
             Artifact: {}\nWhen: {}\n",
            verified.header.backup_id,
            copy.label,
            copy.destination,
            copy.error,
            verified.artifact.artifact,
            verified.header.occurred_at.to_rfc3339(),
        );
        if occurrences > 1 {
            body.push_str(&format!(
                "That copy has been behind {occurrences} times since {}.\n",
                when(since)
            ));
        }
        body.push_str(&format!(
            "\nThe backup itself is proven; restore from another destination \
             (backupctl restore --from <label>) until this one is fixed.\n\n{}\n",
            next_step(section)
        ));
        let short = format!(
            "🟠 {database}: copy on {} behind{}\n{}\nCause: {}\nBackup {}\nNext: runbook \"{section}\"",
            copy.label,
            if occurrences > 1 {
                format!(" ({occurrences} times since {})", when(since))
            } else {
                String::new()
            },
            copy.destination,
            backup_core::clip(&copy.error, 600),
            verified.header.backup_id,
        );
        Notice {
            kind,
            database: Some(database.clone()),
            subject,
            body,
            short,
            for_people: true,
            health: None,
        }
    }

    /// A database with open incidents verified again.
    pub fn resolved(verified: &DumpVerified, incidents: &[IncidentSummary]) -> Notice {
        let database = &verified.header.database;
        let subject = format!("[backup] RESOLVED {database}: a backup verified again");
        let mut body = format!(
            "Backup {} of database {database} was verified at {} ({}, {} tables, {} rows).\n\nResolved:\n",
            verified.header.backup_id,
            verified.header.occurred_at.to_rfc3339(),
            verified.artifact.artifact,
            verified.tables,
            verified.rows,
        );
        let mut short = format!(
            "✅ {database}: resolved, backup {} verified\n",
            verified.header.backup_id
        );
        for incident in incidents {
            let line = format!(
                "- {} (since {}, {} time{})\n",
                incident.title,
                when(incident.first_seen),
                incident.occurrences,
                if incident.occurrences == 1 { "" } else { "s" }
            );
            body.push_str(&line);
            short.push_str(&line);
        }
        Notice {
            kind: NoticeKind::Resolved,
            database: Some(database.clone()),
            subject,
            body,
            short: short.trim_end().to_owned(),
            for_people: true,
            health: Some(HealthPing::Success),
        }
    }

    /// A verified backup with nothing to resolve.
    pub fn success(verified: &DumpVerified, for_people: bool) -> Notice {
        let database = &verified.header.database;
        let size = verified.artifact.size_bytes;
        Notice {
            kind: NoticeKind::Success,
            database: Some(database.clone()),
            subject: format!("[backup] OK {database}: backup verified"),
            body: format!(
                "Backup {} of database {database} was verified at {}.\n\nArtifact: {}\nSize: {size} bytes\nTables: {}\nRows: {}\n",
                verified.header.backup_id,
                verified.header.occurred_at.to_rfc3339(),
                verified.artifact.artifact,
                verified.tables,
                verified.rows,
            ),
            short: format!(
                "🟢 {database}: backup {} verified ({size} bytes, {} rows)",
                verified.header.backup_id, verified.rows
            ),
            for_people,
            health: Some(HealthPing::Success),
        }
    }

    /// `dump.skipped`: one warning; no healthcheck ping, since nothing
    /// failed yet (the dead man's switch covers a dump that never ends).
    pub fn skipped(skipped: &DumpSkipped) -> Notice {
        let database = &skipped.header.database;
        let what = format!(
            "scheduled dump of {database} skipped: the previous dump ({}, running since {}) is still running",
            skipped.running_backup_id,
            when(skipped.running_since)
        );
        let body = format!(
            "The {what}.\n\n             Nothing has failed yet, but dumps now take longer than the schedule allows. \
             If it happens again, compare the dumps' durations (duration_ms of dump.created) \
             and look for long transactions or locks on the source; a dump that stops \
             moving is ended by the stall watchdog.\n\nWhen: {}\n",
            skipped.header.occurred_at.to_rfc3339()
        );
        Notice {
            kind: NoticeKind::Skipped,
            database: Some(database.clone()),
            subject: format!("[backup] SKIPPED {database}: the previous dump is still running"),
            body,
            short: format!("⏭ {what}"),
            for_people: true,
            health: None,
        }
    }

    /// No `dump.verified` for `database` within the threshold.
    pub fn stale(
        database: &DatabaseName,
        last_verified: Option<DateTime<Utc>>,
        silent_for: Duration,
        reminder: bool,
    ) -> Notice {
        let section = runbook_section(Stage::Dump);
        let last = match last_verified {
            Some(at) => format!("the last one was verified at {}", when(at)),
            None => "none was ever seen since the notifier started watching".to_owned(),
        };
        let silent = age(silent_for);
        let subject = format!("[backup] STALE {database}: no verified backup for {silent}");
        let body = format!(
            "No backup of database {database} has been verified for {silent}; {last}.\n\n\
             Either nothing ran (dumper down, schedule not firing, NATS emptied) or every \
             attempt failed. Check that the dumper and the verifier are running, then \
             trigger a backup: backupctl trigger --database {database} --wait\n\n{}\n",
            next_step(section)
        );
        let short = format!(
            "⏰ {database}: no verified backup for {silent}{}\n{}\nNext: runbook \"{section}\"",
            if reminder { " (still)" } else { "" },
            match last_verified {
                Some(at) => format!("Last verified: {}", when(at)),
                None => "Never verified since watching started".to_owned(),
            }
        );
        Notice {
            kind: if reminder {
                NoticeKind::StaleReminder
            } else {
                NoticeKind::Stale
            },
            database: Some(database.clone()),
            subject,
            body,
            short,
            for_people: true,
            health: Some(HealthPing::Fail),
        }
    }
}
