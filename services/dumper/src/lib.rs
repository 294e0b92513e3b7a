//! The dumper: turns `backup.trigger` messages (from operators, `backupctl`
//! and its own schedule) into compressed, optionally encrypted, checksummed
//! artifacts in the spool, each with a manifest holding the row count of
//! every table taken in the same snapshot as the dump, and announces them
//! with `dump.created`.
//!
//! Concurrency: one trigger is handled at a time (the consumer's
//! `max_ack_pending` stays 1, whatever the other services do), so a
//! database is never dumped twice at once and a trigger that arrives during
//! a dump waits for it. Inside a trigger, the
//! databases (and the globals and media artifacts) are dumped concurrently,
//! at most `max_parallel` at once. A trigger that nobody waits on (no
//! `request_id`) is coalesced away when a dump of the same database with the
//! same tag started after it was published: several triggers queued during
//! one dump make one more dump, not several.
//!
//! A scheduled trigger (reason `schedule`, from the built-in timer) that was
//! published while a job it covers was being dumped does not dump that job
//! again: the skip is announced as `dump.skipped` (see [`running`]). Manual
//! triggers keep the coalescing above.
//!
//! Hangs: every dump runs under `--lock-wait-timeout`, a stall watchdog and
//! a deadline ([`Settings::lock_wait_timeout`], [`Settings::limits`]); an
//! aborted dump is a `dump.failed` with `aborted` set and follows the same
//! retry rules. While a dump runs, the worker loop keeps the trigger from
//! being redelivered with progress acks.
//!
//! Retries: a trigger is acked once every job it covers was dumped or
//! failed for good. A job that fails for a reason that may pass (the server
//! is unreachable) makes the whole trigger be redelivered with backoff;
//! jobs already dumped for that trigger are found in the spool by their
//! backup id and announced again instead of dumped twice.
//!
//! Several PostgreSQL servers: one dumper runs per server, each with its
//! own `DUMPER_NAME` and so its own durable consumer on `backup.trigger`.
//! Every dumper sees every trigger: a trigger for every database makes
//! each dump its own; a trigger for a database another live dumper serves
//! is acked and ignored; one for a database no dumper serves is rejected
//! with `dump.failed` (stage `trigger`), every dumper publishing it under
//! the same message id so JetStream stores it once. Who serves what is
//! read from the dumpers' registry ([`registry`]).
//!
//! Start-up: `.partial` files left by a dumper killed mid-write are removed,
//! and so are artifacts with a final name but no manifest, left by a dumper
//! killed between the rename and the manifest write (older than
//! [`UNANNOUNCED_ARTIFACT_AGE`]). Those were never announced; the trigger,
//! never acked, is redelivered and dumps them again.

