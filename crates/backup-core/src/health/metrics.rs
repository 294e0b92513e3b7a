//! The Prometheus metrics of a service: per database and stage, when it
//! last succeeded and failed, how long it took and how big the artifact
//! was, all derived from the events stored on the bus; plus gauges for the
//! present (NATS connection, messages in flight, health), brought up to
//! date at each scrape.

use async_nats::connection::State as NatsState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::HealthState;
use crate::events::subject;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    database: String,
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug)]
pub(super) struct Metrics {
    registry: Registry,
    last_success: Family<StageLabels, FloatGauge>,
    last_failure: Family<StageLabels, FloatGauge>,
    duration: Family<StageLabels, FloatGauge>,
    size: Family<DatabaseLabels, Gauge>,
    failures: Family<StageLabels, Counter>,
    nats_connected: Gauge,
    in_flight: Gauge,
    healthy: Gauge,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::default();
        let last_success = Family::<StageLabels, FloatGauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When a stage last succeeded for a database (Unix time of its event)",
            last_success.clone(),
        );
        let last_failure = Family::<StageLabels, FloatGauge>::default();
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "When a stage last failed for a database (Unix time of its dump.failed)",
            last_failure.clone(),
        );
        let duration = Family::<StageLabels, FloatGauge>::default();
        registry.register(
            "backup_stage_duration_seconds",
            "How long the last successful run of a stage took for a database",
            duration.clone(),
        );
        let size = Family::<DatabaseLabels, Gauge>::default();
        registry.register(
            "backup_artifact_size_bytes",
            "Size of the last artifact of a database, as stored",
            size.clone(),
        );
        let failures = Family::<StageLabels, Counter>::default();
        // OpenMetrics adds the `_total` suffix of counters.
        registry.register(
            "backup_failures",
            "dump.failed events of a database and stage since the service started",
            failures.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register(
            "backup_nats_connected",
            "1 while the connection to NATS is up",
            nats_connected.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "backup_messages_in_flight",
            "Messages the service is handling now (held with progress acks)",
            in_flight.clone(),
        );
        let healthy = Gauge::default();
        registry.register(
            "backup_healthy",
            "1 when /healthz answers 200: NATS connected and no consumer stuck",
            healthy.clone(),
        );
        Self {
            registry,
            last_success,
            last_failure,
            duration,
            size,
            failures,
            nats_connected,
            in_flight,
            healthy,
        }
    }

    /// `count`: whether a failure adds to the failure counter.
    pub(super) fn observe(&self, subject: &str, payload: &[u8], count: bool) {
        let stage = match subject {
            subject::CREATED => "dump",
            subject::SHIPPED => "ship",
            subject::VERIFIED => "verify",
            subject::PRUNED => "prune",
            subject::FAILED => "",
            _ => return,
        };
        let Ok(serde_json::Value::Object(event)) = serde_json::from_slice(payload) else {
            return;
        };
        let Some(database) = event.get("database").and_then(|v| v.as_str()) else {
            return;
        };
        let at = event
            .get("occurred_at")
            .and_then(|v| v.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now);
        let at = at.timestamp_millis() as f64 / 1000.0;
        if subject == subject::FAILED {
            let stage = event
                .get("stage")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown");
            let labels = StageLabels {
                database: database.to_owned(),
                stage: stage.to_owned(),
            };
            if count {
                self.failures.get_or_create(&labels).inc();
            }
            self.last_failure.get_or_create(&labels).set(at);
            return;
        }
        let labels = StageLabels {
            database: database.to_owned(),
            stage: stage.to_owned(),
        };
        self.last_success.get_or_create(&labels).set(at);
        if let Some(ms) = event.get("duration_ms").and_then(|v| v.as_u64()) {
            self.duration.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
        if let Some(size) = event.get("size_bytes").and_then(|v| v.as_u64()) {
            self.size
                .get_or_create(&DatabaseLabels {
                    database: database.to_owned(),
                })
                .set(i64::try_from(size).unwrap_or(i64::MAX));
        }
    }
}

impl HealthState {
    /// The Prometheus exposition, with the gauges that describe the present
    /// (connection, messages in flight, health) brought up to date.
    pub fn metrics_text(&self, nats: &NatsState) -> String {
        let report = self.report(nats);
        let metrics = self.metrics();
        metrics
            .nats_connected
            .set(i64::from(*nats == NatsState::Connected));
        metrics.healthy.set(i64::from(report.is_healthy()));
        let in_flight: usize = report.consumers.values().map(|c| c.in_flight.len()).sum();
        metrics
            .in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &metrics.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_published_events() {
        let state = HealthState::new("verifier");
        let at = "2026-11-21T02:00:01.500Z";
        let event = |extra: serde_json::Value| {
            let mut value = serde_json::json!({
                "version": 1, "backup_id": "b1", "database": "viatique", "occurred_at": at,
            });
            value
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::to_vec(&value).unwrap()
        };
        state.observe_event(
            subject::VERIFIED,
            &event(
                serde_json::json!({"artifact": "viatique_20261121_020001.sql.gz",
                "size_bytes": 123456, "sha256": "00", "duration_ms": 2500}),
            ),
        );
        state.observe_event(
            subject::PRUNED,
            &event(serde_json::json!({"deleted": [], "kept": [], "dry_run": false})),
        );
        for _ in 0..2 {
            state.observe_event(
                subject::FAILED,
                &event(serde_json::json!({"stage": "ship", "error": "x", "attempt": 1, "will_retry": true})),
            );
        }
        // Not stage events, or not events at all: ignored.
        state.observe_event(subject::STARTED, &event(serde_json::json!({"batch": []})));
        state.observe_event(subject::CREATED, b"not json");
        state.observe_event(subject::TRIGGER, b"");

        let text = state.metrics_text(&NatsState::Disconnected);
        for line in [
            "# TYPE backup_last_success_timestamp_seconds gauge",
            r#"backup_last_success_timestamp_seconds{database="viatique",stage="verify"} 1795226401.5"#,
            r#"backup_last_success_timestamp_seconds{database="viatique",stage="prune"} 1795226401.5"#,
            r#"backup_stage_duration_seconds{database="viatique",stage="verify"} 2.5"#,
            r#"backup_artifact_size_bytes{database="viatique"} 123456"#,
            "# TYPE backup_failures counter",
            r#"backup_failures_total{database="viatique",stage="ship"} 2"#,
            r#"backup_last_failure_timestamp_seconds{database="viatique",stage="ship"} 1795226401.5"#,
            "backup_nats_connected 0",
            "backup_messages_in_flight 0",
            "backup_healthy 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains(r#"stage="dump""#), "{text}");
        assert!(
            !text.contains(r#"backup_stage_duration_seconds{database="viatique",stage="prune"}"#),
            "dump.pruned has no duration: {text}"
        );
    }
}
