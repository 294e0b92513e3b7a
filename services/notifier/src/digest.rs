//! The daily digest (`ALERT_DIGEST_SCHEDULE`, five cron fields in
//! `BACKUP_TZ`; off by default): one message on every people channel that
//! says, per database, when the last verified backup was taken and how big
//! it is, how its size and stage durations move compared with the backups
//! before it (a dump getting slower night after night shows here long
//! before it hits a stall limit), what failed in the last 24 hours and is
//! still open, and how much the remote holds after the last prune.
//!
//! The [`Ledger`] is fed by the same events as the incidents and rebuilt
//! from the stream at start-up. Every entry is keyed by what it describes
//! (an artifact, one attempt of one stage), so replaying an event the
//! consumer will deliver again counts it once.
//!
//! Retries: the digest is a notice like the others; each channel retries
//! it on its own. A digest whose time passed while the notifier was down is
//! not sent late: the next one covers the same ground.

use std::collections::BTreeMap;
use std::time::Duration;

use backup_core::events::{DumpCreated, DumpFailed, DumpPruned, DumpShipped, DumpVerified};
use backup_core::human::human_bytes;
use backup_core::names::{ArtifactName, DatabaseName};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::Message;
use crate::incidents::Incidents;
use alert_channels::notice::{IncidentSummary, Notice, NoticeKind, age};

/// Artifacts remembered per database: enough for a week of trend at a few
/// backups a day.
const ARTIFACTS_KEPT: usize = 64;
/// Backups before the newest that its figures are compared with.
const TREND_SPAN: usize = 7;
/// The failures a digest counts.
const FAILURE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Telegram refuses messages longer than 4096 characters.
const SHORT_MAX: usize = 3900;

/// What the events said about one artifact.
#[derive(Debug, Clone, Default)]
struct ArtifactFacts {
    size_bytes: Option<u64>,
    dump_ms: Option<u64>,
    ship_ms: Option<u64>,
    verify_ms: Option<u64>,
    verified: bool,
}

#[derive(Debug, Clone, Copy)]
struct RemoteUsage {
    at: DateTime<Utc>,
    artifacts: usize,
    bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct DatabaseLedger {
    artifacts: BTreeMap<ArtifactName, ArtifactFacts>,
    /// One entry per stage attempt ("<backup id>/<stage>/<attempt>").
    failures: BTreeMap<String, DateTime<Utc>>,
    remote: Option<RemoteUsage>,
}

/// The digest's memory: facts per database, from events.
#[derive(Debug, Default)]
pub struct Ledger {
    databases: BTreeMap<DatabaseName, DatabaseLedger>,
}

impl Ledger {
    fn artifact(&mut self, artifact: &ArtifactName) -> &mut ArtifactFacts {
        let ledger = self
            .databases
            .entry(artifact.database().clone())
            .or_default();
        if !ledger.artifacts.contains_key(artifact) && ledger.artifacts.len() >= ARTIFACTS_KEPT {
            // Names sort by time within a database: the first is the oldest.
            ledger.artifacts.pop_first();
        }
        ledger.artifacts.entry(artifact.clone()).or_default()
    }

    pub fn on_created(&mut self, created: &DumpCreated) {
        let facts = self.artifact(&created.artifact.artifact);
        facts.size_bytes = Some(created.artifact.size_bytes);
        facts.dump_ms = Some(created.duration_ms);
    }

    pub fn on_shipped(&mut self, shipped: &DumpShipped) {
        let facts = self.artifact(&shipped.artifact.artifact);
        facts.size_bytes = Some(shipped.artifact.size_bytes);
        facts.ship_ms = Some(shipped.duration_ms);
    }

    pub fn on_verified(&mut self, verified: &DumpVerified) {
        let facts = self.artifact(&verified.artifact.artifact);
        facts.size_bytes = Some(verified.artifact.size_bytes);
        facts.verified = true;
        // A re-verification of an old backup says nothing about how long
        // tonight's took.
        if !verified.reverification {
            facts.verify_ms = Some(verified.duration_ms);
        }
    }

    pub fn on_failed(&mut self, failed: &DumpFailed) {
        let ledger = self
            .databases
            .entry(failed.header.database.clone())
            .or_default();
        let at = failed.header.occurred_at;
        ledger.failures.insert(
            format!(
                "{}/{}/{}",
                failed.header.backup_id, failed.stage, failed.attempt
            ),
            at,
        );
        // Only the last day is reported; a week bounds the memory even when
        // the clocks of the publishers disagree.
        let horizon = at - chrono::TimeDelta::days(7);
        ledger.failures.retain(|_, when| *when >= horizon);
    }

