//! The alert channels the notifier would use (email, Telegram, Slack,
//! healthchecks), built from the same variables with the notifier's own
//! channel code, and with `--send-test-alert` one test message on each.

use std::time::Duration;

use alert_channels::channels::{Channel, Email, Redactor, Telegram, http_send, parse_http_url};
use alert_channels::{EmailSettings, Notice, NoticeKind, TelegramSettings};
use backup_core::config::{ExposeSecret, comma_list, secret_from_env};
use backup_core::names::DatabaseName;
use backup_core::preflight::{Check, Verdict};
use chrono::Utc;
use secrecy::SecretString;

use super::DoctorArgs;

/// The message `--send-test-alert` sends on every channel.
pub fn test_notice(database: DatabaseName) -> Notice {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned());
    let when = Utc::now().format("%Y-%m-%d %H:%M UTC");
    Notice {
        kind: NoticeKind::Success,
        database: Some(database),
        subject: format!("[backup] test alert from backupctl doctor on {host}"),
        body: format!(
            "This is a test message sent by `backupctl doctor --send-test-alert` on {host} at {when}.\n\
             If you read it, alerts of the backup pipeline reach you on this channel. Nothing is wrong."
        ),
        short: format!(
            "Test alert from backupctl doctor on {host} ({when}): alerts reach this channel."
        ),
        for_people: true,
        health: None,
    }
}

/// Every alert channel the notifier would use, from the same variables:
/// configured correctly and, with `--send-test-alert`, delivering one test
/// message (no retries: the doctor reports what happens now).
pub async fn alerts(args: &DoctorArgs, databases: &[DatabaseName]) -> Vec<Check> {
    let database = databases
        .first()
        .cloned()
        .or_else(|| DatabaseName::try_from("doctor".to_owned()).ok());
    let notice = match (args.send_test_alert, database) {
        (true, Some(database)) => Some(test_notice(database)),
        _ => None,
    };
    let notice = notice.as_ref();
    let (email, telegram, slack, healthcheck) = tokio::join!(
        async {
            match email_settings(args) {
                Ok(Some(settings)) => alert_email(&settings, notice).await,
                Ok(None) => Check::skip("alert.email", "not configured (SMTP_URL unset)"),
                Err(e) => Check::fail("alert.email", e)
                    .with_fix("set SMTP_URL, ALERT_EMAIL_FROM and ALERT_EMAIL_TO together"),
            }
        },
        async {
            match telegram_settings(args) {
                Ok(Some(settings)) => alert_telegram(&settings, notice).await,
                Ok(None) => Check::skip(
                    "alert.telegram",
                    "not configured (TELEGRAM_BOT_TOKEN unset)",
                ),
                Err(e) => Check::fail("alert.telegram", e)
                    .with_fix("set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID together"),
            }
        },
        async {
            match secret_from_env("SLACK_WEBHOOK_URL") {
                Ok(Some(url)) => alert_slack(&url, notice).await,
                Ok(None) => Check::skip("alert.slack", "not configured (SLACK_WEBHOOK_URL unset)"),
                Err(e) => Check::fail("alert.slack", e.to_string())
                    .with_fix("set one of SLACK_WEBHOOK_URL and SLACK_WEBHOOK_URL_FILE"),
            }
        },
        async {
            match healthcheck_urls(databases) {
                Ok(urls) if urls.is_empty() => Check::skip(
                    "alert.healthcheck",
                    "not configured (HEALTHCHECK_URL unset)",
                ),
                Ok(urls) => alert_healthcheck(&urls, notice.is_some()).await,
                Err(e) => Check::fail("alert.healthcheck", e)
                    .with_fix("set each HEALTHCHECK_URL variable or its _FILE, not both"),
            }
        },
    );
    let for_people = [&email, &telegram, &slack];
    let mut checks = Vec::new();
    if for_people.iter().all(|c| c.verdict == Verdict::Skip) {
        // The notifier would then only write ERROR lines to its own log:
        // a failure nobody reads is no alert.
        checks.push(Check::fail("alert", "no alert channel for people is configured: a failed backup would only be an ERROR line in the notifier's log").with_fix("set SMTP_URL (with ALERT_EMAIL_FROM and ALERT_EMAIL_TO), TELEGRAM_BOT_TOKEN (with TELEGRAM_CHAT_ID) or SLACK_WEBHOOK_URL for the notifier and for this command"));
    }
    checks.extend([email, telegram, slack, healthcheck]);
    checks
}

