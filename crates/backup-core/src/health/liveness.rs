//! What each consumer loop of the process is doing, as the loop reports
//! it, and the `/healthz` verdict drawn from that and the NATS connection
//! state: a loop is stuck once it has gone longer than its consumer's
//! `ack_wait` without setting up, completing a fetch or getting a progress
//! ack through for one of the messages it holds. A loop may hold several
//! messages at once (`SHIP_CONCURRENCY`, `VERIFY_CONCURRENCY`): each is
//! tracked, reported and judged on its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::connection::State as NatsState;
use serde::Serialize;
use tokio::time::Instant;

use super::metrics::Metrics;

/// Health and metrics of one process, shared by its bus, the bus's
/// workers and the endpoint. Cloning shares the state.
#[derive(Clone)]
pub struct HealthState(Arc<Inner>);

// Short, because it shows up wherever a `Bus` is debug-printed.
impl std::fmt::Debug for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthState")
            .field("service", &self.0.service)
            .finish_non_exhaustive()
    }
}

struct Inner {
    service: String,
    workers: Mutex<BTreeMap<String, WorkerState>>,
    metrics: Metrics,
    /// Why the start-up checks fail, while they do (see `preflight`).
    preflight: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
struct WorkerState {
    ack_wait: Duration,
    phase: Phase,
    /// The messages held now, by stream sequence.
    in_flight: BTreeMap<u64, Held>,
    /// When the worker registered, completed a fetch or finished a message.
    last_poll: Instant,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SettingUp,
    /// Set up and fetching; idle or busy depending on what it holds.
    Running,
    Stopped,
}

/// One message a worker holds.
#[derive(Debug, Clone)]
struct Held {
    since: Instant,
    last_progress: Instant,
    subject: String,
}

impl HealthState {
    pub fn new(service: &str) -> Self {
        Self(Arc::new(Inner {
            service: service.to_owned(),
            workers: Mutex::new(BTreeMap::new()),
            metrics: Metrics::new(),
            preflight: Mutex::new(None),
        }))
    }

    pub fn service(&self) -> &str {
        &self.0.service
    }

    fn workers(&self) -> MutexGuard<'_, BTreeMap<String, WorkerState>> {
        // A panic elsewhere must not take the health endpoint down with it.
        self.0.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the consumer loop of the durable consumer `name`, which
    /// redelivers after `ack_wait`; the handle records what the loop does,
    /// and marks it stopped when dropped.
    pub fn worker(&self, name: &str, ack_wait: Duration) -> WorkerHealth {
        self.workers().insert(
            name.to_owned(),
            WorkerState {
                ack_wait,
                phase: Phase::SettingUp,
                in_flight: BTreeMap::new(),
                last_poll: Instant::now(),
                last_error: None,
            },
        );
        WorkerHealth {
            state: self.clone(),
            name: name.to_owned(),
        }
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut WorkerState)) {
        if let Some(worker) = self.workers().get_mut(name) {
            f(worker);
        }
    }

