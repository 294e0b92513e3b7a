//! Channels that answer late or not at all: a 429's delay, an SMTP server
//! that is down.

use super::*;

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
