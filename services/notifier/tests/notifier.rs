//! The notifier against a real NATS server, a real SMTP server (aiosmtpd)
//! and local HTTP servers standing in for Telegram, Slack and
//! healthchecks.io. Time-driven behaviour (reminders, the dead man's switch)
//! runs on a [`ManualClock`]; everything else waits with generous timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::bus::{Bus, NatsOptions};
use backup_core::retry::Backoff;
use chrono::{DateTime, Utc};
use notifier::{
    DeliveryPolicy, EmailSettings, HealthcheckSettings, ManualClock, Settings, SlackSettings,
    TelegramSettings,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use test_support::http_stub::{HttpStub, RecordedRequest, StubResponse};
use test_support::nats::NatsServer;
use test_support::process::ServiceProcess;
use test_support::relay::TcpRelay;
use test_support::smtp::{ReceivedMail, SmtpServer};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const DB: &str = "viatique";
const TELEGRAM_TOKEN: &str = "7301234567:AAH-notifier-test-token";

fn telegram_ok() -> StubResponse {
    StubResponse::json(
        r#"{"ok":true,"result":{"message_id":7,"date":1767225600,"chat":{"id":-1001,"type":"supergroup","title":"on-call"},"text":"alert"}}"#,
    )
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn t0() -> DateTime<Utc> {
    "2026-03-02T02:00:00Z".parse().unwrap()
}

/// Fast retries, a clock check every 100 ms, nothing configured yet.
fn settings() -> Settings {
    Settings {
        databases: vec![DB.parse().unwrap()],
        stale_check_every: Duration::from_millis(100),
        delivery: DeliveryPolicy {
            attempts: 5,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(400)),
            max_retry_after: Duration::from_secs(30),
        },
        grace: Duration::from_secs(2),
        ..Settings::default()
    }
}

fn email(smtp_url: &str) -> Option<EmailSettings> {
    Some(EmailSettings {
        smtp_url: secret(smtp_url),
        username: None,
        password: None,
        from: "backups@korrigo.example".parse().unwrap(),
        to: vec!["oncall@korrigo.example".parse().unwrap()],
    })
}

fn telegram(stub: &HttpStub) -> Option<TelegramSettings> {
    Some(TelegramSettings {
        token: secret(TELEGRAM_TOKEN),
        chat_id: "-1001".into(),
        api_url: Some(stub.url.clone()),
    })
}

fn failed(backup_id: &str, stage: &str, error: &str, attempt: u32, will_retry: bool) -> Value {
    json!({
        "version": 1, "backup_id": backup_id, "database": DB,
        "occurred_at": Utc::now(), "stage": stage, "error": error,
        "attempt": attempt, "will_retry": will_retry,
    })
}

fn verified(backup_id: &str, taken_at: DateTime<Utc>) -> Value {
    json!({
        "version": 1, "backup_id": backup_id, "database": DB,
        "occurred_at": taken_at + chrono::Duration::minutes(5),
        "artifact": format!("{DB}_{}.sql.gz", taken_at.format("%Y%m%d_%H%M%S")),
        "size_bytes": 123456, "sha256": "ab".repeat(32),
        "checks": ["sha256", "restore", "row_counts"],
        "tables": 4, "rows": 25040, "duration_ms": 1200,
    })
}

/// The text a Telegram stand-in received in a sendMessage call.
fn telegram_text(request: &RecordedRequest) -> String {
    let body: Value = serde_json::from_str(&request.body)
        .unwrap_or_else(|e| panic!("Telegram body is JSON ({e}): {}", request.body));
    assert_eq!(body["chat_id"], json!(-1001), "{body}");
    body["text"].as_str().unwrap_or_default().to_owned()
}

fn slack_text(request: &RecordedRequest) -> String {
    let body: Value = serde_json::from_str(&request.body).expect("Slack body is JSON");
    body["text"].as_str().unwrap_or_default().to_owned()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn requests(stub: &HttpStub, n: usize) -> Vec<RecordedRequest> {
    eventually(&format!("{n} request(s) on {}", stub.url), || {
        stub.requests().len() >= n
    })
    .await;
    stub.requests()
}

async fn mails(smtp: &SmtpServer, n: usize) -> Vec<ReceivedMail> {
    eventually(&format!("{n} mail(s)"), || smtp.messages().len() >= n).await;
    smtp.messages()
}

/// A notifier running in this process.
struct Running {
    bus: Bus,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), notifier::NotifyError>>,
}

impl Running {
    async fn start(nats: &NatsServer, settings: Settings, clock: &ManualClock) -> Running {
        let bus = Bus::connect(
            &NatsOptions::local(&nats.url),
            "notifier-test",
            &CancellationToken::new(),
        )
        .await
        .expect("connect to NATS");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(notifier::run_with_clock(
            bus.clone(),
            settings,
            Arc::new(clock.clone()),
            shutdown.clone(),
        ));
        let running = Running {
            bus,
            shutdown,
            task,
        };
        let deadline = Instant::now() + WAIT;
        while running.consumer().await.is_none() {
            assert!(!running.task.is_finished(), "notifier stopped at start-up");
            assert!(
                Instant::now() < deadline,
                "notifier consumer never appeared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running
    }

    async fn publish(&self, subject: &str, event: &Value) -> u64 {
        let id = format!(
            "{}:{}:{}",
            event["backup_id"].as_str().unwrap(),
            subject,
            event["attempt"]
        );
        self.bus
            .publish_json(subject, &id, event)
            .await
            .expect("publish event")
    }

    /// (ack floor, messages handed out but not acked yet) of the notifier's consumer.
    async fn consumer(&self) -> Option<(u64, usize)> {
        let stream = self.bus.jetstream().get_stream("BACKUPS").await.ok()?;
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("notifier")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        Some((info.ack_floor.stream_sequence, info.num_ack_pending))
    }

    /// Waits until the notifier acked everything up to `sequence`.
    async fn acked(&self, sequence: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((floor, _)) = self.consumer().await
                && floor >= sequence
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "notifier never acked sequence {sequence}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("notifier task")
            .expect("notifier stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_reaches_every_channel_then_one_recovery_message() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let slack_hook = HttpStub::start(StubResponse::new(200, "ok"));
    let healthchecks = HttpStub::start(StubResponse::new(200, "OK"));
    let settings = Settings {
        email: email(&smtp.url),
        telegram: telegram(&telegram_api),
        slack: Some(SlackSettings {
            webhook_url: secret(&format!("{}/services/T0/B0/hook", slack_hook.url)),
        }),
        healthcheck: HealthcheckSettings {
            default_url: Some(secret(&format!("{}/ping/5f1c-uuid", healthchecks.url))),
            ..HealthcheckSettings::default()
        },
        ..settings()
    };
    // Backups below are taken at t0, an hour before "now".
    let clock = ManualClock::new(t0() + chrono::Duration::hours(1));
    let notifier = Running::start(&nats, settings, &clock).await;

    let error = "sftp connect 127.0.0.1:2222: Connection refused (os error 111)";
    let seq = notifier
        .publish(
            "dump.failed",
            &failed("viatique-20260302-020000", "ship", error, 3, true),
        )
        .await;
    notifier.acked(seq).await;

    let mail = &mails(&smtp, 1).await[0];
    assert!(
        mail.subject.contains(DB) && mail.subject.contains("ship"),
        "{}",
        mail.subject
    );
    for needle in [
        error,
        "viatique-20260302-020000",
        "Attempt: 3",
        "Will retry: yes",
        "When shipping fails",
        "docs/runbooks/database-restore.md",
    ] {
        assert!(
            mail.body_text.contains(needle),
            "mail lacks {needle:?}:\n{}",
            mail.body_text
        );
    }
    let text = telegram_text(&requests(&telegram_api, 1).await[0]);
    for needle in [
        DB,
        "ship failed",
        error,
        "attempt 3",
        "will retry",
        "When shipping fails",
    ] {
        assert!(
            text.contains(needle),
            "Telegram message lacks {needle:?}:\n{text}"
        );
    }
    let slack = slack_text(&requests(&slack_hook, 1).await[0]);
    assert!(
        slack.contains(error) && slack.contains("When shipping fails"),
        "{slack}"
    );
    let pings = requests(&healthchecks, 1).await;
    assert_eq!(pings[0].path, "/ping/5f1c-uuid/fail");

    // The same database verifies: one "resolved" on each channel, and a
    // success ping.
    let seq = notifier
        .publish("dump.verified", &verified("viatique-20260302-030000", t0()))
        .await;
    notifier.acked(seq).await;
    let mail = &mails(&smtp, 2).await[1];
    assert!(
        mail.subject.contains("RESOLVED") && mail.subject.contains(DB),
        "{}",
        mail.subject
    );
    assert!(
        mail.body_text.contains("viatique-20260302-030000"),
        "{}",
        mail.body_text
    );
    assert!(mail.body_text.contains("ship failed"), "{}", mail.body_text);
    let text = telegram_text(&requests(&telegram_api, 2).await[1]);
    assert!(text.contains("resolved") && text.contains(DB), "{text}");
    assert!(slack_text(&requests(&slack_hook, 2).await[1]).contains("resolved"));
    assert_eq!(requests(&healthchecks, 2).await[1].path, "/ping/5f1c-uuid");

    // A second success is no news for people (ALERT_ON_SUCCESS is off).
    let seq = notifier
        .publish(
            "dump.verified",
            &verified("viatique-20260303-020000", t0() + chrono::Duration::days(1)),
        )
        .await;
    notifier.acked(seq).await;
    assert_eq!(requests(&healthchecks, 3).await[2].path, "/ping/5f1c-uuid");
    assert_eq!(smtp.messages().len(), 2);
    assert_eq!(telegram_api.requests().len(), 2);
    assert_eq!(slack_hook.requests().len(), 2);
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_identical_failures_make_one_alert_then_a_reminder_after_the_interval() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let clock = ManualClock::new(Utc::now());
    let settings = Settings {
        email: email(&smtp.url),
        telegram: telegram(&telegram_api),
        ..settings()
    };
    let notifier = Running::start(&nats, settings, &clock).await;

    let mut last = 0;
    for attempt in 1..=10 {
        // Retries differ in their numbers (ports, attempts), not their cause.
        let error = format!(
            "sftp connect 127.0.0.1:{}: Connection refused",
            40000 + attempt
        );
        last = notifier
            .publish(
                "dump.failed",
                &failed("viatique-20260302-020000", "ship", &error, attempt, true),
            )
            .await;
    }
    notifier.acked(last).await;
    assert_eq!(mails(&smtp, 1).await.len(), 1, "one mail for ten failures");
    assert_eq!(
        requests(&telegram_api, 1).await.len(),
        1,
        "one Telegram message for ten failures"
    );

    // Still failing after the reminder interval: one reminder.
    clock.advance(Duration::from_secs(6 * 3600 + 60));
    let seq = notifier
        .publish(
            "dump.failed",
            &failed(
                "viatique-20260302-080000",
                "ship",
                "sftp connect 127.0.0.1:40011: Connection refused",
                1,
                true,
            ),
        )
        .await;
    notifier.acked(seq).await;
    let reminder = &mails(&smtp, 2).await[1];
    assert!(
        reminder.subject.contains("STILL FAILING"),
        "{}",
        reminder.subject
    );
    assert!(
        reminder.body_text.contains("11 times"),
        "{}",
        reminder.body_text
    );
    let text = telegram_text(&requests(&telegram_api, 2).await[1]);
    assert!(text.contains("11 times"), "{text}");
    assert_eq!(smtp.messages().len(), 2);
    assert_eq!(telegram_api.requests().len(), 2);
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skipped_scheduled_dump_is_one_warning_not_an_incident() {
    let nats = NatsServer::start();
    let slack_hook = HttpStub::start(StubResponse::new(200, "ok"));
    let healthchecks = HttpStub::start(StubResponse::new(200, "OK"));
    let settings = Settings {
        slack: Some(SlackSettings {
            webhook_url: secret(&format!("{}/services/T0/B0/hook", slack_hook.url)),
        }),
        healthcheck: HealthcheckSettings {
            default_url: Some(secret(&format!("{}/ping/5f1c-uuid", healthchecks.url))),
            ..HealthcheckSettings::default()
        },
        ..settings()
    };
    let clock = ManualClock::new(t0() + chrono::Duration::hours(1));
    let notifier = Running::start(&nats, settings, &clock).await;

    let skipped = json!({
        "version": 1, "backup_id": "viatique-skipped-t42", "database": DB,
        "occurred_at": t0() + chrono::Duration::days(1),
        "reason": "schedule",
        "cause": "the previous dump (viatique-20260302T020000Z-t7, running since 2026-03-02T02:00:01Z) is still running",
        "running_backup_id": "viatique-20260302T020000Z-t7",
        "running_since": t0() + chrono::Duration::seconds(1),
    });
    let seq = notifier.publish("dump.skipped", &skipped).await;
    notifier.acked(seq).await;
    let text = slack_text(&requests(&slack_hook, 1).await[0]);
    assert!(
        text.contains(
            "scheduled dump of viatique skipped: the previous dump \
             (viatique-20260302T020000Z-t7, running since 2026-03-02 02:00 UTC) is still running"
        ),
        "{text}"
    );

    // Not an incident: the next verified backup resolves nothing (no
    // message for people), and the skip itself pinged no healthcheck.
    let seq = notifier
        .publish("dump.verified", &verified("viatique-20260302-020000", t0()))
        .await;
    notifier.acked(seq).await;
    let pings = requests(&healthchecks, 1).await;
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].path, "/ping/5f1c-uuid");
    assert_eq!(
        slack_hook.requests().len(),
        1,
        "{:?}",
        slack_hook.requests()
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_with_no_events_at_all_raises_one_stale_alert() {
    let nats = NatsServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let clock = ManualClock::new(t0());
    let settings = Settings {
        telegram: telegram(&telegram_api),
        stale_after: Duration::from_secs(26 * 3600),
        ..settings()
    };
    let notifier = Running::start(&nats, settings, &clock).await;

    clock.advance(Duration::from_secs(25 * 3600));
    // Several checks run on the new time; none may fire before 26 h.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        telegram_api.requests().is_empty(),
        "stale alert before 26 h"
    );

    clock.advance(Duration::from_secs(2 * 3600));
    let text = telegram_text(&requests(&telegram_api, 1).await[0]);
    assert!(
        text.contains(DB) && text.contains("no verified backup for 1day 3h"),
        "{text}"
    );
    assert!(text.contains("Never verified"), "{text}");
    assert!(text.contains("When a dump fails"), "{text}");
    // Checks keep running: still one alert until the reminder interval.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(telegram_api.requests().len(), 1);

    // A backup verifies: the incident is resolved.
    let seq = notifier
        .publish(
            "dump.verified",
            &verified("viatique-20260303-060000", notifier::Clock::now(&clock)),
        )
        .await;
    notifier.acked(seq).await;
    let text = telegram_text(&requests(&telegram_api, 2).await[1]);
    assert!(
        text.contains("resolved") && text.contains("no verified backup"),
        "{text}"
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dead_mans_switch_remembers_the_last_verified_backup_across_a_restart() {
    let nats = NatsServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let clock = ManualClock::new(t0());
    let settings = Settings {
        telegram: telegram(&telegram_api),
        ..settings()
    };
    let first = Running::start(&nats, settings.clone(), &clock).await;
    let seq = first
        .publish("dump.verified", &verified("viatique-20260302-020000", t0()))
        .await;
    first.acked(seq).await;
    first.stop().await;

    // 27 h later a fresh notifier knows from the stream alone when the
    // database last verified.
    clock.advance(Duration::from_secs(27 * 3600));
    let second = Running::start(&nats, settings, &clock).await;
    let text = telegram_text(&requests(&telegram_api, 1).await[0]);
    assert!(
        text.contains("Last verified: 2026-03-02 02:00 UTC"),
        "{text}"
    );
    second.stop().await;
}

/// The value of `backup_last_success_timestamp_seconds` for `stage` of DB.
fn last_success(bus: &Bus, stage: &str) -> Option<f64> {
    let text = bus.health().metrics_text(&bus.client().connection_state());
    let prefix =
        format!("backup_last_success_timestamp_seconds{{database=\"{DB}\",stage=\"{stage}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Issue 16: after a restart, /metrics had no last-success gauge until the
/// next backup, although the memory was rebuilt from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_notifier_rebuilds_its_metrics_from_the_stream() {
    let nats = NatsServer::start();
    let clock = ManualClock::new(t0());
    let first = Running::start(&nats, settings(), &clock).await;
    let event = verified("viatique-20260302-020000", t0());
    let seq = first.publish("dump.verified", &event).await;
    first.acked(seq).await;
    let expected = (t0() + chrono::Duration::minutes(5)).timestamp() as f64;
    assert_eq!(last_success(&first.bus, "verify"), Some(expected));
    first.stop().await;

    let second = Running::start(&nats, settings(), &clock).await;
    // A new process, a new registry: only the replay can set it (the
    // acked event is not delivered again).
    eventually("the rebuilt last-success gauge", || {
        last_success(&second.bus, "verify").is_some()
    })
    .await;
    assert_eq!(last_success(&second.bus, "verify"), Some(expected));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_is_retried_after_the_delay_the_service_asked_for() {
    let nats = NatsServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    telegram_api.respond_next(StubResponse::new(
        429,
        r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 2","parameters":{"retry_after":2}}"#,
    ));
    let slack_hook = HttpStub::start(StubResponse::new(200, "ok"));
    slack_hook.respond_next(StubResponse::new(429, "rate limited").header("Retry-After", "2"));
    let clock = ManualClock::new(Utc::now());
    let settings = Settings {
        telegram: telegram(&telegram_api),
        slack: Some(SlackSettings {
            webhook_url: secret(&format!("{}/services/T0/B0/hook", slack_hook.url)),
        }),
        ..settings()
    };
    let notifier = Running::start(&nats, settings, &clock).await;
    let seq = notifier
        .publish(
            "dump.failed",
            &failed("viatique-1", "dump", "pg_dump: connection refused", 1, true),
        )
        .await;
    notifier.acked(seq).await;

    // The backoff alone would retry within 50 ms; both waited the 2 s asked.
    for (name, stub) in [("telegram", &telegram_api), ("slack", &slack_hook)] {
        let calls = stub.requests();
        assert_eq!(calls.len(), 2, "{name}: one refused call, one delivered");
        let waited = calls[1].received_at - calls[0].received_at;
        assert!(
            waited >= Duration::from_millis(1900),
            "{name} retried after {waited:?}"
        );
    }
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_down_does_not_hold_back_telegram_and_the_mail_follows_later() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    let relay = TcpRelay::start(smtp.port, false);
    let telegram_api = HttpStub::start(telegram_ok());
    let clock = ManualClock::new(Utc::now());
    let settings = Settings {
        email: email(&format!("smtp://127.0.0.1:{}", relay.port)),
        telegram: telegram(&telegram_api),
        delivery: DeliveryPolicy {
            attempts: 1000,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(300)),
            max_retry_after: Duration::from_secs(5),
        },
        ..settings()
    };
    let notifier = Running::start(&nats, settings, &clock).await;
    let error = "restore into scratch database failed: row count mismatch on grading.copy";
    let seq = notifier
        .publish(
            "dump.failed",
            &failed("viatique-2", "verify", error, 1, false),
        )
        .await;

    let text = telegram_text(&requests(&telegram_api, 1).await[0]);
    assert!(
        text.contains(error) && text.contains("When verification fails"),
        "{text}"
    );
    // Telegram delivered while SMTP refuses, and the event is still held
    // (not acked) for the mail.
    assert!(smtp.messages().is_empty());
    let (floor, in_flight) = notifier.consumer().await.expect("consumer info");
    assert!(
        floor < seq && in_flight == 1,
        "event acked before the mail went out"
    );

    relay.set_up(true);
    let mail = &mails(&smtp, 1).await[0];
    assert!(mail.body_text.contains(error), "{}", mail.body_text);
    notifier.acked(seq).await;
    assert_eq!(
        telegram_api.requests().len(),
        1,
        "Telegram is not sent twice"
    );
    notifier.stop().await;
}

#[test]
fn the_binary_keeps_secrets_out_of_its_log_and_gives_up_loudly() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    // Telegram unreachable (network errors quote the URL, token included),
    // Slack failing with 500s, SMTP refusing the password on a plain relay.
    let closed_port = test_support::free_port();
    let slack_hook = HttpStub::start(StubResponse::new(500, "internal error"));
    let healthchecks = HttpStub::start(StubResponse::new(200, "OK"));
    let token = "8123456789:AAF-distinctive-TELEGRAM-secret-Zq";
    let slack_key = "XOXB-distinctive-SLACK-secret";
    let hc_key = "hc-distinctive-HEALTH-secret";
    let smtp_password = "distinctive-SMTP-password";
    let healthcheck_var = format!("HEALTHCHECK_URL_{}", DB.to_uppercase());
    let env: Vec<(String, String)> = [
        ("NATS_URL", nats.url.clone()),
        ("RUST_LOG", "debug".into()),
        ("BACKUP_DATABASES", DB.into()),
        ("SMTP_URL", smtp.url.clone()),
        ("SMTP_USERNAME", "alerts".into()),
        ("SMTP_PASSWORD", smtp_password.into()),
        ("ALERT_EMAIL_FROM", "backups@korrigo.example".into()),
        ("ALERT_EMAIL_TO", "oncall@korrigo.example".into()),
        ("TELEGRAM_BOT_TOKEN", token.into()),
        ("TELEGRAM_CHAT_ID", "-1001".into()),
        (
            "TELEGRAM_API_URL",
            format!("http://127.0.0.1:{closed_port}"),
        ),
        (
            "SLACK_WEBHOOK_URL",
            format!("{}/services/T0/B0/{slack_key}", slack_hook.url),
        ),
        (
            healthcheck_var.as_str(),
            format!("{}/ping/{hc_key}", healthchecks.url),
        ),
        ("ALERT_DELIVERY_ATTEMPTS", "2".into()),
        ("ALERT_RETRY_INITIAL", "100ms".into()),
        ("SHUTDOWN_GRACE", "2s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut service = ServiceProcess::spawn("notifier", &[], &env);
    assert!(
        service.wait_for_log("waiting for work", WAIT),
        "{}",
        service.log()
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = Bus::connect(
            &NatsOptions::local(&nats.url),
            "test",
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        bus.publish_json(
            "dump.failed",
            "x:failed:1",
            &failed(
                "viatique-3",
                "prune",
                "refusing to prune: would keep fewer than 3",
                1,
                false,
            ),
        )
        .await
        .unwrap();
    });
    let deadline = Instant::now() + WAIT;
    while service.log().matches("GAVE UP").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "expected three channels to give up:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        healthchecks.wait_for_requests(1, WAIT)[0].path,
        format!("/ping/{hc_key}/fail")
    );
    assert_eq!(slack_hook.requests().len(), 2, "two attempts, then give up");
    let log = service.log();
    for channel in ["telegram", "slack", "email"] {
        assert!(
            log.lines()
                .any(|l| l.contains("GAVE UP") && l.contains(channel)),
            "{channel} gave up without saying so:\n{log}"
        );
    }
    service.terminate(Duration::from_secs(10));
    let log = service.log();
    for secret in [token, "AAF-distinctive", slack_key, hc_key, smtp_password] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
    assert!(log.contains("alert channels configured"), "{log}");

    // With no channel at all, it says so at start-up.
    let bare = ServiceProcess::spawn(
        "notifier",
        &[],
        &[("NATS_URL".to_owned(), nats.url.clone())],
    );
    assert!(
        bare.wait_for_log(
            "no alert channel configured: alerts go to this log only",
            WAIT
        ),
        "{}",
        bare.log()
    );
}

/// `dump.created`, `dump.shipped` and `dump.verified` of one nightly backup.
fn nightly(taken_at: DateTime<Utc>, size: u64, dump_ms: u64) -> [(&'static str, Value); 3] {
    let id = format!("viatique-{}", taken_at.format("%Y%m%d-%H%M%S"));
    let base = json!({
        "version": 1, "backup_id": id, "database": DB,
        "artifact": format!("{DB}_{}.sql.gz", taken_at.format("%Y%m%d_%H%M%S")),
        "size_bytes": size, "sha256": "ab".repeat(32),
    });
    let with = |extra: Value| {
        let mut event = base.clone();
        event
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        event
    };
    [
        (
            "dump.created",
            with(
                json!({"occurred_at": taken_at, "duration_ms": dump_ms, "tables": 4, "rows": 25040}),
            ),
        ),
        (
            "dump.shipped",
            with(json!({"occurred_at": taken_at, "destination": "sftp", "duration_ms": 4000})),
        ),
        (
            "dump.verified",
            with(json!({
                "occurred_at": taken_at + chrono::Duration::minutes(5),
                "checks": ["sha256", "restore", "row_counts"],
                "tables": 4, "rows": 25040, "duration_ms": 30000,
            })),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daily_digest_sums_up_each_database_and_survives_a_restart() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let day = |d: u32| -> DateTime<Utc> { format!("2026-03-0{d}T01:00:00Z").parse().unwrap() };
    // 07:00 in Paris is 06:00 UTC in March: the digest is due at 07:00 UTC.
    let clock = ManualClock::new("2026-03-03T06:00:00Z".parse().unwrap());
    let settings = Settings {
        email: email(&smtp.url),
        telegram: telegram(&telegram_api),
        databases: vec![DB.parse().unwrap(), "korrigo_media".parse().unwrap()],
        digest: backup_core::calendar::LocalCron::parse(
            "ALERT_DIGEST_SCHEDULE",
            "0 8 * * *",
            chrono_tz::Europe::Paris,
        )
        .unwrap(),
        ..settings()
    };

    // The history arrives while a first notifier runs: three nights, the
    // third 50% bigger and twice as slow, a prune, and a shipping failure
    // of tonight's backup retried three times.
    let first = Running::start(&nats, settings.clone(), &clock).await;
    let mut last = 0;
    for (night, size, dump_ms) in [
        (1, 100 << 20, 60_000),
        (2, 100 << 20, 60_000),
        (3, 150 << 20, 120_000),
    ] {
        for (subject, event) in nightly(day(night), size, dump_ms) {
            let id = format!("{}:{subject}", event["backup_id"].as_str().unwrap());
            last = first.bus.publish_json(subject, &id, &event).await.unwrap();
        }
    }
    let pruned = json!({
        "version": 1, "backup_id": "viatique-20260303-010000", "database": DB,
        "occurred_at": day(3) + chrono::Duration::minutes(6), "deleted": [],
        "kept": [format!("{DB}_20260302_010000.sql.gz"), format!("{DB}_20260303_010000.sql.gz")],
        "kept_bytes": 250u64 << 20, "dry_run": false,
    });
    first
        .bus
        .publish_json("dump.pruned", "p3", &pruned)
        .await
        .unwrap();
    for attempt in 1..=3 {
        let mut failure = failed(
            "viatique-20260303-050000",
            "ship",
            "sftp connect 127.0.0.1:2222: Connection refused (os error 111)",
            attempt,
            true,
        );
        failure["occurred_at"] = json!(day(3) + chrono::Duration::hours(4));
        last = first.publish("dump.failed", &failure).await;
    }
    first.acked(last).await;
    // The failure's alert, once.
    assert_eq!(mails(&smtp, 1).await.len(), 1);
    first.stop().await;

    // A restarted notifier rebuilds all of that from the stream.
    let second = Running::start(&nats, settings, &clock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1, "no digest before its time");
    clock.set("2026-03-03T07:00:30Z".parse().unwrap());
    let digest = &mails(&smtp, 2).await[1];
    assert!(
        digest.subject.contains("Daily digest") && digest.subject.contains("2 of 2 need attention"),
        "{}",
        digest.subject
    );
    for needle in [
        "Backups as of 2026-03-03 08:00 CET",
        "Last verified backup: viatique_20260303_010000.sql.gz, taken 2026-03-03 02:00 CET, 6h ago, 150.0 MiB",
        "size 150.0 MiB (+50% vs the median of the 2 before)",
        "dump 2m (+100% vs the median of the 2 before)",
        "upload 4s (+0%",
        "verify 30s (+0%",
        "Failed attempts in the last 24 hours: 3",
        "Open: ship failed: sftp connect 127.0.0.1:2222",
        "Remote: 2 backup(s), 250.0 MiB after the last prune (2026-03-03 02:06 CET)",
        // Configured but never heard of: the dead man's switch's concern too.
        "korrigo_media",
        "No verified backup known.",
    ] {
        assert!(
            digest.body_text.contains(needle),
            "digest lacks {needle:?}:\n{}",
            digest.body_text
        );
    }
    let texts: Vec<String> = requests(&telegram_api, 2)
        .await
        .iter()
        .map(telegram_text)
        .collect();
    let short = texts
        .iter()
        .find(|t| t.contains("Backup digest"))
        .unwrap_or_else(|| panic!("no digest on Telegram: {texts:?}"));
    assert!(
        short.contains("🔴 viatique: last verified 6h ago")
            && short.contains("150.0 MiB")
            && short.contains("3 failed attempt(s) in 24 h")
            && short.contains("⏰ korrigo_media"),
        "{short}"
    );

    // One digest per scheduled time: nothing more until the next morning.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let digests = |smtp: &SmtpServer| {
        smtp.messages()
            .iter()
            .filter(|m| m.subject.contains("Daily digest"))
            .count()
    };
    assert_eq!(digests(&smtp), 1);
    clock.set("2026-03-04T07:00:30Z".parse().unwrap());
    eventually("the second digest", || digests(&smtp) == 2).await;
    second.stop().await;
}
