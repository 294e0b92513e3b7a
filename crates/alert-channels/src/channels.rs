//! The ways a notice reaches people: email (lettre over SMTP),
//! Telegram (teloxide), a Slack incoming webhook and healthchecks.io-style
//! pings (reqwest), or the log when no channel for people is configured.
//!
//! Retries: [`deliver`] sends a notice to every channel at once, and each
//! channel retries on its own with backoff (honouring a `429`'s
//! retry-after), so a channel that is down neither delays nor loses the
//! others' messages. A channel that refuses for good, or is still failing
//! after its attempts, gives up with an error in the log. Error texts pass
//! through [`Redactor`] so no token, webhook URL or password reaches a log.

use std::collections::BTreeMap;
use std::time::Duration;

use backup_core::names::DatabaseName;
use backup_core::retry::Backoff;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use teloxide::prelude::Requester;
use teloxide::types::{ChatId, Recipient};

use crate::notice::{HealthPing, Notice};

#[derive(Debug, thiserror::Error)]
pub enum ChannelConfigError {
    #[error("SMTP_URL: {0}")]
    SmtpUrl(String),
    #[error("TELEGRAM_API_URL: {0}")]
    TelegramApiUrl(String),
    #[error("TELEGRAM_CHAT_ID: {0}")]
    TelegramChatId(String),
    #[error("{name}: not a valid http(s) URL")]
    HttpUrl { name: String },
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}")]
pub struct ChannelError {
    /// Already redacted.
    pub cause: String,
    pub transient: bool,
    /// What the service asked for (`429` + `Retry-After`, Telegram's
    /// `retry_after`).
    pub retry_after: Option<Duration>,
}

impl ChannelError {
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Replaces every secret value in a text with `[redacted]`. Client errors
/// (reqwest, teloxide) quote the URL they called, and the URL is where
/// Telegram tokens and Slack or healthcheck keys live.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<SecretString>,
}

impl Redactor {
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= 4 {
            self.secrets.push(SecretString::from(secret.to_owned()));
            // Clients may show the URL-encoded form.
            let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            if encoded != secret {
                self.secrets.push(SecretString::from(encoded));
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = backup_core::one_line(text);
        for secret in &self.secrets {
            text = text.replace(secret.expose_secret(), "[redacted]");
        }
        text
    }
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// `smtp://host[:port]`, `smtps://host[:port]`; may hold `user:password@`.
    /// On `smtp://` to a host other than this machine, STARTTLS is required
    /// unless the URL says `?tls=opportunistic` or `?tls=none`.
    pub smtp_url: SecretString,
    /// Credentials given apart from the URL (`SMTP_USERNAME`, `SMTP_PASSWORD`).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub token: SecretString,
    /// A numeric chat id, or `@channelname`.
    pub chat_id: String,
    /// The Bot API base URL; `None` for the official one.
    pub api_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SlackSettings {
    pub webhook_url: SecretString,
}

#[derive(Debug, Clone, Default)]
pub struct HealthcheckSettings {
    /// Pinged for databases without their own URL.
    pub default_url: Option<SecretString>,
    pub per_database: BTreeMap<DatabaseName, SecretString>,
}

impl HealthcheckSettings {
    pub fn is_empty(&self) -> bool {
        self.default_url.is_none() && self.per_database.is_empty()
    }
}

/// How hard one channel tries before giving up on one notice.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    pub attempts: u32,
    pub backoff: Backoff,
    /// A retry-after longer than this is cut short (a misbehaving server
    /// must not hold the event for hours).
    pub max_retry_after: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(120)),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
pub enum Channel {
    Email(Box<Email>),
    Telegram(Telegram),
    Slack(Slack),
    Healthcheck(Healthcheck),
    /// For people when nothing else is configured.
    Log,
}

impl Channel {
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Email(_) => "email",
            Channel::Telegram(_) => "telegram",
            Channel::Slack(_) => "slack",
            Channel::Healthcheck(_) => "healthcheck",
            Channel::Log => "log",
        }
    }

    fn wants(&self, notice: &Notice) -> bool {
        match self {
            Channel::Healthcheck(hc) => {
                notice.health.is_some()
                    && notice
                        .database
                        .as_ref()
                        .and_then(|d| hc.url_for(d))
                        .is_some()
            }
            _ => notice.for_people,
        }
    }

    pub async fn send(&self, notice: &Notice) -> Result<(), ChannelError> {
        match self {
            Channel::Email(email) => email.send(notice).await,
            Channel::Telegram(telegram) => telegram.send(notice).await,
            Channel::Slack(slack) => slack.send(notice).await,
            Channel::Healthcheck(hc) => hc.send(notice).await,
            Channel::Log => {
                tracing::error!(database = notice.scope(), subject = %notice.subject, body = %notice.body, "ALERT");
                Ok(())
            }
        }
    }
}

