//! The retention plan: a pure function of the backups found on the remote,
//! the policy and the clock, so it can be tested exhaustively and gives the
//! same answer when run twice.
//!
//! # Semantics (restic `forget`, with safety rails)
//!
//! Only **verified** backups (a valid `.verified.json` beside the artifact,
//! see [`crate::verified`]) take part in the rules. Walking them newest first:
//!
//! - `keep_last` N: the N newest.
//! - `keep_within` D: every one taken within D of the **newest verified
//!   backup** (not of the pruner's clock, so a wrong clock on this machine
//!   cannot age everything out at once).
//! - `keep_daily` / `keep_weekly` / `keep_monthly` / `keep_yearly` N: the
//!   newest backup of each of the N most recent calendar days / ISO weeks /
//!   months / years **that have a verified backup**, in `BACKUP_TZ`. Like
//!   restic, a day without a backup does not use up a slot, so a week-long
//!   outage does not shorten the history.
//!
//! Then, whatever the rules say:
//!
//! - the newest verified backup is kept;
//! - every backup tagged `pre-deploy` or with a tag of `keep_tags` is kept,
//!   verified or not; with `keep_tagged_for` D (`RETENTION_KEEP_TAGGED_DAYS`)
//!   only those taken within D of the newest verified backup are, plus,
//!   whatever their age, the newest backup of each such tag and its newest
//!   verified one. An expired tagged backup is then an ordinary backup: the
//!   other rules may still keep it;
//! - if fewer than `min_keep` verified backups are kept, the newest others
//!   are added until there are `min_keep` (or none are left);
//! - a backup the listing could not judge (unreadable manifest) is kept;
//! - a backup the destination still locks (S3 Object Lock: a
//!   `retain_until` ahead of `now` on its artifact or a sidecar) is kept,
//!   "locked until" that date: deleting it would fail, or half succeed.
//!
//! An **unverified** backup (no record, an invalid one, or no manifest) never
//! takes a bucket and never counts toward the floor, so it cannot displace
//! a verified one. It is kept while it may still be waiting for the
//! verifier: when it is newer than the newest verified backup, or younger
//! than `unverified_grace` (2 days by default) by the pruner's clock. Past
//! both, it failed or was never verified, and it is deleted so broken
//! backups do not pile up. With no verified backup at all nothing is
//! deleted: there is nothing proven good to fall back on.
//!
//! A backup kept by several rules is kept once, with every reason listed.
//!
//! # Worked examples
//!
//! Policy 0 last, 7 daily, 4 weekly, 6 monthly (the defaults), one verified
//! backup every night at 01:30 UTC from 1 to 31 March 2025, `BACKUP_TZ`
//! Europe/Paris (31 March is a Monday):
//!
//! - daily: 31, 30, 29, 28, 27, 26, 25 March;
//! - weekly: W14 → 31 (already daily), W13 → 30 (already), W12 → 23,
//!   W11 → 16;
//! - monthly: March → 31 (already); no older month exists, so the other 5
//!   slots stay unused.
//!
//! 9 backups remain: 16, 23, 25–31 March. The other 22 go (which is more
//! than half, so the brake in the service stops the first run on such a
//! history until the operator sets `RETENTION_FORCE=true` once).
//!
//! Time zone: on Sunday 30 March 2025 Paris moves from UTC+1 to UTC+2. A
//! backup at 29 March 23:30 UTC is taken on **30 March** 00:30 in Paris, so
//! with `BACKUP_TZ=Europe/Paris` it competes with the 30 March backups for
//! that day; with `BACKUP_TZ=UTC` it is the newest of 29 March instead.
//! Likewise 31 January 23:30 UTC is 1 February in Paris: it is in the
//! February bucket for `keep_monthly`.
//!
//! Unverified: if the backups of 20 March (failed verification) and of
//! 31 March 13:00 (not yet verified) have no record, on 10 April the first
//! is deleted (older than the newest verified and than 2 days) and the
//! second is kept ("awaiting verification") because it is newer than the
//! newest verified backup, however old it gets.

use std::collections::BTreeMap;
use std::fmt;

use backup_core::names::{ArtifactName, Tag};
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;

/// The tag that marks a backup taken before a deployment; never deleted.
pub const PRE_DEPLOY_TAG: &str = "pre-deploy";

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    pub keep_yearly: usize,
    /// Keep every verified backup taken this close to the newest verified one.
    pub keep_within: Option<TimeDelta>,
    /// Never fewer verified backups than this (at least 1 in practice).
    pub min_keep: usize,
    /// Tags whose backups are kept by their tag (`pre-deploy` always is).
    pub keep_tags: Vec<Tag>,
    /// How long a tagged backup is kept by its tag, measured back from the
    /// newest verified backup; `None`: forever. The newest backup of each
    /// protected tag (and its newest verified one) is kept whatever its age.
    pub keep_tagged_for: Option<TimeDelta>,
    /// Calendar of the day/week/month/year buckets.
    pub timezone: Tz,
    /// How long an unverified backup older than the newest verified one may
    /// still be waiting for the verifier.
    pub unverified_grace: TimeDelta,
}

