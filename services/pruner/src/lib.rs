//! The pruner: retention on the SFTP remote and in the local spool, run
//! after each `dump.verified` and on its own schedule ([`schedule`]).
//!
//! One run for one database: read the remote directory ([`catalog`]),
//! compute the plan ([`policy`]: what stays, by which rule, and what goes,
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
//! `backupctl prune --dry-run` can call [`plan_database`] with its own
//! [`SftpRemote`] and [`RetentionArgs`].
//!
//! Retries: a remote that cannot be reached naks the `dump.verified` with
//! backoff (and reports `dump.failed` with `will_retry`); a scheduled run
//! that fails reports and waits for the next one. The brake is final for
//! that run: it is reported and acked, never retried.

pub mod catalog;
#[cfg(test)]
mod fuzz_tests;
pub mod policy;
pub mod preflight;
pub mod schedule;
pub mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backup_core::Stage;
use backup_core::bus::{self, Bus, BusError, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::config::parse_duration;
use backup_core::events::{
    self, DumpFailed, DumpPruned, DumpVerified, Event, EventHeader, Origin, subject,
};
use backup_core::names::{ArtifactName, BackupId, DatabaseName, Tag};
use backup_core::retry::Backoff;
use backup_core::sftp::SftpArgs;
use chrono::{DateTime, TimeDelta, Utc};
use remote_sftp::{RemoteError, SftpRemote};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use catalog::Catalog;
pub use policy::{Backup, Discard, Plan, Policy, Reason};
pub use schedule::Schedule;

pub const CONSUMER: ConsumerSpec = ConsumerSpec::new("pruner", subject::VERIFIED, Stage::Prune);

/// The retention policy as flags and environment variables, shared with
/// `backupctl prune` so both read the same configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Keep the newest N verified backups.
    #[arg(long, env = "RETENTION_KEEP_LAST", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest verified backup of each of the last N days that have one.
    #[arg(long, env = "RETENTION_KEEP_DAILY", default_value_t = 7)]
    pub keep_daily: usize,
    /// Keep the newest verified backup of each of the last N ISO weeks that have one.
    #[arg(long, env = "RETENTION_KEEP_WEEKLY", default_value_t = 4)]
    pub keep_weekly: usize,
    /// Keep the newest verified backup of each of the last N months that have one.
    #[arg(long, env = "RETENTION_KEEP_MONTHLY", default_value_t = 6)]
    pub keep_monthly: usize,
    /// Keep the newest verified backup of each of the last N years that have one.
    #[arg(long, env = "RETENTION_KEEP_YEARLY", default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every verified backup taken within this span (e.g. 14d) of the newest verified one.
    #[arg(long, env = "RETENTION_KEEP_WITHIN", value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
    /// Never leave fewer verified backups than this (at least 1).
    #[arg(long, env = "RETENTION_MIN_KEEP", default_value_t = 3)]
    pub min_keep: usize,
    /// Tags never deleted besides pre-deploy, comma-separated.
    #[arg(long, env = "RETENTION_KEEP_TAGS", value_delimiter = ',')]
    pub keep_tags: Vec<Tag>,
    /// How long an unverified backup older than the newest verified one is kept.
    #[arg(long, env = "RETENTION_UNVERIFIED_GRACE", default_value = "2d", value_parser = parse_duration)]
    pub unverified_grace: Duration,
    /// Time zone of the day/week/month/year buckets (IANA name).
    #[arg(long = "backup-tz", env = "BACKUP_TZ", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,
    /// Allow one run to delete more than half of a database's backups.
    #[arg(
        long = "retention-force",
        env = "RETENTION_FORCE",
        default_value_t = false
    )]
    pub force: bool,
}