pub mod compress;
pub mod database;
pub mod dump;
pub mod error;
pub mod globals;
pub mod job;
pub mod media;
pub use backup_core::pg_dump;
pub mod preflight;
mod producer;
pub mod registry;
pub mod running;
pub mod schedule;
pub mod settings;
mod spool;
pub mod writing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::bus::{self, Bus, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::events::{
    self, AbortedStep, DumpFailed, DumpStarted, EventHeader, TriggerRequest, subject,
};
use backup_core::names::{BackupId, DatabaseName, Tag};
use backup_core::retry::Backoff;
use backup_core::{Stage, files};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use compress::Codec;
pub use dump::DumpOutcome;
pub use error::DumpError;
pub use job::Job;
pub use running::Activity;
pub use schedule::{Clock, ManualClock, Schedule, SystemClock};
pub use settings::{Args, LockWait, Settings, SettingsError, parse_lock_wait};

/// The dumper's durable consumer, under the default `DUMPER_NAME`.
pub const CONSUMER: ConsumerSpec = ConsumerSpec::new(
    settings::DEFAULT_DUMPER_NAME,
    subject::TRIGGER,
    Stage::Trigger,
);

/// The durable consumer of the dumper named `name` (`DUMPER_NAME`).
pub fn consumer(name: &str) -> ConsumerSpec {
    if name == CONSUMER.durable {
        return CONSUMER;
    }
    // Named once per process, for as long as it runs.
    let durable: &'static str = Box::leak(name.to_owned().into_boxed_str());
    ConsumerSpec::new(durable, subject::TRIGGER, Stage::Trigger)
}

/// Smallest artifact believed by default: a gzip of an empty pg_dump is bigger.
pub const DEFAULT_MIN_ARTIFACT_BYTES: u64 = 64;

/// How long pg_dump waits for a table lock by default.
pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A dump's last-resort deadline by default.
pub const DEFAULT_DUMP_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// pg_dump writes nothing while it waits for its table locks, and starts
/// waiting a little after the watchdog starts watching: a stall interval no
/// longer than the lock wait would report a stall where pg_dump is about to
/// name the locked table. The dump step's stall interval is at least the
/// lock wait plus this.
pub const LOCK_WAIT_MARGIN: Duration = Duration::from_secs(60);

/// An artifact without a manifest is swept at start-up once it is this old
/// (see [`files::remove_unannounced_artifacts`]): a younger one may belong to
/// another dumper sharing the spool, still re-hashing it before writing the
/// manifest.
pub const UNANNOUNCED_ARTIFACT_AGE: Duration = Duration::from_secs(30 * 60);

/// Runs the dumper until `shutdown` fires, on the wall clock.
pub async fn run(
    bus: Bus,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    run_with_clock(bus, settings, Arc::new(SystemClock), shutdown).await
}

/// [`run`] with the scheduler on `clock`, so tests can move time.
pub async fn run_with_clock(
    bus: Bus,
    settings: Settings,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    backup_core::preflight::spawn_checks(
        bus.health(),
        &settings,
        preflight::preflight_checks,
        &shutdown,
    );
    // An unusable spool is reported by the start-up checks (unhealthy, and
    // retried); each dump then fails on it by its own rules, no crash loop.
    if let Err(error) = files::ensure_private_dir(&settings.spool_dir) {
        tracing::error!(spool = %settings.spool_dir.display(), %error, "cannot use the spool");
    }
    match files::remove_stale_partials(&settings.spool_dir) {
        Ok(removed) => {
            for path in removed {
                tracing::warn!(path = %path.display(), "removed a partial dump left by an interrupted run");
            }
        }
        Err(error) => tracing::warn!(%error, "could not sweep the spool for partial files"),
    }
    match files::remove_unannounced_artifacts(&settings.spool_dir, UNANNOUNCED_ARTIFACT_AGE) {
        Ok(removed) => {
            for path in removed {
                tracing::warn!(
                    path = %path.display(),
                    "removed an artifact that was never announced (a dumper stopped before \
                     writing its manifest); the redelivered trigger dumps it again"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "could not sweep the spool for unannounced artifacts")
        }
    }
    bus.ensure_stream().await?;
    // Advertised before the consumer exists, so that a trigger for these
    // databases is not rejected by another dumper in the meantime.
    let registry = registry::Registry::open(&bus, &settings.name).await;
    registry.advertise(&settings.databases).await;
    let refresher = registry.spawn_refresh(settings.databases.clone(), shutdown.clone());
    let activity = Activity::new();
    let scheduler = settings.schedule.clone().map(|schedule| {
        let bus = bus.clone();
        let activity = activity.clone();
        let spool = settings.spool_dir.clone();
        let databases = settings.databases.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            schedule::catch_up(
                &bus,
                &schedule,
                clock.as_ref(),
                &spool,
                &databases,
                &shutdown,
            )
            .await;
            schedule::run_scheduler_with(bus, schedule, clock, activity, shutdown).await;
        })
    });
    let grace = settings.grace;
    let spec = consumer(&settings.name);
    tracing::info!(dumper = %settings.name, databases = ?settings.databases.iter().map(DatabaseName::as_str).collect::<Vec<_>>(), "serving");
    let handler = Arc::new(TriggerHandler {
        bus: bus.clone(),
        settings,
        last_success: Mutex::new(HashMap::new()),
        activity,
        registry,
    });
    let result = bus::run_worker(&bus, &spec, handler, shutdown.clone(), grace).await;
    if let Some(scheduler) = scheduler {
        shutdown.cancel();
        let _ = scheduler.await;
    }
    if let Some(refresher) = refresher {
        shutdown.cancel();
        let _ = refresher.await;
    }
    result
}

#[derive(Debug)]
struct TriggerHandler {
    bus: Bus,
    settings: Settings,
    /// The last successful dump of each job.
    last_success: Mutex<HashMap<DatabaseName, LastSuccess>>,
    /// The dumps running now and lately, shared with the scheduler.
    activity: Activity,
    /// Which other dumper serves a database this one does not.
    registry: registry::Registry,
}