impl Default for Policy {
    /// The documented defaults: 0 last, 7 daily, 4 weekly, 6 monthly, floor 3.
    fn default() -> Self {
        Self {
            keep_last: 0,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            keep_yearly: 0,
            keep_within: None,
            min_keep: 3,
            keep_tags: Vec::new(),
            keep_tagged_for: None,
            timezone: Tz::UTC,
            unverified_grace: TimeDelta::days(2),
        }
    }
}

impl Policy {
    pub fn protects_tag(&self, tag: &Tag) -> bool {
        tag.as_str() == PRE_DEPLOY_TAG || self.keep_tags.contains(tag)
    }
}

/// One backup as seen on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub artifact: ArtifactName,
    /// A valid verification record stands beside it.
    pub verified: bool,
    pub tag: Option<Tag>,
    /// Why the listing cannot judge it (e.g. its manifest is unreadable, so
    /// its tag is unknown): kept whatever the policy says.
    pub held: Option<String>,
    /// Until when the destination refuses to delete it (the latest
    /// `retain_until` of its files); kept until then whatever the policy says.
    pub locked_until: Option<DateTime<Utc>>,
}

/// Why a backup is kept. A backup may have several.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    NewestVerified,
    Last,
    Within(TimeDelta),
    Daily(NaiveDate),
    Weekly { year: i32, week: u32 },
    Monthly { year: i32, month: u32 },
    Yearly(i32),
    Tag(Tag),
    MinKeep,
    AwaitingVerification,
    Held(String),
    LockedUntil(DateTime<Utc>),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NewestVerified => f.write_str("newest verified"),
            Reason::Last => f.write_str("last"),
            Reason::Within(span) => match span.to_std() {
                Ok(span) => write!(f, "within {}", humantime::format_duration(span)),
                Err(_) => f.write_str("within"),
            },
            Reason::Daily(day) => write!(f, "daily {day}"),
            Reason::Weekly { year, week } => write!(f, "weekly {year}-W{week:02}"),
            Reason::Monthly { year, month } => write!(f, "monthly {year}-{month:02}"),
            Reason::Yearly(year) => write!(f, "yearly {year}"),
            Reason::Tag(tag) => write!(f, "tag {tag}"),
            Reason::MinKeep => f.write_str("minimum to keep"),
            Reason::AwaitingVerification => f.write_str("awaiting verification"),
            Reason::Held(why) => write!(f, "held: {why}"),
            Reason::LockedUntil(until) => write!(
                f,
                "locked until {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

/// Why a backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Verified, but newer verified backups fill every bucket it could take.
    Superseded,
    /// Never verified, older than the newest verified backup and the grace.
    UnverifiedExpired,
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discard::Superseded => f.write_str("superseded: no retention rule keeps it"),
            Discard::UnverifiedExpired => f.write_str(
                "never verified, older than the newest verified backup and than the grace",
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Kept artifacts with every rule that kept them.
    pub keep: BTreeMap<ArtifactName, Vec<Reason>>,
    pub delete: BTreeMap<ArtifactName, Discard>,
}

impl Plan {
    /// `kept_reasons` of `dump.pruned`.
    pub fn kept_reasons(&self) -> BTreeMap<String, Vec<String>> {
        self.keep
            .iter()
            .map(|(artifact, reasons)| {
                (
                    artifact.to_string(),
                    reasons.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }
}

/// Computes what to keep and what to delete. `now` only serves the grace
/// of unverified backups and the end of object locks; everything else is
/// relative to the backups.
pub fn plan(backups: &[Backup], policy: &Policy, now: DateTime<Utc>) -> Plan {
    let mut sorted: Vec<&Backup> = backups.iter().collect();
    sorted.sort_by(|a, b| b.artifact.cmp(&a.artifact));
    sorted.dedup_by(|a, b| a.artifact == b.artifact);
    let verified: Vec<&Backup> = sorted.iter().copied().filter(|b| b.verified).collect();

    let mut keep: BTreeMap<ArtifactName, Vec<Reason>> = BTreeMap::new();
    let mut reason = |artifact: &ArtifactName, why: Reason| {
        let reasons = keep.entry(artifact.clone()).or_default();
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    };

    let newest_verified = verified.first().map(|b| b.artifact.taken_at());
    if let Some(newest) = verified.first() {
        reason(&newest.artifact, Reason::NewestVerified);
    }
    for backup in verified.iter().take(policy.keep_last) {
        reason(&backup.artifact, Reason::Last);
    }
    if let (Some(within), Some(newest)) = (policy.keep_within, newest_verified) {
        for backup in &verified {
            if newest - backup.artifact.taken_at() <= within {
                reason(&backup.artifact, Reason::Within(within));
            }
        }
    }
    let tz = policy.timezone;
    let local_date = |b: &Backup| b.artifact.taken_at().with_timezone(&tz).date_naive();
    keep_buckets(&verified, policy.keep_daily, &mut reason, |b| {
        Reason::Daily(local_date(b))
    });
    keep_buckets(&verified, policy.keep_weekly, &mut reason, |b| {
        let week = local_date(b).iso_week();
        Reason::Weekly {
            year: week.year(),
            week: week.week(),
        }
    });
    keep_buckets(&verified, policy.keep_monthly, &mut reason, |b| {
        let date = local_date(b);
        Reason::Monthly {
            year: date.year(),
            month: date.month(),
        }
    });
    keep_buckets(&verified, policy.keep_yearly, &mut reason, |b| {
        Reason::Yearly(local_date(b).year())
    });
    let newest_of_tag = newest_tagged(&sorted, policy);
    for backup in &sorted {
        if let Some(tag) = &backup.tag
            && policy.protects_tag(tag)
        {
            let young_enough = match (policy.keep_tagged_for, newest_verified) {
                (Some(span), Some(newest)) => newest - backup.artifact.taken_at() <= span,
                _ => true,
            };
            if young_enough || newest_of_tag.contains(&&backup.artifact) {
                reason(&backup.artifact, Reason::Tag(tag.clone()));
            }
        }
        if let Some(why) = &backup.held {
            reason(&backup.artifact, Reason::Held(why.clone()));
        }
        if let Some(until) = backup.locked_until.filter(|until| *until > now) {
            reason(&backup.artifact, Reason::LockedUntil(until));
        }
    }
    let mut kept_verified = verified
        .iter()
        .filter(|b| keep.contains_key(&b.artifact))
        .count();
    for backup in &verified {
        if kept_verified >= policy.min_keep {
            break;
        }
        if !keep.contains_key(&backup.artifact) {
            keep.entry(backup.artifact.clone())
                .or_default()
                .push(Reason::MinKeep);
            kept_verified += 1;
        }
    }

    let mut delete = BTreeMap::new();
    for backup in &sorted {
        if keep.contains_key(&backup.artifact) {
            continue;
        }
        if backup.verified {
            delete.insert(backup.artifact.clone(), Discard::Superseded);
            continue;
        }
        let taken_at = backup.artifact.taken_at();
        let may_still_be_verified = match newest_verified {
            None => true,
            Some(newest) => taken_at > newest || now - taken_at < policy.unverified_grace,
        };
        if may_still_be_verified {
            keep.entry(backup.artifact.clone())
                .or_default()
                .push(Reason::AwaitingVerification);
        } else {
            delete.insert(backup.artifact.clone(), Discard::UnverifiedExpired);
        }
    }
    Plan { keep, delete }
}

/// For each protected tag, its newest backup and its newest verified one:
/// kept by the tag however old, so an expiring `RETENTION_KEEP_TAGGED_DAYS`
/// never removes the last way back to a release. The verified one is
/// counted apart so that an unverified newer tagged backup cannot displace
/// it.
fn newest_tagged<'a>(sorted: &[&'a Backup], policy: &Policy) -> Vec<&'a ArtifactName> {
    let mut newest: BTreeMap<(&Tag, bool), &ArtifactName> = BTreeMap::new();
    // Newest first, so the first backup met is the newest.
    for backup in sorted {
        if let Some(tag) = &backup.tag
            && policy.protects_tag(tag)
        {
            newest.entry((tag, false)).or_insert(&backup.artifact);
            if backup.verified {
                newest.entry((tag, true)).or_insert(&backup.artifact);
            }
        }
    }
    newest.into_values().collect()
}

/// restic's bucket rule: the newest backup of each bucket, for the `count`
/// buckets whose newest backup is most recent. Buckets are ranked by their
/// newest backup rather than by the order met, so that a zone whose clock
/// falls back across midnight cannot make a second run pick other buckets.
fn keep_buckets(
    verified: &[&Backup],
    count: usize,
    reason: &mut impl FnMut(&ArtifactName, Reason),
    bucket: impl Fn(&Backup) -> Reason,
) {
    let mut newest_of_bucket: BTreeMap<Reason, &ArtifactName> = BTreeMap::new();
    // Newest first, so the first backup met in a bucket is its newest.
    for backup in verified {
        newest_of_bucket
            .entry(bucket(backup))
            .or_insert(&backup.artifact);
    }
    let mut ranked: Vec<(Reason, &ArtifactName)> = newest_of_bucket.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1));
    for (key, artifact) in ranked.into_iter().take(count) {
        reason(artifact, key);
    }
}

#[cfg(test)]
mod tests;
