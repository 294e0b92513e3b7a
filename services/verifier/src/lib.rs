//! The verifier: proves that the copy on the remote restores, and keeps
//! proving it. For each `dump.shipped` it streams the remote artifact
//! through sha256, age decryption and decompression into a fresh scratch
//! database, compares every table's row count with the manifest and checks
//! sequences, large objects, materialized views and the operator's own
//! invariants (all with the restore engine, the `restore` crate), drops the scratch database
//! whatever happened, writes `<artifact>.verified.json` beside the artifact
//! and emits `dump.verified` or `dump.failed` (stage `verify`, the message
//! naming the check that failed). On a schedule it also re-verifies one
//! older backup per database, oldest-verified first ([`reverify`]); a
//! backup found corrupt loses its verification record.
//!
//! Where from: every destination ([`destinations`], read through
//! `remote_store`: the SFTP server, and the shipper's second SFTP server
//! when configured). The copy on `VERIFY_FROM` ([`source`], default the
//! first destination) is restored; once it is proven, every other copy is
//! read back whole against the manifest's size and sha256 ([`copies`]).
//! `dump.verified` lists the copies proven (`copies`: `restored` or
//! `checksum`) and those missing or wrong (`copies_failed`), which do not
//! condemn the backup but are logged as errors and alerted by the
//! notifier. A verification record is written beside each copy proven.
//!
//! Retries: only failures of the path to the data (the destination or the
//! scratch server unreachable, local staging) are retried, with backoff through
//! JetStream redelivery. A checksum, decryption, decompression, restore,
//! row-count or operator-check failure is a finding about the backup itself
//! and is reported once, not retried.
//!
//! Concurrency: up to `VERIFY_CONCURRENCY` restores (default 1) run at
//! once, each into its own scratch database, each `dump.shipped` in its own
//! task of the worker ([`bus::run_worker`]) with its own progress acks and
//! watchdog. A re-verification round takes one of those slots
//! ([`Restores`]); the late sweep of leftover scratch databases waits until
//! no restore of ours runs, so it never sees a scratch database of ours
//! between its creation and its first connection.
//!
//! Hangs: download, restore and checks run under a stall watchdog and a
//! deadline ([`Settings::limits`], see [`verify`]). An aborted verification
//! is a failure of the path, not a finding about the backup: `dump.failed`
//! carries `aborted` (step `download`, `restore` or `checks`) and it is
//! retried like an unreachable server. The handler only awaits I/O and
//! timers, so the worker's progress acks keep the message meanwhile.

pub mod copies;
pub mod preflight;
pub mod reverify;
pub mod settings;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::Stage;
use backup_core::bus::{self, Bus, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::events::{self, DumpFailed, DumpShipped, DumpVerified, SCHEMA_VERSION, subject};
use backup_core::manifest::VerificationRecord;
use backup_core::retry::Backoff;
use backup_core::watchdog::{DEFAULT_STALL_AFTER, Limits};
use chrono::Utc;
use remote_s3::S3Settings;
use remote_store::StoreTarget;
use tokio_util::sync::CancellationToken;

// The restore engine's types in this crate's [`Settings`] and results.
pub use ::restore::{OperatorCheck, RestoreOptions, VerifyError};
pub use settings::{Args, Settings, SettingsError};
pub use verify::Verification;

/// The verifier's durable consumer. Restores are long: progress acks keep
/// the message while one runs.
pub const CONSUMER: ConsumerSpec = ConsumerSpec::new("verifier", subject::SHIPPED, Stage::Verify);

/// [`CONSUMER`] holding `concurrency` messages at once.
pub fn consumer(concurrency: usize) -> ConsumerSpec {
    ConsumerSpec {
        max_ack_pending: i64::try_from(concurrency.max(1)).unwrap_or(1),
        ..CONSUMER
    }
}

/// The restore slots of the process (`VERIFY_CONCURRENCY`), shared by the
/// worker's verifications and the re-verifier.
#[derive(Debug, Clone)]
pub struct Restores {
    slots: Arc<tokio::sync::Semaphore>,
    count: u32,
}

impl Restores {
    pub fn new(concurrency: usize) -> Self {
        let count = u32::try_from(concurrency.max(1)).unwrap_or(1);
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(count as usize)),
            count,
        }
    }

    /// One restore slot, held while the permit lives.
    pub async fn one(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots.acquire().await.expect("never closed")
    }

    /// Every slot: no restore of ours runs while the permit lives.
    pub async fn all(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots
            .acquire_many(self.count)
            .await
            .expect("never closed")
    }
}

