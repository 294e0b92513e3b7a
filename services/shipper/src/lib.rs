//! The shipper: copies each artifact announced by `dump.created` from the
//! spool to every configured destination (the SFTP server of the
//! interface, optionally a second SFTP server, a local or mounted
//! directory and an S3-compatible bucket; see [`destination`]) and emits
//! `dump.shipped` once all of them have it.
//!
//! # Retries
//!
//! Retries happen inside one JetStream delivery: the handler loops with
//! exponential backoff and jitter while the worker keeps the message with
//! progress acks. A restart loses nothing: the message is not acked until
//! the artifact is shipped or given up, so JetStream delivers it again, and
//! the retry horizon is counted from when `dump.created` was stored, so a
//! restart does not extend it. This was preferred over naks with a JetStream
//! backoff because the shipper must decide *when* to tell the operator (once,
//! after a grace), which needs state across attempts that a nak would lose;
//! the messages in flight (`SHIP_CONCURRENCY`, the consumer's
//! `max_ack_pending`) would wait behind the same dead server either way.
//!
//! Overlap: on `dump.writing`, a second consumer starts the upload to SFTP
//! servers while the dumper is still writing the artifact ([`follow`]);
//! the upload `dump.created` starts then resumes from what it sent.
//!
//! Concurrency: up to `SHIP_CONCURRENCY` artifacts (default 1) are shipped
//! at once, each in its own task of the worker ([`bus::run_worker`]) with
//! its own progress acks, watchdog and shutdown grace. Artifacts have
//! distinct names and each upload its own `.partial`, so two uploads never
//! touch the same remote file.
//!
//! Per artifact, the operator hears:
//! - nothing if a transient failure (refused, reset, timeout) heals within
//!   `alert_after` (at most 60 s);
//! - one `dump.failed` (`will_retry: true`) per failing destination once the
//!   grace is over; retries continue quietly;
//! - `dump.shipped` when every destination has it (the notifier's recovery
//!   message), or one `dump.failed` (`will_retry: false`) per failing
//!   destination when the retry horizon (default 6 h) has passed;
//! - at once, `dump.failed` (`will_retry: false`) for permanent failures:
//!   host key, authentication, permission denied, no space, a spool copy
//!   that does not match its event, or a different file under the final
//!   name. The message is then acked: retrying cannot help.
//!
//! Each delivery runs under a stall watchdog and a deadline
//! ([`Settings::limits`], see [`destination`]). An aborted delivery is a
//! transient failure like a dropped connection: it follows the rules above,
//! its `dump.failed` carries `aborted` (step `upload`, why, after how many
//! bytes, the limits), and `dump.shipped` carries the limits the uploads ran
//! under. The retry loop itself never blocks the worker's progress acks: it
//! only awaits I/O and timers.
//!
//! Failure events carry a `destination` field (its description) besides the
//! usual ones, and their `Nats-Msg-Id` is fixed per artifact, destination and
//! kind, so a restart within JetStream's duplicate window does not repeat
//! an alert. A redelivered `dump.created` whose artifact is already
//! everywhere uploads nothing and publishes `dump.shipped` again under the
//! same `Nats-Msg-Id`.