fn email_settings(args: &DoctorArgs) -> Result<Option<EmailSettings>, String> {
    let Some(smtp_url) = secret_from_env("SMTP_URL").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let from_text = args
        .email_from
        .as_deref()
        .ok_or("SMTP_URL is set but ALERT_EMAIL_FROM is not")?;
    let from = from_text
        .parse()
        .map_err(|e| format!("ALERT_EMAIL_FROM {from_text:?}: {e}"))?;
    let to = comma_list(args.email_to.as_deref().unwrap_or_default())
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e| format!("ALERT_EMAIL_TO {text:?}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if to.is_empty() {
        return Err("SMTP_URL is set but ALERT_EMAIL_TO is not".into());
    }
    Ok(Some(EmailSettings {
        smtp_url,
        username: args.smtp_username.clone(),
        password: secret_from_env("SMTP_PASSWORD").map_err(|e| e.to_string())?,
        from,
        to,
    }))
}

fn telegram_settings(args: &DoctorArgs) -> Result<Option<TelegramSettings>, String> {
    let Some(token) = secret_from_env("TELEGRAM_BOT_TOKEN").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let chat_id = args
        .telegram_chat_id
        .clone()
        .ok_or("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not")?;
    Ok(Some(TelegramSettings {
        token,
        chat_id,
        api_url: args.telegram_api_url.clone(),
    }))
}

/// `HEALTHCHECK_URL` and the `HEALTHCHECK_URL_<DATABASE>` of the
/// configured databases, by variable name.
fn healthcheck_urls(databases: &[DatabaseName]) -> Result<Vec<(String, SecretString)>, String> {
    let mut names = vec!["HEALTHCHECK_URL".to_owned()];
    names.extend(
        databases
            .iter()
            .map(|d| format!("HEALTHCHECK_URL_{}", d.as_str().to_uppercase())),
    );
    let mut urls = Vec::new();
    for name in names {
        if let Some(url) = secret_from_env(&name).map_err(|e| e.to_string())? {
            urls.push((name, url));
        }
    }
    Ok(urls)
}

fn redactor(secrets: &[&SecretString]) -> Redactor {
    let mut redactor = Redactor::default();
    for secret in secrets {
        redactor.add(secret.expose_secret());
        if let Ok(url) = reqwest::Url::parse(secret.expose_secret())
            && let Some(password) = url.password()
        {
            redactor.add(password);
        }
    }
    redactor
}

const NOT_SENT: &str = "no test message sent (add --send-test-alert)";

/// Email: the notifier's own transport, one attempt.
pub async fn alert_email(settings: &EmailSettings, notice: Option<&Notice>) -> Check {
    let mut secrets = vec![&settings.smtp_url];
    secrets.extend(settings.password.as_ref());
    let redactor = redactor(&secrets);
    let to = settings
        .to
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let channel = match Email::new(settings) {
        Ok(email) => Channel::Email(Box::new(email)),
        Err(e) => {
            return Check::fail("alert.email", redactor.redact(&e.to_string())).with_fix("SMTP_URL takes smtp://[user:password@]host[:port][?tls=required|opportunistic|none] or smtps://…");
        }
    };
    let (server, tls) = match &channel {
        Channel::Email(email) => (email.server().to_owned(), email.tls().describe()),
        _ => ("the SMTP server".to_owned(), ""),
    };
    let what = format!("from {} to {to} via {server} ({tls})", settings.from);
    match notice {
        None => match &channel {
            Channel::Email(email) => match email.test_connection().await {
                Ok(()) => Check::pass(
                    "alert.email",
                    format!("{server} answered EHLO ({tls}); mail would go {what}; {NOT_SENT}"),
                ),
                Err(e) => Check::fail("alert.email", format!("SMTP_URL {server} ({tls}): {}", redactor.redact(&e.cause))).with_fix("check that the SMTP server named by SMTP_URL is up and reachable from here; \
                     ?tls=required|opportunistic|none on smtp:// chooses STARTTLS \
                     (without it: required when credentials are set, opportunistic otherwise)"),
            },
            _ => Check::pass("alert.email", format!("configured {what}; {NOT_SENT}")),
        },
        Some(notice) => match channel.send(notice).await {
            Ok(()) => Check::pass("alert.email", format!("test message accepted {what}")),
            Err(e) => Check::fail("alert.email", format!(
                    "test message {what} not delivered: {}",
                    redactor.redact(&e.cause)
                )).with_fix("check that the SMTP server is up and reachable, SMTP_URL (host, port, TLS, credentials), and that it accepts mail from ALERT_EMAIL_FROM to ALERT_EMAIL_TO"),
        },
    }
}

