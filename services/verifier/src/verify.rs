//! One verification of a remote copy: read its manifest from the SFTP
//! server, restore the artifact as stored there into a fresh scratch
//! database (`<prefix>_<12 hex digits>`, a name we generate, so it can
//! neither collide nor inject), run the checks, and drop the scratch
//! database whatever happened. Also the verification record beside the
//! artifact, and the start-up sweep of scratch databases a crashed verifier
//! left behind.

use std::collections::BTreeMap;
use std::time::Instant;

use backup_core::events::ArtifactInfo;
use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest, VerificationRecord};
use backup_core::names::{ArtifactName, DatabaseName, DumpFormat};
use backup_core::pg::{PgError, PgTarget, quote_ident};
use rand::Rng;
use remote_sftp::SftpRemote;

use crate::Settings;
use crate::checks::{ManifestExtras, run_checks};
use crate::restore::{RestoreSource, VerifyError, millis, restore_stream};

/// What a successful verification established.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub checks: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    pub large_objects: u64,
    pub skipped: Vec<String>,
    pub steps: BTreeMap<String, u64>,
}

/// Reads a manifest from the remote.
pub async fn read_manifest(
    remote: &SftpRemote,
    settings: &Settings,
    database: &DatabaseName,
    name: &ArtifactName,
) -> Result<(Manifest, ManifestExtras), VerifyError> {
    let dir = settings.sftp.database_dir(database);
    let bytes = remote
        .read_file(
            &format!("{dir}/{}", name.manifest_name()),
            MAX_SIDECAR_BYTES,
        )
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

pub async fn verify_remote(
    settings: &Settings,
    database: &DatabaseName,
    artifact: &ArtifactInfo,
) -> Result<Verification, VerifyError> {
    let name = &artifact.artifact;
    let mut steps = BTreeMap::new();
    let started = Instant::now();
    let remote = SftpRemote::connect(&settings.sftp_settings).await?;
    let (manifest, extras) = read_manifest(&remote, settings, database, name).await?;
    if manifest.sha256 != artifact.sha256 || manifest.size_bytes != artifact.size_bytes {
        return Err(VerifyError::Manifest {
            artifact: name.to_string(),
            detail: format!(
                "it says {} bytes, sha256 {}, but the event says {} bytes, sha256 {}",
                manifest.size_bytes, manifest.sha256, artifact.size_bytes, artifact.sha256
            ),
        });
    }
    let reader = remote
        .open_read(&format!("{}/{name}", settings.sftp.database_dir(database)))
        .await?;

    if matches!(name.kind().format, DumpFormat::Globals | DumpFormat::Tar) {
        let listed = crate::restore::check_archive(reader, manifest, &settings.restore, None).await;
        let _ = remote.close().await;
        let listed = listed?;
        steps.extend(listed.steps);
        return Ok(Verification {
            checks: listed.checks,
            steps,
            ..Verification::default()
        });
    }

    let scratch_name = format!(
        "{}_{:012x}",
        settings.scratch_prefix,
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    );
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
    steps.insert("connect".into(), millis(started.elapsed()));
    tracing::info!(scratch = %scratch_name, artifact = %name, "restoring into a scratch database");
    let scratch = settings.scratch.with_dbname(&scratch_name);
    let outcome = async {
        let restored = restore_stream(
            RestoreSource {
                reader,
                manifest: manifest.clone(),
            },
            &scratch,
            &settings.restore,
            None,
        )
        .await?;
        let checked = run_checks(&scratch, &manifest, &extras, &settings.operator_checks).await?;
        Ok::<_, VerifyError>((restored, checked))
    }
    .await;
    // Dropped whatever happened; FORCE ends sessions a failed psql may have left.
    let dropping = Instant::now();
    if let Err(error) = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&scratch_name)
        ))
        .await
    {
        tracing::error!(scratch = %scratch_name, error = %backup_core::error_chain(&error), "could not drop the scratch database");
    }
    steps.insert("drop_scratch".into(), millis(dropping.elapsed()));
    let _ = remote.close().await;
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
    })
}

pub async fn write_record(
    settings: &Settings,
    database: &DatabaseName,
    record: &VerificationRecord,
) -> Result<(), VerifyError> {
    let remote = SftpRemote::connect(&settings.sftp_settings).await?;
    let path = format!(
        "{}/{}",
        settings.sftp.database_dir(database),
        record.artifact.verified_name()
    );
    let result = remote.write_file_atomic(&path, &record.encode()).await;
    let _ = remote.close().await;
    Ok(result?)
}

/// Withdraws the verification record of a backup found corrupt, so that
/// the pruner and `backupctl list` stop counting it as verified.
pub async fn remove_record(
    settings: &Settings,
    database: &DatabaseName,
    artifact: &ArtifactName,
) -> Result<(), VerifyError> {
    let remote = SftpRemote::connect(&settings.sftp_settings).await?;
    let path = format!(
        "{}/{}",
        settings.sftp.database_dir(database),
        artifact.verified_name()
    );
    let result = match remote.stat(&path).await {
        Ok(Some(_)) => remote.remove_file(&path).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    let _ = remote.close().await;
    Ok(result?)
}

/// Drops scratch databases an interrupted verifier left behind. Only names
/// this verifier generates (`<prefix>_` and 12 hex digits) are touched,
/// and only when nobody is connected (another verifier's restore).
pub async fn sweep_scratch_databases(
    scratch: &PgTarget,
    prefix: &str,
) -> Result<Vec<String>, PgError> {
    let client = scratch.connect("backup-verifier").await?;
    let pattern = format!("^{prefix}_[0-9a-f]{{12}}$");
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database d WHERE datname ~ $1 \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
            &[&pattern],
        )
        .await
        .map_err(|e| scratch.query_error(&e))?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await
            .map_err(|e| scratch.query_error(&e))?;
        dropped.push(name);
    }
    Ok(dropped)
}
