//! The dead man's switch on a manual clock: silence raises one alert, and
//! the memory (and the metrics) of a restarted notifier come from the stream.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_with_no_events_at_all_raises_one_stale_alert() {
    let nats = NatsServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let clock = WatchedClock::new(t0());
    let settings = Settings {
        telegram: telegram(&telegram_api),
        stale_after: Duration::from_secs(26 * 3600),
        ..settings()
    };
    let notifier = Running::start(&nats, settings, &clock).await;

    clock.advance(Duration::from_secs(25 * 3600));
    // Several checks run on the new time (each reads it once, after the
    // previous one sent its notices); none may fire before 26 h.
    clock.read_again(3).await;
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
    clock.read_again(3).await;
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
