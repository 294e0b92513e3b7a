//! The shipper's flags and environment variables ([`Args`]) and the checked
//! [`Settings`] built from them: every destination complete and pinned,
//! limits the watchdog can work with. A refusal names the variable.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::config::{
    ConfigError, SECRETS_HELP, ServiceArgs, parse_duration, watchdog_limits,
};
use backup_core::sftp::{SecondSftpArgs, SftpArgs};
use backup_core::watchdog::{DEFAULT_STALL_AFTER, Limits};
use remote_s3::{S3_HELP, S3Args, S3Remote};

use crate::{DEFAULT_DEADLINE, Destination, MAX_ALERT_AFTER, Rate};

const DESTINATIONS_HELP: &str = "Destinations: the SFTP server when SFTP_HOST is set (SFTP_*); \
a second SFTP server when SHIP_SFTP2_HOST is set (its key passphrase from \
SHIP_SFTP2_KEY_PASSPHRASE or SHIP_SFTP2_KEY_PASSPHRASE_FILE); an S3-compatible bucket when \
S3_BUCKET is set (S3_*); a local or mounted directory (e.g. a NAS) when SHIP_LOCAL_DIR is set. \
At least one SFTP server or bucket is required. Each artifact must reach all of them to count \
as shipped; each failure names its destination.";

/// Uploads artifacts announced by `dump.created` to the SFTP server (and
/// optional further destinations) and emits `dump.shipped`.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = format!("{DESTINATIONS_HELP}\n\n{S3_HELP}\n\n{SECRETS_HELP}"))]
pub struct Args {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub sftp: SftpArgs,
    /// The SFTP account may create and rename but not remove or replace
    /// files (see the append-only account in the setup guide): uploads are
    /// write-once (read-only files, renames that never replace) and
    /// leftovers are left to the pruner.
    #[arg(
        long = "sftp-append-only",
        env = "SFTP_APPEND_ONLY",
        default_value_t = false
    )]
    pub sftp_append_only: bool,
    /// The second SFTP server (`SHIP_SFTP2_*`), shared with the services
    /// that read its copies.
    #[command(flatten)]
    pub sftp2: SecondSftpArgs,
    /// The second server's account is append-only, as SFTP_APPEND_ONLY.
    #[arg(
        long = "sftp2-append-only",
        env = "SHIP_SFTP2_APPEND_ONLY",
        default_value_t = false
    )]
    pub sftp2_append_only: bool,
    #[command(flatten)]
    pub s3: S3Args,
    /// Where the dumper leaves finished artifacts.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    pub spool_dir: PathBuf,
    /// Also copy every artifact to <dir>/<database>/ on this local or mounted
    /// directory, which must exist.
    #[arg(long = "local-dir", env = "SHIP_LOCAL_DIR")]
    pub local_dir: Option<PathBuf>,
    /// A failure that lasts this long is reported (dump.failed, will_retry);
    /// at most 60s.
    #[arg(long, env = "SHIP_ALERT_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub alert_after: Duration,
    /// Transient failures are retried until this long after dump.created.
    #[arg(long, env = "SHIP_RETRY_HORIZON", default_value = "6h", value_parser = parse_duration)]
    pub retry_horizon: Duration,
    /// Longest pause between two attempts (exponential backoff with jitter).
    #[arg(long, env = "SHIP_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// Upload speed limit per destination, e.g. 10MiB/s or 500KB/s; none by default.
    #[arg(long, env = "SHIP_BANDWIDTH_LIMIT")]
    pub bandwidth_limit: Option<Rate>,
    /// An upload whose destination acknowledged no byte for this long is
    /// aborted (and retried like a lost connection).
    #[arg(long, env = "SHIP_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Longest one upload to one destination may take, progress or not.
    #[arg(long, env = "SHIP_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Artifacts shipped at once by the whole service (its consumer's
    /// max_ack_pending), 1 to 32; each instance takes at most this many.
    #[arg(long, env = "SHIP_CONCURRENCY", default_value = "1")]
    pub concurrency: String,
    /// Start uploading to SFTP servers while the dumper is still writing
    /// the artifact (dump.writing); false waits for dump.created.
    #[arg(
        long,
        env = "SHIP_FOLLOW_DUMPS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub follow_dumps: bool,
}

