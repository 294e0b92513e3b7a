//! The dumper's schedule: it parses, and when it fires next.

use backup_core::preflight::Check;
use backup_core::schedule::Schedule;
use chrono::{DateTime, Utc};

/// `BACKUP_SCHEDULE` in `BACKUP_TZ`, parsed as the dumper parses it, with
/// its next three runs.
pub fn schedule(pattern: &str, zone: &str, now: DateTime<Utc>) -> Check {
    if matches!(pattern.trim(), "" | "off" | "none") {
        return Check::skip(
            "schedule",
            "off: backups run only on backup.trigger (timers, backupctl trigger)",
        );
    }
    let fix = "BACKUP_SCHEDULE takes five cron fields (minute hour day-of-month month day-of-week), e.g. `0 2 * * *`; BACKUP_TZ an IANA zone such as Europe/Paris";
    let parsed = match Schedule::parse(pattern, zone) {
        Ok(parsed) => parsed,
        Err(e) => return Check::fail("schedule", e.to_string()).with_fix(fix),
    };
    let tz: chrono_tz::Tz = match zone.trim().parse() {
        Ok(tz) => tz,
        Err(_) => {
            return Check::fail("schedule", format!("BACKUP_TZ {zone:?} is not a zone"))
                .with_fix(fix);
        }
    };
    let mut runs = Vec::new();
    let mut after = now;
    for _ in 0..3 {
        match parsed.next_after(after) {
            Ok(next) => {
                let local = next.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z");
                runs.push(if tz == chrono_tz::UTC {
                    local.to_string()
                } else {
                    format!("{local} ({} UTC)", next.format("%H:%M"))
                });
                after = next;
            }
            Err(e) => return Check::fail("schedule", e.to_string()).with_fix(fix),
        }
    }
    Check::pass(
        "schedule",
        format!(
            "`{}` in {tz}: next runs {}",
            parsed.pattern(),
            runs.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::preflight::Verdict;

    #[test]
    fn schedule_prints_three_runs_in_the_zone() {
        let now = DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let check = schedule("0 2 * * *", "Europe/Paris", now);
        assert_eq!(check.verdict, Verdict::Pass, "{check:?}");
        // The night of the change to summer time: 02:00 does not exist on
        // the 29th, so that run moves to 03:00 CEST.
        assert!(
            check
                .detail
                .contains("Sun 2026-03-29 03:00 CEST (01:00 UTC)"),
            "{}",
            check.detail
        );
        assert!(
            check
                .detail
                .contains("Mon 2026-03-30 02:00 CEST (00:00 UTC)"),
            "{}",
            check.detail
        );
        assert_eq!(schedule("off", "UTC", now).verdict, Verdict::Skip);
        let bad = schedule("0 2 * *", "UTC", now);
        assert_eq!(bad.verdict, Verdict::Fail);
        assert!(bad.fix.is_some());
        assert_eq!(
            schedule("0 2 * * *", "Mars/Olympus", now).verdict,
            Verdict::Fail
        );
    }
}