/// The configured channels, built once at start-up.
#[derive(Debug)]
pub struct Channels {
    channels: Vec<Channel>,
    redactor: Redactor,
    policy: DeliveryPolicy,
}

/// What became of one notice on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Yes,
    GaveUp,
}

impl Channels {
    pub fn build(
        email: Option<&EmailSettings>,
        telegram: Option<&TelegramSettings>,
        slack: Option<&SlackSettings>,
        healthcheck: &HealthcheckSettings,
        policy: DeliveryPolicy,
    ) -> Result<Channels, ChannelConfigError> {
        let mut redactor = Redactor::default();
        let mut channels = Vec::new();
        if let Some(settings) = email {
            redactor.add(settings.smtp_url.expose_secret());
            if let Ok(url) = url::Url::parse(settings.smtp_url.expose_secret())
                && let Some(password) = url.password()
            {
                redactor.add(password);
            }
            if let Some(password) = &settings.password {
                redactor.add(password.expose_secret());
            }
            channels.push(Channel::Email(Box::new(Email::new(settings)?)));
        }
        if let Some(settings) = telegram {
            redactor.add(settings.token.expose_secret());
            channels.push(Channel::Telegram(Telegram::new(settings)?));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|_| ChannelConfigError::HttpUrl {
                name: "HTTP client".into(),
            })?;
        if let Some(settings) = slack {
            redactor.add(settings.webhook_url.expose_secret());
            let url = parse_http_url("SLACK_WEBHOOK_URL", &settings.webhook_url)?;
            channels.push(Channel::Slack(Slack {
                http: http.clone(),
                url,
            }));
        }
        if !healthcheck.is_empty() {
            let mut per_database = BTreeMap::new();
            for (database, url) in &healthcheck.per_database {
                redactor.add(url.expose_secret());
                let name = format!("HEALTHCHECK_URL_{}", database.as_str().to_uppercase());
                per_database.insert(database.clone(), parse_http_url(&name, url)?);
            }
            let default_url = match &healthcheck.default_url {
                Some(url) => {
                    redactor.add(url.expose_secret());
                    Some(parse_http_url("HEALTHCHECK_URL", url)?)
                }
                None => None,
            };
            channels.push(Channel::Healthcheck(Healthcheck {
                http,
                default_url,
                per_database,
            }));
        }
        if !channels.iter().any(|c| {
            matches!(
                c,
                Channel::Email(_) | Channel::Telegram(_) | Channel::Slack(_)
            )
        }) {
            channels.push(Channel::Log);
        }
        Ok(Channels {
            channels,
            redactor,
            policy,
        })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.channels.iter().map(Channel::name).collect()
    }

    pub fn only_log_for_people(&self) -> bool {
        self.channels.iter().any(|c| matches!(c, Channel::Log))
    }

    /// Sends `notice` on every channel that carries it, all at once, each
    /// retrying on its own; returns when each delivered or gave up.
    pub async fn deliver(&self, notice: &Notice) -> Vec<(&'static str, Delivered)> {
        let sends = self
            .channels
            .iter()
            .filter(|channel| channel.wants(notice))
            .map(
                |channel| async move { (channel.name(), self.deliver_one(channel, notice).await) },
            );
        futures::future::join_all(sends).await
    }