impl AsRef<ServiceArgs> for Args {
    fn as_ref(&self) -> &ServiceArgs {
        &self.service
    }
}

/// A refused setting, named by its variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The primary server's `SFTP_*` settings.
    #[error("SFTP settings: {0}")]
    Sftp(#[source] ConfigError),
    /// Neither `SFTP_HOST` nor `S3_BUCKET` is set (a local directory alone
    /// is not offsite, and nothing can verify it).
    #[error("{}", backup_core::config::NO_DESTINATION)]
    NoDestination,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn invalid(message: String) -> SettingsError {
    SettingsError::Invalid(ConfigError::Invalid(message))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub spool_dir: PathBuf,
    /// Every destination must have the artifact before it counts as
    /// shipped. The first is the one `dump.shipped`'s `destination` names
    /// (the SFTP server of the interface, which the verifier reads back).
    pub destinations: Vec<Destination>,
    /// On shutdown, how long the upload in flight may go on.
    pub shutdown_grace: Duration,
    /// Transient failures are reported once they have lasted this long.
    pub alert_after: Duration,
    /// Retries stop this long after `dump.created` was stored.
    pub retry_horizon: Duration,
    /// Longest pause between two attempts.
    pub retry_max_delay: Duration,
    /// Upload rate limit per transfer, `None` for no limit.
    pub bandwidth_limit: Option<Rate>,
    /// Stall interval and deadline of each delivery to one destination.
    pub limits: Limits,
    /// Artifacts shipped at once (`SHIP_CONCURRENCY`).
    pub concurrency: usize,
    /// Upload while the dump is written (`SHIP_FOLLOW_DUMPS`).
    pub follow_dumps: bool,
}

/// Highest `SHIP_CONCURRENCY`: each upload holds an SFTP session per
/// destination and a read buffer.
pub const MAX_CONCURRENCY: usize = 32;

/// `SHIP_CONCURRENCY`: 1 to [`MAX_CONCURRENCY`].
fn concurrency(text: &str) -> Result<usize, SettingsError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
        .ok_or_else(|| {
            invalid(format!(
                "SHIP_CONCURRENCY must be a whole number from 1 to {MAX_CONCURRENCY}, not {text:?}"
            ))
        })
}

impl Settings {
    /// Settings with the defaults of the binary for everything but the
    /// spool and the destinations.
    pub fn new(spool_dir: PathBuf, destinations: Vec<Destination>) -> Settings {
        Settings {
            spool_dir,
            destinations,
            shutdown_grace: Duration::from_secs(20),
            alert_after: Duration::from_secs(30),
            retry_horizon: Duration::from_secs(6 * 3600),
            retry_max_delay: Duration::from_secs(300),
            bandwidth_limit: None,
            limits: Limits::new(DEFAULT_STALL_AFTER, DEFAULT_DEADLINE),
            concurrency: 1,
            follow_dumps: true,
        }
    }

    /// Logs each destination, one line each, without secrets.
    pub fn log_destinations(&self) {
        for destination in &self.destinations {
            tracing::info!(destination = %destination.describe(), "destination");
        }
    }
}

impl TryFrom<Args> for Settings {
    type Error = SettingsError;

