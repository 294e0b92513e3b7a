//! Health and Prometheus metrics of one service, served over HTTP on
//! `HEALTH_LISTEN` (`GET /healthz`, `GET /metrics`), and the
//! `--health-probe` client a container health check runs.
//!
//! Healthy means: the NATS connection is up, and every consumer loop of the
//! process ([`crate::bus::run_worker`]) is alive. A loop is *stuck* when it
//! has not been set up, has not completed a fetch, or has not got a progress
//! ack through for the message it holds, for longer than its consumer's
//! `ack_wait` (past that, JetStream redelivers the message anyway). A
//! handler that is busy but making no progress is the stage watchdog's
//! business ([`crate::watchdog`]), not this module's.
//!
//! Metrics come from the events the service publishes (and, for the
//! notifier, which consumes every `dump.*` event, from those), so every
//! service exposes the same metric names for the stages it runs. They live
//! in the process: after a restart a series reappears with its next event.
//!
//! Retries: nothing here retries. The probe makes one request with a
//! timeout; the container runtime's health check decides how many failures
//! make a container unhealthy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::connection::State as NatsState;
use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use crate::bus::{Bus, ConsumerSpec, Delivery};
use crate::config::ServiceArgs;
use crate::events::subject;

/// How long the probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// OpenMetrics text, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("HEALTH_LISTEN {0:?} is not an address such as 127.0.0.1:9464 or 0.0.0.0:9464")]
    Address(String),
    #[error("cannot listen on HEALTH_LISTEN {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl HealthError {
    /// A port still held by a previous instance may be free on the next start.
    pub fn is_transient(&self) -> bool {
        matches!(self, HealthError::Bind { .. })
    }
}

/// Parses `HEALTH_LISTEN`; empty or unset means no endpoint.
pub fn listen_address(text: Option<&str>) -> Result<Option<SocketAddr>, HealthError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| HealthError::Address(text.to_owned())),
    }
}

/// Health and metrics of one process, shared by its [`Bus`], the bus's
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
    /// When the worker registered, completed a fetch or finished a message.
    last_poll: Instant,
    last_error: Option<String>,
}

#[derive(Debug, Clone)]
enum Phase {
    SettingUp,
    Idle,
    Busy {
        since: Instant,
        last_progress: Instant,
        stream_sequence: u64,
        subject: String,
    },
    Stopped,
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

    /// Registers the consumer loop `spec` describes; the handle records what
    /// the loop does, and marks it stopped when dropped.
    pub fn worker(&self, spec: &ConsumerSpec) -> WorkerHealth {
        self.worker_named(spec.durable, spec.ack_wait)
    }

