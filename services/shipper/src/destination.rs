//! Where artifacts go: SFTP servers (the one of the interface, `SFTP_*`,
//! and optionally a second, `SHIP_SFTP2_*`), a local or mounted
//! directory (`SHIP_LOCAL_DIR`, e.g. a NAS) and an S3-compatible bucket
//! (`S3_*`, see [`s3`] for how the steps below map onto objects). Every
//! destination gets the same treatment, in this order:
//!
//! 1. `<dir>/<database>/` is created (0700) if missing;
//! 2. the artifact's `.partial` files left there by a killed run are
//!    removed (other artifacts' are left alone: another upload may be
//!    writing them, and the pruner removes stale ones), except, on SFTP, the artifact's own `.partial` when an
//!    earlier attempt of this process knows how much of it the server
//!    acknowledged (see [`crate::resume`]), and except on an append-only
//!    SFTP account (`SFTP_APPEND_ONLY`), whose key cannot: there each
//!    upload writes a fresh, read-only `.partial` that is only ever renamed
//!    to a name not taken yet, and the pruner removes leftovers (see
//!    `remote_sftp`'s write-once mode);
//! 3. an artifact already there under its final name is checked: same size
//!    and checksum means already shipped (nothing is uploaded); anything
//!    else is a [`ShipError::Conflict`]: the remote file is left alone,
//!    the spool copy stays, and the operator is alerted (renaming the
//!    artifact would break the naming contract the verifier and the pruner
//!    rely on, and overwriting could destroy a good backup);
//! 4. the artifact is written as `<artifact>.partial`, flushed to disk and
//!    renamed; then its manifest the same way, so a manifest always means
//!    a complete artifact. On SFTP, a kept `.partial` at least as long as
//!    the acknowledged prefix, whose last 64 KiB before that offset match
//!    the spool copy, is truncated to the prefix and only the rest is sent
//!    (logged with the offset and the bytes saved); otherwise the upload
//!    starts over.
//!
//! Each delivery runs under a stall watchdog and a deadline
//! ([`backup_core::watchdog`]): progress is the bytes the destination
//! acknowledged (SFTP WRITE replies, local writes) plus the bytes read back
//! when checking an existing copy. When they stop moving for the stall
//! interval, or the deadline passes, the delivery is dropped as a whole: the
//! SFTP session goes with it (no polite close on a server that stopped
//! reading), the remote `.partial` is never renamed and is resumed or
//! removed by the next attempt, and a local `.partial` is removed by its
//! guard. The
//! SFTP client's per-request `io_timeout` still applies underneath; the
//! watchdog is the bound on the delivery as a whole.
//!
//! Nothing here retries: errors say whether a retry may help
//! ([`ShipError::is_transient`]) and the caller owns the schedule. An
//! aborted delivery is transient: the server may be back next time.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backup_core::files::{Digester, PartialFile, ensure_private_dir, write_atomic};
use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest};
use backup_core::names::{ArtifactName, DatabaseName, MANIFEST_SUFFIX, PARTIAL_SUFFIX, Sha256Hex};
use backup_core::watchdog::{self, Aborted, Counted, Limits, Progress};
use remote_s3::{S3Error, S3Remote};
use remote_sftp::{RemoteError, SftpRemote, SftpSettings};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

use crate::resume::{self, Plan};
use crate::throttle::{Rate, Throttled};

mod s3;

/// Why an artifact did not reach a destination.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("reading back {key} from S3: {source}")]
    S3Read {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    LocalDestination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not in the spool; it cannot be shipped")]
    MissingLocal(PathBuf),
    #[error("reading the spool copy {path}: {source}")]
    SpoolIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool copy of {artifact} does not match dump.created: {detail}")]
    LocalMismatch { artifact: String, detail: String },
    #[error(
        "{path} already exists with different content ({detail}); both are kept and the new \
         artifact was not shipped there: compare them, then move one away and re-publish \
         dump.created"
    )]
    Conflict { path: String, detail: String },
    #[error("upload to {destination} {}", .aborted.cause())]
    Aborted {
        destination: String,
        aborted: Aborted,
        limits: Limits,
    },
}

