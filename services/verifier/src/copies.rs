//! The other copies of a verified backup: once the copy on the destination
//! restored from (`VERIFY_FROM`) is proven, every other destination's copy
//! is read back whole and compared with the manifest's size and sha256
//! ([`check_copy`]): streamed through a fixed buffer, so memory stays
//! bounded whatever the size, under the same watchdog limits as a
//! restore. A copy byte for byte identical to the one restored is proven
//! as well as it: it gets its own verification record, so the pruner
//! counts it there too.
//!
//! A copy that is missing, wrong or unreadable does not condemn the
//! backup (the restored copy proved it); it is logged as an error and
//! listed in `dump.verified`'s `copies_failed`, which the notifier alerts
//! on. A copy found missing or wrong loses its verification record on its
//! destination, as a rotten backup does; one that could not be read (the
//! destination down) keeps it.
//!
//! Retries: none here. A copy that could not be checked is reported; the
//! next backup (or the next re-verification round) checks it again, and
//! the notifier's incident for that destination closes once one proves it.

use std::time::Instant;

use backup_core::events::{ArtifactInfo, CopyFailed, CopyProven, Proof};
use backup_core::files::Digester;
use backup_core::manifest::VerificationRecord;
use backup_core::names::DatabaseName;
use backup_core::watchdog::{self, Limits, Progress};
use remote_store::{Store, StoreError, StoreTarget};
use restore::VerifyError;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Settings, verify};

/// Bytes read from the destination at a time.
const CHUNK: usize = 256 * 1024;

/// Why one copy could not be proven.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The artifact or its manifest is not on the destination.
    #[error("missing: {file} is not there")]
    Missing { file: String },
    #[error("size: the stored copy of {artifact} has {actual} bytes, the manifest says {expected}")]
    Size {
        artifact: String,
        actual: u64,
        expected: u64,
    },
    /// Reading it failed (the destination, the watchdog), or its manifest
    /// or content does not match ([`VerifyError::Manifest`],
    /// [`VerifyError::Checksum`]).
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl CopyError {
    /// Whether checking again later may succeed without anyone touching the
    /// copy (the destination was unreachable, a read stalled).
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Missing { .. } | CopyError::Size { .. } => false,
            CopyError::Verify(e) => e.is_transient(),
        }
    }

    /// Whether the copy itself is bad (missing, another size, other
    /// bytes): its verification record must go.
    pub fn condemns_copy(&self) -> bool {
        match self {
            CopyError::Missing { .. } | CopyError::Size { .. } => true,
            CopyError::Verify(e) => e.condemns_backup(),
        }
    }
}

impl From<StoreError> for CopyError {
    fn from(error: StoreError) -> Self {
        CopyError::Verify(error.into())
    }
}

/// What the copies of one backup came to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Copies {
    pub proven: Vec<CopyProven>,
    pub failed: Vec<CopyFailed>,
}

/// Proves every copy of `artifact` but the one on `source`, already
/// restored (and listed first as such): each other destination's copy is
/// read back whole ([`check_copy`]) and gets `record` beside it; a copy
/// found bad loses its record there.
pub async fn prove_copies(
    settings: &Settings,
    source: &StoreTarget,
    database: &DatabaseName,
    artifact: &ArtifactInfo,
    record: &VerificationRecord,
) -> Copies {
    let mut copies = Copies::default();
    for target in crate::destinations(settings) {
        if target.label == source.label {
            copies.proven.push(CopyProven {
                label: target.label.clone(),
                destination: target.describe(),
                proof: Proof::Restored,
            });
            continue;
        }
        let started = Instant::now();
        match check_copy(settings.limits, &target, database, artifact).await {
            Ok(()) => {
                tracing::info!(
                    destination = %target.describe(),
                    artifact = %artifact.artifact,
                    duration_ms = restore::millis(started.elapsed()),
                    "copy proven by size and sha256"
                );
                // The copy is proven either way; without its record the
                // pruner merely keeps more there.
                if let Err(error) = verify::write_record(&target, database, record).await {
                    tracing::warn!(destination = %target.describe(), error = %backup_core::error_chain(&error), "could not write the verification record beside a proven copy");
                }
                copies.proven.push(CopyProven {
                    label: target.label.clone(),
                    destination: target.describe(),
                    proof: Proof::Checksum,
                });
            }
            Err(error) => {
                let message = backup_core::error_chain(&error);
                tracing::error!(
                    label = %target.label,
                    destination = %target.describe(),
                    artifact = %artifact.artifact,
                    error = %message,
                    transient = error.is_transient(),
                    "a copy of a verified backup could not be proven"
                );
                if error.condemns_copy()
                    && let Err(e) =
                        verify::remove_record(&target, database, &artifact.artifact).await
                {
                    tracing::warn!(destination = %target.describe(), error = %backup_core::error_chain(&e), "could not withdraw the verification record of a bad copy");
                }
                copies.failed.push(CopyFailed {
                    label: target.label.clone(),
                    destination: target.describe(),
                    error: message,
                });
            }
        }
    }
    copies
}

