//! Alerts on every channel, one per incident, its reminder and its
//! recovery; a skipped scheduled dump is a warning, not an incident.

use super::*;

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
