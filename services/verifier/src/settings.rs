//! The verifier's flags and environment variables ([`Args`]) and the checked
//! [`Settings`] built from them: the destinations (the SFTP server, the
//! shipper's second one when configured, and which one to restore from),
//! the scratch server, the operator's checks, limits the watchdog can work
//! with. A refusal names the variable.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::config::{
    ConfigError, ExposeSecret, SECRETS_HELP, ServiceArgs, parse_duration, secret_from_env,
    watchdog_limits,
};
use backup_core::pg::{PgArgs, PgError, PgTarget};
use backup_core::sftp::{SecondSftpArgs, SftpArgs, SftpTarget};
use backup_core::watchdog::Limits;
use remote_s3::{S3_HELP, S3Args, S3Settings};

use restore::scratch::{SCRATCH_PREFIX, valid_scratch_prefix};

use crate::{OperatorCheck, RestoreOptions};

/// Reads each shipped artifact back from a destination, restores it into a scratch database, checks every other copy by size and sha256 and emits `dump.verified`.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = format!("{S3_HELP}\n\n{SECRETS_HELP}"))]
pub struct Args {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub sftp: SftpArgs,
    /// The shipper's S3 destination, read too when `S3_BUCKET` is set.
    #[command(flatten)]
    pub s3: S3Args,
    /// The shipper's second SFTP server (`SHIP_SFTP2_*`), label `sftp2`:
    /// its copy is checked too.
    #[command(flatten)]
    pub sftp2: SecondSftpArgs,
    /// The destination to restore from (a label: sftp, sftp2, s3); every other
    /// copy is read back whole against the manifest's size and sha256.
    /// Default: the first destination (sftp).
    #[arg(long = "verify-from", env = "VERIFY_FROM")]
    pub verify_from: Option<String>,
    /// Used for the scratch server when VERIFY_DATABASE_URL is not set.
    #[command(flatten)]
    pub pg: PgArgs,
    /// psql used for plain-format restores.
    #[arg(long, env = "PSQL", default_value = "psql")]
    pub psql: PathBuf,
    /// pg_restore used for custom-format archives.
    #[arg(long, env = "PG_RESTORE", default_value = "pg_restore")]
    pub pg_restore: PathBuf,
    /// Parallel jobs for pg_restore (custom-format archives).
    #[arg(
        long = "restore-jobs",
        env = "VERIFY_RESTORE_JOBS",
        default_value_t = 2
    )]
    pub restore_jobs: u32,
    /// age identity file for encrypted artifacts (a missing one fails
    /// their verification).
    #[arg(long = "age-identity-file", env = "AGE_IDENTITY_FILE")]
    pub age_identity_file: Option<PathBuf>,
    /// SQL file of operator checks: queries that must each return true,
    /// separated by `;`, each named by the `--` comment line before it.
    #[arg(long = "sql-file", env = "VERIFY_SQL_FILE")]
    pub sql_file: Option<PathBuf>,
    /// Re-verify one older backup per database this often (e.g. `24h`,
    /// `7d`); `off` disables it.
    #[arg(
        long = "reverify-every",
        env = "VERIFY_REVERIFY_EVERY",
        default_value = "24h"
    )]
    pub reverify_every: String,
    /// Scratch databases are named `<prefix>_<12 hex digits>`; those left
    /// behind are dropped at start-up.
    #[arg(long = "scratch-prefix", env = "VERIFY_SCRATCH_PREFIX", default_value = SCRATCH_PREFIX)]
    pub scratch_prefix: String,
    /// Where custom-format archives are staged for pg_restore (a private
    /// directory is made inside and removed afterwards).
    #[arg(long = "staging-dir", env = "VERIFY_STAGING_DIR")]
    pub staging_dir: Option<PathBuf>,
    /// A verification during which nothing moved for this long (no byte
    /// read from the remote or fed to psql/pg_restore, no query working on
    /// the scratch server) is aborted and retried.
    #[arg(long = "stall-timeout", env = "VERIFY_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Longest one verification (download, restore, checks) may take,
    /// progress or not.
    #[arg(long = "deadline", env = "VERIFY_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Verifications run at once by the whole service (its consumer's
    /// max_ack_pending), 1 to 32; each instance takes at most this many.
    #[arg(long = "concurrency", env = "VERIFY_CONCURRENCY", default_value = "1")]
    pub concurrency: String,
}