#[derive(Debug)]
struct LastSuccess {
    started: DateTime<Utc>,
    tag: Option<Tag>,
}

const RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));

/// How one job of a trigger ended.
enum JobEnd {
    Done,
    RetryLater,
    Interrupted,
}

impl TriggerHandler {
    async fn reject(
        &self,
        request: &TriggerRequest,
        delivery: &Delivery,
        database: &DatabaseName,
        error: String,
    ) {
        let failure = DumpFailed::new(
            EventHeader::now(
                BackupId::for_trigger(database, delivery.published, delivery.stream_sequence),
                database.clone(),
            ),
            request.origin.clone(),
            Stage::Trigger,
            error,
        )
        .with_attempt(delivery.attempt, false);
        self.bus.publish_failure(&failure).await;
    }

    /// Whether a dump that started after this trigger was published already
    /// did what it asks.
    fn coalesced(
        &self,
        request: &TriggerRequest,
        delivery: &Delivery,
        name: &DatabaseName,
    ) -> bool {
        if request.origin.request_id.is_some() {
            // Someone waits for the events of this very trigger.
            return false;
        }
        // `published` is truncated to the second.
        let published = delivery.published + chrono::Duration::seconds(1);
        let last = self.last_success.lock().expect("lock");
        last.get(name)
            .is_some_and(|last| last.started >= published && last.tag == request.origin.tag)
    }

    /// Drops the jobs of a scheduled trigger that were being dumped when it
    /// was published, announcing each skip (once: the scheduler may have
    /// done it already).
    async fn skip_running(
        &self,
        jobs: Vec<Job>,
        request: &TriggerRequest,
        delivery: &Delivery,
    ) -> Vec<Job> {
        let mut kept = Vec::with_capacity(jobs.len());
        for job in jobs {
            let name = job.name();
            let own = BackupId::for_trigger(&name, delivery.published, delivery.stream_sequence);
            match self.activity.running_at(&name, delivery.published, &own) {
                Some(run) => {
                    self.activity
                        .announce_skip(
                            &self.bus,
                            delivery.stream_sequence,
                            &name,
                            &run,
                            &request.origin,
                        )
                        .await;
                    tracing::info!(database = %name, running_backup_id = %run.backup_id, seq = delivery.stream_sequence, "scheduled trigger skipped: it came while this database was being dumped");
                }
                None => kept.push(job),
            }
        }
        kept
    }

    async fn run_job(
        &self,
        job: Job,
        request: &TriggerRequest,
        delivery: &Delivery,
        batch: &[DatabaseName],
        shutdown: &CancellationToken,
    ) -> JobEnd {
        if shutdown.is_cancelled() {
            return JobEnd::Interrupted;
        }
        let name = job.name();
        let backup_id = BackupId::for_trigger(&name, delivery.published, delivery.stream_sequence);
        let started = DumpStarted {
            header: EventHeader::now(backup_id.clone(), name.clone()),
            origin: request.origin.clone(),
            batch: batch.to_vec(),
        };
        if let Err(error) = self.bus.publish(&started).await {
            tracing::warn!(%error, "could not announce the dump; will retry the trigger");
            return JobEnd::RetryLater;
        }
        let started_at = Utc::now();
        let _running = self.activity.start(&name, &backup_id);
        let limits = self.settings.limits_for(&job);
        match dump::dump_and_announce(&self.settings, &self.bus, &job, &started).await {
            Ok(DumpOutcome::Created(_)) => {
                self.last_success.lock().expect("lock").insert(
                    name,
                    LastSuccess {
                        started: started_at,
                        tag: request.origin.tag.clone(),
                    },
                );
                JobEnd::Done
            }
            Ok(DumpOutcome::PublishFailed(error)) => {
                tracing::warn!(%error, "dump is in the spool but dump.created could not be published; retrying");
                JobEnd::RetryLater
            }
            Err(error) => {
                let will_retry = error.is_transient() && delivery.can_retry();
                let failed = DumpFailed::following(&started, Stage::Dump, error.to_string())
                    .with_attempt(delivery.attempt, will_retry)
                    .with_aborted(error.aborted().map(|a| AbortedStep::new(a, &limits)));
                self.bus.publish_failure(&failed).await;
                if will_retry {
                    JobEnd::RetryLater
                } else {
                    JobEnd::Done
                }
            }
        }
    }
}

