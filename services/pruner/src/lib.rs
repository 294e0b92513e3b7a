//! The pruner: retention on every destination ([`destinations`], read
//! through `remote_store`) and in the local spool, run after each
//! `dump.verified` and on its own schedule ([`schedule`]).
//!
//! One run for one database, on each destination in turn: read that
//! destination's listing and compute its own plan (the `catalogue` crate:
//! what stays, by which rule, and what goes, and why), check the brake,
//! delete (artifact first, then its manifest and verification record),
//! remove orphaned sidecars and `.partial` uploads older than a day, and
//! emit one `dump.pruned` for the database and destination, with
//! `destination`, `kept`, `kept_reasons` and `deleted`. When every
//! destination was pruned, trim the spool ([`spool`]).
//!
//! Safety: each plan comes from its destination's listing alone; a name
//! the pipeline does not write is never touched; the newest verified
//! backup, `RETENTION_MIN_KEEP` verified backups, tagged backups and
//! backups the destination still locks (S3 Object Lock, kept "locked until"
//! their date) always stay; a run that would delete more than half of a
//! database's backups on a destination deletes nothing there and emits
//! `dump.failed` (stage `prune`) unless `RETENTION_FORCE` is set. With `RETENTION_DRY_RUN` nothing is deleted and `dump.pruned`
//! (with `dry_run: true`) lists what would go. Running again right after
//! changes nothing: the plan of a pruned directory deletes nothing.
//!
//! `backupctl prune` computes the same plan with the same catalogue and
//! retention settings, and deletes nothing.
//!
//! Retries: a destination that cannot be reached naks the `dump.verified`
//! with backoff (and reports `dump.failed` with `will_retry` and its
//! `destination`); the redelivery prunes every destination again, which
//! changes nothing where the first attempt succeeded. A scheduled run that
//! fails reports and waits for the next one. The brake is final for that
//! run: it is reported and acked, never retried.

#[cfg(test)]
mod fuzz_tests;
pub mod preflight;
pub mod schedule;
pub mod settings;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use backup_core::Stage;
use backup_core::bus::{self, Bus, BusError, ConsumerSpec, Delivery, Handler, Outcome};
use std::collections::BTreeMap;

use backup_core::events::{
    self, DumpFailed, DumpPruned, DumpVerified, Event, EventHeader, FailureDedup, Origin, subject,
};
use backup_core::names::{ArtifactName, BackupId, DatabaseName};
use backup_core::retry::Backoff;
use catalogue::{Brake, DatabasePlan};
use chrono::{DateTime, Utc};
use remote_store::{Store, StoreError, StoreTarget};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use schedule::Schedule;
pub use settings::{Args, RetentionArgs, Settings, SettingsError};

pub const CONSUMER: ConsumerSpec = ConsumerSpec::new("pruner", subject::VERIFIED, Stage::Prune);

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Brake(#[from] Brake),
}

impl PruneError {
    pub fn is_transient(&self) -> bool {
        match self {
            PruneError::Store(e) => e.is_transient(),
            PruneError::Brake(_) => false,
        }
    }
}

/// The destinations this pruner prunes, in order: the ones
/// `remote_store::targets` builds from the settings.
pub fn destinations(settings: &Settings) -> Vec<StoreTarget> {
    remote_store::targets(
        settings.sftp.clone(),
        settings.sftp2.clone(),
        settings.s3.clone(),
    )
}

/// Which destination a run was about, as events name it.
#[derive(Debug, Clone)]
pub struct Place {
    pub label: String,
    /// As `dump.shipped` describes destinations.
    pub destination: String,
    /// The first destination keeps the message ids of a single one.
    pub first: bool,
}

/// What one run on one destination did (or, in a dry run, would do).
#[derive(Debug, Clone)]
pub struct Report {
    pub place: Place,
    pub plan: DatabasePlan,
    pub dry_run: bool,
    /// Orphaned sidecars and abandoned uploads removed.
    pub cleaned: Vec<String>,
}

/// One run for one database on every destination.
#[derive(Debug)]
pub struct Run {
    /// Each destination's outcome, in the order of [`destinations`].
    pub outcomes: Vec<(Place, Result<Report, PruneError>)>,
    /// Removed from the spool: only when every destination was pruned.
    pub spool_removed: Vec<ArtifactName>,
}

impl Run {
    /// Every report, or the first destination's error.
    pub fn into_reports(self) -> Result<Vec<Report>, PruneError> {
        self.outcomes.into_iter().map(|(_, r)| r).collect()
    }
}

