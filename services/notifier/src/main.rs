//! `notifier` binary: configuration, tracing, NATS, then [`notifier::run`].

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{
    SECRETS_HELP, ServiceArgs, comma_list, exit_status, parse_duration, secret_from_env,
};
use backup_core::names::DatabaseName;
use backup_core::retry::Backoff;
use clap::Parser;
use lettre::message::Mailbox;

/// Alerts the on-call about failed, repeated, recovered and missing backups, by
/// email, Telegram, Slack and healthcheck pings (the log when none is set).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = format!("{SECRETS_HELP}\n\nNotifier secrets: SMTP_URL, SMTP_PASSWORD, \
        TELEGRAM_BOT_TOKEN, SLACK_WEBHOOK_URL, HEALTHCHECK_URL and HEALTHCHECK_URL_<DATABASE> \
        (database name in upper case), each also as <NAME>_FILE.")
)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    /// Sender of alert emails.
    #[arg(long, env = "ALERT_EMAIL_FROM")]
    email_from: Option<Mailbox>,
    /// Recipients of alert emails, comma-separated.
    #[arg(long, env = "ALERT_EMAIL_TO", value_delimiter = ',')]
    email_to: Vec<Mailbox>,
    /// SMTP user when not in SMTP_URL; the password comes from SMTP_PASSWORD(_FILE).
    #[arg(long, env = "SMTP_USERNAME")]
    smtp_username: Option<String>,
    /// Telegram chat to alert: a numeric id or @channelname (the token is TELEGRAM_BOT_TOKEN).
    #[arg(long, env = "TELEGRAM_CHAT_ID")]
    telegram_chat_id: Option<String>,
    /// Telegram Bot API base URL [default: the official API].
    #[arg(long, env = "TELEGRAM_API_URL")]
    telegram_api_url: Option<String>,
    /// Databases the dead man's switch watches, comma-separated [default: PGDATABASE].
    #[arg(long, env = "BACKUP_DATABASES")]
    databases: Option<String>,
    /// Database watched when BACKUP_DATABASES is empty (libpq's variable).
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pg_database: Option<String>,
    /// Alert when a database has had no verified backup for this long.
    #[arg(long, env = "ALERT_STALE_AFTER", default_value = "26h", value_parser = parse_duration)]
    stale_after: Duration,
    /// While a failure lasts, remind at most this often.
    #[arg(long, env = "ALERT_REMIND_EVERY", default_value = "6h", value_parser = parse_duration)]
    remind_every: Duration,
    /// Also send a message for every verified backup.
    #[arg(long, env = "ALERT_ON_SUCCESS", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    alert_on_success: bool,
    /// Attempts per channel before giving up on one message.
    #[arg(long, env = "ALERT_DELIVERY_ATTEMPTS", default_value = "8")]
    delivery_attempts: u32,
    /// First delay between attempts on a channel (doubles up to 2 minutes).
    #[arg(long, env = "ALERT_RETRY_INITIAL", default_value = "2s", value_parser = parse_duration)]
    retry_initial: Duration,
    /// When to send the daily digest: five cron fields in BACKUP_TZ, or `off`.
    #[arg(long, env = "ALERT_DIGEST_SCHEDULE", default_value = "off")]
    digest_schedule: String,
    /// Time zone of the digest's schedule and of the times it shows (IANA name).
    #[arg(long = "backup-tz", env = "BACKUP_TZ", default_value = "UTC")]
    timezone: chrono_tz::Tz,
    /// How often the dead man's switch looks at the clock.
    #[arg(long, env = "ALERT_CHECK_EVERY", default_value = "1m", value_parser = parse_duration)]
    check_every: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = backup_core::config::parse_settings("notifier");
    if args.common.health_probe {
        return backup_core::health::probe(&args.common).await;
    }
    backup_core::telemetry::init(args.common.log_format);
    exit_status("notifier", run(args).await.map_err(|e| format!("{e:#}")))
}

