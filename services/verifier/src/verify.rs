//! One verification of a remote copy: read its manifest from the
//! destination (a [`remote_store::Store`]), restore the artifact as stored
//! there into a fresh scratch
//! database (`<prefix>_<12 hex digits>`, a name we generate, so it can
//! neither collide nor inject), run the checks, and drop the scratch
//! database whatever happened. Also the verification record beside the
//! artifact, and the start-up sweep of scratch databases a crashed verifier
//! left behind.
//!
//! Download, restore and checks run under the stall watchdog and the
//! deadline of [`Settings::limits`]. Progress is the restore engine's
//! [`Meter`] plus what the scratch server reports: a backend of
//! the scratch database that is running and not waiting on a lock (or on
//! us) is working, e.g. building an index. An abort kills psql /
//! pg_restore with their process groups and the scratch database is
//! dropped `WITH (FORCE)` as after any failure, which also ends the
//! backend left waiting on the lock.
//!
//! Fixed costs overlap with work: the scratch database is created while the
//! connection to the destination opens and the manifest is read, and after a successful
//! verification it is dropped while the caller writes the record and
//! publishes the verdict ([`ScratchCleanup`]); the caller waits for the drop
//! before acking, so a verifier never takes new work with a scratch
//! database still standing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use backup_core::events::ArtifactInfo;
use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest, VerificationRecord};
use backup_core::names::{ArtifactName, DatabaseName, DumpFormat};
use backup_core::pg::quote_ident;
use backup_core::watchdog::{self, Limits};
use remote_store::{Store, StoreTarget};
use restore::{
    ManifestExtras, Meter, Phase, RestoreSource, VerifyError, millis, restore_stream_metered,
    run_checks,
};

use crate::Settings;

/// How long the scratch database may take to drop, and the connection to
/// the destination to close, after the work is done or aborted: neither may hold the worker
/// forever. A database that could not be dropped is swept at start-up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a successful verification established.
#[derive(Debug, Default)]
pub struct Verification {
    pub checks: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    pub large_objects: u64,
    pub skipped: Vec<String>,
    pub steps: BTreeMap<String, u64>,
    /// The scratch database's drop, still running.
    pub cleanup: ScratchCleanup,
}

/// A scratch database being dropped in the background: await
/// [`ScratchCleanup::finish`] before taking new work.
#[derive(Debug, Default)]
pub struct ScratchCleanup(Option<tokio::task::JoinHandle<()>>);

impl ScratchCleanup {
    pub async fn finish(self) {
        if let Some(task) = self.0 {
            let _ = task.await;
        }
    }
}

/// `DROP DATABASE ... WITH (FORCE)`, bounded; a failure is logged (the
/// start-up sweep takes what is left).
async fn drop_scratch(admin: &tokio_postgres::Client, scratch_name: &str) {
    let drop_sql = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(scratch_name)
    );
    match tokio::time::timeout(CLEANUP_TIMEOUT, admin.batch_execute(&drop_sql)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(scratch = %scratch_name, error = %backup_core::error_chain(&error), "could not drop the scratch database");
        }
        Err(_) => {
            tracing::error!(scratch = %scratch_name, "dropping the scratch database timed out; it will be swept at the next start");
        }
    }
}

/// Reads a manifest from the destination.
pub async fn read_manifest(
    store: &Store,
    database: &DatabaseName,
    name: &ArtifactName,
) -> Result<(Manifest, ManifestExtras), VerifyError> {
    let bytes = store
        .read_small(database, &name.manifest_name(), MAX_SIDECAR_BYTES)
        .await?;
    let manifest = Manifest::decode(&bytes).map_err(|e| VerifyError::Manifest {
        artifact: name.to_string(),
        detail: e.to_string(),
    })?;
    if manifest.artifact != *name {
        return Err(VerifyError::Manifest {
            artifact: name.to_string(),
            detail: format!("it describes {}", manifest.artifact),
        });
    }
    Ok((manifest, ManifestExtras::from_manifest_json(&bytes)))
}