/// The destinations this verifier reads, in order: the ones
/// `remote_store::targets` builds from the settings.
pub fn destinations(settings: &Settings) -> Vec<StoreTarget> {
    remote_store::targets(
        settings.sftp.clone(),
        settings.sftp2.clone(),
        unlocked(settings.s3.clone()),
    )
}

/// The bucket as the verifier writes to it: without Object Lock, whatever
/// `S3_OBJECT_LOCK_DAYS` says (the shipper's setting, which compose passes
/// to every service). The verifier writes only its records, and a
/// re-verification that finds a copy rotten must be able to withdraw one.
fn unlocked(s3: Option<S3Settings>) -> Option<S3Settings> {
    s3.map(|settings| S3Settings {
        object_lock: None,
        ..settings
    })
}

/// The destination restored from: `VERIFY_FROM`, or the first one
/// (settings always configure one, and check the label).
pub fn source(settings: &Settings) -> StoreTarget {
    let destinations = destinations(settings);
    remote_store::find(&destinations, settings.verify_from.as_deref())
        .or_else(|_| remote_store::find(&destinations, None))
        .expect("the settings require a destination")
        .clone()
}

/// The binary's default limits: 5 minutes without progress, 6 hours in all.
pub const DEFAULT_LIMITS: Limits = Limits {
    stall_after: DEFAULT_STALL_AFTER,
    deadline: Duration::from_secs(6 * 3600),
};

pub async fn run(
    bus: Bus,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    backup_core::preflight::spawn_checks(
        bus.health(),
        &settings,
        preflight::preflight_checks,
        &shutdown,
    );
    bus.ensure_stream().await?;
    sweep(&settings).await;
    let grace = settings.grace;
    let restores = Restores::new(settings.concurrency);
    // The sweep leaves a scratch database alone while something is
    // connected to it, and the psql of a verifier killed mid-restore may
    // still be finishing at start-up: look again once it is gone, between
    // two restores of our own.
    let late_sweep = {
        let settings = settings.clone();
        let idle = restores.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            for delay in [Duration::from_secs(5), Duration::from_secs(60)] {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                let _idle = idle.all().await;
                sweep(&settings).await;
            }
        })
    };
    let reverifier = settings.reverify_every.map(|every| {
        tokio::spawn(reverify::run_schedule(
            bus.clone(),
            settings.clone(),
            every,
            restores.clone(),
            shutdown.clone(),
        ))
    });
    let spec = consumer(settings.concurrency);
    let handler = Arc::new(VerifyHandler {
        bus: bus.clone(),
        settings,
        restores,
    });
    let result = bus::run_worker(&bus, &spec, handler, shutdown, grace).await;
    late_sweep.abort();
    if let Some(reverifier) = reverifier {
        reverifier.abort();
        let _ = reverifier.await;
    }
    result
}

/// Drops the scratch databases interrupted verifications left behind.
async fn sweep(settings: &Settings) {
    match restore::scratch::sweep(
        &settings.scratch,
        &settings.scratch_prefix,
        "backup-verifier",
    )
    .await
    {
        Ok(swept) => {
            for name in swept {
                tracing::warn!(database = %name, "dropped a scratch database left by an interrupted verification");
            }
        }
        Err(error) => tracing::warn!(%error, "could not sweep old scratch databases"),
    }
}

#[derive(Debug)]
struct VerifyHandler {
    bus: Bus,
    settings: Settings,
    restores: Restores,
}

const RETRY: Backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(600));

impl Handler for VerifyHandler {
    type Message = DumpShipped;

    fn decode(&self, _subject: &str, payload: &[u8]) -> Result<DumpShipped, events::DecodeError> {
        bus::decode_event(payload)
    }

