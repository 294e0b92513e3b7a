//! The notifier's flags and environment variables ([`Args`]) and the
//! checked [`Settings`] built from them: each channel complete (its secret
//! and what goes with it), the databases the dead man's switch watches,
//! delivery and digest rules. A refusal names the variable.

use std::collections::BTreeMap;
use std::time::Duration;

use backup_core::calendar::LocalCron;
use backup_core::config::{
    ConfigError, SECRETS_HELP, ServiceArgs, comma_list, parse_duration, secret_from_env,
};
use backup_core::names::DatabaseName;
use backup_core::retry::Backoff;
use lettre::message::Mailbox;

use crate::{DeliveryPolicy, EmailSettings, HealthcheckSettings, SlackSettings, TelegramSettings};

/// Alerts the on-call about failed, repeated, recovered and missing backups, by
/// email, Telegram, Slack and healthcheck pings (the log when none is set).
#[derive(Debug, clap::Parser)]
#[command(
    version,
    after_help = format!("{SECRETS_HELP}\n\nNotifier secrets: SMTP_URL, SMTP_PASSWORD, \
        TELEGRAM_BOT_TOKEN, SLACK_WEBHOOK_URL, HEALTHCHECK_URL and HEALTHCHECK_URL_<DATABASE> \
        (database name in upper case), each also as <NAME>_FILE.")
)]
pub struct Args {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Sender of alert emails.
    #[arg(long, env = "ALERT_EMAIL_FROM")]
    pub email_from: Option<Mailbox>,
    /// Recipients of alert emails, comma-separated.
    #[arg(long, env = "ALERT_EMAIL_TO", value_delimiter = ',')]
    pub email_to: Vec<Mailbox>,
    /// SMTP user when not in SMTP_URL; the password comes from SMTP_PASSWORD(_FILE).
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Telegram chat to alert: a numeric id or @channelname (the token is TELEGRAM_BOT_TOKEN).
    #[arg(long, env = "TELEGRAM_CHAT_ID")]
    pub telegram_chat_id: Option<String>,
    /// Telegram Bot API base URL [default: the official API].
    #[arg(long, env = "TELEGRAM_API_URL")]
    pub telegram_api_url: Option<String>,
    /// Databases the dead man's switch watches, comma-separated [default: PGDATABASE].
    #[arg(long, env = "BACKUP_DATABASES")]
    pub databases: Option<String>,
    /// Database watched when BACKUP_DATABASES is empty (libpq's variable).
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pub pg_database: Option<String>,
    /// Alert when a database has had no verified backup for this long.
    #[arg(long, env = "ALERT_STALE_AFTER", default_value = "26h", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// While a failure lasts, remind at most this often.
    #[arg(long, env = "ALERT_REMIND_EVERY", default_value = "6h", value_parser = parse_duration)]
    pub remind_every: Duration,
    /// Also send a message for every verified backup.
    #[arg(long, env = "ALERT_ON_SUCCESS", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub alert_on_success: bool,
    /// Attempts per channel before giving up on one message.
    #[arg(long, env = "ALERT_DELIVERY_ATTEMPTS", default_value = "8")]
    pub delivery_attempts: u32,
    /// First delay between attempts on a channel (doubles up to 2 minutes).
    #[arg(long, env = "ALERT_RETRY_INITIAL", default_value = "2s", value_parser = parse_duration)]
    pub retry_initial: Duration,
    /// When to send the daily digest: five cron fields in BACKUP_TZ, or `off`.
    #[arg(long, env = "ALERT_DIGEST_SCHEDULE", default_value = "off")]
    pub digest_schedule: String,
    /// Time zone of the digest's schedule and of the times it shows (IANA name).
    #[arg(long = "backup-tz", env = "BACKUP_TZ", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,
    /// How often the dead man's switch looks at the clock.
    #[arg(long, env = "ALERT_CHECK_EVERY", default_value = "1m", value_parser = parse_duration)]
    pub check_every: Duration,
}

