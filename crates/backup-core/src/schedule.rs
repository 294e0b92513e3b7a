//! The dumps' own schedule: `BACKUP_SCHEDULE` (five cron fields, croner)
//! read in `BACKUP_TZ` (an IANA zone). The dumper fires its triggers on it;
//! `backupctl status` and `doctor` show when it fires next. Unlike
//! [`crate::calendar::LocalCron`] a pattern that never fires is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Names the variable, the field and what it allows.
    #[error("{0}")]
    Pattern(String),
    #[error("BACKUP_TZ {0:?} is not an IANA time zone (e.g. Europe/Paris)")]
    Zone(String),
    #[error("BACKUP_SCHEDULE {0:?} never fires")]
    Never(String),
}

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    zone: Tz,
    pattern: String,
}

impl Schedule {
    pub fn parse(pattern: &str, zone: &str) -> Result<Self, ScheduleError> {
        let zone: Tz = zone
            .trim()
            .parse()
            .map_err(|_| ScheduleError::Zone(zone.to_owned()))?;
        crate::calendar::check_fields("BACKUP_SCHEDULE", pattern)
            .map_err(ScheduleError::Pattern)?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| {
                ScheduleError::Pattern(crate::calendar::cron_error("BACKUP_SCHEDULE", pattern, &e))
            })?;
        let schedule = Self {
            cron,
            zone,
            pattern: pattern.to_owned(),
        };
        schedule.next_after(Utc::now())?;
        Ok(schedule)
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|slot| slot.with_timezone(&Utc))
            .map_err(|_| ScheduleError::Never(self.pattern.clone()))
    }

    /// The last slot at or before `at`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|slot| slot.with_timezone(&Utc))
    }

    /// The gap between the two slots that follow `at`: a day for a daily
    /// schedule (23 or 25 hours across a DST change).
    pub fn period(&self, at: DateTime<Utc>) -> Duration {
        let period = self
            .next_after(at)
            .and_then(|first| Ok(self.next_after(first)? - first));
        period
            .ok()
            .and_then(|p| p.to_std().ok())
            .unwrap_or(Duration::from_secs(24 * 3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rejects_bad_patterns_and_zones() {
        assert!(Schedule::parse("0 2 * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 2 * * *", "UTC").is_err());
        assert!(Schedule::parse("61 2 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 2 * * *", "Mars/Olympus").is_err());
        assert!(Schedule::parse("0 2 * * *", "Europe/Paris").is_ok());
        assert_eq!(
            Schedule::parse("0 25 * * *", "UTC")
                .unwrap_err()
                .to_string(),
            "BACKUP_SCHEDULE \"0 25 * * *\": the hour field is 25, outside 0-23"
        );
    }

    #[test]
    fn daily_in_utc() {
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap())
                .unwrap(),
            utc("2026-01-02T02:00:00Z")
        );
        assert_eq!(
            s.period(utc("2026-01-01T00:00:00Z")),
            Duration::from_secs(86400)
        );
    }
}
