//! What the operator's site configures, read from the same variables the
//! services read, for the commands that judge by it: the databases the
//! dumper backs up (`status` reports on those, `trigger` checks a name
//! against them) and the dumper's schedule and zone (`status` shows the
//! next run). The CLI keeps no configuration of its own: when a variable
//! is not in its environment it says what it could not check.

use backup_core::config::comma_list;
use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// `BACKUP_DATABASES`, or else `PGDATABASE`: the dumper's rule.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfiguredArgs {
    /// The databases the dumper backs up, comma-separated (as given to the dumper).
    #[arg(long = "configured-databases", env = "BACKUP_DATABASES")]
    pub databases: Option<String>,
    /// The database backed up when BACKUP_DATABASES is empty (as given to the dumper).
    #[arg(long = "configured-pgdatabase", env = "PGDATABASE")]
    pub pg_database: Option<String>,
}

/// The configured databases and the variable they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub variable: &'static str,
    pub names: Vec<DatabaseName>,
}

impl ConfiguredArgs {
    /// The configured databases; `Ok(None)` when neither variable is set
    /// here. A bad name is an error naming the variable it came from.
    pub fn databases(&self) -> Result<Option<Configured>, String> {
        let (variable, list) = match self.databases.as_deref().filter(|l| !l.trim().is_empty()) {
            Some(list) => ("BACKUP_DATABASES", list),
            None => match self.pg_database.as_deref().filter(|l| !l.trim().is_empty()) {
                Some(name) => ("PGDATABASE", name),
                None => return Ok(None),
            },
        };
        comma_list(list)
            .into_iter()
            .map(|name| {
                DatabaseName::try_from(name.clone())
                    .map_err(|e| format!("{variable}: {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|names| Some(Configured { variable, names }))
    }
}

/// `BACKUP_SCHEDULE` and `BACKUP_TZ`, with the dumper's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// The dumper's schedule: five cron fields in BACKUP_TZ, or `off`.
    #[arg(
        long = "schedule",
        env = "BACKUP_SCHEDULE",
        default_value = "0 2 * * *"
    )]
    pub schedule: String,
    #[command(flatten)]
    pub zone: ZoneArgs,
}

impl ScheduleArgs {
    /// The dumper's next scheduled run after `now`; `Ok(None)` when the
    /// schedule is off.
    pub fn next_run(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
        match self.schedule.trim() {
            "" | "off" | "none" => Ok(None),
            pattern => {
                let schedule = backup_core::schedule::Schedule::parse(pattern, &self.zone.tz)
                    .map_err(|e| e.to_string())?;
                schedule
                    .next_after(now)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// `BACKUP_TZ`: the zone times are shown in (and the schedule is read in).
#[derive(Debug, Clone, clap::Args)]
pub struct ZoneArgs {
    /// IANA time zone for times shown to people (the dumper's BACKUP_TZ).
    #[arg(long = "tz", env = "BACKUP_TZ", default_value = "UTC")]
    pub tz: String,
}

impl ZoneArgs {
    pub fn zone(&self) -> Result<Tz, String> {
        self.tz.trim().parse::<Tz>().map_err(|_| {
            format!(
                "BACKUP_TZ {:?} is not an IANA time zone (e.g. Europe/Paris)",
                self.tz
            )
        })
    }
}

/// `2026-12-05 02:00:00 CET`: a moment in `zone`, for people.
pub fn local_time(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(databases: Option<&str>, pg: Option<&str>) -> ConfiguredArgs {
        ConfiguredArgs {
            databases: databases.map(str::to_owned),
            pg_database: pg.map(str::to_owned),
        }
    }

    #[test]
    fn backup_databases_wins_then_pgdatabase_then_unknown() {
        let names = |c: ConfiguredArgs| {
            c.databases()
                .unwrap()
                .map(|c| c.names.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            names(configured(Some("viatique, ncc"), Some("other"))),
            Some(vec!["viatique".to_owned(), "ncc".to_owned()])
        );
        assert_eq!(
            names(configured(Some(" "), Some("viatique"))),
            Some(vec!["viatique".to_owned()])
        );
        assert_eq!(names(configured(None, None)), None);
        let error = configured(Some("ok,../x"), None).databases().unwrap_err();
        assert!(error.starts_with("BACKUP_DATABASES: \"../x\""), "{error}");
    }

    #[test]
    fn the_next_run_is_read_in_the_zone_and_off_means_none() {
        let args = |schedule: &str, tz: &str| ScheduleArgs {
            schedule: schedule.into(),
            zone: ZoneArgs { tz: tz.into() },
        };
        let now = "2026-12-04T18:30:00Z".parse::<DateTime<Utc>>().unwrap();
        let next = args("0 2 * * *", "Europe/Paris")
            .next_run(now)
            .unwrap()
            .unwrap();
        assert_eq!(next.to_rfc3339(), "2026-12-05T01:00:00+00:00");
        assert_eq!(
            local_time(next, "Europe/Paris".parse().unwrap()),
            "2026-12-05 02:00:00 CET"
        );
        assert_eq!(args("off", "UTC").next_run(now).unwrap(), None);
        let error = ZoneArgs { tz: "Paris".into() }.zone().unwrap_err();
        assert!(error.starts_with("BACKUP_TZ \"Paris\""), "{error}");
    }
}
