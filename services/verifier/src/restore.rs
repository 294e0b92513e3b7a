//! Restoring one stored artifact into a database, streaming: the bytes as
//! stored (from the SFTP server for the verifier, from wherever for
//! `backupctl restore`) are hashed as they arrive, decrypted (age) when the
//! artifact is encrypted, decompressed, and fed to `psql` (plain format,
//! through [`crate::sqlfilter`]) or staged in a private temporary file for
//! `pg_restore -j` (custom format, which needs a seekable file).
//!
//! Download and hashing run in their own task and always read the whole
//! artifact, even when the restore stops early, so a corrupted copy is
//! reported as a checksum mismatch rather than as whatever error the
//! corruption caused downstream. Memory stays flat: a few 256 KiB buffers
//! whatever the size of the dump.
//!
//! Everything that moves is counted in a [`Meter`]: bytes read from the
//! remote (`download`), bytes fed to `psql` or moved by `pg_restore` and its
//! `-j` workers (`restore`), and ticks of work the scratch server does on
//! its own (an index build moves no byte we see). The verifier runs the
//! whole pipeline under [`backup_core::watchdog::guard`] on that meter; an
//! abort drops it, which kills `psql` / `pg_restore` with their whole
//! process group ([`ProcessGroup`]) and stops the download task.
//! [`restore_stream`] (`backupctl restore`) runs no watchdog and leaves the
//! children in the caller's process group, where Ctrl-C reaches them.
//!
//! Retries: none here. Errors are classified by [`VerifyError::is_transient`]
//! and the caller decides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use backup_core::events::AbortedStep;
use backup_core::files::Digester;
use backup_core::manifest::Manifest;
use backup_core::names::{Compression, DumpFormat, Sha256Hex};
use backup_core::pg::{PgError, PgTarget};
use backup_core::watchdog::{Aborted, Counted, Limits, ProcessGroup, Progress};
use bytes::Bytes;
use remote_sftp::RemoteError;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::sqlfilter::{FilterReport, PlainFilter};

const CHUNK: usize = 256 * 1024;

/// Why a verification or restore failed. The message starts with the name
/// of the check that failed, and that is what `dump.failed` carries.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Scratch(#[from] PgError),
    #[error("manifest: {artifact}: {detail}")]
    Manifest { artifact: String, detail: String },
    #[error(
        "checksum: the stored copy of {artifact} does not match: expected sha256 {expected}, read {actual} ({bytes} bytes)"
    )]
    Checksum {
        artifact: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("decryption: {artifact}: {detail}")]
    Decrypt { artifact: String, detail: String },
    #[error("decompression: {artifact} does not decompress: {detail}")]
    Decompress { artifact: String, detail: String },
    #[error(
        "extensions: {artifact} needs extension(s) the scratch server does not have: {missing} (install them there)"
    )]
    MissingExtensions { artifact: String, missing: String },
    #[error(
        "roles: {artifact} has objects owned by or granted to role(s) missing on the target server: {roles}"
    )]
    MissingRoles { artifact: String, roles: String },
    #[error("restore: {artifact}: {detail}")]
    Restore { artifact: String, detail: String },
    #[error("row counts: {count} table(s) differ from the manifest, first {first}; all: {details}")]
    RowCounts {
        count: usize,
        first: String,
        details: String,
    },
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("operator check {name:?} failed: {detail}")]
    OperatorCheck { name: String, detail: String },
    /// Local staging of a custom-format archive (disk full, permissions).
    #[error("staging: {0}")]
    Staging(String),
    /// The watchdog stopped a step that made no progress or ran too long.
    #[error("{} of {artifact} {}", .aborted.step(), .aborted.cause())]
    Aborted {
        artifact: String,
        aborted: Aborted,
        limits: Limits,
    },
}

impl VerifyError {
    pub fn is_transient(&self) -> bool {
        match self {
            VerifyError::Remote(e) => e.is_transient(),
            VerifyError::Scratch(e) => e.is_transient(),
            VerifyError::Staging(_) => true,
            // A lock or a stalled server may be gone by the next attempt.
            VerifyError::Aborted { .. } => true,
            _ => false,
        }
    }