    fn worker_named(&self, name: &str, ack_wait: Duration) -> WorkerHealth {
        self.workers().insert(
            name.to_owned(),
            WorkerState {
                ack_wait,
                phase: Phase::SettingUp,
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
            let (state, in_flight) = match &worker.phase {
                Phase::SettingUp => {
                    if late(since_poll) {
                        reasons.push(format!(
                            "consumer {name} not set up after {}{}",
                            seconds(since_poll),
                            error()
                        ));
                    }
                    ("setting_up", None)
                }
                Phase::Idle => {
                    if late(since_poll) {
                        reasons.push(format!(
                            "consumer {name} stuck: no fetch completed for {}{}",
                            seconds(since_poll),
                            error()
                        ));
                    }
                    ("idle", None)
                }
                Phase::Busy {
                    since,
                    last_progress,
                    stream_sequence,
                    subject,
                } => {
                    let quiet = now.saturating_duration_since(*last_progress);
                    if late(quiet) {
                        reasons.push(format!(
                            "consumer {name} stuck: message {stream_sequence} on {subject} has had no progress ack for {}; JetStream will redeliver it",
                            seconds(quiet)
                        ));
                    }
                    let in_flight = InFlight {
                        stream_sequence: *stream_sequence,
                        subject: subject.clone(),
                        seconds: now.saturating_duration_since(*since).as_secs_f64(),
                        since_progress_ack_seconds: quiet.as_secs_f64(),
                    };
                    ("busy", Some(in_flight))
                }
                Phase::Stopped => {
                    reasons.push(format!("consumer {name} stopped"));
                    ("stopped", None)
                }
            };
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

    /// The Prometheus exposition, with the gauges that describe the present
    /// (connection, messages in flight, health) brought up to date.
    pub fn metrics_text(&self, nats: &NatsState) -> String {
        let report = self.report(nats);
        let metrics = &self.0.metrics;
        metrics
            .nats_connected
            .set(i64::from(*nats == NatsState::Connected));
        metrics.healthy.set(i64::from(report.is_healthy()));
        let in_flight = report
            .consumers
            .values()
            .filter(|c| c.in_flight.is_some())
            .count();
        metrics
            .in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &metrics.registry);
        text
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
            w.phase = Phase::Idle;
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

    /// A message is being handled until the returned guard is dropped.
    pub fn busy(&self, delivery: &Delivery) -> Busy<'_> {
        let now = Instant::now();
        self.state.update(&self.name, |w| {
            w.phase = Phase::Busy {
                since: now,
                last_progress: now,
                stream_sequence: delivery.stream_sequence,
                subject: delivery.subject.clone(),
            };
        });
        Busy { worker: self }
    }

    /// A progress ack for the message in flight went through.
    pub fn progressed(&self) {
        self.state.update(&self.name, |w| {
            if let Phase::Busy { last_progress, .. } = &mut w.phase {
                *last_progress = Instant::now();
            }
        });
    }
}

impl Drop for WorkerHealth {
    fn drop(&mut self) {
        self.state.update(&self.name, |w| w.phase = Phase::Stopped);
    }
}

/// Marks the worker idle again when the message is done with.
#[derive(Debug)]
pub struct Busy<'a> {
    worker: &'a WorkerHealth,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.worker.state.update(&self.worker.name, |w| {
            w.phase = Phase::Idle;
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub stream_sequence: u64,
    pub subject: String,
    pub seconds: f64,
    pub since_progress_ack_seconds: f64,
}

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
struct Metrics {
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
    fn new() -> Self {
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
    fn observe(&self, subject: &str, payload: &[u8], count: bool) {
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

/// Serves `/healthz` and `/metrics` for `bus` on `HEALTH_LISTEN`, in the
/// background until the process ends. Does nothing when it is not set.
pub async fn serve(common: &ServiceArgs, bus: &Bus) -> Result<Option<SocketAddr>, HealthError> {
    serve_at(common.health_listen.as_deref(), bus).await
}

/// [`serve`] on `listen` (`127.0.0.1:0` picks a free port); returns the
/// address bound.
pub async fn serve_at(listen: Option<&str>, bus: &Bus) -> Result<Option<SocketAddr>, HealthError> {
    let Some(addr) = listen_address(listen)? else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    tracing::info!(address = %local, "health and metrics endpoint listening");
    tokio::spawn(accept_loop(listener, bus.clone()));
    Ok(Some(local))
}

async fn accept_loop(listener: tokio::net::TcpListener, bus: Bus) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let bus = bus.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let bus = bus.clone();
                async move { Ok::<_, Infallible>(respond(&bus, &request)) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(error) = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "health endpoint: connection ended with an error");
            }
        });
    }
}

fn respond<B>(bus: &Bus, request: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    use hyper::{Method, StatusCode, header};
    let reply = |status: StatusCode, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let nats = bus.client().connection_state();
    match request.uri().path() {
        "/healthz" => {
            let report = bus.health().report(&nats);
            let status = if report.is_healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&report).unwrap_or_default();
            reply(status, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            bus.health().metrics_text(&nats),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz or /metrics\n".into(),
        ),
    }
}

/// Where a probe reaches an endpoint listening on `addr`: a wildcard
/// address is reached on loopback.
fn probe_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// What one probe found: healthy or not, and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub healthy: bool,
    pub line: String,
}