/// Telegram: the notifier's own bot client, one attempt.
pub async fn alert_telegram(settings: &TelegramSettings, notice: Option<&Notice>) -> Check {
    let redactor = redactor(&[&settings.token]);
    let channel = match Telegram::new(settings) {
        Ok(telegram) => Channel::Telegram(telegram),
        Err(e) => {
            return Check::fail("alert.telegram", redactor.redact(&e.to_string())).with_fix(
                "TELEGRAM_CHAT_ID is a number or @channelname; TELEGRAM_API_URL an http(s) URL",
            );
        }
    };
    let what = format!("chat {}", settings.chat_id);
    match notice {
        None => Check::pass(
            "alert.telegram",
            format!("configured for {what}; {NOT_SENT}"),
        ),
        Some(notice) => match channel.send(notice).await {
            Ok(()) => Check::pass("alert.telegram", format!("test message sent to {what}")),
            Err(e) => Check::fail("alert.telegram", format!(
                    "test message to {what} not delivered: {}",
                    redactor.redact(&e.cause)
                )).with_fix("check TELEGRAM_BOT_TOKEN, that the bot is a member of the chat, and that api.telegram.org (or TELEGRAM_API_URL) is reachable"),
        },
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

/// Slack: a test message through the incoming webhook, as the notifier
/// posts it.
pub async fn alert_slack(webhook_url: &SecretString, notice: Option<&Notice>) -> Check {
    let redactor = redactor(&[webhook_url]);
    let url = match parse_http_url("SLACK_WEBHOOK_URL", webhook_url) {
        Ok(url) => url,
        Err(e) => {
            return Check::fail("alert.slack", e.to_string()).with_fix("SLACK_WEBHOOK_URL is the https://hooks.slack.com/services/… URL of an incoming webhook");
        }
    };
    let host = url.host_str().unwrap_or("?").to_owned();
    let Some(notice) = notice else {
        return Check::pass(
            "alert.slack",
            format!("webhook on {host} configured; {NOT_SENT}"),
        );
    };
    let client = match http_client() {
        Ok(client) => client,
        Err(e) => return Check::fail("alert.slack", e).with_fix("the HTTP client could not start"),
    };
    let request = client
        .post(url)
        .json(&serde_json::json!({ "text": notice.short }));
    match http_send(request).await {
        Ok(()) => Check::pass(
            "alert.slack",
            format!("test message posted to the webhook on {host}"),
        ),
        Err(e) => Check::fail("alert.slack", format!(
                "test message to the webhook on {host} not delivered: {}",
                redactor.redact(&e.cause)
            )).with_fix("check SLACK_WEBHOOK_URL (a revoked webhook answers 403/404) and that it is reachable from here"),
    }
}

/// Health-check pings: with `send`, a POST to `<url>/log`, which
/// healthchecks.io records without changing the check's state (a real ping
/// would claim a backup succeeded, `/fail` would page someone).
pub async fn alert_healthcheck(urls: &[(String, SecretString)], send: bool) -> Check {
    let secrets: Vec<&SecretString> = urls.iter().map(|(_, url)| url).collect();
    let redactor = redactor(&secrets);
    let mut parsed = Vec::new();
    for (name, url) in urls {
        match parse_http_url(name, url) {
            Ok(parsed_url) => parsed.push((name.as_str(), parsed_url)),
            Err(e) => {
                return Check::fail("alert.healthcheck", e.to_string()).with_fix(format!(
                    "{name} is the ping URL of the check, e.g. https://hc-ping.com/<uuid>"
                ));
            }
        }
    }
    let names: Vec<&str> = parsed.iter().map(|(name, _)| *name).collect();
    if !send {
        return Check::pass(
            "alert.healthcheck",
            format!("{} configured; {NOT_SENT}", names.join(", ")),
        );
    }
    let client = match http_client() {
        Ok(client) => client,
        Err(e) => {
            return Check::fail("alert.healthcheck", e).with_fix("the HTTP client could not start");
        }
    };
    let mut failures = Vec::new();
    for (name, mut url) in parsed {
        let path = format!("{}/log", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let request = client
            .post(url)
            .body("backupctl doctor: test of the health-check URL (no state change)");
        if let Err(e) = http_send(request).await {
            failures.push(format!("{name}: {}", redactor.redact(&e.cause)));
        }
    }
    if failures.is_empty() {
        Check::pass(
            "alert.healthcheck",
            format!("{} answered a /log ping", names.join(", ")),
        )
    } else {
        Check::fail("alert.healthcheck", format!("not delivered: {}", failures.join("; "))).with_fix("check the ping URL (a deleted check answers 404) and that the service is reachable from here")
    }
}