impl AsRef<ServiceArgs> for Args {
    fn as_ref(&self) -> &ServiceArgs {
        &self.service
    }
}

/// A refused setting, named by its variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A secret that cannot be read (`name` or `name_FILE`).
    #[error("{name}: {source}")]
    Secret { name: String, source: ConfigError },
    #[error("BACKUP_DATABASES: {name:?}: {cause}")]
    Database { name: String, cause: String },
    #[error("{0}")]
    Invalid(String),
}

/// Names the secret that could not be read.
fn unreadable(name: &str) -> impl FnOnce(ConfigError) -> SettingsError {
    let name = name.to_owned();
    move |source| SettingsError::Secret { name, source }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub email: Option<EmailSettings>,
    pub telegram: Option<TelegramSettings>,
    pub slack: Option<SlackSettings>,
    pub healthcheck: HealthcheckSettings,
    /// Databases the dead man's switch watches; when empty, those seen
    /// verifying in the stream.
    pub databases: Vec<DatabaseName>,
    pub stale_after: Duration,
    pub remind_every: Duration,
    /// How often the dead man's switch looks at the clock.
    pub stale_check_every: Duration,
    /// Also tell people about every verified backup.
    pub alert_on_success: bool,
    /// When the daily digest goes out (its zone is `BACKUP_TZ`); `None`: never.
    pub digest: Option<LocalCron>,
    pub delivery: DeliveryPolicy,
    pub grace: Duration,
}

impl Default for Settings {
    /// No channel (alerts go to the log), the documented thresholds.
    fn default() -> Self {
        Self {
            email: None,
            telegram: None,
            slack: None,
            healthcheck: HealthcheckSettings::default(),
            databases: Vec::new(),
            stale_after: Duration::from_secs(26 * 3600),
            remind_every: Duration::from_secs(6 * 3600),
            stale_check_every: Duration::from_secs(60),
            alert_on_success: false,
            digest: None,
            delivery: DeliveryPolicy::default(),
            grace: Duration::from_secs(20),
        }
    }
}

impl TryFrom<Args> for Settings {
    type Error = SettingsError;

    /// Reads the channels' secrets; contacts no server.
    fn try_from(args: Args) -> Result<Settings, SettingsError> {
        let email = email(&args)?;
        let telegram = telegram(&args)?;
        let slack = secret_from_env("SLACK_WEBHOOK_URL")
            .map_err(unreadable("SLACK_WEBHOOK_URL"))?
            .map(|webhook_url| SlackSettings { webhook_url });
        let databases = databases(&args)?;
        let mut per_database = BTreeMap::new();
        for database in &databases {
            let name = format!("HEALTHCHECK_URL_{}", database.as_str().to_uppercase());
            if let Some(url) = secret_from_env(&name).map_err(unreadable(&name))? {
                per_database.insert(database.clone(), url);
            }
        }
        let healthcheck = HealthcheckSettings {
            default_url: secret_from_env("HEALTHCHECK_URL")
                .map_err(unreadable("HEALTHCHECK_URL"))?,
            per_database,
        };
        if args.delivery_attempts < 1 {
            return Err(SettingsError::Invalid(
                "ALERT_DELIVERY_ATTEMPTS must be at least 1".into(),
            ));
        }
        Ok(Settings {
            email,
            telegram,
            slack,
            healthcheck,
            databases,
            stale_after: args.stale_after,
            remind_every: args.remind_every,
            stale_check_every: args.check_every.max(Duration::from_millis(100)),
            alert_on_success: args.alert_on_success,
            digest: LocalCron::parse(
                "ALERT_DIGEST_SCHEDULE",
                &args.digest_schedule,
                args.timezone,
            )
            .map_err(SettingsError::Invalid)?,
            delivery: DeliveryPolicy {
                attempts: args.delivery_attempts,
                backoff: Backoff::new(args.retry_initial, Duration::from_secs(120)),
                ..DeliveryPolicy::default()
            },
            grace: args.service.shutdown_grace,
        })
    }
}