impl ShipError {
    /// Whether the same attempt may succeed later without anyone acting.
    pub fn is_transient(&self) -> bool {
        match self {
            ShipError::Remote(e) => e.is_transient(),
            ShipError::S3(e) => e.is_transient(),
            // A body cut off in the middle: the connection, not the data.
            ShipError::S3Read { .. } => true,
            ShipError::LocalDestination { source, .. } => io_is_transient(source),
            ShipError::Aborted { .. } => true,
            ShipError::MissingLocal(_)
            | ShipError::SpoolIo { .. }
            | ShipError::LocalMismatch { .. }
            | ShipError::Conflict { .. } => false,
        }
    }
}

/// A full disk, a read-only or forbidden directory needs a human; an I/O
/// error, a stale NFS handle or a missing mount point may heal by itself.
fn io_is_transient(error: &io::Error) -> bool {
    use io::ErrorKind as K;
    !matches!(
        error.kind(),
        K::PermissionDenied
            | K::ReadOnlyFilesystem
            | K::StorageFull
            | K::QuotaExceeded
            | K::NotADirectory
            | K::IsADirectory
            | K::InvalidInput
            | K::InvalidFilename
            | K::AlreadyExists
    )
}

/// The spool copy of an artifact, checked against its `dump.created`.
#[derive(Debug, Clone)]
pub struct LocalArtifact {
    pub name: ArtifactName,
    pub database: DatabaseName,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// The manifest exactly as the dumper wrote it.
    pub manifest: Vec<u8>,
}

/// What a destination did with an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Uploaded,
    /// Artifact and manifest were already there, identical: nothing sent.
    AlreadyThere,
    /// The artifact was there (a run died before the manifest): only the
    /// manifest was sent.
    ManifestOnly,
}

/// One place artifacts are copied to.
#[derive(Debug, Clone)]
pub enum Destination {
    Sftp {
        /// Short name used in logs and event ids (`sftp`, `sftp2`).
        label: String,
        /// Base directory; artifacts go to `<dir>/<database>/`.
        dir: String,
        settings: SftpSettings,
        /// The account may not remove or replace files (`SFTP_APPEND_ONLY`):
        /// uploads are write-once and leftovers are left to the pruner.
        append_only: bool,
    },
    Local {
        label: String,
        /// Base directory, which must exist (a missing mount point is not
        /// silently replaced by a directory on the local disk).
        dir: PathBuf,
    },
    /// An S3-compatible bucket; artifacts go to `<prefix>/<database>/`.
    S3 { label: String, remote: S3Remote },
}

impl Destination {
    pub fn label(&self) -> &str {
        match self {
            Destination::Sftp { label, .. }
            | Destination::Local { label, .. }
            | Destination::S3 { label, .. } => label,
        }
    }

    /// Whether an upload may start while the dump is written
    /// ([`crate::follow`]): SFTP accounts that can continue an upload.
    pub fn can_follow(&self) -> bool {
        matches!(
            self,
            Destination::Sftp {
                append_only: false,
                ..
            }
        )
    }

    /// Where it goes, without secrets, for events and logs:
    /// `sftp://user@host:port/dir`, `file:///dir` or
    /// `s3://bucket/prefix at host`.
    pub fn describe(&self) -> String {
        match self {
            Destination::Sftp { dir, settings, .. } => format!(
                "sftp://{}@{}:{}{}",
                settings.user, settings.host, settings.port, dir
            ),
            Destination::Local { dir, .. } => format!("file://{}", dir.display()),
            Destination::S3 { remote, .. } => remote.describe(),
        }
    }