fn databases(args: &Args) -> anyhow::Result<Vec<DatabaseName>> {
    // Compose passes an unset BACKUP_DATABASES as an empty string.
    let list = match args.databases.as_deref().filter(|l| !l.trim().is_empty()) {
        Some(list) => list.to_owned(),
        None => args.pg_database.clone().unwrap_or_default(),
    };
    comma_list(&list)
        .into_iter()
        .map(|name| {
            DatabaseName::try_from(name.clone())
                .map_err(|e| anyhow::anyhow!("BACKUP_DATABASES: {name:?}: {e}"))
        })
        .collect()
}

fn settings(args: &Args) -> anyhow::Result<notifier::Settings> {
    // SMTP_URL may embed a password, so it is a secret (SMTP_URL_FILE works too).
    let email = match secret_from_env("SMTP_URL").context("SMTP_URL")? {
        Some(smtp_url) => {
            let from = args
                .email_from
                .clone()
                .context("SMTP_URL is set but ALERT_EMAIL_FROM is not")?;
            anyhow::ensure!(
                !args.email_to.is_empty(),
                "SMTP_URL is set but ALERT_EMAIL_TO is not"
            );
            Some(notifier::EmailSettings {
                smtp_url,
                username: args.smtp_username.clone(),
                password: secret_from_env("SMTP_PASSWORD").context("SMTP_PASSWORD")?,
                from,
                to: args.email_to.clone(),
            })
        }
        None => None,
    };
    let telegram = match secret_from_env("TELEGRAM_BOT_TOKEN").context("TELEGRAM_BOT_TOKEN")? {
        Some(token) => Some(notifier::TelegramSettings {
            token,
            chat_id: args
                .telegram_chat_id
                .clone()
                .context("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not")?,
            api_url: args.telegram_api_url.clone(),
        }),
        None => None,
    };
    let slack = secret_from_env("SLACK_WEBHOOK_URL")
        .context("SLACK_WEBHOOK_URL")?
        .map(|webhook_url| notifier::SlackSettings { webhook_url });
    let databases = databases(args)?;
    let mut per_database = BTreeMap::new();
    for database in &databases {
        let name = format!("HEALTHCHECK_URL_{}", database.as_str().to_uppercase());
        if let Some(url) = secret_from_env(&name).context(name)? {
            per_database.insert(database.clone(), url);
        }
    }
    let healthcheck = notifier::HealthcheckSettings {
        default_url: secret_from_env("HEALTHCHECK_URL").context("HEALTHCHECK_URL")?,
        per_database,
    };
    anyhow::ensure!(
        args.delivery_attempts >= 1,
        "ALERT_DELIVERY_ATTEMPTS must be at least 1"
    );
    Ok(notifier::Settings {
        email,
        telegram,
        slack,
        healthcheck,
        databases,
        stale_after: args.stale_after,
        remind_every: args.remind_every,
        stale_check_every: args.check_every.max(Duration::from_millis(100)),
        alert_on_success: args.alert_on_success,
        digest: backup_core::calendar::LocalCron::parse(
            "ALERT_DIGEST_SCHEDULE",
            &args.digest_schedule,
            args.timezone,
        )
        .map_err(anyhow::Error::msg)?,
        delivery: notifier::DeliveryPolicy {
            attempts: args.delivery_attempts,
            backoff: Backoff::new(args.retry_initial, Duration::from_secs(120)),
            ..notifier::DeliveryPolicy::default()
        },
        grace: args.common.shutdown_grace,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let nats = args.common.nats_options().context("NATS settings")?;
    let shutdown = backup_core::shutdown::on_signals();
    let Some(bus) = backup_core::bus::Bus::connect_service(&nats, "notifier", &shutdown)
        .await
        .context("NATS")?
    else {
        return Ok(());
    };
    backup_core::health::serve(&args.common, &bus)
        .await
        .context("HEALTH_LISTEN")?;
    notifier::run(bus, settings, shutdown)
        .await
        .context("notifier")?;
    Ok(())
}