/// Verifies the copy of `artifact` stored on `target`.
pub async fn verify_remote(
    settings: &Settings,
    target: &StoreTarget,
    database: &DatabaseName,
    artifact: &ArtifactInfo,
) -> Result<Verification, VerifyError> {
    let name = &artifact.artifact;
    let mut steps = BTreeMap::new();
    let started = Instant::now();
    let open_remote = async {
        let remote = target.connect().await?;
        let opened = async {
            let (manifest, extras) = read_manifest(&remote, database, name).await?;
            if manifest.sha256 != artifact.sha256 || manifest.size_bytes != artifact.size_bytes {
                return Err(VerifyError::Manifest {
                    artifact: name.to_string(),
                    detail: format!(
                        "it says {} bytes, sha256 {}, but the event says {} bytes, sha256 {}",
                        manifest.size_bytes, manifest.sha256, artifact.size_bytes, artifact.sha256
                    ),
                });
            }
            let reader = remote.open_read(database, name.as_str()).await?;
            Ok((manifest, extras, reader))
        }
        .await;
        match opened {
            Ok(opened) => Ok((remote, opened)),
            Err(error) => {
                close_remote(remote).await;
                Err(error)
            }
        }
    };

    let meter = Meter::new();
    if matches!(name.kind().format, DumpFormat::Globals | DumpFormat::Tar) {
        let (remote, (manifest, _, reader)) = open_remote.await?;
        let listed = guarded(
            settings.limits,
            &meter,
            name,
            restore::check_archive(reader, manifest, &settings.restore, None, &meter),
        )
        .await;
        close_remote(remote).await;
        let listed = listed?;
        steps.extend(listed.steps);
        return Ok(Verification {
            checks: listed.checks,
            steps,
            ..Verification::default()
        });
    }

    let scratch_name = restore::scratch::scratch_name(&settings.scratch_prefix);
    let create_scratch = async {
        let admin = settings.scratch.connect("backup-verifier").await?;
        // template0: a template1 someone added objects to must not leak into
        // the comparison, and encoding/locale come from the dump.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(&scratch_name)
            ))
            .await
            .map_err(|e| settings.scratch.query_error(&e))?;
        // Connected from its creation on: another verifier sharing this
        // server sweeps the scratch databases nobody is connected to, and
        // must not take this one, not yet restored into, for a leftover.
        match settings
            .scratch
            .with_dbname(&scratch_name)
            .connect("backup-verifier")
            .await
        {
            Ok(holder) => Ok::<_, VerifyError>((admin, holder)),
            Err(error) => {
                drop_scratch(&admin, &scratch_name).await;
                Err(error.into())
            }
        }
    };
    let (remote, (manifest, extras, reader), (admin, _holder)) =
        match tokio::join!(open_remote, create_scratch) {
            (Ok((remote, opened)), Ok(admin)) => (remote, opened, admin),
            (Err(error), Ok((admin, _holder))) => {
                drop_scratch(&admin, &scratch_name).await;
                return Err(error);
            }
            (Ok((remote, _)), Err(error)) => {
                close_remote(remote).await;
                return Err(error);
            }
            (Err(error), Err(_)) => return Err(error),
        };
    steps.insert("connect".into(), millis(started.elapsed()));
    tracing::info!(scratch = %scratch_name, artifact = %name, "restoring into a scratch database");
    let scratch = settings.scratch.with_dbname(&scratch_name);
    let work = async {
        let restored = restore_stream_metered(
            RestoreSource {
                reader,
                manifest: manifest.clone(),
            },
            &scratch,
            &settings.restore,
            None,
            &meter,
        )
        .await?;
        meter.set_phase(Phase::Checks);
        let checked = run_checks(&scratch, &manifest, &extras, &settings.operator_checks).await?;
        Ok::<_, VerifyError>((restored, checked))
    };
    let watched = async {
        tokio::select! {
            outcome = work => outcome,
            never = watch_scratch_server(&admin, &scratch_name, &meter, settings.limits) => match never {},
        }
    };
    let outcome = guarded(settings.limits, &meter, name, watched).await;
    // Dropped whatever happened; FORCE ends sessions a failed or killed
    // psql left, including one still waiting on a lock. After a failure
    // the drop comes first (the failure event may make someone look); after
    // a success it overlaps with the record and the event.
    let cleanup = match &outcome {
        Err(_) => {
            drop_scratch(&admin, &scratch_name).await;
            ScratchCleanup::default()
        }
        Ok(_) => ScratchCleanup(Some(tokio::spawn(async move {
            drop_scratch(&admin, &scratch_name).await;
        }))),
    };
    close_remote(remote).await;
    let (restored, checked) = outcome?;
    steps.extend(restored.steps);
    steps.extend(checked.steps);
    let mut checks = restored.checks;
    checks.extend(checked.checks);
    Ok(Verification {
        checks,
        tables: checked.tables,
        rows: checked.rows,
        large_objects: checked.large_objects,
        skipped: restored.skipped,
        steps,
        cleanup,
    })
}

