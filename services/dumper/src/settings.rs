//! The dumper's flags and environment variables ([`Args`]) and the checked
//! [`Settings`] built from them: the databases (none reserved), the codec
//! and its recipients, the schedule, limits the watchdog can work with. A
//! refusal names the variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::app_state;
use backup_core::config::{
    ConfigError, SECRETS_HELP, ServiceArgs, parse_compression, parse_duration, watchdog_limits,
};
use backup_core::names::{Compression, DatabaseName, DumpFormat, NameError};
use backup_core::pg::PgArgs;
use backup_core::watchdog::{DEFAULT_STALL_AFTER, Limits};

use crate::dump::{GLOBALS_NAME, MEDIA_NAME};
use crate::schedule::ScheduleError;
use crate::{
    Codec, DEFAULT_DUMP_DEADLINE, DEFAULT_LOCK_WAIT_TIMEOUT, DEFAULT_MIN_ARTIFACT_BYTES, Job,
    LOCK_WAIT_MARGIN, Schedule,
};

/// Dumps PostgreSQL databases into the spool on `backup.trigger` and announces them with `dump.created`.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = SECRETS_HELP)]
pub struct Args {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Databases to back up, comma-separated (default: PGDATABASE).
    #[arg(long, env = "BACKUP_DATABASES", value_delimiter = ',')]
    pub databases: Vec<String>,
    /// Database to back up when BACKUP_DATABASES is empty (libpq's variable).
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pub pg_database: Option<String>,
    /// Where finished artifacts wait for the shipper.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    pub spool_dir: PathBuf,
    /// gzip or zstd, with an optional :LEVEL (gzip 2 and zstd 3 by default).
    #[arg(long, env = "BACKUP_COMPRESSION", default_value = "gzip", value_parser = parse_compression)]
    pub compression: (Compression, Option<u32>),
    /// Use the pg_dump in this directory instead of the best installed match.
    #[arg(long, env = "PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// plain (SQL for psql) or custom (pg_dump's archive for pg_restore).
    #[arg(long, env = "BACKUP_FORMAT", default_value = "plain", value_parser = parse_format)]
    pub format: DumpFormat,
    /// When to back up every database: five cron fields in BACKUP_TZ, or `off`.
    #[arg(long, env = "BACKUP_SCHEDULE", default_value = "0 2 * * *")]
    pub schedule: String,
    /// IANA time zone of the schedule (e.g. Europe/Paris).
    #[arg(long, env = "BACKUP_TZ", default_value = "UTC")]
    pub tz: String,
    /// age X25519 public keys (age1...), separated by commas or spaces; artifacts get `.age`.
    #[arg(long, env = "BACKUP_AGE_RECIPIENTS", default_value = "")]
    pub age_recipients: String,
    /// Compression threads (default: every core).
    #[arg(long, env = "BACKUP_COMPRESSION_THREADS")]
    pub compression_threads: Option<usize>,
    /// Databases (and globals, media) dumped at once for one trigger.
    #[arg(long, env = "BACKUP_MAX_PARALLEL", default_value_t = 2)]
    pub max_parallel: usize,
    /// Also dump the cluster globals (roles, tablespaces) with every full backup.
    #[arg(long, env = "BACKUP_GLOBALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub globals: bool,
    /// Directories (the media volume) archived with every full backup, comma-separated.
    #[arg(long, env = "BACKUP_FILES_DIRS", value_delimiter = ',')]
    pub files_dirs: Vec<PathBuf>,
    /// Smallest plausible artifact, in bytes.
    #[arg(long, env = "BACKUP_MIN_SIZE", default_value_t = DEFAULT_MIN_ARTIFACT_BYTES)]
    pub min_size: u64,
    /// Refuse to start a dump the spool has obviously no room for.
    #[arg(long, env = "BACKUP_SPACE_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub space_check: bool,
    /// How long pg_dump waits for a table lock before failing (naming the table), or `off`.
    #[arg(long, env = "BACKUP_LOCK_WAIT_TIMEOUT", default_value = "5m", value_parser = parse_lock_wait)]
    pub lock_wait_timeout: LockWait,
    /// Abort a dump when pg_dump has written nothing for this long.
    #[arg(long, env = "BACKUP_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Abort a dump that runs longer than this, progress or not.
    #[arg(long, env = "BACKUP_DUMP_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    pub dump_deadline: Duration,
    /// Free-text version of the application recorded in every manifest (e.g. a git commit).
    #[arg(long, env = "BACKUP_APP_VERSION")]
    pub app_version: Option<String>,
    /// File holding that version, read again for every dump (a deploy may rewrite it).
    #[arg(long, env = "BACKUP_APP_VERSION_FILE")]
    pub app_version_file: Option<PathBuf>,
    /// This dumper's name: its durable consumer on backup.trigger and its
    /// entries in the dumpers' registry. One per PostgreSQL server (and
    /// database list); instances with the same name share the work.
    #[arg(long = "dumper-name", env = "DUMPER_NAME", default_value = "dumper")]
    pub dumper_name: String,
}