impl RetentionArgs {
    pub fn policy(&self) -> Result<Policy, String> {
        if self.min_keep == 0 {
            return Err("RETENTION_MIN_KEEP must be at least 1".into());
        }
        let span = |name: &str, d: Duration| {
            TimeDelta::from_std(d).map_err(|_| format!("{name} is too long"))
        };
        Ok(Policy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .map(|d| span("RETENTION_KEEP_WITHIN", d))
                .transpose()?,
            min_keep: self.min_keep,
            keep_tags: self.keep_tags.clone(),
            timezone: self.timezone,
            unverified_grace: span("RETENTION_UNVERIFIED_GRACE", self.unverified_grace)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub sftp: SftpArgs,
    pub sftp_settings: remote_sftp::SftpSettings,
    pub policy: Policy,
    pub dry_run: bool,
    /// Lifts the brake that refuses to delete more than half the backups.
    pub force: bool,
    pub spool_dir: PathBuf,
    pub spool_keep_last: usize,
    pub schedule: Schedule,
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(
        "refusing to delete {delete} of {total} backups of {database} in one run (more than half); check the clocks and the listing (newest backup {newest}), or set RETENTION_FORCE=true for one run"
    )]
    Brake {
        database: DatabaseName,
        delete: usize,
        total: usize,
        newest: String,
    },
}

impl PruneError {
    pub fn is_transient(&self) -> bool {
        match self {
            PruneError::Remote(e) => e.is_transient(),
            PruneError::Brake { .. } => false,
        }
    }
}

/// The plan for one database, with the listing it was computed from.
#[derive(Debug, Clone)]
pub struct DatabasePlan {
    pub database: DatabaseName,
    pub plan: Plan,
    pub catalog: Catalog,
}

impl DatabasePlan {
    /// The brake's verdict: `Some` when this plan deletes more than half
    /// of the backups.
    pub fn brake(&self) -> Option<PruneError> {
        let total = self.catalog.backups.len();
        let delete = self.plan.delete.len();
        (delete * 2 > total).then(|| PruneError::Brake {
            database: self.database.clone(),
            delete,
            total,
            newest: self
                .catalog
                .backups
                .iter()
                .map(|b| &b.artifact)
                .max()
                .map_or_else(|| "none".into(), ToString::to_string),
        })
    }

    /// Logs every decision: what stays and by which rules, what goes and why.
    pub fn log(&self, dry_run: bool) {
        for (artifact, reasons) in &self.plan.keep {
            let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            tracing::info!(%artifact, reasons = %reasons.join(", "), "keep");
        }
        let verb = if dry_run { "would delete" } else { "delete" };
        for (artifact, why) in &self.plan.delete {
            tracing::info!(%artifact, %why, "{verb}");
        }
        for name in self
            .catalog
            .orphans
            .iter()
            .chain(&self.catalog.stale_partials)
        {
            tracing::info!(file = %name, "{verb} (orphaned sidecar or abandoned upload)");
        }
        for name in &self.catalog.foreign {
            tracing::debug!(file = %name, "not a file of ours; left alone");
        }
    }
}

/// Reads one database's remote directory and computes its plan, deleting
/// nothing: what `RETENTION_DRY_RUN` and `backupctl prune --dry-run` show.
pub async fn plan_database(
    remote: &SftpRemote,
    sftp: &SftpArgs,
    policy: &Policy,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<DatabasePlan, RemoteError> {
    let catalog =
        catalog::read_catalog(remote, &sftp.database_dir(database), database, now).await?;
    let plan = policy::plan(&catalog.backups, policy, now);
    Ok(DatabasePlan {
        database: database.clone(),
        plan,
        catalog,
    })
}

/// The databases that have a directory on the remote.
pub async fn list_databases(
    remote: &SftpRemote,
    sftp: &SftpArgs,
) -> Result<Vec<DatabaseName>, RemoteError> {
    let entries = match remote.list_dir(&sftp.dir).await {
        Ok(entries) => entries,
        Err(RemoteError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut databases: Vec<DatabaseName> = entries
        .into_iter()
        .filter(|e| e.is_dir)
        .filter_map(|e| e.name.parse().ok())
        .collect();
    databases.sort();
    Ok(databases)
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
    let remote = SftpRemote::connect(&settings.sftp_settings).await?;
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
    let plan = plan_database(remote, &settings.sftp, &settings.policy, database, now).await?;
    plan.log(settings.dry_run);
    if let Some(brake) = plan.brake() {
        if settings.dry_run {
            tracing::warn!(%brake, "a real run would be stopped by the brake");
        } else if settings.force {
            tracing::warn!(%brake, "RETENTION_FORCE is set: deleting anyway");
        } else {
            return Err(brake);
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
    let leftovers: Vec<String> = report
        .plan
        .catalog
        .orphans
        .iter()
        .chain(&report.plan.catalog.stale_partials)
        .cloned()
        .collect();
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
    let handler = PruneHandler {
        bus: bus.clone(),
        settings: Arc::new(settings),
        // A scheduled run and an event-driven one on the same directory
        // would race on the same files.
        running: Arc::new(Mutex::new(())),
    };
    let grace = handler.settings.grace;
    let (worker, ()) = tokio::join!(
        bus::run_worker(&bus, &CONSUMER, &handler, shutdown.clone(), grace),
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
        let databases = match SftpRemote::connect(&self.settings.sftp_settings).await {
            Ok(remote) => {
                let listed = list_databases(&remote, &self.settings.sftp).await;
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