impl Handler for TriggerHandler {
    type Message = TriggerRequest;

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<TriggerRequest, events::DecodeError> {
        TriggerRequest::decode(payload)
    }

    async fn handle(
        &self,
        request: TriggerRequest,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let settings = &self.settings;
        let everything = request.database.is_none();
        let databases = match &request.database {
            None => settings.databases.clone(),
            Some(database) if settings.databases.contains(database) => vec![database.clone()],
            Some(database) => {
                match self.registry.served(database).await {
                    Ok(registry::Served::By(dumper)) if dumper != settings.name => {
                        tracing::debug!(%database, %dumper, seq = delivery.stream_sequence, "trigger for a database another dumper serves; ignored");
                        return Outcome::Ack;
                    }
                    Ok(registry::Served::By(_)) => {
                        // Instances sharing a name share a consumer: the
                        // one serving it must get the message.
                        tracing::warn!(%database, dumper = %settings.name, "another instance of this dumper serves this database: every instance of one DUMPER_NAME needs the same BACKUP_DATABASES; releasing the trigger to it");
                        if delivery.can_retry() {
                            return Outcome::Retry(RETRY.delay(delivery.attempt));
                        }
                    }
                    Err(error) if delivery.can_retry() => {
                        tracing::warn!(%database, %error, "cannot tell whether another dumper serves this database; retrying");
                        return Outcome::Retry(RETRY.delay(delivery.attempt));
                    }
                    Ok(registry::Served::Nowhere) | Err(_) => {}
                }
                // Every dumper that finds no other serving it publishes this
                // failure under the same message id (the trigger's backup
                // id, stage and attempt): JetStream stores it once.
                let configured = settings
                    .databases
                    .iter()
                    .map(DatabaseName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                self.reject(
                    &request,
                    delivery,
                    database,
                    format!(
                        "database {database} is not configured for backup (BACKUP_DATABASES: {configured})"
                    ),
                )
                .await;
                return Outcome::Ack;
            }
        };
        let mut jobs: Vec<Job> = databases.into_iter().map(Job::Database).collect();
        if everything && settings.globals {
            jobs.push(Job::Globals);
        }
        if everything && !settings.files_dirs.is_empty() {
            jobs.push(Job::Media);
        }
        let (coalesced, jobs): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .partition(|job| self.coalesced(&request, delivery, &job.name()));
        for job in &coalesced {
            tracing::info!(database = %job.name(), seq = delivery.stream_sequence, "trigger coalesced: a dump started after it was published");
        }
        let jobs = if is_scheduled(&request) {
            self.skip_running(jobs, &request, delivery).await
        } else {
            jobs
        };
        if jobs.is_empty() {
            return Outcome::Ack;
        }
        let batch: Vec<DatabaseName> = jobs.iter().map(Job::name).collect();
        tracing::info!(
            jobs = ?batch.iter().map(DatabaseName::as_str).collect::<Vec<_>>(),
            reason = request.origin.reason.as_deref().unwrap_or(""),
            "trigger accepted"
        );
        let ends: Vec<JobEnd> = futures::stream::iter(jobs)
            .map(|job| self.run_job(job, &request, delivery, &batch, shutdown))
            .buffer_unordered(settings.max_parallel.max(1))
            .collect()
            .await;
        if ends.iter().any(|end| matches!(end, JobEnd::Interrupted)) {
            Outcome::Retry(Duration::ZERO)
        } else if ends.iter().any(|end| matches!(end, JobEnd::RetryLater)) {
            Outcome::Retry(RETRY.delay(delivery.attempt))
        } else {
            Outcome::Ack
        }
    }
}

/// The `reason` the scheduler puts on the triggers it publishes.
pub const SCHEDULE_REASON: &str = "schedule";

/// A trigger of the built-in schedule (catch-up included), as opposed to
/// one somebody asked for.
fn is_scheduled(request: &TriggerRequest) -> bool {
    request.origin.request_id.is_none() && request.origin.reason.as_deref() == Some(SCHEDULE_REASON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dumper_name_has_its_own_consumer_on_the_trigger_subject() {
        assert_eq!(consumer("dumper").durable, "dumper");
        let other = consumer("pg-east");
        assert_eq!(other.durable, "pg-east");
        assert_eq!(other.filter_subject, subject::TRIGGER);
        // One trigger at a time, whatever the other services do.
        assert_eq!(other.max_ack_pending, 1);
    }
}
