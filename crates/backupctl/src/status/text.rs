//! The text `backupctl status` prints, and the ages, sizes and durations
//! written for people (also used by `trigger` and `doctor`).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::model::{BackupRun, Status};

impl Status {
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