    async fn handle(
        &self,
        shipped: DumpShipped,
        delivery: &Delivery,
        _shutdown: &CancellationToken,
    ) -> Outcome {
        let _restoring = self.restores.one().await;
        let started = Instant::now();
        let database = &shipped.header.database;
        let mut cleanup = verify::ScratchCleanup::default();
        let source = source(&self.settings);
        let outcome =
            match verify::verify_remote(&self.settings, &source, database, &shipped.artifact).await
            {
                Ok(mut verification) => {
                    cleanup = std::mem::take(&mut verification.cleanup);
                    let record = record_of(
                        &shipped.header.backup_id,
                        &shipped.artifact,
                        &verification,
                        started,
                    );
                    match verify::write_record(&source, database, &record).await {
                        Ok(()) => {
                            let copies = copies::prove_copies(
                                &self.settings,
                                &source,
                                database,
                                &shipped.artifact,
                                &record,
                            )
                            .await;
                            Ok((verification, record.duration_ms, copies))
                        }
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            };
        let outcome = self.report(&shipped, delivery, outcome).await;
        // Acked only once the scratch database is gone.
        cleanup.finish().await;
        outcome
    }
}

impl VerifyHandler {
    /// Publishes the verdict of one verification; the outcome for JetStream.
    async fn report(
        &self,
        shipped: &DumpShipped,
        delivery: &Delivery,
        outcome: Result<(verify::Verification, u64, copies::Copies), VerifyError>,
    ) -> Outcome {
        let database = &shipped.header.database;
        match outcome {
            Ok((verification, duration_ms, copies)) => {
                let verified = DumpVerified {
                    header: shipped.header.next(),
                    origin: shipped.origin.clone(),
                    artifact: shipped.artifact.clone(),
                    checks: verification.checks,
                    tables: verification.tables,
                    rows: verification.rows,
                    duration_ms,
                    steps_ms: verification.steps,
                    skipped: verification.skipped,
                    reverification: false,
                    limits: Some(self.settings.limits.for_event()),
                    copies: copies.proven,
                    copies_failed: copies.failed,
                };
                match self.bus.publish(&verified).await {
                    Ok(_) => {
                        tracing::info!(
                            artifact = %shipped.artifact.artifact,
                            tables = verified.tables,
                            rows = verified.rows,
                            duration_ms,
                            copies = verified.copies.len(),
                            copies_failed = verified.copies_failed.len(),
                            "verified"
                        );
                        Outcome::Ack
                    }
                    Err(error) => {
                        tracing::warn!(%error, "verified, but dump.verified could not be published; retrying");
                        Outcome::Retry(RETRY.delay(delivery.attempt))
                    }
                }
            }
            Err(error) => {
                let will_retry = error.is_transient() && delivery.can_retry();
                tracing::warn!(artifact = %shipped.artifact.artifact, error = %backup_core::error_chain(&error), will_retry, "verification failed");
                if error.condemns_backup()
                    && let Err(e) = verify::remove_record(
                        &source(&self.settings),
                        database,
                        &shipped.artifact.artifact,
                    )
                    .await
                {
                    tracing::warn!(error = %e, "could not withdraw a verification record");
                }
                let failed =
                    DumpFailed::following(shipped, Stage::Verify, backup_core::error_chain(&error))
                        .with_attempt(delivery.attempt, will_retry)
                        .with_aborted(error.aborted_step());
                self.bus.publish_failure(&failed).await;
                if will_retry {
                    Outcome::Retry(RETRY.delay(delivery.attempt))
                } else {
                    Outcome::Ack
                }
            }
        }
    }
}

pub(crate) fn record_of(
    backup_id: &backup_core::BackupId,
    artifact: &events::ArtifactInfo,
    verification: &Verification,
    started: Instant,
) -> VerificationRecord {
    VerificationRecord {
        version: SCHEMA_VERSION,
        backup_id: backup_id.clone(),
        artifact: artifact.artifact.clone(),
        sha256: artifact.sha256.clone(),
        verified_at: Utc::now(),
        checks: verification.checks.clone(),
        tables: verification.tables,
        rows: verification.rows,
        duration_ms: ::restore::millis(started.elapsed()),
        steps_ms: verification.steps.clone(),
        skipped: verification.skipped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_never_written_under_object_lock() {
        let mut locked = S3Settings::new(None, "backups", "key", "secret".to_owned().into());
        locked.object_lock = Some(remote_s3::ObjectLock {
            days: 30,
            mode: remote_s3::LockMode::Compliance,
        });
        let written = unlocked(Some(locked)).expect("the bucket stays a destination");
        assert_eq!(written.object_lock, None);
        assert_eq!(written.bucket, "backups");
        assert!(unlocked(None).is_none());
    }

    #[test]
    fn the_consumer_holds_as_many_messages_as_the_setting() {
        assert_eq!(consumer(1).max_ack_pending, 1);
        assert_eq!(consumer(4).max_ack_pending, 4);
        assert_eq!(consumer(4).durable, CONSUMER.durable);
    }

    #[tokio::test]
    async fn restores_share_the_slots_and_the_sweep_waits_for_all() {
        let restores = Restores::new(2);
        let first = restores.one().await;
        let second = restores.one().await;
        assert!(restores.slots.try_acquire().is_err(), "two slots only");
        drop(first);
        assert!(
            restores.slots.try_acquire_many(2).is_err(),
            "the sweep waits while a restore runs"
        );
        drop(second);
        let _sweep = restores.all().await;
        assert!(restores.slots.try_acquire().is_err());
    }
}
