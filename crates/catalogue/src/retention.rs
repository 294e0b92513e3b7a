//! The retention policy as flags and environment variables
//! (`RETENTION_*`, `BACKUP_TZ`), shared by the pruner and `backupctl prune`
//! so both read the same configuration, and turned into the plain
//! [`Policy`] the plan takes.

use std::time::Duration;

use backup_core::config::parse_duration;
use backup_core::names::Tag;
use chrono::TimeDelta;

use crate::policy::Policy;

#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Keep the newest N verified backups.
    #[arg(long, env = "RETENTION_KEEP_LAST", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest verified backup of each of the last N days that have one.
    #[arg(long, env = "RETENTION_KEEP_DAILY", default_value_t = 7)]
    pub keep_daily: usize,
    /// Keep the newest verified backup of each of the last N ISO weeks that have one.
    #[arg(long, env = "RETENTION_KEEP_WEEKLY", default_value_t = 4)]
    pub keep_weekly: usize,
    /// Keep the newest verified backup of each of the last N months that have one.
    #[arg(long, env = "RETENTION_KEEP_MONTHLY", default_value_t = 6)]
    pub keep_monthly: usize,
    /// Keep the newest verified backup of each of the last N years that have one.
    #[arg(long, env = "RETENTION_KEEP_YEARLY", default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every verified backup taken within this span (e.g. 14d) of the newest verified one.
    #[arg(long, env = "RETENTION_KEEP_WITHIN", value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
    /// Never leave fewer verified backups than this (at least 1).
    #[arg(long, env = "RETENTION_MIN_KEEP", default_value_t = 3)]
    pub min_keep: usize,
    /// Tags never deleted besides pre-deploy, comma-separated.
    #[arg(long, env = "RETENTION_KEEP_TAGS", value_delimiter = ',')]
    pub keep_tags: Vec<Tag>,
    /// Days a tagged backup (pre-deploy, RETENTION_KEEP_TAGS) is kept by its tag; empty or
    /// `forever`: forever. The newest backup of each tag is kept however old.
    #[arg(long, env = "RETENTION_KEEP_TAGGED_DAYS", default_value = "", value_parser = parse_tagged_days)]
    pub keep_tagged_days: TaggedDays,
    /// How long an unverified backup older than the newest verified one is kept.
    #[arg(long, env = "RETENTION_UNVERIFIED_GRACE", default_value = "2d", value_parser = parse_duration)]
    pub unverified_grace: Duration,
    /// Time zone of the day/week/month/year buckets (IANA name).
    #[arg(long = "backup-tz", env = "BACKUP_TZ", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,
    /// Allow one run to delete more than half of a database's backups.
    #[arg(
        long = "retention-force",
        env = "RETENTION_FORCE",
        default_value_t = false
    )]
    pub force: bool,
}

/// `RETENTION_KEEP_TAGGED_DAYS`: a number of days, or `None` (empty, as
/// compose passes an unset variable, or `forever`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaggedDays(pub Option<u32>);

fn parse_tagged_days(text: &str) -> Result<TaggedDays, String> {
    match text.trim() {
        "" | "forever" => Ok(TaggedDays(None)),
        days => days
            .parse()
            .map(|days| TaggedDays(Some(days)))
            .map_err(|_| format!("{days:?} is not a number of days (or `forever`)")),
    }
}

/// A retention setting that cannot be applied, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(String);

impl RetentionArgs {
    /// The policy these settings describe (`force` is not part of it: it
    /// is the pruner's, lifting the brake).
    pub fn policy(&self) -> Result<Policy, InvalidPolicy> {
        if self.min_keep == 0 {
            return Err(InvalidPolicy(
                "RETENTION_MIN_KEEP must be at least 1".into(),
            ));
        }
        let span = |name: &str, d: Duration| {
            TimeDelta::from_std(d).map_err(|_| InvalidPolicy(format!("{name} is too long")))
        };
        Ok(Policy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .map(|d| span("RETENTION_KEEP_WITHIN", d))
                .transpose()?,
            min_keep: self.min_keep,
            keep_tags: self.keep_tags.clone(),
            keep_tagged_for: match self.keep_tagged_days.0 {
                Some(0) => {
                    return Err(InvalidPolicy(
                        "RETENTION_KEEP_TAGGED_DAYS must be at least 1 (unset it to keep tagged backups forever)"
                            .into(),
                    ));
                }
                Some(days) => Some(TimeDelta::days(i64::from(days))),
                None => None,
            },
            timezone: self.timezone,
            unverified_grace: span("RETENTION_UNVERIFIED_GRACE", self.unverified_grace)?,
        })
    }
}

impl TryFrom<&RetentionArgs> for Policy {
    type Error = InvalidPolicy;

    fn try_from(args: &RetentionArgs) -> Result<Self, Self::Error> {
        args.policy()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        retention: RetentionArgs,
    }

    fn parse(args: &[&str]) -> RetentionArgs {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .expect("parses")
            .retention
    }

    #[test]
    fn the_defaults_are_the_documented_policy() {
        assert_eq!(parse(&[]).policy(), Ok(Policy::default()));
    }

    #[test]
    fn settings_that_cannot_be_applied_are_refused_by_name() {
        let error = parse(&["--min-keep", "0"]).policy().unwrap_err();
        assert_eq!(error.to_string(), "RETENTION_MIN_KEEP must be at least 1");
        let mut args = parse(&[]);
        args.keep_within = Some(Duration::MAX);
        let error = Policy::try_from(&args).unwrap_err();
        assert_eq!(error.to_string(), "RETENTION_KEEP_WITHIN is too long");
        let policy = parse(&["--keep-within", "14d", "--backup-tz", "Europe/Paris"])
            .policy()
            .unwrap();
        assert_eq!(policy.keep_within, Some(TimeDelta::days(14)));
        assert_eq!(policy.timezone, chrono_tz::Europe::Paris);
        let error = parse(&["--keep-tagged-days", "0"]).policy().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("RETENTION_KEEP_TAGGED_DAYS must be at least 1")
        );
        let policy = parse(&["--keep-tagged-days", "90"]).policy().unwrap();
        assert_eq!(policy.keep_tagged_for, Some(TimeDelta::days(90)));
        for forever in ["", "forever"] {
            let policy = parse(&["--keep-tagged-days", forever]).policy().unwrap();
            assert_eq!(policy.keep_tagged_for, None, "{forever:?}");
        }
        assert!(parse_tagged_days("a year").is_err());
    }
}