impl AsRef<ServiceArgs> for Args {
    fn as_ref(&self) -> &ServiceArgs {
        &self.service
    }
}

/// A refused setting, named by its variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("SFTP settings: {0}")]
    Sftp(#[source] ConfigError),
    #[error("S3 settings: {0}")]
    S3(String),
    /// The second SFTP server's `SHIP_SFTP2_*` settings.
    #[error("second SFTP server settings: {0}")]
    Sftp2(#[source] ConfigError),
    #[error("VERIFY_FROM: {0}")]
    VerifyFrom(#[source] remote_store::UnknownTarget),
    /// Neither `SFTP_HOST` nor `S3_BUCKET` is set.
    #[error("{}", backup_core::config::NO_DESTINATION)]
    NoDestination,
    /// The scratch server from `PG*` (`VERIFY_DATABASE_URL` unset).
    #[error("PostgreSQL settings: {0}")]
    Pg(#[source] ConfigError),
    #[error("VERIFY_DATABASE_URL: {0}")]
    DatabaseUrlSecret(#[source] ConfigError),
    #[error("VERIFY_DATABASE_URL: {0}")]
    DatabaseUrl(#[source] PgError),
    #[error("VERIFY_SQL_FILE {}: {source}", path.display())]
    SqlFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VERIFY_REVERIFY_EVERY: {0}")]
    ReverifyEvery(String),
    #[error("VERIFY_CONCURRENCY must be a whole number from 1 to {MAX_CONCURRENCY}, not {0:?}")]
    Concurrency(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The shipper's SFTP server, when `SFTP_HOST` is set.
    pub sftp: Option<SftpTarget>,
    /// The shipper's S3 bucket, when `S3_BUCKET` is set.
    pub s3: Option<S3Settings>,
    /// The shipper's second SFTP server, when configured.
    pub sftp2: Option<SftpTarget>,
    /// The label of the destination restored from (`VERIFY_FROM`); the
    /// first destination when `None`. Checked against the destinations.
    pub verify_from: Option<String>,
    /// Server (and maintenance database) where scratch databases are made.
    pub scratch: PgTarget,
    /// Scratch databases are `<scratch_prefix>_<12 hex digits>`; a plain
    /// lower-case identifier.
    pub scratch_prefix: String,
    pub restore: RestoreOptions,
    /// `VERIFY_SQL_FILE`: queries that must each return true.
    pub operator_checks: Vec<OperatorCheck>,
    /// Re-verify one older backup per database this often; never if `None`.
    pub reverify_every: Option<Duration>,
    pub grace: Duration,
    /// Stall interval and deadline of each verification (download,
    /// restore and checks), re-verifications included.
    pub limits: Limits,
    /// Verifications at once (`VERIFY_CONCURRENCY`); re-verifications
    /// take one of these slots too.
    pub concurrency: usize,
}

/// Highest `VERIFY_CONCURRENCY`: each verification holds a scratch
/// database, a psql and an SFTP session.
pub const MAX_CONCURRENCY: usize = 32;

/// `VERIFY_CONCURRENCY`: 1 to [`MAX_CONCURRENCY`].
fn concurrency(text: &str) -> Result<usize, SettingsError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
        .ok_or_else(|| SettingsError::Concurrency(text.to_owned()))
}

impl TryFrom<Args> for Settings {
    type Error = SettingsError;

    /// Reads the secrets and the operator's checks; contacts no server.
    fn try_from(args: Args) -> Result<Settings, SettingsError> {
        let sftp = args.sftp.target().map_err(SettingsError::Sftp)?;
        let s3 = args.s3.settings().map_err(|e| SettingsError::S3(e.0))?;
        let sftp2 = args
            .sftp2
            .target(&args.sftp)
            .map_err(SettingsError::Sftp2)?;
        let verify_from = args.verify_from.filter(|label| !label.trim().is_empty());
        let destinations = remote_store::targets(sftp.clone(), sftp2.clone(), s3.clone());
        if destinations.is_empty() {
            return Err(SettingsError::NoDestination);
        }
        if let Some(label) = &verify_from {
            remote_store::find(&destinations, Some(label)).map_err(SettingsError::VerifyFrom)?;
        }
        let scratch = scratch_target(&args.pg)?;
        let limits = watchdog_limits(
            ("VERIFY_STALL_TIMEOUT", args.stall_timeout),
            ("VERIFY_DEADLINE", args.deadline),
        )?;
        if !valid_scratch_prefix(&args.scratch_prefix) {
            return Err(ConfigError::Invalid(
                "VERIFY_SCRATCH_PREFIX must be [a-z][a-z0-9_]*, at most 40 characters".into(),
            )
            .into());
        }
        let operator_checks = match args.sql_file {
            Some(path) => restore::checks::load_operator_checks(&path)
                .map_err(|source| SettingsError::SqlFile { path, source })?,
            None => Vec::new(),
        };
        Ok(Settings {
            sftp,
            s3,
            sftp2,
            verify_from,
            scratch,
            scratch_prefix: args.scratch_prefix,
            restore: RestoreOptions {
                psql: args.psql,
                pg_restore: args.pg_restore,
                jobs: args.restore_jobs.max(1),
                age_identity: args.age_identity_file,
                staging_dir: args.staging_dir,
                // The scratch server need not have the source's roles.
                keep_owners: false,
            },
            operator_checks,
            reverify_every: reverify_every(&args.reverify_every)?,
            grace: args.service.shutdown_grace,
            limits,
            concurrency: concurrency(&args.concurrency)?,
        })
    }
}

/// The scratch server: `VERIFY_DATABASE_URL` if set (a secret, as it may
/// hold a password), else the `PG*` settings.
fn scratch_target(pg: &PgArgs) -> Result<PgTarget, SettingsError> {
    match secret_from_env("VERIFY_DATABASE_URL").map_err(SettingsError::DatabaseUrlSecret)? {
        Some(url) => PgTarget::from_url(url.expose_secret()).map_err(SettingsError::DatabaseUrl),
        None => pg.target("postgres").map_err(SettingsError::Pg),
    }
}

/// `VERIFY_REVERIFY_EVERY`: a duration, or `off` (also `0` or empty).
fn reverify_every(text: &str) -> Result<Option<Duration>, SettingsError> {
    match text.trim() {
        "off" | "0" | "" => Ok(None),
        text => parse_duration(text)
            .map(Some)
            .map_err(SettingsError::ReverifyEvery),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn settings(extra: &[&str]) -> Result<Settings, SettingsError> {
        let base = [
            "--sftp-host",
            "sftp.example",
            "--sftp-user",
            "backup",
            "--sftp-dir",
            "backups",
            "--sftp-key-file",
            "/nonexistent/key",
            "--sftp-host-fingerprint",
            "SHA256:x",
            "--pg-host",
            "db.example",
            "--pg-user",
            "verifier",
        ];
        // A flag given twice is refused: `extra` replaces the base value.
        let argv = test_support::flags::with_overrides("verifier", &base, extra);
        Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    fn refusal(extra: &[&str]) -> String {
        let line = backup_core::error_chain(&settings(extra).expect_err("refused"));
        assert!(!line.contains('\n'), "{line}");
        line
    }

    #[test]
    fn defaults_build_settings_for_the_binary() {
        let settings = settings(&[]).expect("valid");
        assert_eq!(settings.sftp.unwrap().dir, "backups");
        assert_eq!(settings.scratch.dbname, "postgres");
        assert_eq!(settings.scratch_prefix, SCRATCH_PREFIX);
        assert_eq!(
            settings.reverify_every,
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(settings.limits, crate::DEFAULT_LIMITS);
        assert!(!settings.restore.keep_owners);
        let off = self::settings(&["--reverify-every", "off", "--restore-jobs", "0"]).unwrap();
        assert_eq!(off.reverify_every, None);
        assert_eq!(off.restore.jobs, 1);
        assert_eq!(settings.concurrency, 1);
        assert_eq!(
            self::settings(&["--concurrency", "4"]).unwrap().concurrency,
            4
        );
    }

    #[test]
    fn the_copy_restored_is_chosen_among_every_destination() {
        let second = [
            "--sftp2-host",
            "nas.example",
            "--sftp2-user",
            "u",
            "--sftp2-dir",
            "/b",
            "--sftp2-key-file",
            "/nonexistent/key2",
            "--sftp2-host-fingerprint",
            "SHA256:y",
        ];
        let default = settings(&second).expect("valid");
        assert_eq!(default.verify_from, None);
        assert_eq!(default.sftp2.as_ref().unwrap().dir, "/b");
        let labels: Vec<String> = crate::destinations(&default)
            .into_iter()
            .map(|t| t.label)
            .collect();
        assert_eq!(labels, ["sftp", "sftp2"]);
        assert_eq!(crate::source(&default).label, "sftp");
        let from_second = settings(&[&second[..], &["--verify-from", "sftp2"]].concat()).unwrap();
        assert_eq!(crate::source(&from_second).label, "sftp2");
        let error = settings(&[&second[..], &["--verify-from", "nas"]].concat()).unwrap_err();
        assert_eq!(
            backup_core::error_chain(&error),
            "VERIFY_FROM: no destination is labelled \"nas\"; configured: sftp, sftp2"
        );
    }

    #[test]
    fn without_sftp_or_s3_there_is_nothing_to_verify() {
        let error = Settings::try_from(Args::try_parse_from(["verifier"]).expect("flags parse"))
            .expect_err("refused");
        assert_eq!(
            backup_core::error_chain(&error),
            backup_core::config::NO_DESTINATION
        );
    }

    #[test]
    fn each_refusal_names_its_variable() {
        assert_eq!(
            refusal(&["--stall-timeout", "0s"]),
            "VERIFY_STALL_TIMEOUT and VERIFY_DEADLINE must be at least 1s"
        );
        assert!(
            refusal(&["--scratch-prefix", "Verify"]).starts_with("VERIFY_SCRATCH_PREFIX must be")
        );
        assert!(
            refusal(&["--reverify-every", "daily"]).starts_with("VERIFY_REVERIFY_EVERY: \"daily\"")
        );
        let missing = refusal(&["--sql-file", "/nonexistent/checks.sql"]);
        assert!(
            missing.starts_with("VERIFY_SQL_FILE /nonexistent/checks.sql: "),
            "{missing}"
        );
        assert!(refusal(&["--sftp-dir", ".."]).starts_with("SFTP settings: SFTP_DIR "));
        assert_eq!(
            refusal(&["--verify-from", "s3"]),
            "VERIFY_FROM: no destination is labelled \"s3\"; configured: sftp"
        );
        assert!(
            refusal(&["--sftp2-host", "nas.example"]).starts_with(
                "second SFTP server settings: SHIP_SFTP2_HOST is set: SHIP_SFTP2_USER"
            )
        );
        for bad in ["0", "33", "two"] {
            assert_eq!(
                refusal(&["--concurrency", bad]),
                format!("VERIFY_CONCURRENCY must be a whole number from 1 to 32, not {bad:?}")
            );
        }
    }
}
