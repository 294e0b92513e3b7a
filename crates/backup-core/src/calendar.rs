//! Cron expressions read in an IANA time zone, for the jobs that run on a
//! calendar besides the dumps themselves (the pruner's own runs, the
//! notifier's daily digest). Five fields, parsed by croner; daylight saving
//! is croner's: a time in the spring-forward gap runs once just after it, a
//! time that happens twice on the fall-back night runs once.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A cron expression and the zone its fields are read in.
#[derive(Debug, Clone)]
pub struct LocalCron {
    cron: Cron,
    zone: Tz,
    text: String,
}

impl LocalCron {
    /// `setting` names the variable in error messages. `off`, `none` or an
    /// empty value mean "never": `Ok(None)`.
    pub fn parse(setting: &str, text: &str, zone: Tz) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none")
        {
            return Ok(None);
        }
        if text.split_whitespace().count() != 5 {
            return Err(format!(
                "{setting} {text:?} must have five fields (minute hour day month weekday)"
            ));
        }
        let cron = Cron::from_str(text)
            .map_err(|e| format!("{setting} {text:?} is not a cron expression: {e}"))?;
        Ok(Some(Self {
            cron,
            zone,
            text: text.to_owned(),
        }))
    }

    /// The first occurrence strictly after `now`, `None` if there is none.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.zone), false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }
}

impl std::fmt::Display for LocalCron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text, self.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn daily_time_follows_the_local_clock_across_dst() {
        let cron = LocalCron::parse("X", "30 4 * * *", chrono_tz::Europe::Paris)
            .unwrap()
            .unwrap();
        let first = cron
            .next_after(Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap())
            .unwrap();
        let second = cron.next_after(first).unwrap();
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 3, 28, 3, 30, 0).unwrap());
        assert_eq!(second, Utc.with_ymd_and_hms(2026, 3, 29, 2, 30, 0).unwrap());
    }

    #[test]
    fn off_and_malformed_expressions() {
        assert!(LocalCron::parse("X", " off ", Tz::UTC).unwrap().is_none());
        assert!(LocalCron::parse("X", "", Tz::UTC).unwrap().is_none());
        let short = LocalCron::parse("ALERT_DIGEST_SCHEDULE", "* * *", Tz::UTC).unwrap_err();
        assert!(short.starts_with("ALERT_DIGEST_SCHEDULE"), "{short}");
        assert!(LocalCron::parse("X", "61 * * * *", Tz::UTC).is_err());
    }
}