/// Checks the copy of `artifact` on `target`: its manifest describes the
/// same artifact (size and sha256), and the artifact, read back whole,
/// has that size and that sha256.
pub async fn check_copy(
    limits: Limits,
    target: &StoreTarget,
    database: &DatabaseName,
    artifact: &ArtifactInfo,
) -> Result<(), CopyError> {
    let store = target.connect().await?;
    let checked = check_on(&store, limits, database, artifact).await;
    verify::close_remote(store).await;
    checked
}

async fn check_on(
    store: &Store,
    limits: Limits,
    database: &DatabaseName,
    artifact: &ArtifactInfo,
) -> Result<(), CopyError> {
    let name = &artifact.artifact;
    let missing = |file: String| {
        move |error: VerifyError| match error {
            VerifyError::Remote(e) if e.is_not_found() => CopyError::Missing { file },
            other => CopyError::Verify(other),
        }
    };
    let (manifest, _) = verify::read_manifest(store, database, name)
        .await
        .map_err(missing(name.manifest_name()))?;
    if manifest.sha256 != artifact.sha256 || manifest.size_bytes != artifact.size_bytes {
        return Err(VerifyError::Manifest {
            artifact: name.to_string(),
            detail: format!(
                "it says {} bytes, sha256 {}, but the copy verified has {} bytes, sha256 {}",
                manifest.size_bytes, manifest.sha256, artifact.size_bytes, artifact.sha256
            ),
        }
        .into());
    }
    let Some(entry) = store.stat(database, name.as_str()).await? else {
        return Err(CopyError::Missing {
            file: name.to_string(),
        });
    };
    if entry.size != artifact.size_bytes {
        return Err(CopyError::Size {
            artifact: name.to_string(),
            actual: entry.size,
            expected: artifact.size_bytes,
        });
    }
    let reader = store.open_read(database, name.as_str()).await?;
    let progress = Progress::new();
    let digest =
        match watchdog::guard("checksum", &progress, limits, digest(reader, &progress)).await {
            Ok(digest) => digest.map_err(StoreError::from_io)?,
            Err(aborted) => {
                return Err(VerifyError::Aborted {
                    artifact: name.to_string(),
                    aborted,
                    limits,
                }
                .into());
            }
        };
    let (actual, bytes) = digest.finish();
    if actual != artifact.sha256 || bytes != artifact.size_bytes {
        return Err(VerifyError::Checksum {
            artifact: name.to_string(),
            expected: artifact.sha256.as_str().to_owned(),
            actual: actual.as_str().to_owned(),
            bytes,
        }
        .into());
    }
    Ok(())
}

/// Hashes a stream through one fixed buffer, counting its bytes in
/// `progress` for the watchdog.
async fn digest(
    mut reader: impl AsyncRead + Unpin,
    progress: &Progress,
) -> std::io::Result<Digester> {
    let mut digest = Digester::default();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(digest);
        }
        digest.update(&buffer[..read]);
        progress.add(read as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_digest_streams_and_counts() {
        let data = vec![7u8; 3 * CHUNK + 5];
        let progress = Progress::new();
        let digest = digest(&data[..], &progress).await.unwrap();
        assert_eq!(progress.bytes(), data.len() as u64);
        let (sha, bytes) = digest.finish();
        assert_eq!(bytes, data.len() as u64);
        let mut whole = Digester::default();
        whole.update(&data);
        assert_eq!(whole.finish().0, sha);
    }

    #[test]
    fn only_a_bad_copy_loses_its_record() {
        let missing = CopyError::Missing { file: "x".into() };
        assert!(missing.condemns_copy() && !missing.is_transient());
        let size = CopyError::Size {
            artifact: "x".into(),
            actual: 1,
            expected: 2,
        };
        assert_eq!(
            size.to_string(),
            "size: the stored copy of x has 1 bytes, the manifest says 2"
        );
        assert!(size.condemns_copy());
        let checksum = CopyError::from(VerifyError::Checksum {
            artifact: "x".into(),
            expected: "a".into(),
            actual: "b".into(),
            bytes: 2,
        });
        assert!(checksum.condemns_copy() && !checksum.is_transient());
        let down = CopyError::from(StoreError::from_io(std::io::Error::other("reset")));
        assert!(down.is_transient() && !down.condemns_copy());
    }
}
