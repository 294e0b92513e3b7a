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
        check_fields(setting, text)?;
        let cron = Cron::from_str(text).map_err(|e| cron_error(setting, text, &e))?;
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

/// The five fields of a cron expression, with the values each allows.
const FIELDS: [(&str, u32, u32, &str); 5] = [
    ("minute", 0, 59, "0-59"),
    ("hour", 0, 23, "0-23"),
    ("day of month", 1, 31, "1-31"),
    ("month", 1, 12, "1-12 or JAN-DEC"),
    ("weekday", 0, 7, "0-7 or SUN-SAT"),
];

/// Checks the shape of a five-field cron expression before croner parses
/// it, so a refusal names the field and what it allows (croner says only
/// "Number out of bounds"). `setting` is the variable the text came from.
pub fn check_fields(setting: &str, text: &str) -> Result<(), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{setting} {text:?} has {} field(s); it takes five: minute hour day-of-month month weekday (e.g. \"0 2 * * *\")",
            fields.len()
        ));
    }
    for (field, (name, low, high, allowed)) in fields.iter().zip(FIELDS) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (part, None),
            };
            if let Some(step) = step
                && !step.parse::<u32>().is_ok_and(|s| s > 0)
            {
                return Err(format!(
                    "{setting} {text:?}: the {name} field's step {step:?} is not a positive number"
                ));
            }
            // Only numbers are judged here; names (JAN, MON) and croner's
            // extensions (L, W, #) are left to croner.
            for value in range.split('-') {
                if let Ok(number) = value.parse::<u32>()
                    && !(low..=high).contains(&number)
                {
                    return Err(format!(
                        "{setting} {text:?}: the {name} field is {number}, outside {allowed}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A croner refusal of a text [`check_fields`] let through, in one line
/// naming the variable and the expected form.
pub fn cron_error(setting: &str, text: &str, error: &croner::errors::CronError) -> String {
    format!(
        "{setting} {text:?} is not a cron expression (minute 0-59, hour 0-23, day of month 1-31, month 1-12, weekday 0-7): {error}"
    )
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

    #[test]
    fn refusals_name_the_setting_the_field_and_its_range() {
        let hour = LocalCron::parse("PRUNE_SCHEDULE", "0 25 * * *", Tz::UTC).unwrap_err();
        assert_eq!(
            hour,
            "PRUNE_SCHEDULE \"0 25 * * *\": the hour field is 25, outside 0-23"
        );
        let month = check_fields("BACKUP_SCHEDULE", "0 2 1 1-13 *").unwrap_err();
        assert!(
            month.contains("the month field is 13, outside 1-12"),
            "{month}"
        );
        let step = check_fields("BACKUP_SCHEDULE", "*/0 2 * * *").unwrap_err();
        assert!(step.contains("minute field's step"), "{step}");
        let short = check_fields("ALERT_DIGEST_SCHEDULE", "0 2 * *").unwrap_err();
        assert!(
            short.starts_with("ALERT_DIGEST_SCHEDULE \"0 2 * *\" has 4 field(s)"),
            "{short}"
        );
        for good in [
            "0 2 * * *",
            "*/15 1-5 1,15 JAN-MAR MON-FRI",
            "30 4 * * 7",
            "0 0 L * *",
        ] {
            check_fields("X", good).unwrap();
        }
        let word = LocalCron::parse("X", "0 two * * *", Tz::UTC).unwrap_err();
        assert!(
            word.starts_with("X \"0 two * * *\" is not a cron expression (minute 0-59"),
            "{word}"
        );
        assert!(!word.contains('\n'));
    }
}
