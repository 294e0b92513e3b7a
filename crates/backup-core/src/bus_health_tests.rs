//! The health endpoint over a real bus: a NATS server, a consumer loop of
//! [`crate::bus::run_worker`] and `/healthz`, `/metrics` and the probe
//! following them. Neither `bus` nor `health` imports the other's tests.

use std::time::Duration;

use tokio::time::Instant;

use crate::bus::{Bus, ConsumerSpec, Delivery};
use crate::events::subject;
use crate::health::probe::http_get;
use crate::health::{ProbeResult, probe_once, serve_at};

struct AckAll;

impl crate::bus::Handler for AckAll {
    type Message = ();

    fn decode(&self, _: &str, _: &[u8]) -> Result<(), crate::events::DecodeError> {
        Ok(())
    }

    async fn handle(
        &self,
        _: (),
        _: &Delivery,
        _: &tokio_util::sync::CancellationToken,
    ) -> crate::bus::Outcome {
        crate::bus::Outcome::Ack
    }
}

/// Probes until `accept` likes the answer; servers get tens of seconds.
async fn probe_until(listen: &str, what: &str, accept: impl Fn(&ProbeResult) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let result = probe_once(Some(listen)).await;
        if accept(&result) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the last probe said {:?}",
            result.line
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_follows_a_real_nats_server_and_consumer() {
    use crate::bus::NatsOptions;
    let mut nats = test_support::nats::NatsServer::start();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bus = Bus::connect(&NatsOptions::local(&nats.url), "verifier", &shutdown)
        .await
        .expect("connect");
    let addr = serve_at(Some("127.0.0.1:0"), &bus)
        .await
        .expect("listen")
        .expect("an address");
    let listen = addr.to_string();
    // The endpoint answers before any worker exists: NATS alone decides.
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);

    let spec = ConsumerSpec {
        // Short, so that a stuck consumer shows within the test.
        ack_wait: Duration::from_secs(3),
        ..ConsumerSpec::new("health_probe_test", subject::SHIPPED, crate::Stage::Verify)
    };
    let worker = tokio::spawn({
        let (bus, spec, shutdown) = (bus.clone(), spec.clone(), shutdown.clone());
        async move {
            crate::bus::run_worker(
                &bus,
                &spec,
                std::sync::Arc::new(AckAll),
                shutdown,
                Duration::from_secs(1),
            )
            .await
        }
    });
    // Healthy while it sets up, too: wait for the consumer to be ready.
    let deadline = Instant::now() + Duration::from_secs(40);
    let report = loop {
        let (status, body) = http_get(addr, "/healthz").await.unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["consumers"]["health_probe_test"]["state"] == "idle" {
            assert_eq!(status, 200, "{body}");
            break report;
        }
        assert!(Instant::now() < deadline, "consumer never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(probe_once(Some(&listen)).await.healthy);
    assert_eq!(report["status"], "ok");
    assert_eq!(report["service"], "verifier");
    assert_eq!(report["nats"], "connected");
    assert_eq!(report["consumers"]["health_probe_test"]["state"], "idle");

    // What the service publishes is what the metrics say.
    let verified = serde_json::json!({
        "version": 1, "backup_id": "viatique-1", "database": "viatique",
        "occurred_at": "2026-11-21T02:00:01Z", "artifact": "viatique_20261121_020001.sql.gz",
        "size_bytes": 4096, "sha256": "ab", "duration_ms": 1500,
    });
    bus.publish_json(subject::VERIFIED, "viatique-1:verified", &verified)
        .await
        .expect("publish");
    let (status, text) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        r#"backup_last_success_timestamp_seconds{database="viatique",stage="verify"} 1795226401.0"#,
        r#"backup_stage_duration_seconds{database="viatique",stage="verify"} 1.5"#,
        r#"backup_artifact_size_bytes{database="viatique"} 4096"#,
        "backup_nats_connected 1",
        "backup_healthy 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert_eq!(http_get(addr, "/nope").await.unwrap().0, 404);

    // The consumer deleted under the worker: its fetches fail, and once
    // ack_wait has passed without one completing, it is stuck.
    let stream = bus
        .jetstream()
        .get_stream(crate::bus::STREAM)
        .await
        .expect("stream");
    stream
        .delete_consumer("health_probe_test")
        .await
        .expect("delete consumer");
    probe_until(&listen, "a stuck consumer", |r| {
        !r.healthy && r.line.contains("consumer health_probe_test stuck")
    })
    .await;

    // NATS gone: unhealthy, and the probe says why.
    nats.kill();
    probe_until(&listen, "NATS killed", |r| {
        !r.healthy && r.line.contains("NATS connection is")
    })
    .await;
    let (status, text) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("backup_nats_connected 0\n"), "{text}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops on shutdown")
        .expect("no panic")
        .expect("clean stop");
}
