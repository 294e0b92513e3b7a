//! Periodic re-verification, to catch rot on the remote: every interval,
//! for each database on the destination restored from ([`crate::source`]),
//! the verified backup whose
//! verification is the oldest is verified again from scratch, and its
//! other copies are read back whole as after a first verification
//! ([`crate::copies`]). Success refreshes the records of the copies proven
//! (so the next round picks another) and emits `dump.verified` with
//! `reverification: true`, `copies` and `copies_failed`; a finding about
//! the backup withdraws its `.verified.json` (the pruner stops counting
//! it) and emits `dump.failed` (stage `verify`), which alerts like any
//! other failure.
//!
//! Retries: a round that cannot reach the remote or the scratch server
//! reports it and tries again at the next round. A re-verification runs
//! under the same watchdog limits as a first verification.

use std::time::{Duration, Instant};

use backup_core::Stage;
use backup_core::bus::Bus;
use backup_core::events::{ArtifactInfo, DumpFailed, DumpVerified, EventHeader, FailureDedup};
use backup_core::manifest::{MAX_SIDECAR_BYTES, VerificationRecord};
use backup_core::names::{ArtifactName, DatabaseName, VERIFIED_SUFFIX};
use remote_store::{Store, StoreTarget};
use restore::VerifyError;
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::verify;

pub async fn run_schedule(
    bus: Bus,
    settings: Settings,
    every: Duration,
    restores: crate::Restores,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // One restore at a time within a round: it is background work.
        let _restoring = restores.one().await;
        match reverify_round(&bus, &settings).await {
            Ok(done) => tracing::info!(backups = done, "re-verification round done"),
            Err(error) => {
                tracing::warn!(error = %backup_core::error_chain(&error), "re-verification round could not list the remote")
            }
        }
    }
}

/// One round: re-verifies the oldest-verified backup of each database.
/// Returns how many were re-verified (successfully or not).
pub async fn reverify_round(bus: &Bus, settings: &Settings) -> Result<usize, VerifyError> {
    let source = crate::source(settings);
    let candidates = {
        let remote = source.connect().await?;
        let result = oldest_verified(&remote).await;
        remote.close().await;
        result?
    };
    let mut done = 0;
    for (database, record) in candidates {
        reverify_one(bus, settings, &source, &database, &record).await;
        done += 1;
    }
    Ok(done)
}

async fn oldest_verified(
    remote: &Store,
) -> Result<Vec<(DatabaseName, VerificationRecord)>, VerifyError> {
    let mut picked = Vec::new();
    let databases = match remote.list_databases().await {
        Ok(databases) => databases,
        Err(error) if !error.is_transient() => {
            tracing::debug!(%error, "nothing to re-verify yet");
            return Ok(picked);
        }
        Err(error) => return Err(error.into()),
    };
    for database in databases {
        let names: Vec<String> = remote
            .list(&database)
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let mut oldest: Option<VerificationRecord> = None;
        for name in &names {
            let Some(artifact) = name
                .strip_suffix(VERIFIED_SUFFIX)
                .and_then(|a| a.parse::<ArtifactName>().ok())
            else {
                continue;
            };
            if !names.contains(&artifact.to_string()) || !names.contains(&artifact.manifest_name())
            {
                continue;
            }
            let bytes = remote
                .read_small(&database, name, MAX_SIDECAR_BYTES)
                .await?;
            let Ok(record) = VerificationRecord::decode(&bytes) else {
                tracing::warn!(file = %name, "unreadable verification record; skipped");
                continue;
            };
            if record.artifact != artifact {
                continue;
            }
            if oldest
                .as_ref()
                .is_none_or(|o| record.verified_at < o.verified_at)
            {
                oldest = Some(record);
            }
        }
        if let Some(record) = oldest {
            picked.push((database, record));
        }
    }
    Ok(picked)
}

async fn reverify_one(
    bus: &Bus,
    settings: &Settings,
    source: &StoreTarget,
    database: &DatabaseName,
    record: &VerificationRecord,
) {
    let started = Instant::now();
    let artifact_name = &record.artifact;
    tracing::info!(artifact = %artifact_name, last_verified = %record.verified_at, "re-verifying");
    // The manifest, not the old record, is the reference.
    let outcome = async {
        let remote = source.connect().await?;
        let manifest = verify::read_manifest(&remote, database, artifact_name).await;
        remote.close().await;
        let (manifest, _) = manifest?;
        let artifact = ArtifactInfo {
            artifact: artifact_name.clone(),
            size_bytes: manifest.size_bytes,
            sha256: manifest.sha256.clone(),
        };
        let verification = verify::verify_remote(settings, source, database, &artifact).await?;
        let new_record = crate::record_of(&record.backup_id, &artifact, &verification, started);
        verify::write_record(source, database, &new_record).await?;
        let copies =
            crate::copies::prove_copies(settings, source, database, &artifact, &new_record).await;
        Ok::<_, VerifyError>((manifest, artifact, verification, new_record, copies))
    }
    .await;
    match outcome {
        Ok((manifest, artifact, mut verification, new_record, copies)) => {
            let cleanup = std::mem::take(&mut verification.cleanup);
            let verified = DumpVerified {
                // A re-verification's message id is its time: the record's.
                header: EventHeader {
                    occurred_at: new_record.verified_at,
                    ..EventHeader::now(record.backup_id.clone(), database.clone())
                },
                origin: manifest.origin,
                artifact,
                checks: verification.checks,
                tables: verification.tables,
                rows: verification.rows,
                duration_ms: new_record.duration_ms,
                steps_ms: verification.steps,
                skipped: verification.skipped,
                reverification: true,
                limits: Some(settings.limits.for_event()),
                copies: copies.proven,
                copies_failed: copies.failed,
            };
            if let Err(error) = bus.publish(&verified).await {
                tracing::warn!(%error, "re-verified, but dump.verified could not be published");
            }
            tracing::info!(artifact = %artifact_name, "re-verified");
            cleanup.finish().await;
        }
        Err(error) => {
            let condemned = error.condemns_backup();
            tracing::error!(artifact = %artifact_name, error = %backup_core::error_chain(&error), condemned, "re-verification failed");
            if condemned
                && let Err(e) = verify::remove_record(source, database, artifact_name).await
            {
                tracing::warn!(error = %e, "could not withdraw the verification record");
            }
            let failed = DumpFailed::new(
                EventHeader::now(record.backup_id.clone(), database.clone()),
                Default::default(),
                Stage::Verify,
                format!(
                    "re-verification of {artifact_name}: {}",
                    backup_core::error_chain(&error)
                ),
            )
            .with_artifact(artifact_name.clone())
            .with_attempt(1, !condemned)
            .with_aborted(error.aborted_step())
            // Not one per attempt: that would take it for the backup's
            // first failure.
            .with_dedup(FailureDedup::Reverification);
            bus.publish_failure(&failed).await;
        }
    }
}
