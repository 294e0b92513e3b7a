//! What the doctor looks at, read from the same variables and flags as the
//! services, all optional so that a missing setting is reported as a failed
//! check rather than refused by the command line.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::config::{comma_list, parse_duration};
use backup_core::names::DatabaseName;
use backup_core::pg::PgArgs;
use backup_core::sftp::{PruneIdentityArgs, SftpArgs};

/// The services' SFTP settings (all optional there too: unset
/// `SFTP_HOST` means no SFTP destination), with what the doctor checks
/// the account's posture against.
#[derive(Debug, Clone, clap::Args)]
pub struct SftpOptions {
    #[command(flatten)]
    pub args: SftpArgs,
    /// The shipper treats the account as append-only (its key may not
    /// delete or replace): the writer's posture must say so.
    #[arg(
        long = "sftp-append-only",
        env = "SFTP_APPEND_ONLY",
        default_value_t = false
    )]
    pub append_only: bool,
    /// The pruner's own identity (`PRUNE_SFTP_*`), which also removes the
    /// posture probes the writer's key cannot.
    #[command(flatten)]
    pub pruner: PruneIdentityArgs,
}

/// Everything the doctor looks at, read from the same variables the
/// services read. Secrets (passwords, URLs with credentials, tokens) come
/// from the environment only, as in the services.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    /// Databases the dumper backs up, comma-separated (default: PGDATABASE).
    #[arg(long, env = "BACKUP_DATABASES")]
    pub databases: Option<String>,
    /// Database backed up when BACKUP_DATABASES is empty.
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pub pg_database: Option<String>,
    /// The dumper's pinned pg_dump directory, if any.
    #[arg(long, env = "PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// The dumper's spool.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    pub spool_dir: PathBuf,
    #[command(flatten)]
    pub sftp: SftpOptions,
    /// The shipper's S3 destination, when `S3_BUCKET` is set.
    #[command(flatten)]
    pub s3: remote_s3::S3Args,
    /// Prefix of the verifier's scratch databases (the probe database uses it too).
    #[arg(long, env = "VERIFY_SCRATCH_PREFIX", default_value = restore::scratch::SCRATCH_PREFIX)]
    pub scratch_prefix: String,
    /// age recipients of the dumper (age1..., comma or space separated).
    #[arg(long, env = "BACKUP_AGE_RECIPIENTS", default_value = "")]
    pub age_recipients: String,
    /// age identity file of the verifier and restores.
    #[arg(long, env = "AGE_IDENTITY_FILE")]
    pub age_identity_file: Option<PathBuf>,
    /// Sender of alert emails.
    #[arg(long, env = "ALERT_EMAIL_FROM")]
    pub email_from: Option<String>,
    /// Recipients of alert emails, comma-separated.
    #[arg(long, env = "ALERT_EMAIL_TO")]
    pub email_to: Option<String>,
    /// SMTP user when not in SMTP_URL (password: SMTP_PASSWORD).
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Telegram chat of the alerts (token: TELEGRAM_BOT_TOKEN).
    #[arg(long, env = "TELEGRAM_CHAT_ID")]
    pub telegram_chat_id: Option<String>,
    /// Telegram Bot API base URL.
    #[arg(long, env = "TELEGRAM_API_URL")]
    pub telegram_api_url: Option<String>,
    /// The dumper's schedule: five cron fields, or `off`.
    #[arg(long, env = "BACKUP_SCHEDULE", default_value = "0 2 * * *")]
    pub schedule: String,
    /// The dumper's name: its durable consumer on backup.trigger.
    #[arg(long, env = "DUMPER_NAME", default_value = "dumper")]
    pub dumper_name: String,
    /// Time zone of the schedule.
    #[arg(long, env = "BACKUP_TZ", default_value = "UTC")]
    pub tz: String,
    /// Also send one test message on every configured alert channel.
    #[arg(long)]
    pub send_test_alert: bool,
    /// One JSON document for scripts: {"ok": bool, "checks": [{name, ok, verdict, detail, fix}]}.
    #[arg(long)]
    pub json: bool,
    /// Give up on any one group of checks after this long (a dead host
    /// must not hang the doctor).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl DoctorArgs {
    /// The dumper's rule: BACKUP_DATABASES, or else PGDATABASE.
    pub fn database_names(&self) -> Result<Vec<DatabaseName>, String> {
        let list = match self.databases.as_deref().filter(|l| !l.trim().is_empty()) {
            Some(list) => list.to_owned(),
            None => self.pg_database.clone().unwrap_or_default(),
        };
        let names = comma_list(&list);
        if names.is_empty() {
            return Err("no database configured: BACKUP_DATABASES and PGDATABASE are unset".into());
        }
        names
            .into_iter()
            .map(|name| {
                DatabaseName::try_from(name.clone())
                    .map_err(|e| format!("BACKUP_DATABASES: {name:?}: {e}"))
            })
            .collect()
    }
}