    pub fn on_pruned(&mut self, pruned: &DumpPruned) {
        if pruned.dry_run {
            return;
        }
        let ledger = self
            .databases
            .entry(pruned.header.database.clone())
            .or_default();
        let at = pruned.header.occurred_at;
        if ledger.remote.is_none_or(|known| known.at <= at) {
            ledger.remote = Some(RemoteUsage {
                at,
                artifacts: pruned.kept.len(),
                bytes: pruned.kept_bytes,
            });
        }
    }

    /// Takes what the digest needs from any event the notifier reads.
    pub fn record(&mut self, message: &Message) {
        match message {
            Message::Created(created) => self.on_created(created),
            Message::Shipped(shipped) => self.on_shipped(shipped),
            Message::Verified(verified) => self.on_verified(verified),
            Message::Failed(failed) => self.on_failed(failed),
            Message::Pruned(pruned) => self.on_pruned(pruned),
            Message::Skipped(_) | Message::Other => {}
        }
    }

    fn databases(&self) -> impl Iterator<Item = &DatabaseName> {
        self.databases.keys()
    }
}

/// Whether a database needs someone's attention today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Good,
    Failing,
    Stale,
}

/// One database's section of the digest.
struct Section {
    health: Health,
    /// Email lines.
    lines: Vec<String>,
    /// The Telegram/Slack line.
    short: String,
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// `+12%` against the median of earlier values, when there are any.
fn change(latest: u64, earlier: Vec<u64>) -> Option<String> {
    let base = median(earlier).filter(|base| *base > 0)?;
    let percent = (latest as f64 - base as f64) * 100.0 / base as f64;
    Some(format!("{percent:+.0}%"))
}

fn local(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// The trend line of one measure: the newest value, and how it compares.
fn trend(
    label: &str,
    newest: &ArtifactFacts,
    earlier: &[&ArtifactFacts],
    pick: fn(&ArtifactFacts) -> Option<u64>,
    show: fn(u64) -> String,
) -> Option<String> {
    let latest = pick(newest)?;
    let before: Vec<u64> = earlier.iter().filter_map(|facts| pick(facts)).collect();
    let count = before.len();
    Some(match change(latest, before) {
        Some(change) => format!(
            "{label} {} ({change} vs the median of the {count} before)",
            show(latest)
        ),
        None => format!("{label} {}", show(latest)),
    })
}

fn section(
    database: &DatabaseName,
    ledger: Option<&DatabaseLedger>,
    incidents: &[IncidentSummary],
    last_verified: Option<DateTime<Utc>>,
    stale_after: Duration,
    now: DateTime<Utc>,
    zone: Tz,
) -> Section {
    let empty = DatabaseLedger::default();
    let ledger = ledger.unwrap_or(&empty);
    let mut lines = Vec::new();
    let verified: Vec<(&ArtifactName, &ArtifactFacts)> = ledger
        .artifacts
        .iter()
        .filter(|(_, facts)| facts.verified)
        .collect();
    let newest_seen = verified.last().map(|(artifact, _)| artifact.taken_at());
    // The incidents remember verifications older than the ledger's window.
    let newest_at = newest_seen.max(last_verified);
    let silent_for = newest_at.map(|at| (now - at).to_std().unwrap_or_default());
    let stale = silent_for.is_none_or(|silent| silent >= stale_after);
    let health = if stale {
        Health::Stale
    } else if !incidents.is_empty() {
        Health::Failing
    } else {
        Health::Good
    };

    let mut short = match (newest_at, silent_for) {
        (Some(at), Some(silent)) => format!(
            "{database}: last verified {} ago ({})",
            age(silent),
            local(at, zone)
        ),
        _ => format!("{database}: no verified backup known"),
    };
    match verified.split_last() {
        Some(((artifact, newest), earlier)) => {
            let earlier: Vec<&ArtifactFacts> = earlier
                .iter()
                .rev()
                .take(TREND_SPAN)
                .map(|(_, facts)| *facts)
                .collect();
            lines.push(format!(
                "Last verified backup: {artifact}, taken {}, {} ago{}",
                local(artifact.taken_at(), zone),
                age(silent_for.unwrap_or_default()),
                newest
                    .size_bytes
                    .map(|size| format!(", {}", human_bytes(size)))
                    .unwrap_or_default()
            ));
            let dump = trend("dump", newest, &earlier, |f| f.dump_ms, human_ms);
            let trends: Vec<String> = [
                trend("size", newest, &earlier, |f| f.size_bytes, human_bytes),
                dump.clone(),
                trend("upload", newest, &earlier, |f| f.ship_ms, human_ms),
                trend("verify", newest, &earlier, |f| f.verify_ms, human_ms),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !trends.is_empty() {
                lines.push(format!("Trend: {}", trends.join("; ")));
            }
            if let Some(size) = newest.size_bytes {
                short.push_str(&format!(", {}", human_bytes(size)));
            }
            if let Some(dump) = dump {
                short.push_str(&format!(", {dump}"));
            }
        }
        None => match last_verified {
            Some(at) => lines.push(format!(
                "Last verified backup: taken {} (no details since the notifier started)",
                local(at, zone)
            )),
            None => lines.push("No verified backup known.".to_owned()),
        },
    }
    if stale {
        lines.push(format!(
            "STALE: nothing verified within {}.",
            age(stale_after)
        ));
    }

    let window_start = now - FAILURE_WINDOW;
    let failures = ledger
        .failures
        .values()
        .filter(|at| **at >= window_start && **at <= now)
        .count();
    if failures > 0 {
        lines.push(format!("Failed attempts in the last 24 hours: {failures}"));
        short.push_str(&format!(", {failures} failed attempt(s) in 24 h"));
    }
    for incident in incidents {
        lines.push(format!(
            "Open: {} (since {}, {} time{})",
            incident.title,
            local(incident.first_seen, zone),
            incident.occurrences,
            if incident.occurrences == 1 { "" } else { "s" }
        ));
    }
    if !incidents.is_empty() {
        short.push_str(&format!(", {} open incident(s)", incidents.len()));
    }
    match ledger.remote {
        Some(remote) => {
            let bytes = remote
                .bytes
                .map(|b| format!(", {}", human_bytes(b)))
                .unwrap_or_default();
            lines.push(format!(
                "Remote: {} backup(s){bytes} after the last prune ({})",
                remote.artifacts,
                local(remote.at, zone)
            ));
            short.push_str(&format!(", remote {} backup(s){bytes}", remote.artifacts));
        }
        None => lines.push("Remote: no prune seen yet".to_owned()),
    }
    let mark = match health {
        Health::Good => "🟢",
        Health::Failing => "🔴",
        Health::Stale => "⏰",
    };
    Section {
        health,
        lines,
        short: format!("{mark} {short}"),
    }
}

/// The digest at `now`: configured databases first (each one, even if
/// nothing was ever heard of it), then any other the events mention (the
/// globals and media artifacts, databases of another dumper).
pub fn digest(
    ledger: &Ledger,
    incidents: &Incidents,
    configured: &[DatabaseName],
    stale_after: Duration,
    now: DateTime<Utc>,
    zone: Tz,
) -> Notice {
    let mut databases: Vec<DatabaseName> = configured.to_vec();
    for database in ledger.databases().chain(incidents.databases()) {
        if !databases.contains(database) {
            databases.push(database.clone());
        }
    }
    let sections: Vec<(DatabaseName, Section)> = databases
        .into_iter()
        .map(|database| {
            let section = section(
                &database,
                ledger.databases.get(&database),
                &incidents.open(&database),
                incidents.last_verified(&database),
                stale_after,
                now,
                zone,
            );
            (database, section)
        })
        .collect();
    let attention = sections
        .iter()
        .filter(|(_, s)| s.health != Health::Good)
        .count();
    let verdict = match (sections.len(), attention) {
        (0, _) => "no database known yet".to_owned(),
        (n, 0) => format!("all {n} verified within {}", age(stale_after)),
        (n, bad) => format!("{bad} of {n} need attention"),
    };
    let subject = format!("[backup] Daily digest: {verdict}");
    let mut body = format!("Backups as of {}: {verdict}.\n", local(now, zone));
    let mut short = format!("📋 Backup digest, {}: {verdict}", local(now, zone));
    for (database, section) in &sections {
        body.push_str(&format!("\n{database}\n"));
        for line in &section.lines {
            body.push_str(&format!("  {line}\n"));
        }
        short.push('\n');
        short.push_str(&section.short);
    }
    if attention > 0 {
        body.push_str(&format!(
            "\nNext step: {}, and `backupctl status`.\n",
            alert_channels::notice::RUNBOOK
        ));
    }
    Notice {
        kind: NoticeKind::Digest,
        database: None,
        subject,
        body,
        short: backup_core::clip(&short, SHORT_MAX),
        for_people: true,
        health: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::events::Event;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn artifact(taken: DateTime<Utc>) -> String {
        format!("viatique_{}.sql.gz", taken.format("%Y%m%d_%H%M%S"))
    }

    fn created(taken: DateTime<Utc>, size: u64, dump_ms: u64) -> DumpCreated {
        DumpCreated::decode(
            json!({
                "version": 1, "backup_id": format!("b-{}", taken.timestamp()),
                "database": "viatique", "occurred_at": taken,
                "artifact": artifact(taken), "size_bytes": size, "sha256": "a".repeat(64),
                "duration_ms": dump_ms, "tables": 3, "rows": 10,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn verified(taken: DateTime<Utc>, size: u64) -> DumpVerified {
        DumpVerified::decode(
            json!({
                "version": 1, "backup_id": format!("b-{}", taken.timestamp()),
                "database": "viatique", "occurred_at": taken + chrono::TimeDelta::minutes(5),
                "artifact": artifact(taken), "size_bytes": size, "sha256": "a".repeat(64),
                "checks": [], "tables": 3, "rows": 10, "duration_ms": 90_000,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn policy() -> crate::incidents::Policy {
        crate::incidents::Policy {
            stale_after: 26 * HOUR,
            remind_every: 6 * HOUR,
            alert_on_success: false,
        }
    }

    #[test]
    fn trend_compares_the_newest_with_the_median_before_it() {
        let mut ledger = Ledger::default();
        let mut incidents = Incidents::new(policy(), [], at("2026-03-01T00:00:00Z"));
        for (day, size, dump_ms) in [(1, 100, 60_000), (2, 110, 62_000), (3, 120, 90_000)] {
            let taken = at(&format!("2026-03-0{day}T02:00:00Z"));
            ledger.on_created(&created(taken, size * 1024 * 1024, dump_ms));
            // Replayed twice, as a restart can: counted once.
            ledger.on_created(&created(taken, size * 1024 * 1024, dump_ms));
            let event = verified(taken, size * 1024 * 1024);
            ledger.on_verified(&event);
            let _ = incidents.on_verified(&event, event.header.occurred_at);
        }
        let viatique: DatabaseName = "viatique".parse().unwrap();
        let notice = digest(
            &ledger,
            &incidents,
            std::slice::from_ref(&viatique),
            26 * HOUR,
            at("2026-03-03T08:00:00Z"),
            chrono_tz::Europe::Paris,
        );
        assert_eq!(notice.kind, NoticeKind::Digest);
        assert!(
            notice.subject.contains("all 1 verified"),
            "{}",
            notice.subject
        );
        assert!(
            notice.body.contains(
                "viatique_20260303_020000.sql.gz, taken 2026-03-03 03:00 CET, 6h ago, 120.0 MiB"
            ),
            "{}",
            notice.body
        );
        // Median of 100 and 110 is 105: +14%; of 60 s and 62 s, 61 s: +48%.
        assert!(
            notice
                .body
                .contains("size 120.0 MiB (+14% vs the median of the 2 before)"),
            "{}",
            notice.body
        );
        assert!(notice.body.contains("dump 1m 30s (+48%"), "{}", notice.body);
        assert!(
            notice.short.contains("🟢 viatique: last verified 6h ago"),
            "{}",
            notice.short
        );
    }

    #[test]
    fn a_silent_database_and_open_failures_need_attention() {
        let ledger = Ledger::default();
        let incidents = Incidents::new(policy(), [], at("2026-03-01T00:00:00Z"));
        let notice = digest(
            &ledger,
            &incidents,
            &["korrigo".parse().unwrap()],
            26 * HOUR,
            at("2026-03-03T08:00:00Z"),
            Tz::UTC,
        );
        assert!(
            notice.subject.contains("1 of 1 need attention"),
            "{}",
            notice.subject
        );
        assert!(
            notice.body.contains("No verified backup known."),
            "{}",
            notice.body
        );
        assert!(notice.body.contains("STALE"), "{}", notice.body);
        assert!(notice.short.contains("⏰ korrigo"), "{}", notice.short);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(median(vec![3, 1, 2]), Some(2));
        assert_eq!(change(110, vec![100]), Some("+10%".to_owned()));
        assert_eq!(change(90, vec![]), None);
    }
}