impl AsRef<ServiceArgs> for Args {
    fn as_ref(&self) -> &ServiceArgs {
        &self.service
    }
}

fn parse_format(text: &str) -> Result<DumpFormat, String> {
    match text.trim() {
        "plain" => Ok(DumpFormat::Plain),
        "custom" => Ok(DumpFormat::Custom),
        other => Err(format!("unknown format {other:?}; use plain or custom")),
    }
}

/// `BACKUP_LOCK_WAIT_TIMEOUT`: a duration, or `off` (also `0`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockWait(pub Option<Duration>);

pub fn parse_lock_wait(text: &str) -> Result<LockWait, String> {
    match text.trim() {
        "" | "0" | "off" | "none" => Ok(LockWait(None)),
        other => parse_duration(other).map(|d| LockWait((!d.is_zero()).then_some(d))),
    }
}

/// A refused setting, named by its variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("BACKUP_DATABASES: {0}")]
    Database(#[source] NameError),
    /// The source server's `PG*` settings.
    #[error("PostgreSQL settings: {0}")]
    Pg(#[source] ConfigError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("BACKUP_AGE_RECIPIENTS: {0}")]
    Recipients(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn invalid(message: String) -> SettingsError {
    SettingsError::Invalid(ConfigError::Invalid(message))
}

/// Everything the dumper needs besides the bus.
#[derive(Debug, Clone)]
pub struct Settings {
    pub databases: Vec<DatabaseName>,
    pub spool_dir: PathBuf,
    pub pg: PgArgs,
    /// `Plain` or `Custom`.
    pub format: DumpFormat,
    pub codec: Codec,
    /// Directory holding a specific pg_dump; otherwise the best match among
    /// installed clients is chosen.
    pub pg_bin_dir: Option<PathBuf>,
    pub grace: Duration,
    /// Jobs of one trigger that run at once.
    pub max_parallel: usize,
    /// `None`: no built-in timer (triggers come from outside only).
    pub schedule: Option<Schedule>,
    /// Also dump the cluster globals on a trigger for every database.
    pub globals: bool,
    /// Directories archived as the media artifact on a trigger for every
    /// database; empty: none.
    pub files_dirs: Vec<PathBuf>,
    /// Artifacts smaller than this are refused as implausible.
    pub min_artifact_bytes: u64,
    /// Check free space in the spool before each database dump.
    pub space_check: bool,
    /// pg_dump's (and the row counts') `--lock-wait-timeout`; `None`: wait
    /// for locks as long as the watchdog allows.
    pub lock_wait_timeout: Option<Duration>,
    /// Stall interval and deadline of each dump (see [`Settings::limits_for`]).
    pub limits: Limits,
    /// Where the application's version for the manifest comes from.
    pub app_version: AppVersion,
    /// `DUMPER_NAME`: the durable consumer and the registry's name for this
    /// dumper (see [`crate::registry`]).
    pub name: String,
}

/// `BACKUP_APP_VERSION` or `BACKUP_APP_VERSION_FILE`: the operator's
/// version of the application, recorded in each manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AppVersion {
    #[default]
    Unset,
    Fixed(String),
    /// Read at every dump, so a deploy script can write the release it is
    /// about to replace without restarting the dumper.
    File(PathBuf),
}

impl AppVersion {
    fn from_args(text: Option<&str>, file: Option<&Path>) -> Result<Self, SettingsError> {
        let file = file.filter(|path| !path.as_os_str().is_empty());
        match (text.filter(|t| !t.trim().is_empty()), file) {
            (Some(_), Some(_)) => Err(invalid(
                "BACKUP_APP_VERSION and BACKUP_APP_VERSION_FILE are both set; keep one".into(),
            )),
            (Some(text), None) => match app_state::parse_version(text) {
                Ok(Some(version)) => Ok(Self::Fixed(version)),
                Ok(None) => Ok(Self::Unset),
                Err(why) => Err(invalid(format!("BACKUP_APP_VERSION {why}"))),
            },
            (None, Some(path)) => {
                let version = Self::File(path.to_owned());
                version.read().map_err(invalid)?;
                Ok(version)
            }
            (None, None) => Ok(Self::Unset),
        }
    }

    /// The version to record now; an error names the variable.
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            Self::Unset => Ok(None),
            Self::Fixed(version) => Ok(Some(version.clone())),
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("BACKUP_APP_VERSION_FILE {}: {e}", path.display()))?;
                // The first line: a file written by `git log -1 > file` may hold more.
                app_state::parse_version(text.lines().next().unwrap_or_default())
                    .map_err(|why| format!("BACKUP_APP_VERSION_FILE {}: {why}", path.display()))
            }
        }
    }
}