/// Runs `work` under the watchdog on `meter`; an abort names the step to
/// blame (see [`Meter::attribute`]).
async fn guarded<T>(
    limits: Limits,
    meter: &Meter,
    artifact: &ArtifactName,
    work: impl Future<Output = Result<T, VerifyError>>,
) -> Result<T, VerifyError> {
    match watchdog::guard("verify", meter.activity(), limits, work).await {
        Ok(outcome) => outcome,
        Err(aborted) => {
            let aborted = meter.attribute(&aborted);
            tracing::warn!(%artifact, %aborted, "verification aborted by the watchdog");
            Err(VerifyError::Aborted {
                artifact: artifact.to_string(),
                aborted,
                limits,
            })
        }
    }
}

/// Backends of the scratch database (ours, not autovacuum) that are running
/// and not waiting on a heavyweight lock, a buffer pin, a timer or their
/// client are doing work
/// that moves no byte the meter sees (an index build, a foreign key check):
/// each sample that finds one keeps the watchdog quiet. Runs until dropped.
async fn watch_scratch_server(
    admin: &tokio_postgres::Client,
    scratch: &str,
    meter: &Meter,
    limits: Limits,
) -> Infallible {
    const WORKING: &str = "SELECT count(*) FROM pg_stat_activity \
        WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid() \
        AND backend_type IN ('client backend', 'parallel worker') \
        AND (wait_event_type IS NULL OR wait_event_type IN ('IO', 'IPC', 'LWLock'))";
    // As often as the watchdog looks, so one sample can bridge its interval.
    let every = (limits.stall_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match admin.query_one(WORKING, &[&scratch]).await {
            Ok(row) if row.get::<_, i64>(0) > 0 => meter.server_working(),
            Ok(_) => {}
            // A scratch server that does not answer shows no progress.
            Err(error) => {
                tracing::debug!(error = %backup_core::error_chain(&error), "sampling the scratch server")
            }
        }
    }
}

/// Closes the connection to a destination politely, but without waiting
/// on a server that stopped answering.
pub(crate) async fn close_remote(remote: Store) {
    if tokio::time::timeout(CLEANUP_TIMEOUT, remote.close())
        .await
        .is_err()
    {
        tracing::debug!("closing the connection to the destination timed out");
    }
}

/// Writes the verification record beside the copy on `target` it proves.
pub async fn write_record(
    target: &StoreTarget,
    database: &DatabaseName,
    record: &VerificationRecord,
) -> Result<(), VerifyError> {
    let remote = target.connect().await?;
    let result = remote
        .write_small(database, &record.artifact.verified_name(), &record.encode())
        .await;
    remote.close().await;
    Ok(result?)
}

/// Withdraws the verification record of a backup found corrupt on
/// `target`, so that the pruner and `backupctl list` stop counting it as
/// verified.
pub async fn remove_record(
    target: &StoreTarget,
    database: &DatabaseName,
    artifact: &ArtifactName,
) -> Result<(), VerifyError> {
    let remote = target.connect().await?;
    let name = artifact.verified_name();
    let result = match remote.stat(database, &name).await {
        Ok(Some(_)) => remote.remove(database, &name).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    remote.close().await;
    Ok(result?)
}
