//! The bus against a real three-node NATS cluster and a single server:
//! a seed list whose first server is down, and `NATS_STREAM_REPLICAS`
//! creating the stream, changing an existing one where NATS allows it, and
//! leaving it be (with the service still running) where it does not.

use std::time::Duration;

use test_support::NatsCluster;
use test_support::nats::NatsServer;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, ConsumerSpec, NatsOptions, STREAM};
use crate::events::{Stage, subject};

fn options(url: &str, replicas: Option<usize>) -> NatsOptions {
    NatsOptions {
        stream_replicas: replicas,
        ..NatsOptions::local(url)
    }
}

async fn connect(options: &NatsOptions) -> Bus {
    let shutdown = CancellationToken::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        Bus::connect(options, "cluster-test", &shutdown),
    )
    .await
    .expect("connected within a minute")
    .expect("connect")
}

async fn stream_replicas(bus: &Bus) -> usize {
    let mut stream = bus.jetstream().get_stream(STREAM).await.expect("stream");
    stream.info().await.expect("info").config.num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_takes_the_replicas_asked_for_and_the_consumers_follow() {
    let mut cluster = NatsCluster::start();
    let seeds = cluster.url();
    let bus = connect(&options(&seeds, Some(1))).await;
    bus.ensure_stream().await.expect("created with one replica");
    assert_eq!(stream_replicas(&bus).await, 1);
    let spec = ConsumerSpec::new("verifier", subject::SHIPPED, Stage::Verify);
    bus.durable_consumer(&spec).await.expect("consumer");

    // A service with NATS_STREAM_REPLICAS=3 finds one replica: it changes
    // the stream, and the consumer made on one replica follows.
    let bus = connect(&options(&seeds, Some(3))).await;
    bus.ensure_stream()
        .await
        .expect("changed to three replicas");
    assert_eq!(stream_replicas(&bus).await, 3);
    // A led group of three: the leader and two current followers.
    let led_by_three = |group: &serde_json::Value| {
        let current = group["replicas"].as_array().map_or(0, |peers| {
            peers.iter().filter(|p| p["current"] == true).count()
        });
        group["leader"].is_string() && current == 2
    };
    test_support::process::wait_until(
        Duration::from_secs(30),
        "the stream to be led on three nodes",
        || led_by_three(&cluster.stream_cluster(STREAM)),
    );
    test_support::process::wait_until(
        Duration::from_secs(30),
        "the consumer to follow the stream to three replicas",
        || {
            let info = cluster.api(&format!("$JS.API.CONSUMER.INFO.{STREAM}.verifier"));
            info["config"]["num_replicas"].as_u64().unwrap_or(0) == 0
                && led_by_three(&info["cluster"])
        },
    );
    // Asking again changes nothing.
    bus.ensure_stream().await.expect("unchanged");
    assert_eq!(stream_replicas(&bus).await, 3);

    // The first seed is down when a service starts: another one serves,
    // and the stream carries on with two copies of three.
    cluster.kill(0);
    cluster.wait_settled();
    cluster.stream_leader(STREAM);
    let bus = connect(&options(&seeds, Some(3))).await;
    bus.ensure_stream().await.expect("found with a node down");
    bus.publish_json("dump.created", "first-seed-down", &serde_json::json!({}))
        .await
        .expect("stored on the two nodes left");
    cluster.restart(0);

    // The leader lost: the stream goes on under another one.
    let leader = cluster.stream_leader(STREAM);
    cluster.kill(leader);
    let after = cluster.stream_leader(STREAM);
    assert_ne!(after, leader);
    bus.publish_json("dump.created", "after-failover", &serde_json::json!({}))
        .await
        .expect("stored after the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_keeps_one_replica_and_the_service_keeps_running() {
    let nats = NatsServer::start();
    // Created with one replica: a single server holds no more.
    let bus = connect(&options(&nats.url, Some(3))).await;
    bus.ensure_stream().await.expect("created with one replica");
    assert_eq!(stream_replicas(&bus).await, 1);
    // Found with one: the change is refused, the stream stays usable.
    bus.ensure_stream().await.expect("kept at one replica");
    assert_eq!(stream_replicas(&bus).await, 1);
    bus.publish_json("dump.created", "single", &serde_json::json!({}))
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_list_connects_past_dead_seeds_and_says_which_url_in_errors() {
    let nats = NatsServer::start();
    let dead = test_support::PortReservation::new();
    let seeds = format!("nats://127.0.0.1:{},{}", dead.port(), nats.url);
    let bus = connect(&NatsOptions::local(&seeds)).await;
    bus.ensure_stream().await.expect("stream");

    let error = Bus::connect(
        &NatsOptions::local("nats://bob:s3cret@127.0.0.1:1,nats://127.0.0.1:x"),
        "cluster-test",
        &CancellationToken::new(),
    )
    .await
    .expect_err("a seed that does not parse");
    let line = error.to_string();
    assert!(line.contains("NATS_URL nats://127.0.0.1:x"), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
    assert!(!error.is_transient());
}