/// The default `DUMPER_NAME`, today's consumer name.
pub const DEFAULT_DUMPER_NAME: &str = "dumper";

/// `DUMPER_NAME`: a JetStream consumer name (no `.`, `*`, `>` or space),
/// kept to letters, digits, `_` and `-`, at most 32 characters.
fn dumper_name(text: &str) -> Result<String, SettingsError> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(invalid(format!(
            "DUMPER_NAME must be 1 to 32 letters, digits, '_' or '-', not {text:?}"
        )))
    }
}

impl Settings {
    /// Defaults for everything but the essentials: plain SQL, parallel gzip,
    /// no schedule, no globals, no media.
    pub fn new(databases: Vec<DatabaseName>, spool_dir: PathBuf, pg: PgArgs) -> Self {
        Self {
            databases,
            spool_dir,
            pg,
            format: DumpFormat::Plain,
            codec: Codec::new(Compression::Gzip, None),
            pg_bin_dir: None,
            grace: Duration::from_secs(20),
            max_parallel: 2,
            schedule: None,
            globals: false,
            files_dirs: Vec::new(),
            min_artifact_bytes: DEFAULT_MIN_ARTIFACT_BYTES,
            space_check: true,
            lock_wait_timeout: Some(DEFAULT_LOCK_WAIT_TIMEOUT),
            limits: Limits::new(DEFAULT_STALL_AFTER, DEFAULT_DUMP_DEADLINE),
            app_version: AppVersion::Unset,
            name: DEFAULT_DUMPER_NAME.to_owned(),
        }
    }

    /// The limits `job` runs under: the configured ones, with the stall
    /// interval of pg_dump and pg_dumpall stretched past the lock wait
    /// (see [`LOCK_WAIT_MARGIN`]).
    pub fn limits_for(&self, job: &Job) -> Limits {
        let mut limits = self.limits;
        if let (Some(lock_wait), Job::Database(_) | Job::Globals) = (self.lock_wait_timeout, job) {
            limits.stall_after = limits.stall_after.max(lock_wait + LOCK_WAIT_MARGIN);
        }
        limits
    }
}

impl TryFrom<Args> for Settings {
    type Error = SettingsError;

