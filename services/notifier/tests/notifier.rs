//! The notifier against a real NATS server, a real SMTP server (aiosmtpd)
//! and local HTTP servers standing in for Telegram, Slack and
//! healthchecks.io. Time-driven behaviour (reminders, the dead man's switch)
//! runs on a [`ManualClock`]; everything else waits with generous timeouts.

#[path = "notifier/binary.rs"]
mod binary;
#[path = "notifier/copies.rs"]
mod copies;
#[path = "notifier/dead_mans_switch.rs"]
mod dead_mans_switch;
#[path = "notifier/delivery.rs"]
mod delivery;
#[path = "notifier/digest.rs"]
mod digest;
#[path = "notifier/incidents.rs"]
mod incidents;

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
use test_support::pipeline::{WatchedClock, consumer_info};
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
    async fn start(
        nats: &NatsServer,
        settings: Settings,
        clock: &(impl notifier::Clock + Clone),
    ) -> Running {
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
        let info = consumer_info(self.bus.jetstream(), "notifier").await?;
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
