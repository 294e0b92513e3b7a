//! The pruner's flags and environment variables ([`Args`], with the
//! retention policy's [`RetentionArgs`] from the catalogue, which
//! `backupctl prune` shares) and
//! the checked [`Settings`] built from them. A refusal names the variable.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::config::{ConfigError, SECRETS_HELP, ServiceArgs, parse_duration};
use backup_core::sftp::{PruneIdentityArgs, SecondSftpArgs, SftpArgs, SftpTarget};
use remote_s3::{PruneS3Args, S3_HELP, S3Args, S3Settings};

use catalogue::Policy;
pub use catalogue::RetentionArgs;

use crate::Schedule;

/// Applies the retention policy on the SFTP server after each `dump.verified` and on a schedule, and emits `dump.pruned`.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = format!("{S3_HELP}\n\n{SECRETS_HELP}"))]
pub struct Args {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub sftp: SftpArgs,
    /// The pruner's own login and key (`PRUNE_SFTP_*`), for an append-only
    /// account whose `SFTP_*` key may not delete.
    #[command(flatten)]
    pub identity: PruneIdentityArgs,
    /// The shipper's S3 destination, pruned too when `S3_BUCKET` is set
    /// (with PRUNE_S3_* credentials when set; objects under Object Lock
    /// are kept).
    #[command(flatten)]
    pub s3: S3Args,
    /// The pruner's own S3 key (`PRUNE_S3_*`), for a bucket whose `S3_*`
    /// key (the shipper's) may not delete.
    #[command(flatten)]
    pub s3_identity: PruneS3Args,
    /// The shipper's second SFTP server (`SHIP_SFTP2_*`), pruned too.
    #[command(flatten)]
    pub sftp2: SecondSftpArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Report what would be deleted, and why, without deleting anything.
    #[arg(long, env = "RETENTION_DRY_RUN", default_value_t = false)]
    pub dry_run: bool,
    /// When to prune every database on the remote besides after each verified backup: cron (five fields, in BACKUP_TZ) or "off".
    #[arg(long, env = "PRUNE_SCHEDULE", default_value = "30 4 * * *")]
    pub schedule: String,
    /// Prune on this fixed interval instead of PRUNE_SCHEDULE (e.g. 6h).
    #[arg(long, env = "PRUNE_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Local spool, trimmed to the newest SPOOL_KEEP_LAST artifacts plus any not yet shipped.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    pub spool_dir: PathBuf,
    /// Local artifacts of each database kept for fast restores (older ones go once shipped).
    #[arg(long, env = "SPOOL_KEEP_LAST", default_value_t = 2)]
    pub spool_keep_last: usize,
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
    #[error("pruner identity: {0}")]
    Identity(#[source] ConfigError),
    #[error("retention settings: {0}")]
    Retention(String),
    #[error("prune schedule: {0}")]
    Schedule(String),
    /// Neither `SFTP_HOST` nor `S3_BUCKET` is set.
    #[error("{}", backup_core::config::NO_DESTINATION)]
    NoDestination,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The SFTP server whose backups are pruned (when `SFTP_HOST` is
    /// set), logged in to with the pruner's own identity when
    /// `PRUNE_SFTP_KEY_FILE` is set.
    pub sftp: Option<SftpTarget>,
    /// The shipper's S3 bucket, when `S3_BUCKET` is set.
    pub s3: Option<S3Settings>,
    /// The shipper's second SFTP server, when configured.
    pub sftp2: Option<SftpTarget>,
    pub policy: Policy,
    pub dry_run: bool,
    /// Lifts the brake that refuses to delete more than half the backups.
    pub force: bool,
    pub spool_dir: PathBuf,
    pub spool_keep_last: usize,
    pub schedule: Schedule,
    pub grace: Duration,
}

impl TryFrom<Args> for Settings {
    type Error = SettingsError;

    fn try_from(args: Args) -> Result<Settings, SettingsError> {
        let mut sftp = args.sftp.target().map_err(SettingsError::Sftp)?;
        match &mut sftp {
            Some(sftp) => {
                if let Some(own) = args
                    .identity
                    .identity(&sftp.settings)
                    .map_err(SettingsError::Identity)?
                {
                    sftp.settings = own;
                }
            }
            None if args.identity.key_file.is_some() || args.identity.user.is_some() => {
                return Err(SettingsError::Identity(ConfigError::Invalid(
                    "PRUNE_SFTP_USER or PRUNE_SFTP_KEY_FILE is set but SFTP_HOST is not: the pruner's own identity is for the SFTP server".into(),
                )));
            }
            None => {}
        }
        let s3 = args
            .s3_identity
            .apply(args.s3.settings().map_err(|e| SettingsError::S3(e.0))?)
            .map_err(|e| SettingsError::S3(e.0))?;
        let sftp2 = args.sftp2.target(&args.sftp).map_err(SettingsError::Sftp)?;
        if sftp.is_none() && sftp2.is_none() && s3.is_none() {
            return Err(SettingsError::NoDestination);
        }
        let policy = args
            .retention
            .policy()
            .map_err(|e| SettingsError::Retention(e.to_string()))?;
        let schedule = Schedule::parse(&args.schedule, args.interval, policy.timezone)
            .map_err(SettingsError::Schedule)?;
        Ok(Settings {
            sftp,
            s3,
            sftp2,
            policy,
            dry_run: args.dry_run,
            force: args.retention.force,
            spool_dir: args.spool_dir,
            spool_keep_last: args.spool_keep_last,
            schedule,
            grace: args.service.shutdown_grace,
        })
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
            "/srv/backups",
            "--sftp-key-file",
            "/nonexistent/key",
            "--sftp-known-hosts",
            "/nonexistent/known_hosts",
        ];
        // A flag given twice is refused: `extra` replaces the base value.
        let argv = test_support::flags::with_overrides("pruner", &base, extra);
        Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn defaults_build_settings_for_the_binary() {
        let settings = settings(&["--retention-force"]).expect("valid");
        assert_eq!(
            settings.sftp.unwrap().database_dir(&"app".parse().unwrap()),
            "/srv/backups/app"
        );
        assert_eq!(settings.policy.min_keep, 3);
        assert!(settings.force && !settings.dry_run);
        assert_eq!(settings.spool_keep_last, 2);
    }

    #[test]
    fn each_refusal_names_its_variable() {
        let line =
            |extra: &[&str]| backup_core::error_chain(&settings(extra).expect_err("refused"));
        assert_eq!(
            line(&["--min-keep", "0"]),
            "retention settings: RETENTION_MIN_KEEP must be at least 1"
        );
        assert!(line(&["--schedule", "0 25 * * *"]).starts_with("prune schedule: PRUNE_SCHEDULE"));
        assert!(line(&["--interval", "0s"]).contains("PRUNE_INTERVAL"));
        assert_eq!(
            line(&["--sftp-dir", ""]),
            "SFTP settings: SFTP_HOST is set: SFTP_DIR required too"
        );
        assert!(
            line(&["--prune-sftp-user", "pruner"]).starts_with(
                "pruner identity: PRUNE_SFTP_USER or PRUNE_SFTP_KEY_PASSPHRASE is set"
            )
        );
        assert_eq!(
            line(&["--prune-sftp-key-file", "/nonexistent/prune_key"]),
            "pruner identity: PRUNE_SFTP_KEY_FILE /nonexistent/prune_key does not exist or is not a file"
        );
    }

    #[test]
    fn without_sftp_or_s3_there_is_nothing_to_prune() {
        let refusal = |argv: &[&str]| {
            let args = Args::try_parse_from(argv).expect("flags parse");
            backup_core::error_chain(&Settings::try_from(args).expect_err("refused"))
        };
        assert_eq!(refusal(&["pruner"]), backup_core::config::NO_DESTINATION);
        assert!(
            refusal(&["pruner", "--prune-sftp-key-file", "/k"])
                .starts_with("pruner identity: PRUNE_SFTP_USER or PRUNE_SFTP_KEY_FILE is set but SFTP_HOST is not")
        );
    }

    #[test]
    fn the_pruner_logs_in_with_its_own_key_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("prune_key");
        std::fs::write(&key, "k").unwrap();
        let key_text = key.to_str().unwrap();
        let own = settings(&["--prune-sftp-key-file", key_text]).expect("valid");
        let own = own.sftp.unwrap().settings;
        assert_eq!((own.key_file, own.user.as_str()), (key.clone(), "backup"));
        let other = settings(&[
            "--prune-sftp-key-file",
            key_text,
            "--prune-sftp-user",
            "pruner",
        ])
        .expect("valid");
        assert_eq!(other.sftp.unwrap().settings.user, "pruner");
        let shared = settings(&[]).expect("valid");
        assert_eq!(
            shared.sftp.unwrap().settings.key_file,
            std::path::Path::new("/nonexistent/key")
        );
    }
}
