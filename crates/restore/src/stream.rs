//! Restoring a database dump: the download task reads and hashes the
//! artifact (`download`), the bytes are decoded (`decode`) and restored by
//! psql (`psql`, plain format) or pg_restore (`pg_restore`, custom format)
//! while they arrive. The verdict on the checksum comes first: a corrupted copy is reported
//! as such, whatever it made the restore do. Globals scripts and media
//! archives are only read back ([`crate::archive`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use backup_core::names::{Compression, DumpFormat};
use backup_core::pg::PgTarget;
use tokio::io::AsyncRead;

use crate::archive::check_archive;
use crate::decode::identity_for;
use crate::download::{Download, Downloaded};
use crate::error::VerifyError;
use crate::meter::{Meter, ProgressFn};
use crate::millis;
use crate::options::{RestoreOptions, RestoreReport, RestoreSource};
use crate::pg_restore::restore_custom;
use crate::psql::restore_plain;

/// Restores `source` into the (existing, empty) database `target`. Checks
/// the sha256 and size against the manifest, decrypts, decompresses, and
/// restores; row counts are compared separately
/// ([`crate::checks::run_checks`]), so `backupctl restore` can decide.
pub async fn restore_stream<R>(
    source: RestoreSource<R>,
    target: &PgTarget,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<RestoreReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    restore_stream_metered(source, target, options, progress, &Meter::interactive()).await
}

/// [`restore_stream`], counting what moves in `meter` for a watchdog.
pub async fn restore_stream_metered<R>(
    source: RestoreSource<R>,
    target: &PgTarget,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
    meter: &Meter,
) -> Result<RestoreReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let RestoreSource { reader, manifest } = source;
    let kind = manifest.artifact.kind();
    if matches!(kind.format, DumpFormat::Globals | DumpFormat::Tar) {
        return check_archive(reader, manifest, options, progress, meter).await;
    }
    identity_for(&manifest, options)?;
    let (roles, extensions) = server_roles_and_extensions(target).await?;

    let started = Instant::now();
    let (download, stream_reader) = Download::start(reader, manifest.size_bytes, progress, meter);

    let mut steps = BTreeMap::new();
    let outcome = match kind.format {
        DumpFormat::Plain => {
            restore_plain(
                stream_reader,
                &manifest,
                target,
                options,
                roles,
                extensions,
                meter,
            )
            .await
        }
        DumpFormat::Globals | DumpFormat::Tar => unreachable!("handled above"),
        DumpFormat::Custom => {
            restore_custom(
                stream_reader,
                &manifest,
                target,
                options,
                roles,
                extensions,
                &mut steps,
                meter,
            )
            .await
        }
    };
    let Downloaded {
        sha256,
        bytes,
        took,
    } = download.finish(&manifest).await?;
    steps.insert("download".into(), millis(took));
    let restored = outcome?;
    steps.insert("restore".into(), millis(started.elapsed()));
    let mut checks = vec![format!("sha256 of {bytes} bytes as stored")];
    if kind.encrypted {
        checks.push("age decryption".into());
    }
    checks.push(format!(
        "{} decompression",
        match kind.compression {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    ));
    checks.push(match kind.format {
        DumpFormat::Plain if options.keep_owners => {
            "restore with psql ON_ERROR_STOP in one transaction (owners and privileges kept)".into()
        }
        DumpFormat::Plain => "restore with psql ON_ERROR_STOP".into(),
        DumpFormat::Custom if options.keep_owners => format!(
            "restore with pg_restore --exit-on-error -j {} (owners and privileges kept)",
            options.jobs.max(1)
        ),
        DumpFormat::Custom => format!(
            "restore with pg_restore --exit-on-error --no-owner --no-privileges -j {}",
            options.jobs.max(1)
        ),
        DumpFormat::Globals | DumpFormat::Tar => unreachable!("handled above"),
    });
    if !restored.extensions.is_empty() {
        checks.push(format!(
            "extensions created: {}",
            restored.extensions.join(", ")
        ));
    }
    Ok(RestoreReport {
        sha256,
        bytes,
        format: kind.format,
        skipped: restored.skipped(),
        extensions: restored.extensions,
        checks,
        steps,
    })
}

/// The roles and the available extensions of the target server.
async fn server_roles_and_extensions(
    target: &PgTarget,
) -> Result<(BTreeSet<String>, BTreeSet<String>), VerifyError> {
    let client = target.connect("backup-verifier").await?;
    let roles = client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| target.query_error(&e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let extensions = client
        .query("SELECT name::text FROM pg_available_extensions", &[])
        .await
        .map_err(|e| target.query_error(&e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok((roles, extensions))
}