pub mod destination;
pub mod follow;
pub mod growing;
pub mod preflight;
pub mod resume;
pub mod settings;
pub mod throttle;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use backup_core::Stage;
use backup_core::bus::{self, Bus, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::events::{
    self, AbortedStep, DumpCreated, DumpFailed, DumpShipped, FailureDedup, subject,
};
use backup_core::manifest::Manifest;
use backup_core::retry::Backoff;
use tokio_util::sync::CancellationToken;

pub use destination::{Delivered, Destination, LocalArtifact, ShipError};
pub use settings::{Args, Settings, SettingsError};
pub use throttle::Rate;

/// The shipper's durable consumer. Each delivery retries for the whole
/// horizon, so redeliveries only follow restarts; the higher limit keeps a
/// few restarts from exhausting them.
pub const CONSUMER: ConsumerSpec = ConsumerSpec {
    max_deliver: 100,
    ..ConsumerSpec::new("shipper", subject::CREATED, Stage::Ship)
};

/// [`CONSUMER`] holding `concurrency` messages at once.
pub fn consumer(concurrency: usize) -> ConsumerSpec {
    ConsumerSpec {
        max_ack_pending: i64::try_from(concurrency.max(1)).unwrap_or(1),
        ..CONSUMER
    }
}

/// Longest allowed silence before the operator hears of a failure.
pub const MAX_ALERT_AFTER: Duration = Duration::from_secs(60);

/// Default deadline of one delivery (`SHIP_DEADLINE`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);

pub async fn run(
    bus: Bus,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    assert!(
        !settings.destinations.is_empty(),
        "the shipper needs at least one destination"
    );
    backup_core::preflight::spawn_checks(
        bus.health(),
        &settings,
        preflight::preflight_checks,
        &shutdown,
    );
    bus.ensure_stream().await?;
    let grace = settings.shutdown_grace;
    let spec = consumer(settings.concurrency);
    let follows = settings.follow_dumps.then(|| {
        let spec = follow::consumer(settings.concurrency);
        let handler = std::sync::Arc::new(follow::FollowHandler {
            settings: settings.clone(),
        });
        (spec, handler)
    });
    let handler = std::sync::Arc::new(ShipHandler {
        bus: bus.clone(),
        settings,
    });
    let ship = bus::run_worker(&bus, &spec, handler, shutdown.clone(), grace);
    match follows {
        Some((follow_spec, follow_handler)) => {
            let follow = bus::run_worker(&bus, &follow_spec, follow_handler, shutdown, grace);
            tokio::try_join!(ship, follow).map(|_| ())
        }
        None => ship.await,
    }
}

#[derive(Debug)]
struct ShipHandler {
    bus: Bus,
    settings: Settings,
}

impl Handler for ShipHandler {
    type Message = DumpCreated;

    fn decode(&self, _subject: &str, payload: &[u8]) -> Result<DumpCreated, events::DecodeError> {
        bus::decode_event(payload)
    }

    async fn handle(
        &self,
        created: DumpCreated,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Outcome {
        // Counted from here: what shipping took once the dump was complete,
        // the end of an upload that followed the dump included.
        let started = Instant::now();
        follow::wait_for_follow(&created.header.database, &created.artifact.artifact).await;
        let artifact = match check_spool(&self.settings, &created).await {
            Ok(artifact) => artifact,
            Err(error) => {
                self.report(
                    &created,
                    None,
                    &backup_core::error_chain(&error),
                    1,
                    false,
                    None,
                )
                .await;
                return Outcome::Ack;
            }
        };
        let settings = &self.settings;
        let give_up_at = delivery.published
            + chrono::Duration::from_std(settings.retry_horizon).unwrap_or(chrono::Duration::MAX);
        let backoff = Backoff::new(
            Duration::from_secs(2).min(settings.retry_max_delay),
            settings.retry_max_delay,
        );
        let mut pending: Vec<&Destination> = settings.destinations.iter().collect();
        let mut alerted: HashSet<&str> = HashSet::new();
        let mut round = 0u32;
        loop {
            round += 1;
            let mut failures: Vec<(&Destination, ShipError)> = Vec::new();
            for destination in pending.drain(..) {
                let attempt_started = Instant::now();
                match destination
                    .deliver(&artifact, settings.bandwidth_limit, settings.limits)
                    .await
                {
                    Ok(how) => tracing::info!(
                        artifact = %artifact.name,
                        destination = %destination.describe(),
                        ?how,
                        elapsed_ms = attempt_started.elapsed().as_millis(),
                        "delivered"
                    ),
                    Err(error) => {
                        tracing::warn!(
                            artifact = %artifact.name,
                            destination = %destination.describe(),
                            transient = error.is_transient(),
                            error = %backup_core::error_chain(&error),
                            round,
                            "delivery failed"
                        );
                        failures.push((destination, error));
                    }
                }
            }
            if failures.is_empty() {
                return self.shipped(&created, started).await;
            }
            pending = failures.iter().map(|(d, _)| *d).collect();

            let permanent = failures.iter().any(|(_, e)| !e.is_transient());
            let expired = chrono::Utc::now() >= give_up_at;
            if permanent || expired {
                for (destination, error) in &failures {
                    let mut cause = backup_core::error_chain(error);
                    if error.is_transient() {
                        cause = if expired {
                            format!(
                                "{cause}; gave up after retrying for {}",
                                humantime::format_duration(settings.retry_horizon)
                            )
                        } else {
                            format!(
                                "{cause}; not retried because another destination failed for good"
                            )
                        };
                    }
                    self.report(
                        &created,
                        Some(destination),
                        &cause,
                        round,
                        false,
                        aborted_step(error),
                    )
                    .await;
                }
                return Outcome::Ack;
            }

            // The grace runs from the first attempt, so a slow failure
            // (a connect timeout) does not postpone the alert further.
            if started.elapsed() >= settings.alert_after {
                for (destination, error) in &failures {
                    if alerted.insert(destination.label()) {
                        let cause = backup_core::error_chain(error);
                        self.report(
                            &created,
                            Some(destination),
                            &cause,
                            round,
                            true,
                            aborted_step(error),
                        )
                        .await;
                    }
                }
            }

            let mut delay = backoff.delay(round);
            if failures.iter().any(|(d, _)| !alerted.contains(d.label())) {
                // Try once more right when the grace ends, so the alert
                // (if still needed) is not late by a whole backoff.
                delay = delay.min(settings.alert_after.saturating_sub(started.elapsed()));
            }
            let to_horizon = (give_up_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            delay = delay.min(to_horizon).max(Duration::from_millis(200));
            tracing::info!(retry_in = ?delay, round, "will retry");
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Retry(Duration::from_secs(1)),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl ShipHandler {
    async fn shipped(&self, created: &DumpCreated, started: Instant) -> Outcome {
        let destinations: Vec<String> = self
            .settings
            .destinations
            .iter()
            .map(Destination::describe)
            .collect();
        let shipped = DumpShipped {
            header: created.header.next(),
            origin: created.origin.clone(),
            artifact: created.artifact.clone(),
            destination: destinations[0].clone(),
            destinations,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            limits: Some(self.settings.limits.for_event()),
        };
        // A redelivered dump.created is answered again under the same
        // message id: JetStream keeps a single dump.shipped.
        match self.bus.publish(&shipped).await {
            Ok(_) => {
                tracing::info!(artifact = %created.artifact.artifact, duration_ms = shipped.duration_ms, "shipped");
                Outcome::Ack
            }
            Err(error) => {
                // Everything is delivered; the redelivery will find it so
                // and only publish.
                tracing::warn!(%error, "shipped, but dump.shipped could not be published; retrying");
                Outcome::Retry(Duration::from_secs(5))
            }
        }
    }

    async fn report(
        &self,
        created: &DumpCreated,
        destination: Option<&Destination>,
        cause: &str,
        attempt: u32,
        will_retry: bool,
        aborted: Option<AbortedStep>,
    ) {
        let described = destination.map(Destination::describe);
        let error = match &described {
            // An abort's message already reads "upload to <destination> ...".
            Some(where_to) if aborted.is_none() => {
                backup_core::one_line(&format!("{where_to}: {cause}"))
            }
            _ => backup_core::one_line(cause),
        };
        // One alert per destination (or the spool) and kind, however many
        // rounds and deliveries it takes.
        let place = destination.map_or("spool", Destination::label);
        let failed = DumpFailed::following(created, Stage::Ship, error)
            .with_attempt(attempt, will_retry)
            .with_aborted(aborted)
            .with_destination(described)
            .with_dedup(FailureDedup::PerPlace(place.to_owned()));
        self.bus.publish_failure(&failed).await;
    }
}

/// What the watchdog stopped, for `dump.failed`.
fn aborted_step(error: &ShipError) -> Option<AbortedStep> {
    match error {
        ShipError::Aborted {
            aborted, limits, ..
        } => Some(AbortedStep::new(aborted, limits)),
        _ => None,
    }
}

/// Reads the spool copy and checks it against the event and its manifest:
/// shipping a file that is not what the dumper announced would turn a
/// local problem into a bad offsite backup.
async fn check_spool(
    settings: &Settings,
    created: &DumpCreated,
) -> Result<LocalArtifact, ShipError> {
    let name = &created.artifact.artifact;
    let database = &created.header.database;
    // Paths come from validated names only: an event cannot point outside
    // the spool.
    let local_dir = settings.spool_dir.join(database.as_str());
    let path = local_dir.join(name.as_str());
    let manifest_path = local_dir.join(name.manifest_name());
    let size = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta.len(),
        Err(_) => return Err(ShipError::MissingLocal(path)),
    };
    let manifest_bytes = tokio::fs::read(&manifest_path)
        .await
        .map_err(|_| ShipError::MissingLocal(manifest_path.clone()))?;
    let manifest = Manifest::decode(&manifest_bytes).map_err(|e| ShipError::LocalMismatch {
        artifact: name.to_string(),
        detail: format!("manifest unreadable: {e}"),
    })?;
    if size != created.artifact.size_bytes
        || manifest.sha256 != created.artifact.sha256
        || manifest.size_bytes != created.artifact.size_bytes
        || manifest.artifact != *name
    {
        return Err(ShipError::LocalMismatch {
            artifact: name.to_string(),
            detail: format!(
                "spool has {size} bytes, manifest says {} bytes sha256 {}, event says {} bytes sha256 {}",
                manifest.size_bytes,
                manifest.sha256,
                created.artifact.size_bytes,
                created.artifact.sha256
            ),
        });
    }
    Ok(LocalArtifact {
        name: name.clone(),
        database: database.clone(),
        path,
        size,
        sha256: created.artifact.sha256.clone(),
        manifest: manifest_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_holds_as_many_messages_as_the_setting() {
        assert_eq!(consumer(1).max_ack_pending, 1);
        assert_eq!(consumer(4).max_ack_pending, 4);
        assert_eq!(consumer(4).durable, CONSUMER.durable);
    }
}