    /// Marks the service unhealthy because its start-up checks fail
    /// (`Some(why)`), or clears that once they pass (`None`).
    pub fn set_preflight(&self, failure: Option<String>) {
        *self.0.preflight.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Updates the metrics from an event stored on `subject`. Payloads that
    /// are not events of a stage are ignored.
    pub fn observe_event(&self, subject: &str, payload: &[u8]) {
        self.0.metrics.observe(subject, payload, true);
    }

    /// Like [`HealthState::observe_event`] for an event handled before this
    /// process started (a restarted notifier replaying the stream): the
    /// gauges (last success and failure, duration, size) are set again; the
    /// failure counter, which counts since the start, is not.
    pub fn remember_event(&self, subject: &str, payload: &[u8]) {
        self.0.metrics.observe(subject, payload, false);
    }

    /// The health of the process now, given the NATS connection state.
    pub fn report(&self, nats: &NatsState) -> Report {
        self.report_at(nats, Instant::now())
    }

    fn report_at(&self, nats: &NatsState, now: Instant) -> Report {
        let mut reasons = Vec::new();
        let preflight = self
            .0
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(failure) = &preflight {
            reasons.push(format!("start-up checks failing: {failure}"));
        }
        if *nats != NatsState::Connected {
            reasons.push(format!("NATS connection is {nats}"));
        }
        let mut consumers = BTreeMap::new();
        for (name, worker) in self.workers().iter() {
            let since_poll = now.saturating_duration_since(worker.last_poll);
            let late = |d: Duration| d > worker.ack_wait;
            let error = || {
                worker
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            };
            let state = match worker.phase {
                Phase::SettingUp => {
                    if late(since_poll) {
                        reasons.push(format!(
                            "consumer {name} not set up after {}{}",
                            seconds(since_poll),
                            error()
                        ));
                    }
                    "setting_up"
                }
                // With nothing held, the loop must keep completing fetches;
                // with messages held it may be full and not fetching, and
                // each message's progress acks are what count.
                Phase::Running if worker.in_flight.is_empty() => {
                    if late(since_poll) {
                        reasons.push(format!(
                            "consumer {name} stuck: no fetch completed for {}{}",
                            seconds(since_poll),
                            error()
                        ));
                    }
                    "idle"
                }
                Phase::Running => "busy",
                Phase::Stopped => {
                    reasons.push(format!("consumer {name} stopped"));
                    "stopped"
                }
            };
            let mut in_flight = Vec::with_capacity(worker.in_flight.len());
            for (stream_sequence, held) in &worker.in_flight {
                let quiet = now.saturating_duration_since(held.last_progress);
                if late(quiet) {
                    reasons.push(format!(
                        "consumer {name} stuck: message {stream_sequence} on {} has had no progress ack for {}; JetStream will redeliver it",
                        held.subject,
                        seconds(quiet)
                    ));
                }
                in_flight.push(InFlight {
                    stream_sequence: *stream_sequence,
                    subject: held.subject.clone(),
                    seconds: now.saturating_duration_since(held.since).as_secs_f64(),
                    since_progress_ack_seconds: quiet.as_secs_f64(),
                });
            }
            consumers.insert(
                name.clone(),
                ConsumerReport {
                    state,
                    since_last_fetch_seconds: since_poll.as_secs_f64(),
                    ack_wait_seconds: worker.ack_wait.as_secs(),
                    in_flight,
                },
            );
        }
        Report {
            status: if reasons.is_empty() {
                "ok"
            } else {
                "unhealthy"
            },
            service: self.0.service.clone(),
            nats: nats.to_string(),
            reasons,
            preflight,
            consumers,
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// What a consumer loop does, as it tells the health state. Dropping the
/// handle (the loop returned) marks the loop stopped.
#[derive(Debug)]
pub struct WorkerHealth {
    state: HealthState,
    name: String,
}

impl WorkerHealth {
    /// Creating the consumer failed for a reason that may pass.
    pub fn setup_failed(&self, error: &str) {
        self.state.update(&self.name, |w| {
            w.last_error = Some(crate::one_line(error));
        });
    }

    /// The consumer exists; the loop starts fetching.
    pub fn ready(&self) {
        self.state.update(&self.name, |w| {
            w.phase = Phase::Running;
            w.last_poll = Instant::now();
            w.last_error = None;
        });
    }

    /// A fetch round came back (with or without a message).
    pub fn polled(&self) {
        self.state.update(&self.name, |w| {
            w.last_poll = Instant::now();
            w.last_error = None;
        });
    }

    /// A fetch failed; it is retried, and the state goes stale meanwhile.
    pub fn poll_failed(&self, error: &str) {
        self.state.update(&self.name, |w| {
            w.last_error = Some(crate::one_line(error));
        });
    }

    /// The message stored at `stream_sequence` on `subject` is being
    /// handled until the returned guard is dropped. The guard owns what it
    /// needs, so it can move into the message's own task.
    pub fn busy(&self, stream_sequence: u64, subject: &str) -> Busy {
        let now = Instant::now();
        self.state.update(&self.name, |w| {
            w.in_flight.insert(
                stream_sequence,
                Held {
                    since: now,
                    last_progress: now,
                    subject: subject.to_owned(),
                },
            );
        });
        Busy {
            state: self.state.clone(),
            name: self.name.clone(),
            stream_sequence,
        }
    }
}

impl Drop for WorkerHealth {
    fn drop(&mut self) {
        self.state.update(&self.name, |w| w.phase = Phase::Stopped);
    }
}

/// One message held by a worker: progress acks are recorded on it, and
/// dropping it (the message is done with) forgets it.
#[derive(Debug)]
pub struct Busy {
    state: HealthState,
    name: String,
    stream_sequence: u64,
}

impl Busy {
    /// A progress ack for this message went through.
    pub fn progressed(&self) {
        self.state.update(&self.name, |w| {
            if let Some(held) = w.in_flight.get_mut(&self.stream_sequence) {
                held.last_progress = Instant::now();
            }
        });
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.update(&self.name, |w| {
            w.in_flight.remove(&self.stream_sequence);
            w.last_poll = Instant::now();
        });
    }
}

/// The body of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ok` or `unhealthy`.
    pub status: &'static str,
    pub service: String,
    /// `connected`, `disconnected` or `pending`.
    pub nats: String,
    /// Why the service is unhealthy; empty when it is not.
    pub reasons: Vec<String>,
    /// The failed start-up checks, while they fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<String>,
    pub consumers: BTreeMap<String, ConsumerReport>,
}

impl Report {
    pub fn is_healthy(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerReport {
    /// `setting_up`, `idle`, `busy` or `stopped`.
    pub state: &'static str,
    pub since_last_fetch_seconds: f64,
    pub ack_wait_seconds: u64,
    /// Every message held now, oldest stream sequence first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub stream_sequence: u64,
    pub subject: String,
    pub seconds: f64,
    pub since_progress_ack_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnected_nats_is_unhealthy_on_its_own() {
        let state = HealthState::new("notifier");
        let now = Instant::now();
        assert!(state.report_at(&NatsState::Connected, now).is_healthy());
        let report = state.report_at(&NatsState::Disconnected, now);
        assert!(!report.is_healthy());
        assert_eq!(report.status, "unhealthy");
        assert_eq!(report.reasons, ["NATS connection is disconnected"]);
    }

    #[test]
    fn a_worker_goes_stale_after_its_ack_wait_in_every_phase() {
        let ack_wait = Duration::from_secs(60);
        let state = HealthState::new("shipper");
        let connected = NatsState::Connected;
        let worker = state.worker("shipper", ack_wait);
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);

        // Setting up: fine for a while, then a failure to report.
        worker.setup_failed("JetStream request failed: timed out\nmore");
        assert!(state.report_at(&connected, later(30)).is_healthy());
        let report = state.report_at(&connected, later(61));
        assert_eq!(report.consumers["shipper"].state, "setting_up");
        assert!(
            report.reasons[0].starts_with("consumer shipper not set up after 61s")
                && report.reasons[0].contains("timed out | more"),
            "{:?}",
            report.reasons
        );

        // Idle: each completed fetch keeps it healthy; failing fetches do not.
        worker.ready();
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        assert!(state.report_at(&connected, later(59)).is_healthy());
        worker.poll_failed("consumer deleted");
        let report = state.report_at(&connected, later(61));
        assert_eq!(report.consumers["shipper"].state, "idle");
        assert!(
            report.reasons[0].contains("no fetch completed for 61s")
                && report.reasons[0].contains("consumer deleted"),
            "{:?}",
            report.reasons
        );
        worker.polled();
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        assert!(state.report_at(&connected, later(1)).is_healthy());

        // Busy: a long handler is healthy while its progress acks go through.
        {
            let busy = worker.busy(42, "dump.created");
            let start = Instant::now();
            let later = |s: u64| start + Duration::from_secs(s);
            // Long after the last fetch, but the message is what counts now.
            let report = state.report_at(&connected, later(45));
            assert!(report.is_healthy(), "{:?}", report.reasons);
            assert_eq!(report.consumers["shipper"].state, "busy");
            let in_flight = report.consumers["shipper"].in_flight[0].clone();
            assert_eq!(in_flight.stream_sequence, 42);
            assert_eq!(in_flight.subject, "dump.created");
            busy.progressed();
            let start = Instant::now();
            let later = |s: u64| start + Duration::from_secs(s);
            assert!(state.report_at(&connected, later(59)).is_healthy());
            let report = state.report_at(&connected, later(75));
            assert!(
                report.reasons[0]
                    .contains("message 42 on dump.created has had no progress ack for 75s"),
                "{:?}",
                report.reasons
            );
            let text = state.metrics_text(&connected);
            assert!(text.contains("backup_messages_in_flight 1\n"), "{text}");
        }
        // Done with the message: idle and healthy again.
        let report = state.report_at(&connected, Instant::now());
        assert!(report.is_healthy(), "{:?}", report.reasons);
        assert_eq!(report.consumers["shipper"].state, "idle");
        assert!(
            state
                .metrics_text(&connected)
                .contains("backup_messages_in_flight 0\n")
        );

        // The loop returned: stopped, whatever the clock says.
        drop(worker);
        let report = state.report_at(&connected, Instant::now());
        assert_eq!(report.reasons, ["consumer shipper stopped"]);
        assert_eq!(report.consumers["shipper"].state, "stopped");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["status"], "unhealthy");
        assert_eq!(json["service"], "shipper");
    }

    #[test]
    fn every_message_held_is_reported_and_judged_on_its_own() {
        let ack_wait = Duration::from_secs(60);
        let state = HealthState::new("verifier");
        let connected = NatsState::Connected;
        let worker = state.worker("verifier", ack_wait);
        worker.ready();
        let first = worker.busy(7, "dump.shipped");
        let second = worker.busy(9, "dump.shipped");
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        let report = state.report_at(&connected, later(1));
        let held: Vec<u64> = report.consumers["verifier"]
            .in_flight
            .iter()
            .map(|m| m.stream_sequence)
            .collect();
        assert_eq!(held, [7, 9]);
        assert_eq!(report.consumers["verifier"].state, "busy");
        assert!(
            state
                .metrics_text(&connected)
                .contains("backup_messages_in_flight 2\n")
        );
        // Only the message whose progress acks stopped is stuck: the
        // second one's last progress ack is 30 s younger.
        second.progressed();
        state.update("verifier", |w| {
            w.in_flight.get_mut(&9).expect("held").last_progress += Duration::from_secs(30);
        });
        let report = state.report_at(&connected, Instant::now() + Duration::from_secs(61));
        assert_eq!(report.reasons.len(), 1, "{:?}", report.reasons);
        assert!(
            report.reasons[0].contains("message 7 "),
            "{:?}",
            report.reasons
        );
        drop(first);
        let report = state.report_at(&connected, Instant::now());
        assert_eq!(report.consumers["verifier"].in_flight.len(), 1);
        drop(second);
        let report = state.report_at(&connected, Instant::now());
        assert_eq!(report.consumers["verifier"].state, "idle");
        assert!(report.consumers["verifier"].in_flight.is_empty());
    }
}
