//! The dumper: turns `backup.trigger` messages (from operators, `backupctl`
//! and its own schedule) into compressed, optionally encrypted, checksummed
//! artifacts in the spool, each with a manifest holding the row count of
//! every table taken in the same snapshot as the dump, and announces them
//! with `dump.created`.
//!
//! Concurrency: one trigger is handled at a time (the consumer's
//! `max_ack_pending` is 1), so a database is never dumped twice at once and
//! a trigger that arrives during a dump waits for it. Inside a trigger, the
//! databases (and the globals and media artifacts) are dumped concurrently,
//! at most `max_parallel` at once. A trigger that nobody waits on (no
//! `request_id`) is coalesced away when a dump of the same database with the
//! same tag started after it was published: several triggers queued during
//! one dump make one more dump, not several.
//!
//! Retries: a trigger is acked once every job it covers was dumped or
//! failed for good. A job that fails for a reason that may pass (the server
//! is unreachable) makes the whole trigger be redelivered with backoff;
//! jobs already dumped for that trigger are found in the spool by their
//! backup id and announced again instead of dumped twice.

pub mod compress;
pub mod dump;
pub mod pg_dump;
pub mod schedule;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::bus::{self, Bus, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::events::{self, DumpFailed, DumpStarted, EventHeader, TriggerRequest, subject};
use backup_core::names::{BackupId, DatabaseName, DumpFormat, Tag};
use backup_core::pg::PgArgs;
use backup_core::retry::Backoff;
use backup_core::{Stage, files};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use compress::Codec;
pub use dump::{DumpError, DumpOutcome, Job};
pub use schedule::{Clock, ManualClock, Schedule, SystemClock};

/// The dumper's durable consumer.
pub const CONSUMER: ConsumerSpec = ConsumerSpec::new("dumper", subject::TRIGGER, Stage::Trigger);

/// Smallest artifact believed by default: a gzip of an empty pg_dump is bigger.
pub const DEFAULT_MIN_ARTIFACT_BYTES: u64 = 64;

/// Everything the dumper needs besides the bus.
#[derive(Debug, Clone)]
pub struct Settings {
    pub databases: Vec<DatabaseName>,
    pub spool_dir: PathBuf,
    pub pg: PgArgs,
    /// `Plain` or `Custom`.
    pub format: DumpFormat,
    pub codec: Codec,
    /// Directory holding a specific pg_dump; otherwise the best match among
    /// installed clients is chosen.
    pub pg_bin_dir: Option<PathBuf>,
    pub grace: Duration,
    /// Jobs of one trigger that run at once.
    pub max_parallel: usize,
    /// `None`: no built-in timer (triggers come from outside only).
    pub schedule: Option<Schedule>,
    /// Also dump the cluster globals on a trigger for every database.
    pub globals: bool,
    /// Directories archived as the media artifact on a trigger for every
    /// database; empty: none.
    pub files_dirs: Vec<PathBuf>,
    /// Artifacts smaller than this are refused as implausible.
    pub min_artifact_bytes: u64,
    /// Check free space in the spool before each database dump.
    pub space_check: bool,
}

impl Settings {
    /// Defaults for everything but the essentials: plain SQL, parallel gzip,
    /// no schedule, no globals, no media.
    pub fn new(databases: Vec<DatabaseName>, spool_dir: PathBuf, pg: PgArgs) -> Self {
        Self {
            databases,
            spool_dir,
            pg,
            format: DumpFormat::Plain,
            codec: Codec::new(backup_core::names::Compression::Gzip, None),
            pg_bin_dir: None,
            grace: Duration::from_secs(20),
            max_parallel: 2,
            schedule: None,
            globals: false,
            files_dirs: Vec::new(),
            min_artifact_bytes: DEFAULT_MIN_ARTIFACT_BYTES,
            space_check: true,
        }
    }
}

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
    files::ensure_private_dir(&settings.spool_dir).map_err(|e| {
        bus::BusError::Config(format!("spool {}: {e}", settings.spool_dir.display()))
    })?;
    match files::remove_stale_partials(&settings.spool_dir) {
        Ok(removed) => {
            for path in removed {
                tracing::warn!(path = %path.display(), "removed a partial dump left by an interrupted run");
            }
        }
        Err(error) => tracing::warn!(%error, "could not sweep the spool for partial files"),
    }
    bus.ensure_stream().await?;
    let scheduler = settings.schedule.clone().map(|schedule| {
        let bus = bus.clone();
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
            schedule::run_scheduler(bus, schedule, clock, shutdown).await;
        })
    });
    let grace = settings.grace;
    let handler = TriggerHandler {
        bus: bus.clone(),
        settings,
        last_success: Mutex::new(HashMap::new()),
    };
    let result = bus::run_worker(&bus, &CONSUMER, &handler, shutdown.clone(), grace).await;
    if let Some(scheduler) = scheduler {
        shutdown.cancel();
        let _ = scheduler.await;
    }
    result
}

#[derive(Debug)]
struct TriggerHandler {
    bus: Bus,
    settings: Settings,
    /// The last successful dump of each job.
    last_success: Mutex<HashMap<DatabaseName, LastSuccess>>,
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
        let failure = DumpFailed {
            header: EventHeader::now(
                BackupId::for_trigger(database, delivery.published, delivery.stream_sequence),
                database.clone(),
            ),
            origin: request.origin.clone(),
            stage: Stage::Trigger,
            error,
            artifact: None,
            attempt: delivery.attempt,
            will_retry: false,
            aborted: None,
        };
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
        if let Err(error) = self
            .bus
            .publish(subject::STARTED, &format!("{backup_id}:started"), &started)
            .await
        {
            tracing::warn!(%error, "could not announce the dump; will retry the trigger");
            return JobEnd::RetryLater;
        }
        let started_at = Utc::now();
        match dump::dump_and_announce(&self.settings, &self.bus, job, &backup_id, &request.origin)
            .await
        {
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
                self.bus
                    .publish_failure(&DumpFailed {
                        header: EventHeader::now(backup_id, name),
                        origin: request.origin.clone(),
                        stage: Stage::Dump,
                        error: error.to_string(),
                        artifact: None,
                        attempt: delivery.attempt,
                        will_retry,
                        aborted: None,
                    })
                    .await;
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