    /// Reads `PGPASSWORD` (to refuse an unreadable one now) and checks
    /// every value; contacts no server.
    fn try_from(args: Args) -> Result<Settings, SettingsError> {
        let databases = databases(&args)?;
        args.pg.target("postgres").map_err(SettingsError::Pg)?;
        let schedule = match args.schedule.trim() {
            "" | "off" | "none" => None,
            pattern => Some(Schedule::parse(pattern, &args.tz)?),
        };
        let mut codec = Codec::new(args.compression.0, args.compression.1);
        codec.recipients = crate::compress::parse_recipients(&args.age_recipients)
            .map_err(SettingsError::Recipients)?;
        if let Some(threads) = args.compression_threads {
            if threads == 0 {
                return Err(invalid(
                    "BACKUP_COMPRESSION_THREADS must be at least 1".into(),
                ));
            }
            codec.threads = threads;
        }
        if args.max_parallel == 0 {
            return Err(invalid("BACKUP_MAX_PARALLEL must be at least 1".into()));
        }
        for reserved in [GLOBALS_NAME, MEDIA_NAME] {
            if databases.iter().any(|d| d.as_str() == reserved) {
                return Err(invalid(format!(
                    "BACKUP_DATABASES: {reserved} is reserved for the {reserved} artifacts"
                )));
            }
        }
        let limits = watchdog_limits(
            ("BACKUP_STALL_TIMEOUT", args.stall_timeout),
            ("BACKUP_DUMP_DEADLINE", args.dump_deadline),
        )?;
        let app_version = AppVersion::from_args(
            args.app_version.as_deref(),
            args.app_version_file.as_deref(),
        )?;
        let name = dumper_name(&args.dumper_name)?;
        Ok(Settings {
            app_version,
            name,
            lock_wait_timeout: args.lock_wait_timeout.0,
            limits,
            format: args.format,
            codec,
            pg_bin_dir: args.pg_bin_dir,
            grace: args.service.shutdown_grace,
            max_parallel: args.max_parallel,
            schedule,
            globals: args.globals,
            files_dirs: args.files_dirs,
            min_artifact_bytes: args.min_size,
            space_check: args.space_check,
            ..Settings::new(databases, args.spool_dir, args.pg)
        })
    }
}