/// GETs `/healthz` of the endpoint `HEALTH_LISTEN` names.
pub async fn probe_once(listen: Option<&str>) -> ProbeResult {
    let unhealthy = |line: String| ProbeResult {
        healthy: false,
        line,
    };
    let addr = match listen_address(listen) {
        Ok(Some(addr)) => probe_target(addr),
        Ok(None) => return unhealthy("HEALTH_LISTEN is not set: no endpoint to probe".into()),
        Err(error) => return unhealthy(error.to_string()),
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, http_get(addr, "/healthz")).await;
    let (status, body) = match answer {
        Err(_) => {
            return unhealthy(format!(
                "no answer from http://{addr}/healthz within {}s",
                PROBE_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(error)) => {
            return unhealthy(format!(
                "http://{addr}/healthz: {error} (still starting, or not connected to NATS yet)"
            ));
        }
        Ok(Ok(answer)) => answer,
    };
    let report: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let service = report
        .as_ref()
        .and_then(|r| r.get("service"))
        .and_then(|s| s.as_str())
        .unwrap_or("service")
        .to_owned();
    if status == 200 {
        return ProbeResult {
            healthy: true,
            line: format!("{service} healthy"),
        };
    }
    let reasons = report
        .as_ref()
        .and_then(|r| r.get("reasons"))
        .and_then(|r| r.as_array())
        .map(|reasons| {
            reasons
                .iter()
                .filter_map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| crate::one_line(&body));
    unhealthy(format!("{service} unhealthy (HTTP {status}): {reasons}"))
}

/// The `--health-probe` mode of every service: one line on stdout, exit 0
/// when healthy and 1 otherwise.
pub async fn probe(common: &ServiceArgs) -> ExitCode {
    let result = probe_once(common.health_listen.as_deref()).await;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", crate::one_line(&result.line));
    }
    if result.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A minimal HTTP/1.1 GET: enough for our own endpoint, and it keeps an
/// HTTP client out of every binary.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ack_wait: Duration) -> ConsumerSpec {
        ConsumerSpec {
            ack_wait,
            ..ConsumerSpec::new("shipper", subject::CREATED, crate::Stage::Ship)
        }
    }

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            subject: subject::CREATED.into(),
            stream_sequence: seq,
            attempt: 1,
            max_deliver: 12,
            published: chrono::Utc::now(),
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_address(None).unwrap(), None);
        assert_eq!(listen_address(Some(" ")).unwrap(), None);
        assert_eq!(
            listen_address(Some("0.0.0.0:9464")).unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
        let error = listen_address(Some("localhost")).unwrap_err();
        assert!(!error.is_transient());
        assert!(error.to_string().contains("HEALTH_LISTEN"), "{error}");
        assert_eq!(
            probe_target("0.0.0.0:9464".parse().unwrap()),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            probe_target("[::]:9464".parse().unwrap()),
            "[::1]:9464".parse().unwrap()
        );
        assert_eq!(
            probe_target("10.1.2.3:9464".parse().unwrap()),
            "10.1.2.3:9464".parse().unwrap()
        );
    }

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
        let worker = state.worker(&spec(ack_wait));
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
            let _busy = worker.busy(&delivery(42));
            let start = Instant::now();
            let later = |s: u64| start + Duration::from_secs(s);
            // Long after the last fetch, but the message is what counts now.
            let report = state.report_at(&connected, later(45));
            assert!(report.is_healthy(), "{:?}", report.reasons);
            assert_eq!(report.consumers["shipper"].state, "busy");
            let in_flight = report.consumers["shipper"].in_flight.clone().unwrap();
            assert_eq!(in_flight.stream_sequence, 42);
            assert_eq!(in_flight.subject, "dump.created");
            worker.progressed();
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
                crate::bus::run_worker(&bus, &spec, &AckAll, shutdown, Duration::from_secs(1)).await
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

    #[tokio::test]
    async fn probing_nothing_is_unhealthy_in_one_line() {
        let unset = probe_once(None).await;
        assert!(!unset.healthy);
        assert!(
            unset.line.contains("HEALTH_LISTEN is not set"),
            "{}",
            unset.line
        );
        // A port nobody listens on: bind one, then free it.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let refused = probe_once(Some(&addr)).await;
        assert!(!refused.healthy);
        assert!(refused.line.contains("/healthz"), "{}", refused.line);
        assert!(!refused.line.contains('\n'));
    }
}
