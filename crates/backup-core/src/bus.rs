//! JetStream wiring: the `BACKUPS` stream, one durable pull consumer per
//! service, publishing with `Nats-Msg-Id`, and the worker loop that turns a
//! handler's [`Outcome`] into an ack, a delayed nak or a terminate.
//!
//! Retries: connecting retries with backoff until it succeeds or shutdown
//! (only a refused authentication is final). A handler that asks to retry
//! gets its message redelivered after the delay it chose; a handler that
//! runs longer than `ack_wait` keeps its message with progress acks; a
//! service killed mid-work loses nothing because the message was not acked.
//! A payload that cannot be decoded is terminated and reported as
//! `dump.failed`, so it is neither retried forever nor fatal.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, ErrorCode, consumer, stream};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::{
    self, DumpFailed, Event, EventHeader, Origin, Stage, StageEvent, TriggerRequest, subject,
};
use crate::names::{BackupId, DatabaseName};
use crate::retry::Backoff;

/// Name of the stream that captures every subject of the pipeline.
pub const STREAM: &str = "BACKUPS";

/// JetStream's deduplication window. Long enough that a publish retried
/// after a NATS restart or a service crash is still recognised.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("NATS refused the credentials at {url}: {cause}")]
    Auth { url: String, cause: String },
    #[error("invalid NATS settings: {0}")]
    Config(String),
    #[error("NATS is unreachable at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    #[error("shutdown requested")]
    Shutdown,
}

impl BusError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BusError::Unreachable { .. } | BusError::JetStream(_))
    }
}

fn js_error(e: impl std::fmt::Display) -> BusError {
    BusError::JetStream(crate::one_line(&e.to_string()))
}

/// How to reach NATS, and how many copies of the stream to keep. Secrets
/// are redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `NATS_URL` as given: one URL, or a comma-separated seed list of the
    /// servers of a cluster (see [`seed_servers`]). May carry credentials:
    /// print [`NatsOptions::shown_url`] instead.
    pub url: String,
    pub creds_file: Option<PathBuf>,
    pub token: Option<SecretString>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    /// `NATS_STREAM_REPLICAS`: the replicas [`Bus::ensure_stream`] gives
    /// the stream and brings it back to. `None` (tools, tests): create it
    /// with one and leave an existing stream's count alone.
    pub stream_replicas: Option<usize>,
}