impl Report {
    /// This run's `dump.pruned`, under `header`: the next of the verified
    /// backup that started the run, or a scheduled run's own.
    pub fn event(&self, header: EventHeader) -> DumpPruned {
        DumpPruned {
            header,
            deleted: self.plan.plan.delete.keys().cloned().collect(),
            kept: self.plan.plan.keep.keys().cloned().collect(),
            kept_reasons: self.plan.plan.kept_reasons(),
            kept_bytes: Some(
                self.plan
                    .plan
                    .keep
                    .keys()
                    .filter_map(|artifact| self.plan.catalog.remote_sizes.get(artifact))
                    .sum(),
            ),
            dry_run: self.dry_run,
            destination: Some(self.place.destination.clone()),
            dedup_label: (!self.place.first).then(|| self.place.label.clone()),
        }
    }
}

/// One full run for one database (see the crate docs): each destination,
/// then the spool.
pub async fn prune_database(
    settings: &Settings,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Run {
    let mut outcomes = Vec::new();
    for (index, target) in destinations(settings).iter().enumerate() {
        let place = Place {
            label: target.label.clone(),
            destination: target.describe(),
            first: index == 0,
        };
        let span = tracing::info_span!("destination", label = %target.label);
        let result = prune_on(target, place.clone(), settings, database, now)
            .instrument(span)
            .await;
        outcomes.push((place, result));
    }
    let mut spool_removed = Vec::new();
    let reports: Option<Vec<&Report>> = outcomes.iter().map(|(_, r)| r.as_ref().ok()).collect();
    if let Some(reports) = reports
        && !settings.dry_run
    {
        spool_removed = spool::trim(
            &settings.spool_dir,
            database,
            settings.spool_keep_last,
            &shipped_everywhere(&reports),
        );
    }
    Run {
        outcomes,
        spool_removed,
    }
}

/// The artifacts every destination holds with the same size: the spool's
/// "shipped".
fn shipped_everywhere(reports: &[&Report]) -> BTreeMap<ArtifactName, u64> {
    let Some((first, others)) = reports.split_first() else {
        return BTreeMap::new();
    };
    first
        .plan
        .catalog
        .remote_sizes
        .iter()
        .filter(|(artifact, size)| {
            others
                .iter()
                .all(|r| r.plan.catalog.remote_sizes.get(*artifact) == Some(*size))
        })
        .map(|(artifact, size)| (artifact.clone(), *size))
        .collect()
}

async fn prune_on(
    target: &StoreTarget,
    place: Place,
    settings: &Settings,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Report, PruneError> {
    let store = target.connect().await?;
    let result = prune_with(&store, place, settings, database, now).await;
    store.close().await;
    result
}

async fn prune_with(
    store: &Store,
    place: Place,
    settings: &Settings,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Report, PruneError> {
    let plan = catalogue::plan_database(store, &settings.policy, database, now).await?;
    plan.log(settings.dry_run);
    if let Some(brake) = plan.brake() {
        if settings.dry_run {
            tracing::warn!(%brake, "a real run would be stopped by the brake");
        } else if settings.force {
            tracing::warn!(%brake, "RETENTION_FORCE is set: deleting anyway");
        } else {
            return Err(brake.into());
        }
    }
    let mut report = Report {
        place,
        plan,
        dry_run: settings.dry_run,
        cleaned: Vec::new(),
    };
    if settings.dry_run {
        return Ok(report);
    }
    for artifact in report.plan.plan.delete.keys() {
        // Artifact first: a crash in between leaves sidecars without an
        // artifact, which the next run recognises as orphans.
        for name in [
            artifact.to_string(),
            artifact.manifest_name(),
            artifact.verified_name(),
        ] {
            remove(store, database, &name).await?;
        }
        tracing::info!(%artifact, "deleted from the remote");
    }
    let leftovers: Vec<String> = report.plan.leftovers().cloned().collect();
    for name in leftovers {
        remove(store, database, &name).await?;
        tracing::info!(file = %name, "removed an orphaned sidecar or abandoned upload");
        report.cleaned.push(name);
    }
    Ok(report)
}

async fn remove(store: &Store, database: &DatabaseName, name: &str) -> Result<(), StoreError> {
    match store.remove(database, name).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Consumes `dump.verified` and runs the schedule until shutdown.
pub async fn run(
    bus: Bus,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    backup_core::preflight::spawn_checks(
        bus.health(),
        &settings,
        preflight::preflight_checks,
        &shutdown,
    );
    bus.ensure_stream().await?;
    let handler = Arc::new(PruneHandler {
        bus: bus.clone(),
        settings: Arc::new(settings),
        // A scheduled run and an event-driven one on the same directory
        // would race on the same files.
        running: Arc::new(Mutex::new(())),
    });
    let grace = handler.settings.grace;
    let (worker, ()) = tokio::join!(
        bus::run_worker(
            &bus,
            &CONSUMER,
            Arc::clone(&handler),
            shutdown.clone(),
            grace
        ),
        scheduled_runs(&handler, &shutdown),
    );
    worker
}

#[derive(Debug)]
struct PruneHandler {
    bus: Bus,
    settings: Arc<Settings>,
    running: Arc<Mutex<()>>,
}

const RETRY: Backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(600));

impl PruneHandler {
    async fn prune(&self, database: &DatabaseName) -> Run {
        let _running = self.running.lock().await;
        prune_database(&self.settings, database, Utc::now()).await
    }

    async fn report_failure(
        &self,
        backup_id: BackupId,
        database: DatabaseName,
        place: &Place,
        error: &PruneError,
        attempt: u32,
        will_retry: bool,
    ) {
        let mut failed = DumpFailed::new(
            EventHeader::now(backup_id, database),
            Origin::default(),
            Stage::Prune,
            backup_core::error_chain(error),
        )
        .with_attempt(attempt, will_retry)
        .with_destination(Some(place.destination.clone()));
        if !place.first {
            // One per attempt would merge it with the first destination's.
            failed = failed.with_dedup(FailureDedup::PerPlace(place.label.clone()));
        }
        self.bus.publish_failure(&failed).await;
    }

    /// Every database on any destination, one after the other.
    async fn run_scheduled(&self) {
        let mut databases = std::collections::BTreeSet::new();
        for target in destinations(&self.settings) {
            let listed = match target.connect().await {
                Ok(store) => {
                    let listed = catalogue::list_databases(&store).await;
                    store.close().await;
                    listed
                }
                Err(error) => Err(error),
            };
            match listed {
                Ok(listed) => databases.extend(listed),
                Err(error) => {
                    tracing::warn!(destination = %target.label, %error, "scheduled prune: cannot list the destination; trying at the next run");
                }
            }
        }
        for database in databases {
            let run_id = scheduled_id(&database, Utc::now());
            for (place, outcome) in self.prune(&database).await.outcomes {
                match outcome {
                    Ok(report) => {
                        let pruned =
                            report.event(EventHeader::now(run_id.clone(), database.clone()));
                        if let Err(error) = self.bus.publish(&pruned).await {
                            tracing::warn!(%error, "pruned, but dump.pruned could not be published");
                        }
                    }
                    Err(error) => {
                        self.report_failure(
                            run_id.clone(),
                            database.clone(),
                            &place,
                            &error,
                            1,
                            false,
                        )
                        .await
                    }
                }
            }
        }
    }
}

fn scheduled_id(database: &DatabaseName, at: DateTime<Utc>) -> BackupId {
    BackupId::try_from(format!("prune-{database}-{}", at.format("%Y%m%dT%H%M%SZ")))
        .expect("database names and timestamps are valid id characters")
}

async fn scheduled_runs(handler: &PruneHandler, shutdown: &CancellationToken) {
    loop {
        let now = Utc::now();
        let Some(next) = handler.settings.schedule.next_after(now) else {
            return;
        };
        tracing::info!(next = %next, "next scheduled prune");
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        handler.run_scheduled().await;
    }
}

impl Handler for PruneHandler {
    type Message = DumpVerified;

    /// Read without [`bus::decode_event`]'s artifact check: retention works
    /// on the database's directory, not on the artifact the event names.
    fn decode(&self, _subject: &str, payload: &[u8]) -> Result<DumpVerified, events::DecodeError> {
        DumpVerified::decode(payload)
    }

    async fn handle(
        &self,
        verified: DumpVerified,
        delivery: &Delivery,
        _shutdown: &CancellationToken,
    ) -> Outcome {
        let database = verified.header.database.clone();
        let backup_id = verified.header.backup_id.clone();
        let mut retry = false;
        for (place, outcome) in self.prune(&database).await.outcomes {
            match outcome {
                Ok(report) => {
                    if let Err(error) = self
                        .bus
                        .publish(&report.event(verified.header.next()))
                        .await
                    {
                        tracing::warn!(%error, destination = %place.label, "pruned, but dump.pruned could not be published; retrying");
                        retry = true;
                    }
                }
                Err(error) => {
                    let will_retry = error.is_transient() && delivery.can_retry();
                    self.report_failure(
                        prune_id(&backup_id),
                        database.clone(),
                        &place,
                        &error,
                        delivery.attempt,
                        will_retry,
                    )
                    .await;
                    retry |= will_retry;
                }
            }
        }
        if retry {
            Outcome::Retry(RETRY.delay(delivery.attempt))
        } else {
            Outcome::Ack
        }
    }
}

/// Prune failures get their own id so they do not read as a failure of the
/// backup that happened to trigger the run.
fn prune_id(backup_id: &BackupId) -> BackupId {
    BackupId::try_from(format!("prune-{backup_id}")).unwrap_or_else(|_| backup_id.clone())
}
