//! When the pruner runs on its own, besides after each `dump.verified`: a
//! cron expression in `BACKUP_TZ` (`PRUNE_SCHEDULE`, default `30 4 * * *`),
//! a fixed interval (`PRUNE_INTERVAL`, which wins when set), or `off`.
//!
//! The scheduled run is what ages out unverified backups and abandoned
//! uploads when no backup reaches `dump.verified` for days, which is
//! exactly when the remote needs watching.

use std::time::Duration;

use backup_core::calendar::LocalCron;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub enum Schedule {
    Off,
    Cron(Box<LocalCron>),
    Every(Duration),
}

impl Schedule {
    /// `off` (or `none`, or empty) disables the scheduled runs.
    pub fn parse(cron: &str, interval: Option<Duration>, timezone: Tz) -> Result<Self, String> {
        if let Some(interval) = interval {
            if interval.is_zero() {
                return Err("PRUNE_INTERVAL must be longer than zero".into());
            }
            return Ok(Schedule::Every(interval));
        }
        Ok(match LocalCron::parse("PRUNE_SCHEDULE", cron, timezone)? {
            Some(cron) => Schedule::Cron(Box::new(cron)),
            None => Schedule::Off,
        })
    }

    /// The first run strictly after `now`, `None` if never.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            // An interval of centuries would overflow the calendar: never.
            Schedule::Every(interval) => {
                now.checked_add_signed(chrono::TimeDelta::from_std(*interval).ok()?)
            }
            Schedule::Cron(cron) => cron.next_after(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_runs_at_local_time_across_dst() {
        let schedule = Schedule::parse("30 4 * * *", None, chrono_tz::Europe::Paris).unwrap();
        let before = Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap();
        let first = schedule.next_after(before).unwrap();
        let second = schedule.next_after(first).unwrap();
        // 04:30 CET (UTC+1) on Saturday, 04:30 CEST (UTC+2) on the Sunday
        // summer time starts.
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 3, 28, 3, 30, 0).unwrap());
        assert_eq!(second, Utc.with_ymd_and_hms(2026, 3, 29, 2, 30, 0).unwrap());
    }

    #[test]
    fn interval_wins_and_off_disables() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let every = Schedule::parse("30 4 * * *", Some(Duration::from_secs(60)), Tz::UTC).unwrap();
        assert_eq!(
            every.next_after(now),
            Some(now + chrono::TimeDelta::minutes(1))
        );
        assert!(
            Schedule::parse("off", None, Tz::UTC)
                .unwrap()
                .next_after(now)
                .is_none()
        );
        assert!(Schedule::parse("* * *", None, Tz::UTC).is_err());
        assert!(Schedule::parse("61 * * * *", None, Tz::UTC).is_err());
    }
}