    async fn deliver_one(&self, channel: &Channel, notice: &Notice) -> Delivered {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match channel.send(notice).await {
                Ok(()) => {
                    tracing::info!(channel = channel.name(), database = notice.scope(), kind = ?notice.kind, attempt, "notice delivered");
                    return Delivered::Yes;
                }
                Err(error) => ChannelError {
                    cause: self.redactor.redact(&error.cause),
                    ..error
                },
            };
            if !error.transient || attempt >= self.policy.attempts {
                tracing::error!(
                    channel = channel.name(),
                    database = notice.scope(),
                    subject = %notice.subject,
                    attempt,
                    error = %error,
                    "GAVE UP delivering a notice on this channel"
                );
                return Delivered::GaveUp;
            }
            let delay = match error.retry_after {
                Some(asked) => asked.min(self.policy.max_retry_after),
                None => self.policy.backoff.delay(attempt),
            };
            tracing::warn!(channel = channel.name(), database = notice.scope(), attempt, retry_in = ?delay, error = %error, "notice not delivered yet; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

pub fn parse_http_url(
    name: &str,
    value: &SecretString,
) -> Result<reqwest::Url, ChannelConfigError> {
    match reqwest::Url::parse(value.expose_secret()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(ChannelConfigError::HttpUrl { name: name.into() }),
    }
}

/// How `smtp://` uses TLS, from `?tls=` or, without it, from whether
/// credentials are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// STARTTLS or no mail: credentials never cross in clear.
    Required,
    /// STARTTLS when the server offers it, plain SMTP otherwise.
    Opportunistic,
    /// Plain SMTP.
    None,
}

impl SmtpTls {
    pub fn describe(self) -> &'static str {
        match self {
            SmtpTls::Wrapper => "TLS from the start",
            SmtpTls::Required => "STARTTLS required",
            SmtpTls::Opportunistic => "STARTTLS when offered",
            SmtpTls::None => "no TLS",
        }
    }
}

/// The URL given to lettre and the TLS mode it means. `smtp://` without
/// `tls=`: STARTTLS required when credentials are given (in the URL or
/// apart, `separate_credentials`), opportunistic otherwise (a relay on the
/// local network, such as a compose stack's, often offers no TLS);
/// `?tls=required|opportunistic|none` overrides; `smtps://` is TLS from
/// the start.
pub fn smtp_transport_url(
    raw: &str,
    separate_credentials: bool,
) -> Result<(String, SmtpTls), ChannelConfigError> {
    let mut url = url::Url::parse(raw)
        .map_err(|e| ChannelConfigError::SmtpUrl(format!("not a URL ({e})")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ChannelConfigError::SmtpUrl("no host".into()));
    }
    let credentials =
        separate_credentials || !url.username().is_empty() || url.password().is_some();
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let mode = match (url.scheme(), tls.as_deref()) {
        ("smtps", _) => SmtpTls::Wrapper,
        ("smtp", None) if credentials => {
            url.query_pairs_mut().append_pair("tls", "required");
            SmtpTls::Required
        }
        ("smtp", None) => {
            url.query_pairs_mut().append_pair("tls", "opportunistic");
            SmtpTls::Opportunistic
        }
        ("smtp", Some("required")) => SmtpTls::Required,
        ("smtp", Some("opportunistic")) => SmtpTls::Opportunistic,
        ("smtp", Some("none")) => {
            let others: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "tls")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.set_query(None);
            if !others.is_empty() {
                url.query_pairs_mut().extend_pairs(others);
            }
            SmtpTls::None
        }
        ("smtp", Some(other)) => {
            return Err(ChannelConfigError::SmtpUrl(format!(
                "tls={other} is not one of required, opportunistic, none"
            )));
        }
        (scheme, _) => {
            return Err(ChannelConfigError::SmtpUrl(format!(
                "scheme {scheme}:// is not smtp:// or smtps://"
            )));
        }
    };
    // Without a port: 465 for smtps://, the submission port 587 when
    // logging in, 25 (a relay) otherwise. Set explicitly, since lettre's
    // own default follows the TLS mode instead.
    if url.port().is_none() {
        let port = match mode {
            SmtpTls::Wrapper => 465,
            _ if credentials => 587,
            _ => 25,
        };
        url.set_port(Some(port))
            .map_err(|()| ChannelConfigError::SmtpUrl("cannot take a port".into()))?;
    }
    Ok((url.to_string(), mode))
}