/// Email, when `SMTP_URL` is set (a secret: it may embed a password);
/// then a sender and recipients are required.
fn email(args: &Args) -> Result<Option<EmailSettings>, SettingsError> {
    let Some(smtp_url) = secret_from_env("SMTP_URL").map_err(unreadable("SMTP_URL"))? else {
        return Ok(None);
    };
    let from = args.email_from.clone().ok_or_else(|| {
        SettingsError::Invalid("SMTP_URL is set but ALERT_EMAIL_FROM is not".into())
    })?;
    if args.email_to.is_empty() {
        return Err(SettingsError::Invalid(
            "SMTP_URL is set but ALERT_EMAIL_TO is not".into(),
        ));
    }
    Ok(Some(EmailSettings {
        smtp_url,
        username: args.smtp_username.clone(),
        password: secret_from_env("SMTP_PASSWORD").map_err(unreadable("SMTP_PASSWORD"))?,
        from,
        to: args.email_to.clone(),
    }))
}

/// Telegram, when `TELEGRAM_BOT_TOKEN` is set; then a chat is required.
fn telegram(args: &Args) -> Result<Option<TelegramSettings>, SettingsError> {
    let Some(token) =
        secret_from_env("TELEGRAM_BOT_TOKEN").map_err(unreadable("TELEGRAM_BOT_TOKEN"))?
    else {
        return Ok(None);
    };
    let chat_id = args.telegram_chat_id.clone().ok_or_else(|| {
        SettingsError::Invalid("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not".into())
    })?;
    Ok(Some(TelegramSettings {
        token,
        chat_id,
        api_url: args.telegram_api_url.clone(),
    }))
}

/// `BACKUP_DATABASES`, or `PGDATABASE` when it is unset or empty (compose
/// passes an unset variable as an empty string).
fn databases(args: &Args) -> Result<Vec<DatabaseName>, SettingsError> {
    let list = match args.databases.as_deref().filter(|l| !l.trim().is_empty()) {
        Some(list) => list.to_owned(),
        None => args.pg_database.clone().unwrap_or_default(),
    };
    comma_list(&list)
        .into_iter()
        .map(|name| {
            DatabaseName::try_from(name.clone()).map_err(|e| SettingsError::Database {
                name,
                cause: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn settings(argv: &[&str]) -> Result<Settings, SettingsError> {
        let argv = std::iter::once("notifier").chain(argv.iter().copied());
        Settings::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn databases_come_from_backup_databases_or_pgdatabase() {
        let both = settings(&["--databases", "app, crm", "--pg-database", "other"]).unwrap();
        let names: Vec<&str> = both.databases.iter().map(DatabaseName::as_str).collect();
        assert_eq!(names, ["app", "crm"]);
        let fallback = settings(&["--databases", " ", "--pg-database", "other"]).unwrap();
        assert_eq!(fallback.databases[0].as_str(), "other");
        let line = backup_core::error_chain(
            &settings(&["--databases", "app,bad name"]).expect_err("refused"),
        );
        assert!(
            line.starts_with("BACKUP_DATABASES: \"bad name\": "),
            "{line}"
        );
    }

    #[test]
    fn each_refusal_names_its_variable() {
        let line = |argv: &[&str]| backup_core::error_chain(&settings(argv).expect_err("refused"));
        assert_eq!(
            line(&["--delivery-attempts", "0"]),
            "ALERT_DELIVERY_ATTEMPTS must be at least 1"
        );
        assert!(line(&["--digest-schedule", "0 8 * 13 *"]).contains("ALERT_DIGEST_SCHEDULE"));
        let defaults = settings(&["--check-every", "1ms"]).unwrap();
        assert_eq!(defaults.stale_check_every, Duration::from_millis(100));
        assert_eq!(defaults.delivery.attempts, 8);
        assert!(defaults.digest.is_none());
    }
}