    /// What the watchdog stopped, for `dump.failed`.
    pub fn aborted_step(&self) -> Option<AbortedStep> {
        match self {
            VerifyError::Aborted {
                aborted, limits, ..
            } => Some(AbortedStep::new(aborted, limits)),
            _ => None,
        }
    }

    /// Whether the error is a finding about the backup itself (as opposed
    /// to the path to it): such a backup must not count as verified.
    pub fn condemns_backup(&self) -> bool {
        !matches!(
            self,
            VerifyError::Remote(_)
                | VerifyError::Scratch(_)
                | VerifyError::Staging(_)
                | VerifyError::MissingExtensions { .. }
                | VerifyError::MissingRoles { .. }
                | VerifyError::Aborted { .. }
        ) && !(matches!(self, VerifyError::Decrypt { detail, .. } if detail.contains(IDENTITY_HINT)))
    }
}

const IDENTITY_HINT: &str = "AGE_IDENTITY_FILE";

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `psql` for plain-format dumps.
    pub psql: PathBuf,
    /// `pg_restore` for custom-format archives.
    pub pg_restore: PathBuf,
    /// Parallel jobs for `pg_restore -j` (custom format only).
    pub jobs: u32,
    /// age identities, needed for encrypted artifacts.
    pub age_identity: Option<PathBuf>,
    /// Where a private directory is made for staging custom-format
    /// archives. The system temporary directory when `None`.
    pub staging_dir: Option<PathBuf>,
    /// Restore owners and privileges as dumped (a restore an application
    /// will use). Every role the dump names must exist on the target: a
    /// custom-format archive is checked before anything is restored, a
    /// plain script is restored in one transaction that is rolled back
    /// when a role is missing. `false` (the verifier's scratch restore):
    /// objects belong to the role that restores, privileges are left out.
    pub keep_owners: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            psql: "psql".into(),
            pg_restore: "pg_restore".into(),
            jobs: 2,
            age_identity: None,
            staging_dir: None,
            keep_owners: false,
        }
    }
}

/// The stored artifact bytes and the manifest that describes them.
#[derive(Debug)]
pub struct RestoreSource<R> {
    pub reader: R,
    pub manifest: Manifest,
}

/// Reported while the artifact is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    pub bytes_read: u64,
    pub total_bytes: u64,
}

/// Called with progress, at most every few MiB and once at the end.
pub type ProgressFn = Arc<dyn Fn(RestoreProgress) + Send + Sync>;

/// What a restore established.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub sha256: Sha256Hex,
    pub bytes: u64,
    pub format: DumpFormat,
    /// What was deliberately not applied (ownership, privileges...).
    pub skipped: Vec<String>,
    /// Extensions the dump created.
    pub extensions: Vec<String>,
    pub checks: Vec<String>,
    /// Milliseconds per step (`download`, `restore`, ...). Steps overlap
    /// for plain dumps: the download runs while psql restores.
    pub steps: BTreeMap<String, u64>,
}

/// Where a verification is, for blaming a stall on the right step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Download and restore run side by side; the one waiting is to blame.
    Restore = 0,
    /// Archives that are only read back: everything is the download.
    Download = 1,
    /// Row counts and other checks on the restored database.
    Checks = 2,
}

/// Progress of one verification, shared by the download task, the restore,
/// the server watcher and the watchdog (see the module docs).
#[derive(Debug, Clone)]
pub struct Meter {
    download: Progress,
    restore: Progress,
    /// Everything that counts as moving: what the watchdog watches.
    activity: Progress,
    /// Whether the download task is waiting on the remote right now.
    reading: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    /// Whether psql and pg_restore get their own process group, killed
    /// whole when the restore is dropped.
    own_group: bool,
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

impl Meter {
    /// A meter for a restore that a watchdog may abort: children run in
    /// their own process group.
    pub fn new() -> Self {
        Self {
            download: Progress::new(),
            restore: Progress::new(),
            activity: Progress::new(),
            reading: Arc::default(),
            phase: Arc::default(),
            own_group: true,
        }
    }

    /// A meter for an operator's restore (`backupctl restore`): children
    /// stay in the caller's process group, so Ctrl-C in the terminal
    /// reaches them too.
    fn interactive() -> Self {
        Self {
            own_group: false,
            ..Self::new()
        }
    }

