//! Delivery to an S3-compatible bucket, with the rules of the other
//! destinations: the object for `<prefix>/<database>/<artifact>` already
//! there with the same size and SHA-256 (its manifest, or the `sha256`
//! metadata the uploader writes) means already shipped; anything else is a
//! [`ShipError::Conflict`] and the object is left alone. Otherwise the
//! artifact is uploaded (multipart above the part size, see `remote_s3`),
//! and its manifest is written last, so a manifest always means a
//! complete artifact. There is no `.partial` to clean: S3 shows an object
//! only once its upload completed, and uploads left open by a killed run
//! are aborted by the next one.
//!
//! Progress for the watchdog is the bytes S3 acknowledged (whole parts)
//! plus the bytes read back when an existing object must be hashed.
//! Nothing here retries: the caller owns the schedule.

use std::sync::atomic::{AtomicU64, Ordering};

use backup_core::files::Digester;
use backup_core::manifest::MAX_SIDECAR_BYTES;
use backup_core::names::Sha256Hex;
use backup_core::watchdog::{Counted, Progress};
use remote_s3::S3Remote;
use tokio::io::AsyncReadExt;

use super::{Delivered, Existing, LocalArtifact, ShipError, judge_existing};
use crate::throttle::{Rate, Throttled};

pub(super) async fn deliver_s3(
    remote: &S3Remote,
    artifact: &LocalArtifact,
    limit: Option<Rate>,
    progress: &Progress,
) -> Result<Delivered, ShipError> {
    let database = artifact.database.as_str();
    let key = remote.key(database, artifact.name.as_str());
    let manifest_key = remote.key(database, &artifact.name.manifest_name());
    let existing = remote.head(&key).await?;
    let remote_manifest = if existing.is_some() {
        match remote.read_small(&manifest_key, MAX_SIDECAR_BYTES).await {
            Ok(bytes) => Some(bytes),
            Err(error) if error.is_not_found() => None,
            Err(error) => return Err(error.into()),
        }
    } else {
        None
    };
    let recorded = existing.as_ref().and_then(|e| e.sha256.clone());
    let hash_remote = async || -> Result<Sha256Hex, ShipError> {
        // Written by an uploader that checked it against the data.
        if let Some(sha256) = recorded
            .as_deref()
            .and_then(|s| s.parse::<Sha256Hex>().ok())
        {
            return Ok(sha256);
        }
        let mut reader = Counted::new(remote.open_read(&key).await?, progress.clone());
        let mut digest = Digester::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| ShipError::S3Read {
                key: key.clone(),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        Ok(digest.finish().0)
    };
    let existing_size = existing.as_ref().map(|e| e.size);
    match judge_existing(artifact, existing_size, remote_manifest, hash_remote).await? {
        Existing::Complete => return Ok(Delivered::AlreadyThere),
        Existing::Conflict(detail) => {
            return Err(ShipError::Conflict {
                path: format!("s3://{}/{key}", remote.settings().bucket),
                detail,
            });
        }
        Existing::NeedsManifest => {
            remote.put_small(&manifest_key, &artifact.manifest).await?;
            return Ok(Delivered::ManifestOnly);
        }
        Existing::Nothing => {}
    }

    let file = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(|source| ShipError::SpoolIo {
            path: artifact.path.clone(),
            source,
        })?;
    let reader = Throttled::new(file, limit);
    let acknowledged = AtomicU64::new(0);
    let on_ack = |total: u64| {
        let before = acknowledged.swap(total, Ordering::Relaxed);
        progress.add(total.saturating_sub(before));
    };
    remote
        .upload(
            &key,
            reader,
            artifact.size,
            artifact.sha256.as_str(),
            &on_ack,
        )
        .await?;
    tracing::debug!(%key, bytes = artifact.size, "artifact uploaded");
    remote.put_small(&manifest_key, &artifact.manifest).await?;
    Ok(Delivered::Uploaded)
}