/// `scheme://host:port` of a URL from [`smtp_transport_url`]: what may be
/// shown (no credentials, no query).
fn smtp_server(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str()?,
                u.port_or_known_default()?
            ))
        })
        .unwrap_or_else(|| "the SMTP server".to_owned())
}

#[derive(Debug)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    tls: SmtpTls,
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Email {
    pub fn new(settings: &EmailSettings) -> Result<Email, ChannelConfigError> {
        let (url, tls) = smtp_transport_url(
            settings.smtp_url.expose_secret(),
            settings.username.is_some() || settings.password.is_some(),
        )?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| ChannelConfigError::SmtpUrl(backup_core::one_line(&e.to_string())))?
            .timeout(Some(Duration::from_secs(30)));
        match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    password.expose_secret().to_owned(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ChannelConfigError::SmtpUrl(
                    "SMTP_USERNAME and SMTP_PASSWORD go together".into(),
                ));
            }
        }
        Ok(Email {
            transport: builder.build(),
            tls,
            server: smtp_server(&url),
            from: settings.from.clone(),
            to: settings.to.clone(),
        })
    }

    pub fn tls(&self) -> SmtpTls {
        self.tls
    }

    /// `scheme://host:port`, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Connects, says EHLO, does STARTTLS as the URL asks (and logs in when
    /// credentials are set), then NOOP and QUIT: the path a notice takes,
    /// without sending one.
    pub async fn test_connection(&self) -> Result<(), ChannelError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ChannelError {
                cause: "the server did not answer NOOP".into(),
                transient: true,
                retry_after: None,
            }),
            Err(e) => Err(ChannelError {
                cause: backup_core::error_chain(&e),
                transient: !e.is_permanent(),
                retry_after: None,
            }),
        }
    }

    async fn send(&self, notice: &Notice) -> Result<(), ChannelError> {
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(notice.subject.clone());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .header(ContentType::TEXT_PLAIN)
            .body(notice.body.clone())
            .map_err(|e| ChannelError {
                cause: e.to_string(),
                transient: false,
                retry_after: None,
            })?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| ChannelError {
                cause: backup_core::error_chain(&e),
                transient: !e.is_permanent(),
                retry_after: None,
            })
    }
}

#[derive(Debug)]
pub struct Telegram {
    bot: teloxide::Bot,
    chat: Recipient,
}

impl Telegram {
    pub fn new(settings: &TelegramSettings) -> Result<Telegram, ChannelConfigError> {
        let chat = match settings.chat_id.trim().parse::<i64>() {
            Ok(id) => Recipient::Id(ChatId(id)),
            Err(_) if settings.chat_id.starts_with('@') && settings.chat_id.len() > 1 => {
                Recipient::ChannelUsername(settings.chat_id.clone())
            }
            Err(_) => {
                return Err(ChannelConfigError::TelegramChatId(
                    "a number or @channelname".into(),
                ));
            }
        };
        let mut bot = teloxide::Bot::new(settings.token.expose_secret());
        if let Some(api_url) = &settings.api_url {
            let url = reqwest::Url::parse(api_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
                .ok_or_else(|| ChannelConfigError::TelegramApiUrl("not an http(s) URL".into()))?;
            bot = bot.set_api_url(url);
        }
        Ok(Telegram { bot, chat })
    }

    async fn send(&self, notice: &Notice) -> Result<(), ChannelError> {
        use teloxide::{ApiError, RequestError};
        match self
            .bot
            .send_message(self.chat.clone(), notice.short.clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let (transient, retry_after) = match &error {
                    RequestError::RetryAfter(seconds) => (true, Some(seconds.duration())),
                    // Unknown descriptions are 5xx and the like; the known
                    // ones are refusals (bad token, unknown chat, blocked).
                    RequestError::Api(ApiError::Unknown(_)) => (true, None),
                    RequestError::Api(_) | RequestError::MigrateToChatId(_) => (false, None),
                    RequestError::Network(_)
                    | RequestError::InvalidJson { .. }
                    | RequestError::Io(_) => (true, None),
                };
                Err(ChannelError {
                    cause: backup_core::error_chain(&error),
                    transient,
                    retry_after,
                })
            }
        }
    }
}