    /// Copies the artifact and then its manifest (see the module docs),
    /// aborting as [`ShipError::Aborted`] when `limits` are exceeded.
    pub async fn deliver(
        &self,
        artifact: &LocalArtifact,
        limit: Option<Rate>,
        limits: Limits,
    ) -> Result<Delivered, ShipError> {
        let progress = Progress::new();
        let work = async {
            match self {
                Destination::Sftp {
                    dir,
                    settings,
                    append_only,
                    ..
                } => {
                    let mut remote = SftpRemote::connect(settings).await?;
                    remote.set_write_once(*append_only);
                    let dir = format!("{}/{}", dir.trim_end_matches('/'), artifact.database);
                    let target = Target {
                        remote: &remote,
                        dir: &dir,
                        resume_key: &self.describe(),
                    };
                    let result = deliver_sftp(&target, artifact, limit, &progress).await;
                    // Polite but bounded: a server that stopped reading must
                    // not hold up a delivery that is complete.
                    match tokio::time::timeout(CLOSE_TIMEOUT, remote.close()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%error, "closing the SFTP session"),
                        Err(_) => tracing::debug!("closing the SFTP session timed out"),
                    }
                    result
                }
                Destination::Local { dir, .. } => {
                    deliver_local(dir, artifact, limit, &progress).await
                }
                Destination::S3 { remote, .. } => {
                    s3::deliver_s3(remote, artifact, limit, &progress).await
                }
            }
        };
        match watchdog::guard("upload", &progress, limits, work).await {
            Ok(result) => result,
            Err(aborted) => {
                tracing::warn!(
                    destination = %self.describe(),
                    artifact = %artifact.name,
                    %aborted,
                    "delivery aborted by the watchdog"
                );
                Err(ShipError::Aborted {
                    destination: self.describe(),
                    aborted,
                    limits,
                })
            }
        }
    }
}

/// How long a finished delivery waits for the SFTP session to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What stands under the artifact's final name, and what to do about it.
enum Existing {
    Nothing,
    Complete,
    NeedsManifest,
    Conflict(String),
}

/// Decides about a pre-existing final name. `remote_manifest` is `None`
/// when there is no manifest; `remote_sha256` hashes the existing artifact,
/// called only when nothing else can tell.
async fn judge_existing<F>(
    artifact: &LocalArtifact,
    existing_size: Option<u64>,
    remote_manifest: Option<Vec<u8>>,
    remote_sha256: F,
) -> Result<Existing, ShipError>
where
    F: AsyncFnOnce() -> Result<Sha256Hex, ShipError>,
{
    let Some(size) = existing_size else {
        // A manifest without its artifact is overwritten after the upload.
        return Ok(Existing::Nothing);
    };
    if let Some(bytes) = remote_manifest {
        return Ok(match Manifest::decode(&bytes) {
            Ok(m) if m.sha256 == artifact.sha256 && size == artifact.size => Existing::Complete,
            Ok(m) => Existing::Conflict(format!(
                "there: {size} bytes, manifest sha256 {}; here: {} bytes, sha256 {}",
                m.sha256, artifact.size, artifact.sha256
            )),
            Err(e) => Existing::Conflict(format!("its manifest is unreadable: {e}")),
        });
    }
    if size != artifact.size {
        return Ok(Existing::Conflict(format!(
            "there: {size} bytes without a manifest; here: {} bytes",
            artifact.size
        )));
    }
    // Same size, no manifest: most likely our own upload that died between
    // the artifact and its manifest. Final names only ever hold complete
    // files, so the checksum settles it.
    let sha256 = remote_sha256().await?;
    Ok(if sha256 == artifact.sha256 {
        Existing::NeedsManifest
    } else {
        Existing::Conflict(format!(
            "same size but sha256 {sha256} there, {} here",
            artifact.sha256
        ))
    })
}

/// Whether `name` is a temporary file the shipper writes for `artifact`:
/// the `.partial` of the artifact or of its manifest, in either form the
/// SFTP client writes (`.partial`, or a write-once `.<8 hex>.partial`; local
/// copies use the first). Other writers' temporary files (the verifier's
/// records) and other artifacts' are left alone.
fn is_partial_of(name: &str, artifact: &ArtifactName) -> bool {
    let Some(stem) = remote_sftp::partial_target(name) else {
        return false;
    };
    stem.strip_suffix(MANIFEST_SUFFIX).unwrap_or(stem) == artifact.as_str()
}

/// An SFTP destination during one delivery.
struct Target<'a> {
    remote: &'a SftpRemote,
    /// `<dir>/<database>`.
    dir: &'a str,
    /// The destination's description, the key of its resume points.
    resume_key: &'a str,
}

