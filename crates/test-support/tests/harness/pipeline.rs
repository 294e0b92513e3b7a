//! The pipeline layer: the event log reads the stream in order and knows
//! when it has read everything stored so far; consumers are followed to
//! idle; the watched clock tells who looked at it; a wait that fails says
//! what it saw.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt;
use serde_json::json;
use test_support::pipeline::{EventLog, TestBus, WatchedClock, wait_acked, wait_idle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_holds_everything_stored_before_a_sync() {
    let nats = TestBus::start("harness").await;
    let log = EventLog::follow(nats.jetstream()).await;
    for database in ["alpha", "beta"] {
        nats.bus
            .publish_json("dump.created", database, &json!({ "database": database }))
            .await
            .expect("publish");
    }
    nats.bus
        .publish_raw("backup.trigger", "raw", "not json".into())
        .await
        .expect("publish");
    log.sync().await;
    assert_eq!(log.of("dump.created").len(), 2, "{}", log.dump());
    assert_eq!(log.of_database("dump.created", "beta").len(), 1);
    assert_eq!(log.of("backup.trigger"), [serde_json::Value::Null]);
    let sequences: Vec<u64> = log.all().iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3], "in stream order");
    let beta = log
        .wait_event("dump.created", |e| e["database"] == "beta")
        .await;
    assert_eq!(beta["database"], "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "events so far:\n#1 dump.failed")]
async fn a_wait_that_times_out_lists_the_events_it_saw() {
    let nats = TestBus::start("harness").await;
    let log = EventLog::follow(nats.jetstream()).await;
    nats.bus
        .publish_json("dump.failed", "f", &json!({ "database": "alpha" }))
        .await
        .expect("publish");
    log.sync().await;
    log.wait_for_within(Duration::from_millis(300), "a dump.created", |log| {
        !log.of("dump.created").is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_is_followed_until_it_acked_everything() {
    let nats = TestBus::start("harness").await;
    let js = nats.jetstream().clone();
    let stream = js.get_stream("BACKUPS").await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("probe".into()),
            filter_subject: "dump.created".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("durable consumer");
    let mut last = 0;
    for n in 0..3 {
        last = nats
            .bus
            .publish_json("dump.created", &format!("m{n}"), &json!({ "n": n }))
            .await
            .expect("publish");
    }
    let pending = test_support::pipeline::consumer_info(&js, "probe")
        .await
        .expect("the consumer exists");
    assert_eq!(pending.num_pending, 3);
    let worker = tokio::spawn(async move {
        let mut messages = consumer.messages().await.expect("messages");
        for _ in 0..3 {
            let message = messages.next().await.expect("a message").expect("ok");
            message.ack().await.expect("ack");
        }
    });
    let acked = wait_acked(&js, "probe", last).await;
    assert_eq!(acked.ack_floor.stream_sequence, last);
    let idle = wait_idle(&js, "probe").await;
    assert_eq!((idle.num_pending, idle.num_ack_pending), (0, 0));
    worker.await.expect("worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_clock_counts_reads_and_the_moments_waited_for() {
    use backup_core::clock::Clock;
    let start = "2026-03-02T02:00:00Z".parse().unwrap();
    let clock = WatchedClock::new(start);
    assert_eq!(clock.now(), start);
    assert_eq!(clock.reads(), 1);
    let later = start + chrono::Duration::hours(1);
    let sleeper = {
        let clock = clock.clone();
        tokio::spawn(async move {
            clock.sleep_until(later).await;
            clock.now()
        })
    };
    clock.sleeping(1).await;
    assert_eq!(clock.wait_targets(), [later]);
    let reads = clock.reads();
    clock.advance(Duration::from_secs(3600));
    assert_eq!(sleeper.await.expect("sleeper"), later);
    assert_eq!(clock.reads(), reads + 1);
    // The wait counts from its first poll, which `join!` makes before the
    // reader starts.
    let reader = {
        let clock = clock.clone();
        async move {
            tokio::spawn(async move {
                for _ in 0..3 {
                    clock.now();
                }
            })
            .await
        }
    };
    let ((), read) = tokio::join!(clock.read_again(3), reader);
    read.expect("reader");
}