    /// Checks what can be checked without a server: the key files exist,
    /// hosts are pinned, the local directory is absolute, limits are sane.
    fn try_from(args: Args) -> Result<Settings, SettingsError> {
        let sftp = args.sftp.target().map_err(SettingsError::Sftp)?;
        if let Some(sftp) = &sftp
            && !sftp.settings.key_file.is_file()
        {
            return Err(invalid(format!(
                "SFTP_KEY_FILE {} does not exist or is not a file",
                sftp.settings.key_file.display()
            )));
        }
        let limits = watchdog_limits(
            ("SHIP_STALL_TIMEOUT", args.stall_timeout),
            ("SHIP_DEADLINE", args.deadline),
        )?;
        if args.alert_after > MAX_ALERT_AFTER {
            return Err(invalid(
                "SHIP_ALERT_AFTER must be at most 60s: operators hear of failures early".into(),
            ));
        }
        let mut destinations: Vec<Destination> = sftp
            .into_iter()
            .map(|sftp| Destination::Sftp {
                label: "sftp".into(),
                dir: sftp.dir,
                settings: sftp.settings,
                append_only: args.sftp_append_only,
            })
            .collect();
        if let Some(sftp2) = args.sftp2.target(&args.sftp)? {
            if !sftp2.settings.key_file.is_file() {
                return Err(invalid(format!(
                    "SHIP_SFTP2_KEY_FILE {} does not exist or is not a file",
                    sftp2.settings.key_file.display()
                )));
            }
            destinations.push(Destination::Sftp {
                label: "sftp2".into(),
                dir: sftp2.dir,
                settings: sftp2.settings,
                append_only: args.sftp2_append_only,
            });
        }
        if let Some(s3) = args.s3.settings().map_err(|e| invalid(e.0))? {
            let remote = S3Remote::connect(&s3).map_err(|e| invalid(e.to_string()))?;
            destinations.push(Destination::S3 {
                label: "s3".into(),
                remote,
            });
        }
        if destinations.is_empty() {
            return Err(SettingsError::NoDestination);
        }
        // Last: `dump.shipped`'s `destination` names the first one, which
        // must be a copy the verifier can read.
        if let Some(dir) = args.local_dir {
            if !dir.is_absolute() {
                return Err(invalid(format!(
                    "SHIP_LOCAL_DIR {} must be an absolute path",
                    dir.display()
                )));
            }
            destinations.push(Destination::Local {
                label: "local".into(),
                dir,
            });
        }
        Ok(Settings {
            spool_dir: args.spool_dir,
            destinations,
            shutdown_grace: args.service.shutdown_grace,
            alert_after: args.alert_after,
            retry_horizon: args.retry_horizon,
            retry_max_delay: args.retry_max_delay,
            bandwidth_limit: args.bandwidth_limit,
            limits,
            concurrency: concurrency(&args.concurrency)?,
            follow_dumps: args.follow_dumps,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The shipper's flags, a pinned primary server whose key file exists,
    /// and `extra`; the environment only fills what the flags leave out.
    fn settings(key: &std::path::Path, extra: &[&str]) -> Result<Settings, SettingsError> {
        let key = key.to_str().unwrap();
        let base = [
            "--sftp-host",
            "sftp.example",
            "--sftp-user",
            "backup",
            "--sftp-dir",
            "/srv/backups",
            "--sftp-key-file",
            key,
            "--sftp-host-fingerprint",
            "SHA256:x",
        ];
        // A flag given twice is refused: `extra` replaces the base value.
        let argv = test_support::flags::with_overrides("shipper", &base, extra);
        Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    fn refusal(key: &std::path::Path, extra: &[&str]) -> String {
        let error = settings(key, extra).expect_err("refused");
        let line = backup_core::error_chain(&error);
        assert!(!line.contains('\n'), "{line}");
        line
    }

    #[test]
    fn every_destination_is_built_from_its_own_variables() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        let local = dir.path().to_str().unwrap();
        let key_text = key.to_str().unwrap();
        let settings = settings(
            &key,
            &[
                "--sftp2-host",
                "nas.example",
                "--sftp2-user",
                "u",
                "--sftp2-dir",
                "/b",
                "--sftp2-key-file",
                key_text,
                "--sftp2-host-fingerprint",
                "SHA256:y",
                "--sftp2-append-only",
                "--local-dir",
                local,
            ],
        )
        .expect("valid");
        let labels: Vec<&str> = settings.destinations.iter().map(|d| d.label()).collect();
        assert_eq!(labels, ["sftp", "sftp2", "local"]);
        let append_only: Vec<bool> = settings
            .destinations
            .iter()
            .filter_map(|d| match d {
                Destination::Sftp { append_only, .. } => Some(*append_only),
                _ => None,
            })
            .collect();
        assert_eq!(append_only, [false, true], "each server has its own switch");
        assert_eq!(
            settings.limits,
            Limits::new(DEFAULT_STALL_AFTER, DEFAULT_DEADLINE)
        );
        assert_eq!(settings.concurrency, 1);
        let four = self::settings(&key, &["--concurrency", "4"]).expect("valid");
        assert_eq!(four.concurrency, 4);
    }

    #[test]
    fn uploads_follow_dumps_unless_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        assert!(self::settings(&key, &[]).expect("valid").follow_dumps);
        let off = self::settings(&key, &["--follow-dumps", "false"]).expect("valid");
        assert!(!off.follow_dumps);
    }

    #[test]
    fn a_local_directory_alone_is_no_destination() {
        let dir = tempfile::tempdir().unwrap();
        let argv = ["shipper", "--local-dir", dir.path().to_str().unwrap()];
        let error = Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
            .expect_err("refused");
        assert_eq!(
            backup_core::error_chain(&error),
            backup_core::config::NO_DESTINATION
        );
        let half = Args::try_parse_from(["shipper", "--sftp-user", "backup"]).expect("flags parse");
        let error = Settings::try_from(half).expect_err("refused");
        assert_eq!(
            backup_core::error_chain(&error),
            "SFTP settings: SFTP_USER set but SFTP_HOST is not: set SFTP_HOST for an SFTP destination, or unset them"
        );
    }

    #[test]
    fn each_refusal_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        let missing = dir.path().join("missing");
        assert!(refusal(&missing, &[]).starts_with("SFTP_KEY_FILE "));
        assert_eq!(
            refusal(&key, &["--stall-timeout", "0s"]),
            "SHIP_STALL_TIMEOUT and SHIP_DEADLINE must be at least 1s"
        );
        assert!(
            refusal(&key, &["--alert-after", "5m"])
                .starts_with("SHIP_ALERT_AFTER must be at most 60s")
        );
        assert_eq!(
            refusal(&key, &["--local-dir", "backups"]),
            "SHIP_LOCAL_DIR backups must be an absolute path"
        );
        assert!(
            refusal(&key, &["--sftp2-host", "nas.example"]).contains("SHIP_SFTP2_USER"),
            "an incomplete second server names what it lacks"
        );
        let unpinned = refusal(
            &key,
            &[
                "--sftp2-host",
                "nas.example",
                "--sftp2-user",
                "u",
                "--sftp2-dir",
                "/b",
                "--sftp2-key-file",
                key.to_str().unwrap(),
            ],
        );
        assert!(unpinned.starts_with("SHIP_SFTP2_KNOWN_HOSTS"), "{unpinned}");
        assert!(
            refusal(&key, &["--sftp-dir", "a/../b"]).starts_with("SFTP settings: SFTP_DIR "),
            "the primary server's settings say so"
        );
        let no_secret = refusal(
            &key,
            &["--s3-bucket", "backups", "--s3-access-key-id", "AKIA"],
        );
        assert!(no_secret.contains("S3_SECRET_ACCESS_KEY"), "{no_secret}");
        assert!(
            refusal(&key, &["--s3-bucket", "Backups"]).starts_with("S3_BUCKET "),
            "the S3 settings name their variable"
        );
        for bad in ["0", "33", "many"] {
            assert_eq!(
                refusal(&key, &["--concurrency", bad]),
                format!("SHIP_CONCURRENCY must be a whole number from 1 to 32, not {bad:?}")
            );
        }
    }
}