async fn deliver_sftp(
    target: &Target<'_>,
    artifact: &LocalArtifact,
    limit: Option<Rate>,
    progress: &Progress,
) -> Result<Delivered, ShipError> {
    let Target {
        remote,
        dir,
        resume_key,
    } = *target;
    remote.create_dir_all(dir).await?;
    let points = resume::points();
    let acknowledged = points.acknowledged(resume_key, artifact);
    let own_partial = format!("{}{PARTIAL_SUFFIX}", artifact.name);
    let partial_path = format!("{dir}/{own_partial}");
    let mut kept_partial = None;
    // One artifact is one message, shipped once at a time, so the
    // artifact's leftover .partial files are left by a run that died; its
    // own is kept when its acknowledged prefix is known. Other
    // artifacts' partials are left alone: with SHIP_CONCURRENCY above 1
    // another upload may be writing one, and the pruner removes stale ones.
    // An append-only account cannot remove them (write-once uploads never
    // reuse one): the pruner removes them once stale.
    let leftovers = if remote.write_once() {
        Vec::new()
    } else {
        remote.list_dir(dir).await?
    };
    for entry in leftovers {
        if entry.is_dir || !is_partial_of(&entry.name, &artifact.name) {
            continue;
        }
        if entry.name == own_partial && acknowledged > 0 {
            kept_partial = Some(entry.size);
        } else {
            let path = format!("{dir}/{}", entry.name);
            tracing::info!(%path, "removing a temporary file left by an interrupted upload");
            match remote.remove_file(&path).await {
                Ok(()) | Err(RemoteError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    let final_path = format!("{dir}/{}", artifact.name);
    let manifest_path = format!("{dir}/{}", artifact.name.manifest_name());
    let existing_size = remote.stat(&final_path).await?.map(|e| e.size);
    let remote_manifest = if existing_size.is_some() {
        match remote.read_file(&manifest_path, MAX_SIDECAR_BYTES).await {
            Ok(bytes) => Some(bytes),
            Err(RemoteError::NotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        }
    } else {
        None
    };
    let hash_remote = async || -> Result<Sha256Hex, ShipError> {
        let mut reader = Counted::new(remote.open_read(&final_path).await?, progress.clone());
        let mut digest = Digester::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(RemoteError::from_io)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        Ok(digest.finish().0)
    };
    let existing = judge_existing(artifact, existing_size, remote_manifest, hash_remote).await?;
    if !matches!(existing, Existing::Nothing) && kept_partial.is_some() {
        // The final name settles it: the leftover is not needed.
        points.forget(resume_key, artifact);
        remove_if_there(remote, &partial_path).await?;
    }
    match existing {
        Existing::Complete => return Ok(Delivered::AlreadyThere),
        Existing::Conflict(detail) => {
            return Err(ShipError::Conflict {
                path: final_path,
                detail,
            });
        }
        Existing::NeedsManifest => {
            remote
                .write_file_atomic(&manifest_path, &artifact.manifest)
                .await?;
            return Ok(Delivered::ManifestOnly);
        }
        Existing::Nothing => {}
    }

    let mut file = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(|source| ShipError::SpoolIo {
            path: artifact.path.clone(),
            source,
        })?;
    let resume_from = match resume::plan(acknowledged, kept_partial, artifact.size) {
        Plan::Resume(offset) => {
            if tail_matches(remote, &partial_path, &mut file, offset, artifact).await? {
                Some(offset)
            } else {
                tracing::info!(path = %partial_path, offset, "the .partial does not end like the spool copy there; starting over");
                None
            }
        }
        Plan::StartOver(why) => {
            if acknowledged > 0 {
                tracing::info!(path = %partial_path, acknowledged, why, "not resuming; starting over");
            }
            None
        }
    };
    let base = resume_from.unwrap_or(0);
    file.seek(io::SeekFrom::Start(base))
        .await
        .map_err(|source| ShipError::SpoolIo {
            path: artifact.path.clone(),
            source,
        })?;
    let mut reader = Throttled::new(file, limit);
    // Acknowledged bytes, not bytes read from the spool: reads run up to
    // the pipeline depth ahead of a server that stopped answering. They
    // are also the resume point of the next attempt.
    let point = points.track(resume_key, artifact, base);
    let acknowledged = AtomicU64::new(0);
    let on_ack = |total: u64| {
        let before = acknowledged.swap(total, Ordering::Relaxed);
        progress.add(total.saturating_sub(before));
        point.store(base + total, Ordering::SeqCst);
    };
    let sent = if let Some(offset) = resume_from {
        tracing::info!(
            path = %final_path,
            offset,
            bytes_saved = offset,
            bytes_left = artifact.size - offset,
            "continuing the upload from the acknowledged offset"
        );
        remote
            .resume_reader(
                &mut reader,
                &artifact.path,
                artifact.size,
                offset,
                &final_path,
                &on_ack,
            )
            .await?
    } else {
        remote
            .upload_reader(
                &mut reader,
                &artifact.path,
                artifact.size,
                &final_path,
                &on_ack,
            )
            .await?
    };
    points.forget(resume_key, artifact);
    tracing::debug!(path = %final_path, bytes = sent, "artifact uploaded");
    remote
        .write_file_atomic(&manifest_path, &artifact.manifest)
        .await?;
    Ok(Delivered::Uploaded)
}

/// Removes a remote file; one that is already gone is fine.
async fn remove_if_there(remote: &SftpRemote, path: &str) -> Result<(), ShipError> {
    match remote.remove_file(path).await {
        Ok(()) | Err(RemoteError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Whether the [`resume::TAIL_CHECK`] bytes before `offset` of the remote
/// `.partial` are those of the spool copy. Leaves `file`'s position
/// anywhere.
async fn tail_matches(
    remote: &SftpRemote,
    partial: &str,
    file: &mut tokio::fs::File,
    offset: u64,
    artifact: &LocalArtifact,
) -> Result<bool, ShipError> {
    let len = offset.min(resume::TAIL_CHECK);
    let start = offset - len;
    let spool_error = |source| ShipError::SpoolIo {
        path: artifact.path.clone(),
        source,
    };
    let mut local = vec![0u8; len as usize];
    file.seek(io::SeekFrom::Start(start))
        .await
        .map_err(spool_error)?;
    file.read_exact(&mut local).await.map_err(spool_error)?;
    let there = remote.read_range(partial, start, len as u32).await?;
    Ok(there == local)
}

async fn deliver_local(
    base: &Path,
    artifact: &LocalArtifact,
    limit: Option<Rate>,
    progress: &Progress,
) -> Result<Delivered, ShipError> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| ShipError::LocalDestination { path, source }
    };
    match tokio::fs::metadata(base).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(at(base)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Err(error) => {
            // Usually an unmounted share: transient, it may come back.
            return Err(at(base)(io::Error::new(
                error.kind(),
                format!("destination directory is not available (not mounted?): {error}"),
            )));
        }
    }
    let dir = base.join(artifact.database.as_str());
    ensure_private_dir(&dir).map_err(at(&dir))?;
    let mut entries = tokio::fs::read_dir(&dir).await.map_err(at(&dir))?;
    while let Some(entry) = entries.next_entry().await.map_err(at(&dir))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_partial_of(&name, &artifact.name) {
            tracing::info!(path = %entry.path().display(), "removing a temporary file left by an interrupted copy");
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&entry.path())(e)),
            }
        }
    }

    let final_path = dir.join(artifact.name.as_str());
    let manifest_path = dir.join(artifact.name.manifest_name());
    let existing_size = match tokio::fs::metadata(&final_path).await {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(at(&final_path)(e)),
    };
    let remote_manifest = match tokio::fs::read(&manifest_path).await {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(at(&manifest_path)(e)),
    };
    let hash_existing = async || -> Result<Sha256Hex, ShipError> {
        // Counted: a large copy on a slow share must not look stalled.
        let file = tokio::fs::File::open(&final_path)
            .await
            .map_err(at(&final_path))?;
        let mut reader = Counted::new(file, progress.clone());
        let mut digest = Digester::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(at(&final_path))?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        Ok(digest.finish().0)
    };
    match judge_existing(artifact, existing_size, remote_manifest, hash_existing).await? {
        Existing::Complete => return Ok(Delivered::AlreadyThere),
        Existing::Conflict(detail) => {
            return Err(ShipError::Conflict {
                path: final_path.display().to_string(),
                detail,
            });
        }
        Existing::NeedsManifest => {
            write_atomic(&manifest_path, &artifact.manifest)
                .await
                .map_err(at(&manifest_path))?;
            return Ok(Delivered::ManifestOnly);
        }
        Existing::Nothing => {}
    }

    let source = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(|source| ShipError::SpoolIo {
            path: artifact.path.clone(),
            source,
        })?;
    let mut reader = BufReader::with_capacity(1 << 20, Throttled::new(source, limit));
    // Dropped on any error below, the guard removes the .partial file.
    let mut partial = PartialFile::create(&final_path)
        .await
        .map_err(at(&final_path))?;
    let mut written = Counted::new(partial.file(), progress.clone());
    let copied = copy_checked(&mut reader, &mut written, &artifact.path, &final_path).await?;
    if copied != artifact.size {
        return Err(ShipError::SpoolIo {
            path: artifact.path.clone(),
            source: io::Error::other(format!(
                "file changed size during the copy: {} bytes expected, {copied} read",
                artifact.size
            )),
        });
    }
    partial.file().flush().await.map_err(at(&final_path))?;
    partial.commit().await.map_err(at(&final_path))?;
    write_atomic(&manifest_path, &artifact.manifest)
        .await
        .map_err(at(&manifest_path))?;
    Ok(Delivered::Uploaded)
}

/// `tokio::io::copy_buf`, telling read errors (spool) from write errors
/// (destination) apart.
async fn copy_checked<R, W>(
    reader: &mut R,
    writer: &mut W,
    source: &Path,
    destination: &Path,
) -> Result<u64, ShipError>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let mut copied = 0u64;
    loop {
        let chunk = reader
            .fill_buf()
            .await
            .map_err(|source_error| ShipError::SpoolIo {
                path: source.to_owned(),
                source: source_error,
            })?;
        if chunk.is_empty() {
            return Ok(copied);
        }
        let len = chunk.len();
        writer
            .write_all(chunk)
            .await
            .map_err(|e| ShipError::LocalDestination {
                path: destination.to_owned(),
                source: e,
            })?;
        reader.consume(len);
        copied += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_artifacts_own_partials_are_cleaned_up() {
        let artifact: ArtifactName = "db_20260101_020000.sql.gz".parse().unwrap();
        let of = |name: &str| is_partial_of(name, &artifact);
        assert!(of("db_20260101_020000.sql.gz.partial"));
        assert!(of("db_20260101_020000.sql.gz.manifest.json.partial"));
        assert!(!of("db_20260101_020000.sql.gz"));
        assert!(!of("db_20260101_020000.sql.gz.verified.json.partial"));
        assert!(!of("db_20250101_020000.sql.gz.partial"));
        assert!(!of("notes.txt.partial"));
        assert!(of("db_20260101_020000.sql.gz.0badc0de.partial"));
        assert!(of(
            "db_20260101_020000.sql.gz.manifest.json.12345678.partial"
        ));
    }

    #[test]
    fn aborts_name_the_destination_and_are_transient() {
        let limits = Limits::new(Duration::from_secs(300), Duration::from_secs(6 * 3600));
        let stalled = ShipError::Aborted {
            destination: "sftp://u@h:22/b".into(),
            aborted: Aborted::Stalled {
                step: "upload",
                bytes: 1024,
                idle: Duration::from_secs(300),
            },
            limits,
        };
        assert_eq!(
            stalled.to_string(),
            "upload to sftp://u@h:22/b stalled: no progress for 5m after 1024 bytes; aborted"
        );
        assert!(stalled.is_transient());
        let late = ShipError::Aborted {
            destination: "file:///nas".into(),
            aborted: Aborted::DeadlineExceeded {
                step: "upload",
                bytes: 7,
                deadline: Duration::from_secs(6 * 3600),
            },
            limits,
        };
        assert_eq!(
            late.to_string(),
            "upload to file:///nas exceeded its deadline of 6h after 7 bytes; aborted"
        );
    }

    #[test]
    fn full_or_read_only_destinations_are_permanent() {
        let transient = |kind| io_is_transient(&io::Error::from(kind));
        assert!(!transient(io::ErrorKind::StorageFull));
        assert!(!transient(io::ErrorKind::PermissionDenied));
        assert!(!transient(io::ErrorKind::ReadOnlyFilesystem));
        assert!(transient(io::ErrorKind::NotFound));
        assert!(transient(io::ErrorKind::StaleNetworkFileHandle));
        assert!(transient(io::ErrorKind::TimedOut));
    }
}
