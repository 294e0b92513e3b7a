//! The pruner: retention on the SFTP remote and in the local spool, run
//! after each `dump.verified` and on its own schedule ([`schedule`]).
//!
//! One run for one database: read the remote directory and compute the
//! plan (the `catalogue` crate: what stays, by which rule, and what goes,
//! and why), check the brake, delete (artifact first, then its manifest and
//! verification record), remove orphaned sidecars and `.partial` uploads
//! older than a day, trim the spool ([`spool`]), and emit `dump.pruned`
//! with `kept`, `kept_reasons` and `deleted`.
//!
//! Safety: the plan comes from the remote listing alone; a name the
//! pipeline does not write is never touched; the newest verified backup,
//! `RETENTION_MIN_KEEP` verified backups and tagged backups always stay; a
//! run that would delete more than half of a database's backups deletes
//! nothing and emits `dump.failed` (stage `prune`) unless `RETENTION_FORCE`
//! is set. With `RETENTION_DRY_RUN` nothing is deleted and `dump.pruned`
//! (with `dry_run: true`) lists what would go. Running again right after
//! changes nothing: the plan of a pruned directory deletes nothing.
//!
//! `backupctl prune` computes the same plan with the same catalogue and
//! retention settings, and deletes nothing.
//!
//! Retries: a remote that cannot be reached naks the `dump.verified` with
//! backoff (and reports `dump.failed` with `will_retry`); a scheduled run
//! that fails reports and waits for the next one. The brake is final for
//! that run: it is reported and acked, never retried.

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
use backup_core::events::{
    self, DumpFailed, DumpPruned, DumpVerified, Event, EventHeader, Origin, subject,
};
use backup_core::names::{ArtifactName, BackupId, DatabaseName};
use backup_core::retry::Backoff;
use catalogue::{Brake, DatabasePlan};
use chrono::{DateTime, Utc};
use remote_sftp::{RemoteError, SftpRemote};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use schedule::Schedule;
pub use settings::{Args, RetentionArgs, Settings, SettingsError};

pub const CONSUMER: ConsumerSpec = ConsumerSpec::new("pruner", subject::VERIFIED, Stage::Prune);

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Brake(#[from] Brake),
}

impl PruneError {
    pub fn is_transient(&self) -> bool {
        match self {
            PruneError::Remote(e) => e.is_transient(),
            PruneError::Brake(_) => false,
        }
    }
}

/// What one run did (or, in a dry run, would do).
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: DatabasePlan,
    pub dry_run: bool,
    /// Orphaned sidecars and abandoned uploads removed.
    pub cleaned: Vec<String>,
    pub spool_removed: Vec<ArtifactName>,
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
        }
    }
}

/// One full run for one database (see the crate docs).
pub async fn prune_database(
    settings: &Settings,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Report, PruneError> {
    let remote = SftpRemote::connect(&settings.sftp.settings).await?;
    let result = prune_with(&remote, settings, database, now).await;
    let _ = remote.close().await;
    let mut report = result?;
    if !settings.dry_run {
        report.spool_removed = spool::trim(
            &settings.spool_dir,
            database,
            settings.spool_keep_last,
            &report.plan.catalog.remote_sizes,
        );
    }
    Ok(report)
}

async fn prune_with(
    remote: &SftpRemote,
    settings: &Settings,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<Report, PruneError> {
    let plan =
        catalogue::plan_database(remote, &settings.sftp.dir, &settings.policy, database, now)
            .await?;
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
        plan,
        dry_run: settings.dry_run,
        cleaned: Vec::new(),
        spool_removed: Vec::new(),
    };
    if settings.dry_run {
        return Ok(report);
    }
    let dir = settings.sftp.database_dir(database);
    for artifact in report.plan.plan.delete.keys() {
        // Artifact first: a crash in between leaves sidecars without an
        // artifact, which the next run recognises as orphans.
        for name in [
            artifact.to_string(),
            artifact.manifest_name(),
            artifact.verified_name(),
        ] {
            remove(remote, &dir, &name).await?;
        }
        tracing::info!(%artifact, "deleted from the remote");
    }
    let leftovers: Vec<String> = report.plan.leftovers().cloned().collect();
    for name in leftovers {
        remove(remote, &dir, &name).await?;
        tracing::info!(file = %name, "removed an orphaned sidecar or abandoned upload");
        report.cleaned.push(name);
    }
    Ok(report)
}

async fn remove(remote: &SftpRemote, dir: &str, name: &str) -> Result<(), RemoteError> {
    match remote.remove_file(&format!("{dir}/{name}")).await {
        Ok(()) | Err(RemoteError::NotFound { .. }) => Ok(()),
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
    async fn prune(&self, database: &DatabaseName) -> Result<Report, PruneError> {
        let _running = self.running.lock().await;
        prune_database(&self.settings, database, Utc::now()).await
    }

    async fn report_failure(
        &self,
        backup_id: BackupId,
        database: DatabaseName,
        error: &PruneError,
        attempt: u32,
        will_retry: bool,
    ) {
        let failed = DumpFailed::new(
            EventHeader::now(backup_id, database),
            Origin::default(),
            Stage::Prune,
            backup_core::error_chain(error),
        )
        .with_attempt(attempt, will_retry);
        self.bus.publish_failure(&failed).await;
    }

    /// Every database on the remote, one after the other.
    async fn run_scheduled(&self) {
        let databases = match SftpRemote::connect(&self.settings.sftp.settings).await {
            Ok(remote) => {
                let listed = catalogue::list_databases(&remote, &self.settings.sftp.dir).await;
                let _ = remote.close().await;
                listed
            }
            Err(error) => Err(error),
        };
        let databases = match databases {
            Ok(databases) => databases,
            Err(error) => {
                tracing::warn!(%error, "scheduled prune: cannot list the remote; trying at the next run");
                return;
            }
        };
        for database in databases {
            let run_id = scheduled_id(&database, Utc::now());
            match self.prune(&database).await {
                Ok(report) => {
                    let pruned = report.event(EventHeader::now(run_id, database));
                    if let Err(error) = self.bus.publish(&pruned).await {
                        tracing::warn!(%error, "pruned, but dump.pruned could not be published");
                    }
                }
                Err(error) => {
                    self.report_failure(run_id, database, &error, 1, false)
                        .await
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
        match self.prune(&database).await {
            Ok(report) => {
                match self
                    .bus
                    .publish(&report.event(verified.header.next()))
                    .await
                {
                    Ok(_) => Outcome::Ack,
                    Err(error) => {
                        tracing::warn!(%error, "pruned, but dump.pruned could not be published; retrying");
                        Outcome::Retry(RETRY.delay(delivery.attempt))
                    }
                }
            }
            Err(error) => {
                let will_retry = error.is_transient() && delivery.can_retry();
                self.report_failure(
                    prune_id(&backup_id),
                    database,
                    &error,
                    delivery.attempt,
                    will_retry,
                )
                .await;
                if will_retry {
                    Outcome::Retry(RETRY.delay(delivery.attempt))
                } else {
                    Outcome::Ack
                }
            }
        }
    }
}

/// Prune failures get their own id so they do not read as a failure of the
/// backup that happened to trigger the run.
fn prune_id(backup_id: &BackupId) -> BackupId {
    BackupId::try_from(format!("prune-{backup_id}")).unwrap_or_else(|_| backup_id.clone())
}