#[derive(Debug)]
pub struct Slack {
    http: reqwest::Client,
    url: reqwest::Url,
}

impl Slack {
    async fn send(&self, notice: &Notice) -> Result<(), ChannelError> {
        let request = self
            .http
            .post(self.url.clone())
            .json(&serde_json::json!({ "text": notice.short }));
        http_send(request).await
    }
}

#[derive(Debug)]
pub struct Healthcheck {
    http: reqwest::Client,
    default_url: Option<reqwest::Url>,
    per_database: BTreeMap<DatabaseName, reqwest::Url>,
}

impl Healthcheck {
    fn url_for(&self, database: &DatabaseName) -> Option<&reqwest::Url> {
        self.per_database
            .get(database)
            .or(self.default_url.as_ref())
    }

    async fn send(&self, notice: &Notice) -> Result<(), ChannelError> {
        let (Some(base), Some(ping)) = (
            notice.database.as_ref().and_then(|d| self.url_for(d)),
            notice.health,
        ) else {
            return Ok(());
        };
        let mut url = base.clone();
        if ping == HealthPing::Fail {
            let path = format!("{}/fail", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        // healthchecks.io keeps the body as the ping's log entry.
        http_send(self.http.post(url).body(notice.short.clone())).await
    }
}

/// One HTTP attempt, classified: 2xx delivered; 429 and 5xx worth a retry
/// (with the server's `Retry-After`); other 4xx a refusal.
pub async fn http_send(request: reqwest::RequestBuilder) -> Result<(), ChannelError> {
    let response = request.send().await.map_err(|e| ChannelError {
        cause: backup_core::error_chain(&e.without_url()),
        transient: true,
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    Err(ChannelError {
        cause: format!(
            "HTTP {status}: {}",
            backup_core::clip(&backup_core::one_line(&body), 200)
        ),
        transient: status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_tls_follows_credentials_unless_the_url_says() {
        let mode = |url: &str, apart: bool| smtp_transport_url(url, apart).unwrap();
        // A compose relay without TLS and credentials: plain when not offered.
        assert_eq!(
            mode("smtp://mail-local:1025", false),
            (
                "smtp://mail-local:1025?tls=opportunistic".into(),
                SmtpTls::Opportunistic
            )
        );
        assert_eq!(
            mode("smtp://relay.example.org", false).0,
            "smtp://relay.example.org:25?tls=opportunistic"
        );
        assert_eq!(
            mode("smtp://u:p@smtp.example.org", false).0,
            "smtp://u:p@smtp.example.org:587?tls=required"
        );
        assert_eq!(
            mode("smtps://smtp.example.org", false).0,
            "smtps://smtp.example.org:465"
        );
        // Credentials never cross in clear.
        assert_eq!(
            mode("smtp://u:p@mail.example.org:587", false).1,
            SmtpTls::Required
        );
        assert_eq!(
            mode("smtp://mail.example.org:587", true).1,
            SmtpTls::Required
        );
        assert_eq!(mode("smtp://127.0.0.1:2525", true).1, SmtpTls::Required);
        // tls= overrides.
        assert_eq!(
            mode("smtp://u:p@mail.example.org?tls=none", false),
            ("smtp://u:p@mail.example.org:587".into(), SmtpTls::None)
        );
        assert_eq!(
            mode("smtp://u:p@mail.example.org?tls=opportunistic", false).1,
            SmtpTls::Opportunistic
        );
        assert_eq!(
            mode("smtp://mail.example.org?tls=required", false).1,
            SmtpTls::Required
        );
        assert_eq!(mode("smtps://mail.example.org", false).1, SmtpTls::Wrapper);
        assert!(smtp_transport_url("http://mail.example.org", false).is_err());
        assert!(smtp_transport_url("smtp://mail.example.org?tls=maybe", false).is_err());
    }

    #[test]
    fn redactor_hides_plain_and_encoded_secrets() {
        let mut redactor = Redactor::default();
        redactor.add("123:abc def");
        let text = redactor.redact("GET /bot123:abc def/x and 123%3Aabc+def");
        assert!(!text.contains("abc"), "{text}");
    }
}
