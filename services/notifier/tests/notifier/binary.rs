//! The `notifier` binary: no secret in its log, and a loud give-up.

use super::*;

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