impl NatsOptions {
    pub fn local(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            creds_file: None,
            token: None,
            user: None,
            password: None,
            stream_replicas: None,
        }
    }

    /// The servers to try, in the order given (see [`seed_servers`]).
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, BusError> {
        seed_servers(&self.url)
    }

    /// `NATS_URL` without any `user:password@`, safe to log.
    pub fn shown_url(&self) -> String {
        url_without_credentials(&self.url)
    }

    async fn connect_options(
        &self,
        name: &str,
        refused: &Refused,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        let base = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    BusError::Config(format!("cannot read NATS_CREDS {}: {e}", path.display()))
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut options = base
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // After the first connection, the client reconnects by itself
            // forever; we only log the transitions.
            .max_reconnects(None)
            .event_callback({
                let refused = refused.clone();
                move |event| {
                let connected_before = std::sync::Arc::clone(&connected_before);
                let refused = refused.clone();
                async move {
                    match event {
                        // The callback also fires for the first connection,
                        // which restores nothing and is logged once by
                        // `Bus::connect`, with the URL.
                        async_nats::Event::Connected => {
                            if connected_before.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                tracing::info!("NATS connection restored");
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting")
                        }
                        // A permission refusal reaches the client only
                        // here; the request itself merely times out.
                        async_nats::Event::ServerError(async_nats::ServerError::Other(text))
                            if permission_subject(&text).is_some() =>
                        {
                            let subject = permission_subject(&text).unwrap_or_default();
                            tracing::warn!(%subject, "NATS refused a subject to this user (permissions violation)");
                            refused.record(subject);
                        }
                        async_nats::Event::ServerError(_) | async_nats::Event::LameDuckMode => {
                            tracing::warn!(event = %event, "NATS server notice");
                        }
                        // Client errors repeat on every reconnect attempt of
                        // an outage already logged as "connection lost".
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            }});
        if let Some(token) = &self.token {
            options = options.token(token.expose_secret().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        Ok(options)
    }
}

/// The servers of a `NATS_URL`: one URL or a comma-separated list of seeds,
/// as every NATS client reads it. A client connects to whichever answers
/// and learns the rest of a cluster from it, so a list of one is enough to
/// reach a cluster, but the service can start only while that one is up.
/// An entry without a scheme means `nats://`, one without a port 4222.
pub fn seed_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let entries: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(BusError::Config("NATS_URL is empty".into()));
    }
    entries
        .iter()
        .map(|entry| {
            entry.parse().map_err(|e: std::io::Error| {
                BusError::Config(format!(
                    "NATS_URL {}: {}",
                    url_without_credentials(entry),
                    crate::one_line(&e.to_string())
                ))
            })
        })
        .collect()
}

/// Every URL of a list with its `user:password@` removed.
pub fn url_without_credentials(url: &str) -> String {
    url.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let (scheme, rest) = entry.split_once("://").unwrap_or(("", entry));
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            if scheme.is_empty() {
                format!("{host}{path}")
            } else {
                format!("{scheme}://{host}{path}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The subject of a server's `Permissions Violation for Publish to
/// "SUBJECT"` (or `Subscription to`) error.
pub fn permission_subject(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("permissions violation") {
        return None;
    }
    let start = text.find('"')? + 1;
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_owned())
}

/// The subjects NATS refused to this connection's user, as reported on
/// the client's event callback.
#[derive(Debug, Clone, Default)]
pub struct Refused(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Refused {
    fn record(&self, subject: String) {
        let mut list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !list.contains(&subject) && list.len() < 100 {
            list.push(subject);
        }
    }

    pub fn contains(&self, subject: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|s| s == subject)
    }

    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A connection to NATS with its JetStream context.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    refused: Refused,
    /// What `/healthz` and `/metrics` report (see [`crate::health`]).
    health: crate::health::HealthState,
    /// See [`NatsOptions::stream_replicas`].
    stream_replicas: Option<usize>,
    /// Set once [`Bus::ensure_stream`] has looked at the replicas: a
    /// service checks them once, at start-up, and says so once.
    replicas_looked_at: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Bus {
    /// Connects to any server of the seed list, retrying with backoff while
    /// none is reachable; gives up only on shutdown, on a refused
    /// authentication or on a `NATS_URL` that does not parse.
    pub async fn connect(
        options: &NatsOptions,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Bus, BusError> {
        let servers = options.servers()?;
        let shown = options.shown_url();
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let refused = Refused::default();
            let connect_options = options.connect_options(name, &refused).await?;
            // One attempt tries every seed once, each with its own timeout.
            match connect_options.connect(servers.as_slice()).await {
                Ok(client) => {
                    let js = jetstream::new(client.clone());
                    let info = client.server_info();
                    tracing::info!(
                        url = %shown,
                        server = %info.server_name,
                        port = info.port,
                        "connected to NATS"
                    );
                    return Ok(Bus {
                        client,
                        js,
                        refused,
                        health: crate::health::HealthState::new(name),
                        stream_replicas: options.stream_replicas,
                        replicas_looked_at: Default::default(),
                    });
                }
                Err(e) => {
                    use async_nats::ConnectErrorKind as Kind;
                    let cause = crate::one_line(&e.to_string());
                    match e.kind() {
                        Kind::Authentication | Kind::AuthorizationViolation => {
                            return Err(BusError::Auth { url: shown, cause });
                        }
                        Kind::ServerParse => {
                            return Err(BusError::Config(format!("NATS_URL {shown}: {cause}")));
                        }
                        _ => {}
                    }
                    let delay = backoff.delay(attempt);
                    tracing::warn!(url = %shown, %cause, attempt, retry_in = ?delay, "NATS unreachable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(BusError::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// [`Bus::connect`] for a service's `main`: `None` when shutdown came
    /// first, which is a clean exit rather than an error.
    pub async fn connect_service(
        options: &NatsOptions,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<Bus>, BusError> {
        match Self::connect(options, name, shutdown).await {
            Ok(bus) => Ok(Some(bus)),
            Err(BusError::Shutdown) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The subjects NATS refused to this user so far.
    pub fn refused(&self) -> &Refused {
        &self.refused
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn health(&self) -> &crate::health::HealthState {
        &self.health
    }

    /// Creates the `BACKUPS` stream, or brings an existing one up to date.
    /// Every service calls this at start-up so none depends on another.
    ///
    /// Replicas: a new stream gets `NATS_STREAM_REPLICAS`; an existing one
    /// with another count is changed to it on a cluster (NATS 2.9 copies
    /// the data to the new peers, and the consumers follow), never on a
    /// single server, which holds one copy. Either way one warning line
    /// says what was found and what came of it (the first call only: the
    /// worker's set-up calls this again), and the service keeps running: a
    /// stream with another count still carries the pipeline.
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let wanted = self.stream_replicas.unwrap_or(1);
        let (mut stream, settled) = match self.stream_or_create(wanted).await {
            Ok(stream) => (stream, false),
            Err(error) if wanted > 1 && refuses_replicas(&error) => {
                tracing::warn!(
                    wanted,
                    "NATS_STREAM_REPLICAS is {wanted} but NATS cannot place that many copies of a new {STREAM} stream ({}): creating it with 1",
                    crate::one_line(&error.to_string())
                );
                let stream = self.stream_or_create(1).await.map_err(js_error)?;
                (stream, true)
            }
            Err(error) => return Err(js_error(error)),
        };
        let info = stream.info().await.map_err(js_error)?;
        let current = info.config.clone();
        // Only a clustered stream reports its cluster. A single server
        // keeps one copy whatever the configuration says (2.9 accepts an
        // update to more, and still keeps one).
        let clustered = info.cluster.is_some();
        let mut replicas = if clustered {
            current.num_replicas.max(1)
        } else {
            1
        };
        let first_look = !self
            .replicas_looked_at
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(wanted) = self.stream_replicas
            && wanted != replicas
            && first_look
            && !settled
        {
            replicas = if clustered {
                self.change_replicas(replicas, wanted).await
            } else {
                tracing::warn!(
                    stream_replicas = replicas,
                    wanted,
                    "the {STREAM} stream has 1 replica and NATS_STREAM_REPLICAS is {wanted}, but it stays at 1: a single NATS server, not a cluster, holds one copy only"
                );
                replicas
            };
        }
        let config = stream_config(replicas);
        if current.subjects != config.subjects
            || current.duplicate_window != config.duplicate_window
            || current.max_age != config.max_age
        {
            tracing::info!("updating the {STREAM} stream configuration");
            self.js.update_stream(config).await.map_err(js_error)?;
        }
        Ok(stream)
    }

    /// The stream, created with `replicas` copies if it does not exist.
    /// A request that times out is asked again for half a minute: on a
    /// cluster that lost a node, JetStream answers nothing for the few
    /// seconds of an election, and a service starting then should not stop.
    async fn stream_or_create(
        &self,
        replicas: usize,
    ) -> Result<stream::Stream, async_nats::jetstream::context::CreateStreamError> {
        use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.js.get_or_create_stream(stream_config(replicas)).await {
                Err(error)
                    if matches!(error.kind(), Kind::TimedOut | Kind::JetStreamUnavailable)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %crate::one_line(&error.to_string()), "JetStream did not answer about the {STREAM} stream; asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                result => return result,
            }
        }
    }

    /// Asks NATS to keep `wanted` copies of the stream instead of `have`;
    /// returns the count the stream has afterwards.
    async fn change_replicas(&self, have: usize, wanted: usize) -> usize {
        match self.js.update_stream(stream_config(wanted)).await {
            Ok(_) => {
                tracing::warn!(
                    stream_replicas = have,
                    wanted,
                    "the {STREAM} stream had {have} replica(s) and NATS_STREAM_REPLICAS is {wanted}: changed it to {wanted}"
                );
                wanted
            }
            Err(error) => {
                tracing::warn!(
                    stream_replicas = have,
                    wanted,
                    "the {STREAM} stream has {have} replica(s) and NATS_STREAM_REPLICAS is {wanted}, but it stays at {have}: NATS refused the change ({})",
                    crate::one_line(&error.to_string())
                );
                have
            }
        }
    }

    /// Publishes a stage's `event` on its subject under the message id it
    /// derives from itself, and waits for JetStream to store it. Returns
    /// the stream sequence (the original one when the server recognised a
    /// duplicate).
    pub async fn publish<E: StageEvent>(&self, event: &E) -> Result<u64, BusError> {
        self.publish_json(E::SUBJECT, &event.message_id(), event)
            .await
    }

    /// Publishes a trigger. A trigger names no backup yet, so whoever asks
    /// chooses its message id: `backupctl` its request id, the schedule
    /// its slot.
    pub async fn publish_trigger(
        &self,
        request: &TriggerRequest,
        msg_id: &str,
    ) -> Result<u64, BusError> {
        self.publish_json(subject::TRIGGER, msg_id, request).await
    }

    /// Publishes any JSON `payload` on `subject` with `Nats-Msg-Id:
    /// msg_id`, for tools and tests that speak for a stage (or for nobody);
    /// the stages themselves publish with [`Bus::publish`].
    pub async fn publish_json<T: Serialize>(
        &self,
        subject: &str,
        msg_id: &str,
        payload: &T,
    ) -> Result<u64, BusError> {
        let payload = serde_json::to_vec(payload).map_err(js_error)?;
        self.publish_raw(subject, msg_id, payload.into()).await
    }

    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        payload: bytes::Bytes,
    ) -> Result<u64, BusError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(msg_id);
        let ack = self
            .js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(js_error)?
            .await
            .map_err(js_error)?;
        if ack.duplicate {
            tracing::debug!(subject, msg_id, "duplicate publish recognised by JetStream");
        }
        // Metrics follow what was stored, so every service derives them alike.
        self.health.observe_event(subject, &payload);
        Ok(ack.sequence)
    }

    /// Logs and publishes a `dump.failed`, logging (not failing) if even
    /// that fails: the caller is already on an error path and will nak the
    /// message.
    pub async fn publish_failure(&self, failure: &DumpFailed) {
        tracing::error!(
            database = %failure.header.database,
            backup_id = %failure.header.backup_id,
            stage = %failure.stage,
            destination = failure.destination.as_deref().unwrap_or("-"),
            attempt = failure.attempt,
            will_retry = failure.will_retry,
            error = %failure.error,
            "stage failed"
        );
        if let Err(error) = self.publish(failure).await {
            tracing::error!(%error, "could not publish dump.failed");
        }
    }

    /// The durable pull consumer `spec` describes, created or updated.
    pub async fn durable_consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.ensure_stream().await?;
        let config = consumer::pull::Config {
            // Both: servers before 2.10 key durables on `durable_name`,
            // the client names its requests after `name`.
            name: Some(spec.durable.to_owned()),
            durable_name: Some(spec.durable.to_owned()),
            description: Some(format!("{} worker", spec.durable)),
            filter_subject: spec.filter_subject.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: spec.max_deliver,
            max_ack_pending: spec.max_ack_pending,
            // As many copies as the stream, whatever NATS_STREAM_REPLICAS
            // made of it: a consumer on fewer servers than its stream
            // could be lost with a node the stream survives.
            num_replicas: 0,
            // Applies only when the consumer is created: a first start (or
            // a consumer deleted by hand) picks up the last day, such as a
            // trigger published while the service was not yet running, but
            // does not replay a year of history.
            deliver_policy: consumer::DeliverPolicy::ByStartTime {
                start_time: time_days_ago(1),
            },
            ..Default::default()
        };
        match stream
            .get_consumer::<consumer::pull::Config>(spec.durable)
            .await
        {
            Ok(existing) => {
                let mut existing = existing;
                let current = existing.info().await.map_err(js_error)?.config.clone();
                if current.ack_wait != config.ack_wait
                    || current.max_deliver != config.max_deliver
                    || current.filter_subject != config.filter_subject
                    || current.max_ack_pending != config.max_ack_pending
                {
                    if current.max_ack_pending != config.max_ack_pending {
                        tracing::info!(
                            consumer = spec.durable,
                            from = current.max_ack_pending,
                            to = config.max_ack_pending,
                            "updating the consumer's max_ack_pending to follow the concurrency setting"
                        );
                    } else {
                        tracing::info!(consumer = spec.durable, "updating consumer configuration");
                    }
                    stream.update_consumer(config).await.map_err(js_error)
                } else {
                    Ok(existing)
                }
            }
            Err(_) => stream
                .get_or_create_consumer(spec.durable, config)
                .await
                .map_err(js_error),
        }
    }
}

/// The health endpoint reports on the bus's health state and connection.
impl crate::health::Monitored for Bus {
    fn health(&self) -> &crate::health::HealthState {
        &self.health
    }

    fn nats_state(&self) -> async_nats::connection::State {
        self.client.connection_state()
    }
}

fn time_days_ago(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::days(days)
}

/// Whether JetStream refused a stream for its replica count: a single
/// server (replicas above one need a cluster), or a cluster with fewer
/// servers up than copies wanted.
fn refuses_replicas(error: &async_nats::jetstream::context::CreateStreamError) -> bool {
    is_code(error, ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED)
        || is_code(error, ErrorCode::INSUFFICIENT_RESOURCES)
}

fn is_code(error: &async_nats::jetstream::context::CreateStreamError, code: ErrorCode) -> bool {
    matches!(
        error.kind(),
        async_nats::jetstream::context::CreateStreamErrorKind::JetStream(ref e)
            if e.error_code() == code
    )
}

/// The stream as the pipeline wants it, with `replicas` copies.
fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        description: Some("PostgreSQL backup pipeline: triggers and stage events".into()),
        subjects: vec!["backup.>".into(), "dump.>".into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        // Events are small; a year of history feeds status, digests and the
        // dead man's switch.
        max_age: Duration::from_secs(400 * 24 * 3600),
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// How a service consumes its subject.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable consumer name, one per service.
    pub durable: &'static str,
    pub filter_subject: &'static str,
    /// Without an ack or a progress ack for this long, JetStream redelivers.
    pub ack_wait: Duration,
    /// Deliveries before the message is given up (the last attempt reports
    /// `will_retry: false`).
    pub max_deliver: i64,
    /// Messages in flight at once for this consumer, across every
    /// instance of the service; also how many one instance's worker holds
    /// at most ([`run_worker`]). Services set it from their concurrency
    /// setting (`SHIP_CONCURRENCY`, `VERIFY_CONCURRENCY`); 1 elsewhere.
    pub max_ack_pending: i64,
    /// Stage reported when a message on this subject is malformed.
    pub stage: Stage,
}

impl ConsumerSpec {
    pub const fn new(durable: &'static str, filter_subject: &'static str, stage: Stage) -> Self {
        Self {
            durable,
            filter_subject,
            ack_wait: Duration::from_secs(60),
            max_deliver: 12,
            max_ack_pending: 1,
            stage,
        }
    }
}

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (succeeded, or failed for good and reported): ack.
    Ack,
    /// Try again later: nak with this delay.
    Retry(Duration),
    /// Never deliver again (already reported): terminate.
    Drop,
}

/// Facts about the delivery being handled.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub stream_sequence: u64,
    /// 1 on the first delivery.
    pub attempt: u32,
    pub max_deliver: i64,
    /// When JetStream stored the message.
    pub published: DateTime<Utc>,
}

impl Delivery {
    /// Whether JetStream will deliver this message again after a nak.
    pub fn can_retry(&self) -> bool {
        i64::from(self.attempt) < self.max_deliver
    }
}

/// A service's message handler.
pub trait Handler: Send + Sync {
    /// The payload type of the consumed subject.
    type Message: Send;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Self::Message, events::DecodeError>;

    fn handle(
        &self,
        message: Self::Message,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Outcome> + Send;
}

/// Runs `handler` over the consumer's messages until shutdown, holding up
/// to `spec.max_ack_pending` of them at once, each in its own task with its
/// own progress acks. The loop fetches only while it has a free slot, so a
/// second instance of the service gets the messages this one cannot take.
/// On shutdown the loop stops fetching and every message in flight gets
/// `grace` to finish; then it is dropped (child processes are killed,
/// partial files removed by their guards) and released with a nak so
/// another instance picks it up at once.
pub async fn run_worker<H: Handler + 'static>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: std::sync::Arc<H>,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), BusError> {
    // Dropped when this function returns, which marks the consumer stopped.
    let health = bus.health().worker(spec.durable, spec.ack_wait);
    let consumer = loop {
        match bus.durable_consumer(spec).await {
            Ok(consumer) => break consumer,
            Err(error) if error.is_transient() => {
                health.setup_failed(&error.to_string());
                tracing::warn!(%error, "cannot set up the consumer yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            Err(error) => return Err(error),
        }
    };
    health.ready();
    let slots = usize::try_from(spec.max_ack_pending.max(1)).unwrap_or(1);
    tracing::info!(
        consumer = %spec.durable,
        subject = spec.filter_subject,
        concurrency = slots,
        "waiting for work"
    );
    let fetch_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let mut fetch_failures = 0u32;
    let mut tasks = tokio::task::JoinSet::new();
    'fetching: while !shutdown.is_cancelled() {
        // Full: wait for a message to be done with before asking for more.
        while tasks.len() >= slots {
            tokio::select! {
                _ = shutdown.cancelled() => break 'fetching,
                done = tasks.join_next() => log_task_end(done),
            }
        }
        let free = slots - tasks.len();
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => {
                fetch_failures = 0;
                batch
            }
            Err(error) => {
                health.poll_failed(&error.to_string());
                fetch_failures += 1;
                let delay = fetch_backoff.delay(fetch_failures);
                tracing::warn!(error = %crate::one_line(&error.to_string()), retry_in = ?delay, "fetch failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'fetching,
                // Reap finished messages while the fetch waits, so their
                // acks are logged promptly; the slots they free are used by
                // the next fetch.
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    log_task_end(Some(done));
                    continue;
                }
                next = batch.next() => next,
            };
            match next {
                None => {
                    health.polled();
                    break;
                }
                Some(Err(error)) => {
                    // The server ended the pull with an error status
                    // (consumer deleted, too many waiting pulls): not a
                    // completed fetch.
                    health.poll_failed(&error.to_string());
                    tracing::debug!(error = %crate::one_line(&error.to_string()), "fetch returned no message");
                    break;
                }
                Some(Ok(message)) => {
                    health.polled();
                    let Some(delivery) = delivery_of(spec, &message).await else {
                        continue;
                    };
                    let busy = health.busy(delivery.stream_sequence, &delivery.subject);
                    let (bus, spec, handler, shutdown) =
                        (bus.clone(), spec.clone(), handler.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        process(
                            &bus,
                            &spec,
                            handler.as_ref(),
                            &message,
                            delivery,
                            &shutdown,
                            grace,
                            &busy,
                        )
                        .await
                    });
                }
            }
        }
    }
    if !tasks.is_empty() {
        tracing::info!(
            in_flight = tasks.len(),
            grace = ?grace,
            "shutdown: giving the messages in flight time to finish"
        );
    }
    while let Some(done) = tasks.join_next().await {
        log_task_end(Some(done));
    }
    tracing::info!(consumer = %spec.durable, "stopped taking work");
    Ok(())
}

/// A message's task ends on its own; a panic in a handler is logged (the
/// message, never acked, is redelivered after `ack_wait`).
fn log_task_end(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(error)) = done {
        tracing::error!(%error, "a message's task failed; JetStream will redeliver the message");
    }
}

/// The delivery facts of `message`, or `None` (the message terminated)
/// when it carries no JetStream metadata.
async fn delivery_of(spec: &ConsumerSpec, message: &jetstream::Message) -> Option<Delivery> {
    match message.info() {
        Ok(info) => Some(Delivery {
            subject: message.subject.to_string(),
            stream_sequence: info.stream_sequence,
            attempt: u32::try_from(info.delivered).unwrap_or(u32::MAX),
            max_deliver: spec.max_deliver,
            published: DateTime::from_timestamp(info.published.unix_timestamp(), 0)
                .unwrap_or_else(Utc::now),
        }),
        Err(error) => {
            tracing::error!(%error, "message without JetStream metadata; terminating it");
            let _ = message.ack_with(AckKind::Term).await;
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn process<H: Handler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    message: &jetstream::Message,
    delivery: Delivery,
    shutdown: &CancellationToken,
    grace: Duration,
    busy: &crate::health::Busy,
) {
    // The consumer of every `dump.*` event (the notifier) publishes nothing
    // itself: its metrics describe the whole pipeline. First deliveries
    // only, so a redelivery does not count a failure twice.
    if spec.filter_subject == subject::ALL_DUMP_EVENTS && delivery.attempt == 1 {
        bus.health()
            .observe_event(&delivery.subject, &message.payload);
    }
    let decoded = match handler.decode(&message.subject, &message.payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            reject_poison(bus, spec, message, &delivery, &error).await;
            return;
        }
    };

    // The handler runs while this task keeps the message alive with
    // progress acks; on shutdown it gets `grace` to finish before being
    // dropped.
    let work = handler.handle(decoded, &delivery, shutdown);
    tokio::pin!(work);
    let mut heartbeat = tokio::time::interval(spec.ack_wait / 4);
    heartbeat.tick().await;
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            _ = heartbeat.tick() => {
                match message.ack_with(AckKind::Progress).await {
                    Ok(()) => busy.progressed(),
                    Err(error) => tracing::warn!(%error, seq = delivery.stream_sequence, "progress ack failed"),
                }
            }
            _ = shutdown.cancelled(), if deadline.is_none() => {
                tracing::info!(grace = ?grace, seq = delivery.stream_sequence, "shutdown: giving the unit in flight time to finish");
                deadline = Some(Box::pin(tokio::time::sleep(grace)));
            }
            _ = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => {
                break None;
            }
        }
    };
    let (kind, what) = match outcome {
        Some(Outcome::Ack) => (AckKind::Ack, "acked"),
        Some(Outcome::Retry(delay)) => (AckKind::Nak(Some(delay)), "released for a retry"),
        Some(Outcome::Drop) => (AckKind::Term, "terminated"),
        None => {
            tracing::warn!(
                seq = delivery.stream_sequence,
                "unit in flight abandoned at shutdown; it will be redelivered"
            );
            (AckKind::Nak(None), "released at shutdown")
        }
    };
    if let Err(error) = message.double_ack_with(kind).await {
        tracing::warn!(%error, seq = delivery.stream_sequence, "could not confirm the ack; the message may be redelivered");
    } else {
        tracing::debug!(seq = delivery.stream_sequence, "message {what}");
    }
}

/// A payload that cannot be decoded will never decode: terminate it so it
/// is not redelivered, and report it.
async fn reject_poison(
    bus: &Bus,
    spec: &ConsumerSpec,
    message: &jetstream::Message,
    delivery: &Delivery,
    error: &events::DecodeError,
) {
    let (database, backup_id) = events::salvage_ids(&message.payload);
    let backup_id = backup_id.unwrap_or_else(|| {
        // Wildcards (the notifier reads `dump.>`) are not id characters.
        BackupId::try_from(format!(
            "rejected-{}-{}",
            spec.filter_subject.replace(['>', '*'], "all"),
            delivery.stream_sequence
        ))
        .expect("subjects and numbers are valid id characters")
    });
    let database = database
        .unwrap_or_else(|| DatabaseName::try_from("unknown".to_owned()).expect("valid name"));
    let failure = DumpFailed::new(
        EventHeader::now(backup_id, database),
        Origin::default(),
        spec.stage,
        format!(
            "rejected {} message (stream sequence {}): {error}",
            delivery.subject, delivery.stream_sequence
        ),
    )
    .with_attempt(delivery.attempt, false);
    bus.publish_failure(&failure).await;
    if let Err(error) = message.double_ack_with(AckKind::Term).await {
        tracing::warn!(%error, "could not terminate the rejected message");
    }
}

/// Decodes the event a stage consumes and checks the rules across its
/// fields that the stage acts on (an artifact of another database is
/// refused): a refused payload is a poison message, reported as
/// `dump.failed` by the worker.
pub fn decode_event<E: Event>(payload: &[u8]) -> Result<E, events::DecodeError> {
    let event = E::decode(payload)?;
    event.check()?;
    Ok(event)
}