/// `BACKUP_DATABASES`, or `PGDATABASE` when it is empty (compose passes an
/// empty one); at least one.
fn databases(args: &Args) -> Result<Vec<DatabaseName>, SettingsError> {
    let mut names: Vec<String> = args
        .databases
        .iter()
        .filter(|n| !n.trim().is_empty())
        .cloned()
        .collect();
    if names.is_empty() {
        names.extend(args.pg_database.clone());
    }
    if names.is_empty() {
        return Err(invalid(
            "no database to back up: set BACKUP_DATABASES (or PGDATABASE)".into(),
        ));
    }
    names
        .into_iter()
        .map(|name| DatabaseName::try_from(name.trim().to_owned()).map_err(SettingsError::Database))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn settings(argv: &[&str]) -> Result<Settings, SettingsError> {
        let argv = ["dumper", "--pg-host", "db.example", "--pg-user", "backup"]
            .into_iter()
            .chain(argv.iter().copied());
        Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    fn refusal(argv: &[&str]) -> String {
        let line = backup_core::error_chain(&settings(argv).expect_err("refused"));
        assert!(!line.contains('\n'), "{line}");
        line
    }

    #[test]
    fn lock_wait_parses_durations_and_off() {
        assert_eq!(
            parse_lock_wait("90s"),
            Ok(LockWait(Some(Duration::from_secs(90))))
        );
        for off in ["off", "0", "none", "0s", ""] {
            assert_eq!(parse_lock_wait(off), Ok(LockWait(None)), "{off}");
        }
        assert!(parse_lock_wait("soon").is_err());
    }

    #[test]
    fn the_dump_stall_interval_outlasts_the_lock_wait() {
        let mut settings = Settings::new(
            vec!["viatique".parse().unwrap()],
            PathBuf::from("/tmp/spool"),
            PgArgs {
                pg_host: None,
                pg_port: 5432,
                pg_user: None,
            },
        );
        let database = Job::Database("viatique".parse().unwrap());
        // Defaults: a 5 min lock wait would lose the race against a 5 min
        // stall interval, so the stall interval of a dump grows.
        assert_eq!(
            settings.limits_for(&database).stall_after,
            DEFAULT_LOCK_WAIT_TIMEOUT + LOCK_WAIT_MARGIN
        );
        assert_eq!(settings.limits_for(&Job::Media), settings.limits);
        settings.lock_wait_timeout = None;
        assert_eq!(settings.limits_for(&database), settings.limits);
        settings.lock_wait_timeout = Some(Duration::from_secs(2));
        assert_eq!(
            settings.limits_for(&database).stall_after,
            DEFAULT_STALL_AFTER
        );
        assert_eq!(
            settings.limits_for(&database).deadline,
            DEFAULT_DUMP_DEADLINE
        );
    }

    #[test]
    fn databases_come_from_backup_databases_or_pgdatabase() {
        let listed = settings(&["--databases", "app,,crm", "--pg-database", "other"]).unwrap();
        let names: Vec<&str> = listed.databases.iter().map(DatabaseName::as_str).collect();
        assert_eq!(names, ["app", "crm"]);
        let fallback = settings(&["--databases", "", "--pg-database", "other"]).unwrap();
        assert_eq!(fallback.databases[0].as_str(), "other");
        assert!(refusal(&["--databases", ""]).starts_with("no database to back up"));
        assert!(refusal(&["--databases", "bad name"]).starts_with("BACKUP_DATABASES: "));
        assert_eq!(
            refusal(&["--databases", "app,globals"]),
            "BACKUP_DATABASES: globals is reserved for the globals artifacts"
        );
    }

    #[test]
    fn each_refusal_names_its_variable() {
        let app = ["--databases", "app"];
        let with = |extra: &[&'static str]| [app.as_slice(), extra].concat();
        assert!(
            settings(&with(&["--schedule", "off"]))
                .unwrap()
                .schedule
                .is_none()
        );
        assert!(refusal(&with(&["--schedule", "0 25 * * *"])).contains("BACKUP_SCHEDULE"));
        assert!(
            refusal(&with(&["--age-recipients", "age1nope"]))
                .starts_with("BACKUP_AGE_RECIPIENTS: ")
        );
        assert_eq!(
            refusal(&with(&["--compression-threads", "0"])),
            "BACKUP_COMPRESSION_THREADS must be at least 1"
        );
        assert_eq!(
            refusal(&with(&["--max-parallel", "0"])),
            "BACKUP_MAX_PARALLEL must be at least 1"
        );
        assert_eq!(
            refusal(&with(&["--dump-deadline", "0s"])),
            "BACKUP_STALL_TIMEOUT and BACKUP_DUMP_DEADLINE must be at least 1s"
        );
        assert_eq!(settings(&app).unwrap().name, "dumper");
        assert_eq!(
            settings(&with(&["--dumper-name", "pg-east_2"]))
                .unwrap()
                .name,
            "pg-east_2"
        );
        let long = "n".repeat(33);
        for bad in ["", "a.b", "two words", "x>", long.as_str()] {
            let argv = [app.as_slice(), &["--dumper-name", bad]].concat();
            assert_eq!(
                refusal(&argv),
                format!("DUMPER_NAME must be 1 to 32 letters, digits, '_' or '-', not {bad:?}")
            );
        }
    }

    #[test]
    fn the_app_version_comes_from_text_or_a_file_read_at_each_dump() {
        let app = ["--databases", "app"];
        let with = |extra: &[&str]| -> Vec<String> {
            app.iter().chain(extra).map(|s| (*s).to_owned()).collect()
        };
        let args = |extra: &[&str]| {
            let owned = with(extra);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            settings(&refs)
        };
        assert_eq!(args(&[]).unwrap().app_version, AppVersion::Unset);
        assert_eq!(
            args(&["--app-version", " 4f2a9c1 "])
                .unwrap()
                .app_version
                .read(),
            Ok(Some("4f2a9c1".into()))
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("version");
        std::fs::write(&file, "v1.2\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = args(&["--app-version-file", path]).unwrap().app_version;
        assert_eq!(from_file.read(), Ok(Some("v1.2".into())));
        std::fs::write(&file, "v1.3\nrelease notes\n").unwrap();
        assert_eq!(from_file.read(), Ok(Some("v1.3".into())), "read again");
        let both = args(&["--app-version", "x", "--app-version-file", path]).unwrap_err();
        assert!(backup_core::error_chain(&both).contains("both set"));
        let missing = dir.path().join("absent");
        let refused = args(&["--app-version-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(backup_core::error_chain(&refused).starts_with("BACKUP_APP_VERSION_FILE "));
        let two_lines = args(&["--app-version", "a\nb"]).unwrap_err();
        assert!(backup_core::error_chain(&two_lines).starts_with("BACKUP_APP_VERSION must"));
    }
}