    /// Starts `command` as this meter's restores start children (see
    /// `own_group`); the guard kills the group when dropped, or guards
    /// nothing for an interactive restore.
    fn spawn(
        &self,
        command: &mut tokio::process::Command,
    ) -> std::io::Result<(tokio::process::Child, ProcessGroup)> {
        if self.own_group {
            command.process_group(0);
        }
        let child = command.kill_on_drop(true).spawn()?;
        let group = ProcessGroup::new(child.id().filter(|_| self.own_group));
        Ok((child, group))
    }

    /// What the watchdog watches.
    pub fn activity(&self) -> &Progress {
        &self.activity
    }

    /// Bytes read from the remote so far.
    pub fn downloaded(&self) -> u64 {
        self.download.bytes()
    }

    /// Bytes fed to psql or moved by pg_restore so far.
    pub fn restored(&self) -> u64 {
        self.restore.bytes()
    }

    /// Work the scratch server does without moving bytes we see.
    pub fn server_working(&self) {
        self.activity.add(1);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn add_restored(&self, bytes: u64) {
        self.restore.add(bytes);
        self.activity.add(bytes);
    }

    /// The step to blame for a stall and the bytes it had moved. While
    /// download and restore run side by side, a download task waiting on the
    /// remote means the remote is slow; one that is waiting for the restore
    /// to take its data, or is done, means the restore is stuck.
    fn blame(&self) -> (&'static str, u64) {
        let phase = self.phase.load(Ordering::Relaxed);
        if phase == Phase::Download as u8 || self.reading.load(Ordering::Relaxed) {
            ("download", self.downloaded())
        } else if phase == Phase::Checks as u8 {
            ("checks", self.restored())
        } else {
            ("restore", self.restored())
        }
    }

    /// The watchdog's verdict (given for the pipeline as a whole), with the
    /// step and the byte count of the step to blame.
    pub fn attribute(&self, aborted: &Aborted) -> Aborted {
        let (step, bytes) = self.blame();
        match *aborted {
            Aborted::Stalled { idle, .. } => Aborted::Stalled { step, bytes, idle },
            Aborted::DeadlineExceeded { deadline, .. } => Aborted::DeadlineExceeded {
                step,
                bytes,
                deadline,
            },
        }
    }
}

/// Aborts a spawned task when dropped, so an aborted restore does not
/// leave its download running against the remote.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

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
    let artifact = manifest.artifact.to_string();
    let kind = manifest.artifact.kind();
    if kind.encrypted {
        // Checked before anything is read: a missing key is a
        // configuration failure, and must say so.
        match &options.age_identity {
            None => {
                return Err(VerifyError::Decrypt {
                    artifact,
                    detail: format!(
                        "the artifact is age-encrypted and {IDENTITY_HINT} is not set; cannot verify it"
                    ),
                });
            }
            Some(path) if !path.is_file() => {
                return Err(VerifyError::Decrypt {
                    artifact,
                    detail: format!(
                        "{IDENTITY_HINT} {} does not exist or is not a file",
                        path.display()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if matches!(kind.format, DumpFormat::Globals | DumpFormat::Tar) {
        return check_archive(reader, manifest, options, progress, meter).await;
    }
    let (roles, extensions) = server_roles_and_extensions(target).await?;

    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let total = manifest.size_bytes;
    let mut pump = AbortOnDrop(tokio::spawn(pump(
        reader,
        tx,
        total,
        progress,
        meter.clone(),
    )));
    let stream_reader = tokio_util::io::StreamReader::new(tokio_stream_from(rx));

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
    let pumped = (&mut pump.0)
        .await
        .map_err(|e| VerifyError::Staging(e.to_string()))?;
    let (digest, download) = pumped.map_err(|e| VerifyError::Remote(RemoteError::from_io(e)))?;
    let (sha256, bytes) = digest.finish();
    steps.insert("download".into(), millis(download));
    if sha256 != manifest.sha256 || bytes != manifest.size_bytes {
        return Err(VerifyError::Checksum {
            artifact,
            expected: manifest.sha256.to_string(),
            actual: sha256.to_string(),
            bytes,
        });
    }
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

fn tokio_stream_from(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin + Send {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Globals scripts and media archives are not restored (roles are global
/// to a server; media are files): they are checksummed, decrypted,
/// decompressed and parsed — every SQL statement of a globals script must
/// be complete, every tar header must be valid — and what they hold is
/// listed in the checks.
pub async fn check_archive<R>(
    reader: R,
    manifest: Manifest,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
    meter: &Meter,
) -> Result<RestoreReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    let kind = manifest.artifact.kind();
    let started = Instant::now();
    meter.set_phase(Phase::Download);
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let mut pump = AbortOnDrop(tokio::spawn(pump(
        reader,
        tx,
        manifest.size_bytes,
        progress,
        meter.clone(),
    )));
    let parsed = async {
        let plaintext = decrypted(
            tokio_util::io::StreamReader::new(tokio_stream_from(rx)),
            &manifest,
            options,
        )
        .await?;
        let mut data = decompressed(plaintext, &manifest).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut lister = crate::archive::Lister::new(kind.format);
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(|e| decode_error(&manifest, &e))?;
            if n == 0 {
                break;
            }
            lister.push(&buf[..n]);
        }
        lister.finish().map_err(|detail| VerifyError::Restore {
            artifact: artifact.clone(),
            detail,
        })
    }
    .await;
    let pumped = (&mut pump.0)
        .await
        .map_err(|e| VerifyError::Staging(e.to_string()))?;
    let (digest, download) = pumped.map_err(|e| VerifyError::Remote(RemoteError::from_io(e)))?;
    let (sha256, bytes) = digest.finish();
    if sha256 != manifest.sha256 || bytes != manifest.size_bytes {
        return Err(VerifyError::Checksum {
            artifact,
            expected: manifest.sha256.to_string(),
            actual: sha256.to_string(),
            bytes,
        });
    }
    let listed = parsed?;
    let mut checks = vec![format!("sha256 of {bytes} bytes as stored")];
    if kind.encrypted {
        checks.push("age decryption".into());
    }
    checks.push("decompression".into());
    checks.push(listed);
    Ok(RestoreReport {
        sha256,
        bytes,
        format: kind.format,
        skipped: Vec::new(),
        extensions: Vec::new(),
        checks,
        steps: BTreeMap::from([
            ("download".to_owned(), millis(download)),
            ("parse".to_owned(), millis(started.elapsed())),
        ]),
    })
}

/// Reads the whole artifact, hashing it, and forwards it while anyone
/// listens. On a read error the channel just ends; the error is returned
/// here, where it is classified.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    total: u64,
    progress: Option<ProgressFn>,
    meter: Meter,
) -> std::io::Result<(Digester, Duration)> {
    let started = Instant::now();
    let mut reader = Counted::new(
        Counted::new(reader, meter.download.clone()),
        meter.activity.clone(),
    );
    let mut digest = Digester::default();
    let mut listening = true;
    let mut next_report = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        meter.reading.store(true, Ordering::Relaxed);
        let read = reader.read(&mut buf).await;
        meter.reading.store(false, Ordering::Relaxed);
        let n = read?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        digest.update(&buf);
        if listening && tx.send(Ok(Bytes::from(buf))).await.is_err() {
            listening = false;
        }
        if let Some(progress) = &progress
            && digest.bytes() >= next_report
        {
            progress(RestoreProgress {
                bytes_read: digest.bytes(),
                total_bytes: total,
            });
            next_report = digest.bytes() + 4 * 1024 * 1024;
        }
    }
    if let Some(progress) = &progress {
        progress(RestoreProgress {
            bytes_read: digest.bytes(),
            total_bytes: total,
        });
    }
    Ok((digest, started.elapsed()))
}

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

type Plaintext = Box<dyn AsyncRead + Unpin + Send>;

/// The decrypted bytes (or the stored bytes when not encrypted).
async fn decrypted<R>(
    stored: R,
    manifest: &Manifest,
    options: &RestoreOptions,
) -> Result<Plaintext, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    if !manifest.artifact.kind().encrypted {
        return Ok(Box::new(stored));
    }
    let identity = options
        .age_identity
        .clone()
        .expect("checked by restore_stream");
    let decrypt_error = |detail: String| VerifyError::Decrypt {
        artifact: artifact.clone(),
        detail,
    };
    let decryptor =
        age::Decryptor::new_async_buffered(BufReader::with_capacity(CHUNK, stored).compat())
            .await
            .map_err(|e| decrypt_error(format!("not a valid age file: {e}")))?;
    // Identities are not Send; they live only in this synchronous scope.
    let reader = {
        let file =
            age::IdentityFile::from_file(identity.to_string_lossy().into_owned()).map_err(|e| {
                decrypt_error(format!(
                    "cannot read {IDENTITY_HINT} {}: {e}",
                    identity.display()
                ))
            })?;
        let identities = file
            .into_identities()
            .map_err(|e| decrypt_error(format!("unusable identity in {IDENTITY_HINT}: {e}")))?;
        decryptor
            .decrypt_async(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| decrypt_error(e.to_string()))?
    };
    Ok(Box::new(reader.compat()))
}

/// Where the decompressed stream comes from, once its first bytes showed
/// what it holds. pg_dump's custom format may carry its own compression,
/// in which case there is no outer layer to remove.
async fn decompressed(plaintext: Plaintext, manifest: &Manifest) -> Result<Plaintext, VerifyError> {
    let mut buffered = BufReader::with_capacity(CHUNK, plaintext);
    let head = buffered
        .fill_buf()
        .await
        .map_err(|e| VerifyError::Decrypt {
            artifact: manifest.artifact.to_string(),
            detail: backup_core::one_line(&e.to_string()),
        })?;
    if head.starts_with(b"PGDMP") {
        return Ok(Box::new(buffered));
    }
    // Parallel writers (pigz-style) produce several members per file.
    Ok(match manifest.artifact.kind().compression {
        Compression::Gzip => {
            let mut decoder = GzipDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::Zstd => {
            let mut decoder = ZstdDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
    })
}

/// A decoding error: decryption (age's stream is authenticated) or
/// decompression, told apart by layer.
fn decode_error(manifest: &Manifest, error: &std::io::Error) -> VerifyError {
    let artifact = manifest.artifact.to_string();
    let detail = backup_core::one_line(&error.to_string());
    if manifest.artifact.kind().encrypted
        && error.kind() == std::io::ErrorKind::InvalidData
        && detail.to_lowercase().contains("decrypt")
    {
        VerifyError::Decrypt { artifact, detail }
    } else {
        VerifyError::Decompress { artifact, detail }
    }
}

async fn restore_plain<R>(
    stored: R,
    manifest: &Manifest,
    target: &PgTarget,
    options: &RestoreOptions,
    roles: BTreeSet<String>,
    extensions: BTreeSet<String>,
    meter: &Meter,
) -> Result<FilterReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    let plaintext = decrypted(stored, manifest, options).await?;
    let mut sql = decompressed(plaintext, manifest).await?;
    let mut filter = if options.keep_owners {
        PlainFilter::keeping_owners(roles, extensions)
    } else {
        PlainFilter::new(roles, extensions)
    };

    let (mut psql, _group) =
        spawn_psql(&options.psql, target, &artifact, meter, options.keep_owners)?;
    // Bytes psql took: a psql waiting on the server stops taking them.
    let mut stdin = Counted::new(
        Counted::new(
            psql.stdin.take().expect("piped stdin"),
            meter.restore.clone(),
        ),
        meter.activity.clone(),
    );
    let stderr = psql.stderr.take().expect("piped stderr");
    let stderr_tail = tokio::spawn(first_error_line(stderr));

    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 4096);
    let mut decode_failure = None;
    let mut psql_gone = false;
    loop {
        let n = match sql.read(&mut buf).await {
            Ok(0) => {
                filter.finish(&mut out);
                0
            }
            Ok(n) => {
                filter.push(&buf[..n], &mut out);
                n
            }
            Err(error) => {
                decode_failure = Some(error);
                break;
            }
        };
        if !filter.report().missing_extensions.is_empty() {
            break;
        }
        if !filter.report().missing_roles.is_empty() {
            // Nothing more goes to psql, whose transaction is rolled back
            // when it is killed below; the rest is read to name every
            // missing role at once.
            out.clear();
            if n == 0 {
                break;
            }
            continue;
        }
        if !out.is_empty() {
            if stdin.write_all(&out).await.is_err() {
                // psql stopped (ON_ERROR_STOP): its exit status tells why.
                psql_gone = true;
                break;
            }
            out.clear();
        }
        if n == 0 {
            break;
        }
    }
    drop(stdin);
    drop(sql);
    let missing = filter.report().missing_extensions.clone();
    let missing_roles = filter.report().missing_roles.clone();
    if !missing.is_empty() || !missing_roles.is_empty() {
        // Killed, never left to read end of input: with one transaction,
        // end of input would commit what was sent.
        let _ = psql.kill().await;
    }
    let status = psql.wait().await.map_err(|e| VerifyError::Restore {
        artifact: artifact.clone(),
        detail: e.to_string(),
    })?;
    let psql_error = stderr_tail.await.unwrap_or_default();
    if !missing.is_empty() {
        return Err(VerifyError::MissingExtensions {
            artifact,
            missing: missing.join(", "),
        });
    }
    if !missing_roles.is_empty() {
        return Err(missing_roles_error(artifact, &missing_roles));
    }
    if let Some(error) = decode_failure {
        return Err(decode_error(manifest, &error));
    }
    if psql_gone || !status.success() {
        return Err(VerifyError::Restore {
            artifact,
            detail: if psql_error.is_empty() {
                format!("psql exited with {status}")
            } else {
                psql_error
            },
        });
    }
    Ok(filter.report().clone())
}

fn missing_roles_error(artifact: String, roles: &BTreeSet<String>) -> VerifyError {
    VerifyError::MissingRoles {
        artifact,
        roles: roles
            .iter()
            .map(|r| backup_core::pg::quote_ident(r))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Starts psql (see [`Meter::spawn`]): dropping the guard (an aborted
/// restore) kills it and anything it started. `single_transaction`: the
/// whole script commits at its end or not at all.
fn spawn_psql(
    psql: &Path,
    target: &PgTarget,
    artifact: &str,
    meter: &Meter,
    single_transaction: bool,
) -> Result<(tokio::process::Child, ProcessGroup), VerifyError> {
    let mut command = tokio::process::Command::new(psql);
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]);
    if single_transaction {
        command.arg("--single-transaction");
    }
    meter
        .spawn(
            command
                .envs(target.child_env())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: format!("cannot start {}: {e}", psql.display()),
        })
}

/// Custom format: the archive is staged (0600, in a 0700 directory removed
/// afterwards) because `pg_restore -j` needs a seekable file. Policies are
/// restored last through the plain filter, so that policies naming roles
/// the scratch server lacks still restore.
#[allow(clippy::too_many_arguments)]
async fn restore_custom<R>(
    stored: R,
    manifest: &Manifest,
    target: &PgTarget,
    options: &RestoreOptions,
    roles: BTreeSet<String>,
    extensions: BTreeSet<String>,
    steps: &mut BTreeMap<String, u64>,
    meter: &Meter,
) -> Result<FilterReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    let staging = |e: std::io::Error| VerifyError::Staging(backup_core::one_line(&e.to_string()));
    let base = options
        .staging_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    // tempfile makes the directory 0700; it is removed on drop.
    let dir = tempfile::Builder::new()
        .prefix("verifier-")
        .tempdir_in(&base)
        .map_err(staging)?;
    let archive = dir.path().join("archive.dump");
    let started = Instant::now();
    {
        let plaintext = decrypted(stored, manifest, options).await?;
        let mut data = decompressed(plaintext, manifest).await?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&archive)
            .map_err(staging)?;
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match data.read(&mut buf).await {
                Ok(n) => n,
                Err(error) => return Err(decode_error(manifest, &error)),
            };
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.map_err(staging)?;
        }
        file.flush().await.map_err(staging)?;
    }
    steps.insert("stage".into(), millis(started.elapsed()));

    let listing = run_pg_restore(
        options,
        target,
        &artifact,
        &["-l".into(), path_arg(&archive)],
        meter,
    )
    .await?;
    let mut report = FilterReport::default();
    let mut main_list = String::new();
    let mut policy_list = String::new();
    for line in listing.lines() {
        // `123; 3079 16385 EXTENSION - pgcrypto`
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(';') {
            if let Some(at) = fields.iter().position(|f| *f == "EXTENSION")
                && fields.get(at + 1) == Some(&"-")
                && let Some(name) = fields.get(at + 2)
            {
                report.extensions.push((*name).to_owned());
                if !extensions.contains(*name) {
                    report.missing_extensions.push((*name).to_owned());
                }
            }
            if fields.get(3) == Some(&"POLICY") && !options.keep_owners {
                policy_list.push_str(line);
                policy_list.push('\n');
                continue;
            }
        }
        main_list.push_str(line);
        main_list.push('\n');
    }
    if !report.missing_extensions.is_empty() {
        return Err(VerifyError::MissingExtensions {
            artifact,
            missing: report.missing_extensions.join(", "),
        });
    }
    if options.keep_owners {
        // The schema as SQL (no data: quick) names every owner and grantee;
        // checked before anything is restored.
        let schema = run_pg_restore(
            options,
            target,
            &artifact,
            &[
                "--schema-only".into(),
                "--file=-".into(),
                path_arg(&archive),
            ],
            meter,
        )
        .await?;
        let mut filter = PlainFilter::keeping_owners(roles.clone(), extensions.clone());
        let mut sink = Vec::new();
        filter.push(schema.as_bytes(), &mut sink);
        filter.finish(&mut sink);
        if !filter.report().missing_roles.is_empty() {
            return Err(missing_roles_error(
                artifact,
                &filter.report().missing_roles,
            ));
        }
    }
    let main_path = dir.path().join("main.list");
    std::fs::write(&main_path, main_list).map_err(staging)?;
    let mut args: Vec<String> = vec!["--exit-on-error".into()];
    if !options.keep_owners {
        args.extend(["--no-owner".into(), "--no-privileges".into()]);
    }
    args.extend([
        format!("--jobs={}", options.jobs.max(1)),
        format!("--use-list={}", main_path.display()),
        format!("--dbname={}", conninfo_dbname(&target.dbname)),
        path_arg(&archive),
    ]);
    run_pg_restore(options, target, &artifact, &args, meter).await?;
    report.archive_without_owner_and_privileges = !options.keep_owners;

    if !policy_list.is_empty() {
        let policy_path = dir.path().join("policies.list");
        std::fs::write(&policy_path, policy_list).map_err(staging)?;
        let script = run_pg_restore(
            options,
            target,
            &artifact,
            &[
                "--no-owner".into(),
                "--no-privileges".into(),
                format!("--use-list={}", policy_path.display()),
                "--file=-".into(),
                path_arg(&archive),
            ],
            meter,
        )
        .await?;
        let mut filter = PlainFilter::new(roles, extensions);
        let mut out = Vec::new();
        filter.push(script.as_bytes(), &mut out);
        filter.finish(&mut out);
        let (mut psql, _group) = spawn_psql(&options.psql, target, &artifact, meter, false)?;
        let mut stdin = Counted::new(
            Counted::new(
                psql.stdin.take().expect("piped stdin"),
                meter.restore.clone(),
            ),
            meter.activity.clone(),
        );
        let stderr = psql.stderr.take().expect("piped stderr");
        let stderr_tail = tokio::spawn(first_error_line(stderr));
        let _ = stdin.write_all(&out).await;
        drop(stdin);
        let status = psql.wait().await.map_err(|e| VerifyError::Restore {
            artifact: artifact.clone(),
            detail: e.to_string(),
        })?;
        let error = stderr_tail.await.unwrap_or_default();
        if !status.success() {
            return Err(VerifyError::Restore {
                artifact,
                detail: format!("policies: {error}"),
            });
        }
        report.policy_roles = filter.report().policy_roles.clone();
    }
    Ok(report)
}

trait OpenOptionsPrivate {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsPrivate for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A database name as a libpq connection string, so a name containing `=`
/// is never parsed as one.
fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Runs pg_restore; returns its stdout. The failure carries its first
/// error line. pg_restore and its `-j` workers (forked, same process
/// group) are killed together if this is dropped; while they run, the
/// bytes they read and write count as restore progress.
async fn run_pg_restore(
    options: &RestoreOptions,
    target: &PgTarget,
    artifact: &str,
    args: &[String],
    meter: &Meter,
) -> Result<String, VerifyError> {
    let (child, _group) = meter
        .spawn(
            tokio::process::Command::new(&options.pg_restore)
                .args(args)
                .envs(target.child_env())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: format!("cannot start {}: {e}", options.pg_restore.display()),
        })?;
    // Only a group of its own can be told from the caller's processes.
    let pgid = child.id().filter(|_| meter.own_group);
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_io = 0u64;
    let output = loop {
        tokio::select! {
            output = &mut output => break output,
            _ = sample.tick() => {
                // The sum drops when a worker exits; only growth counts.
                let io = pgid.map_or(0, group_io_bytes);
                meter.add_restored(io.saturating_sub(last_io));
                last_io = io;
            }
        }
    };
    let output = output.map_err(|e| VerifyError::Restore {
        artifact: artifact.to_owned(),
        detail: format!("{} failed: {e}", options.pg_restore.display()),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().last())
            .unwrap_or_default();
        return Err(VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: backup_core::one_line(&format!("pg_restore: {line}")),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Bytes read and written (`rchar` + `wchar` of `/proc/<pid>/io`) by the
/// live processes of group `pgid`: pg_restore reads its archive and talks
/// to the server itself, so this is how its progress shows. 0 where /proc
/// is not readable, which only makes the watchdog stricter.
fn group_io_bytes(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|field| field.parse::<u32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) else {
            continue;
        };
        total += io
            .lines()
            .filter_map(|line| {
                let value = line
                    .strip_prefix("rchar:")
                    .or_else(|| line.strip_prefix("wchar:"))?;
                value.trim().parse::<u64>().ok()
            })
            .sum::<u64>();
    }
    total
}

/// psql's first `ERROR:` line says what went wrong; later lines are noise.
async fn first_error_line(stderr: tokio::process::ChildStderr) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut first = None;
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if first.is_none() && line.contains("ERROR") {
            first = Some(line.clone());
        }
        last = Some(line);
    }
    backup_core::one_line(&first.or(last).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled() -> Aborted {
        Aborted::Stalled {
            step: "verify",
            bytes: 0,
            idle: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_stall_is_blamed_on_the_step_that_waits() {
        let meter = Meter::new();
        meter.download.add(5000);
        meter.add_restored(700);
        // The download task waits on the remote: the remote is slow.
        meter.reading.store(true, Ordering::Relaxed);
        assert_eq!(
            meter.attribute(&stalled()),
            Aborted::Stalled {
                step: "download",
                bytes: 5000,
                idle: Duration::from_secs(300)
            }
        );
        // It waits for the restore to take its data, or is done: the
        // restore is stuck.
        meter.reading.store(false, Ordering::Relaxed);
        let aborted = meter.attribute(&stalled());
        assert_eq!((aborted.step(), aborted.bytes()), ("restore", 700));
        meter.set_phase(Phase::Checks);
        assert_eq!(meter.attribute(&stalled()).step(), "checks");
        // Archives are only read back.
        meter.set_phase(Phase::Download);
        let deadline = Aborted::DeadlineExceeded {
            step: "verify",
            bytes: 0,
            deadline: Duration::from_secs(60),
        };
        assert_eq!(
            meter.attribute(&deadline),
            Aborted::DeadlineExceeded {
                step: "download",
                bytes: 5000,
                deadline: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn aborts_name_step_and_artifact_and_are_retried_without_condemning() {
        let error = VerifyError::Aborted {
            artifact: "db_20260101_020000.sql.gz".into(),
            aborted: Aborted::Stalled {
                step: "restore",
                bytes: 42,
                idle: Duration::from_secs(300),
            },
            limits: Limits::new(Duration::from_secs(300), Duration::from_secs(3600)),
        };
        assert_eq!(
            error.to_string(),
            "restore of db_20260101_020000.sql.gz stalled: no progress for 5m after 42 bytes; aborted"
        );
        assert!(error.is_transient());
        assert!(!error.condemns_backup());
        let step = error.aborted_step().unwrap();
        assert_eq!((step.step.as_str(), step.bytes), ("restore", 42));
        assert_eq!(step.limits.stall_after_s, 300);
    }

    #[tokio::test]
    async fn group_io_counts_every_process_of_the_group() {
        // The shell forks cat, which does the reading and writing, as
        // pg_restore forks its -j workers.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "cat /dev/zero > /dev/null; true"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap();
        let mut group = ProcessGroup::new(Some(pgid));
        let mut seen = 0;
        for _ in 0..200 {
            seen = group_io_bytes(pgid);
            if seen > 1 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        group.kill();
        child.wait().await.unwrap();
        assert!(seen > 1 << 20, "{seen} bytes");
        assert_eq!(group_io_bytes(u32::MAX), 0);
    }
}
