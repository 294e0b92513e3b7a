//! The daily digest at its scheduled time, across a restart.

use super::*;

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
    let clock = WatchedClock::new("2026-03-03T06:00:00Z".parse().unwrap());
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
    let waits = clock.sleeps();
    let second = Running::start(&nats, settings, &clock).await;
    // Its digest task looked at the time and waits for 07:00 UTC.
    clock.sleeping(waits + 1).await;
    assert_eq!(
        clock.wait_targets().last().copied(),
        Some("2026-03-03T07:00:00Z".parse().unwrap())
    );
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

    // One digest per scheduled time: nothing more until the next morning,
    // which the digest task waits for once it sent this one.
    clock.sleeping(waits + 2).await;
    assert_eq!(
        clock.wait_targets().last().copied(),
        Some("2026-03-04T07:00:00Z".parse().unwrap())
    );
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
