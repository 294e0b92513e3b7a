//! One artifact: a database dump (snapshot, row counts, pg_dump), the
//! cluster globals (`pg_dumpall --globals-only`) or a tar of the media
//! directories, streamed through [`crate::compress`] into a `.partial`
//! file, then fsync, rename, re-hash of what is on disk, manifest, and
//! `dump.created`.
//!
//! Never a false success: an artifact is announced only if its producer
//! exited 0, the compressor and encryptor wrote their trailers, the size is
//! above the floor, and the file on disk hashes to what was written. Any
//! failure drops the partial file. Retries are the caller's (see the crate
//! docs); [`DumpError::is_transient`] says which failures may pass.
//!
//! Never a hang: pg_dump gets `--lock-wait-timeout`, and the streaming pass
//! runs under the stall watchdog and deadline of
//! [`backup_core::watchdog`], counting the bytes the producer emits (before
//! compression). An aborted pass kills the producer's whole process group,
//! cancels the row-count query, and drops the partial file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_core::bus::{Bus, BusError};
use backup_core::events::{
    ArtifactInfo, DumpCreated, EventHeader, Origin, SCHEMA_VERSION, subject,
};
use backup_core::files::{self, PartialFile};
use backup_core::manifest::Manifest;
use backup_core::names::{
    ArtifactKind, ArtifactName, BackupId, DatabaseName, DumpFormat, MANIFEST_SUFFIX,
};
use backup_core::pg::{PgError, PgTarget};
use backup_core::pg_dump::NoMatchingPgDump;
use backup_core::spool_space::{STATS_FILE, SizeStats, SpaceError, check_free_space};
use backup_core::watchdog::{self, Aborted, Counted, ProcessGroup, Progress};
use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::Settings;
use crate::compress::{self, Written};

/// The spool directory (and artifact prefix) of the cluster globals.
pub const GLOBALS_NAME: &str = "globals";
/// The spool directory (and artifact prefix) of the media archive.
pub const MEDIA_NAME: &str = "media";

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    NoMatchingPgDump(#[from] NoMatchingPgDump),
    #[error("{program} failed ({status}): {stderr}")]
    PgDump {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "could not get a lock on {} within {}",
        lock_target(.table.as_deref()),
        humantime::format_duration(*.within)
    )]
    LockTimeout {
        /// `schema.table` as pg_dump names it; `None` when the row counts
        /// (which do not say which table) timed out.
        table: Option<String>,
        within: Duration,
    },
    #[error(transparent)]
    Aborted(#[from] Aborted),
    #[error(
        "no space left in the spool {dir} while writing {artifact}; the partial file was removed"
    )]
    NoSpace { dir: PathBuf, artifact: String },
    #[error(transparent)]
    SpaceCheck(#[from] SpaceError),
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot archive the media directories: {0}")]
    Files(String),
    #[error(
        "the artifact of {database} is implausibly small ({size} bytes, floor {floor}); refusing to report it"
    )]
    TooSmall {
        database: String,
        size: u64,
        floor: u64,
    },
    #[error(
        "{path} hashes to {on_disk} on disk but {written} was written; the spool is corrupting data"
    )]
    HashMismatch {
        path: PathBuf,
        written: String,
        on_disk: String,
    },
}

impl DumpError {
    /// Worth retrying without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            DumpError::Postgres(e) => e.is_transient(),
            // A killed pg_dump or a dropped connection may pass; a bad
            // option or a permission problem will not, but stderr is the
            // only way to tell and retrying a few times costs little.
            DumpError::PgDump { .. } => true,
            // Whoever holds the lock (a migration, a long transaction) or
            // made the server stall may be gone by the next attempt.
            DumpError::LockTimeout { .. } | DumpError::Aborted(_) => true,
            DumpError::Io { .. } => true,
            DumpError::SpaceCheck(e) => e.is_transient(),
            DumpError::NoSpace { .. }
            | DumpError::NoMatchingPgDump(_)
            | DumpError::Files(_)
            | DumpError::TooSmall { .. }
            | DumpError::HashMismatch { .. } => false,
        }
    }

    /// Set when the watchdog stopped the step.
    pub fn aborted(&self) -> Option<&Aborted> {
        match self {
            DumpError::Aborted(aborted) => Some(aborted),
            _ => None,
        }
    }
}

fn lock_target(table: Option<&str>) -> String {
    match table {
        Some(table) => format!("table {table}"),
        None => "a table to count its rows".to_owned(),
    }
}

/// The table pg_dump could not lock, from its stderr: with
/// `--lock-wait-timeout` it reports `canceling statement due to statement
/// timeout` (or `lock timeout`) followed by `Query was: LOCK TABLE <table>
/// IN ACCESS SHARE MODE`; a parallel worker's NOWAIT lock says `could not
/// obtain lock on relation "<table>"`.
pub fn locked_table(stderr: &str) -> Option<String> {
    let timed_out = stderr.contains("canceling statement due to statement timeout")
        || stderr.contains("canceling statement due to lock timeout")
        || stderr.contains("could not obtain lock on relation");
    if !timed_out {
        return None;
    }
    let from_query = stderr.lines().find_map(|line| {
        let rest = &line[line.find("LOCK TABLE ")? + "LOCK TABLE ".len()..];
        let end = rest.find(" IN ").unwrap_or(rest.len());
        Some(rest[..end].trim().to_owned())
    });
    let from_relation = || {
        let rest = &stderr[stderr.find("lock on relation \"")? + "lock on relation \"".len()..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    from_query
        .or_else(from_relation)
        .filter(|table| !table.is_empty())
}

/// How a dump that did not fail ended.
#[derive(Debug)]
pub enum DumpOutcome {
    Created(Box<DumpCreated>),
    /// The artifact is complete but the event could not be published.
    PublishFailed(BusError),
}

/// What to produce.
#[derive(Debug, Clone)]
pub enum Job {
    Database(DatabaseName),
    Globals,
    Media,
}

impl Job {
    /// The name the artifact, its spool directory and its events carry.
    pub fn name(&self) -> DatabaseName {
        match self {
            Job::Database(db) => db.clone(),
            Job::Globals => DatabaseName::try_from(GLOBALS_NAME.to_owned()).expect("valid name"),
            Job::Media => DatabaseName::try_from(MEDIA_NAME.to_owned()).expect("valid name"),
        }
    }
}

/// Produces the artifact of `job` (or finds the one an earlier attempt of
/// the same trigger completed) and publishes `dump.created`.
pub async fn dump_and_announce(
    settings: &Settings,
    bus: &Bus,
    job: Job,
    backup_id: &BackupId,
    origin: &Origin,
) -> Result<DumpOutcome, DumpError> {
    let name = job.name();
    let job_kind = job.clone();
    let dir = settings.spool_dir.join(name.as_str());
    let manifest = match find_existing(&dir, backup_id).await {
        Some(manifest) => {
            tracing::info!(artifact = %manifest.artifact, "already dumped for this trigger; announcing it again");
            manifest
        }
        None => match job {
            Job::Database(database) => write_dump(settings, &database, backup_id, origin).await?,
            Job::Globals => write_globals(settings, backup_id, origin).await?,
            Job::Media => write_media(settings, backup_id, origin).await?,
        },
    };
    let created = created_event(&manifest, settings.limits_for(&job_kind));
    let msg_id = format!("{backup_id}:created");
    match bus.publish(subject::CREATED, &msg_id, &created).await {
        Ok(_) => {
            tracing::info!(
                artifact = %created.artifact.artifact,
                size_bytes = created.artifact.size_bytes,
                duration_ms = created.duration_ms,
                "dump created"
            );
            Ok(DumpOutcome::Created(Box::new(created)))
        }
        Err(error) => Ok(DumpOutcome::PublishFailed(error)),
    }
}

fn created_event(manifest: &Manifest, limits: watchdog::Limits) -> DumpCreated {
    DumpCreated {
        header: EventHeader::now(manifest.backup_id.clone(), manifest.database.clone()),
        origin: manifest.origin.clone(),
        artifact: ArtifactInfo {
            artifact: manifest.artifact.clone(),
            size_bytes: manifest.size_bytes,
            sha256: manifest.sha256.clone(),
        },
        duration_ms: manifest.duration_ms,
        tables: manifest.tables.len() as u64,
        rows: manifest.total_rows(),
        limits: Some(limits.for_event()),
    }
}

/// A manifest in the spool for this backup id means a complete artifact.
async fn find_existing(dir: &Path, backup_id: &BackupId) -> Option<Manifest> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(MANIFEST_SUFFIX) {
            continue;
        }
        let Ok(bytes) = tokio::fs::read(entry.path()).await else {
            continue;
        };
        let Ok(manifest) = Manifest::decode(&bytes) else {
            continue;
        };
        if &manifest.backup_id == backup_id && dir.join(manifest.artifact.as_str()).exists() {
            return Some(manifest);
        }
    }
    None
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + use<> {
    let path = path.to_owned();
    move |source| DumpError::Io { path, source }
}

/// How often a server backend of ours checks that its client is still
/// there while a query runs (PostgreSQL 14+). A backend waiting for a lock
/// notices nothing otherwise, and would outlive a killed pg_dump for as
/// long as the lock is held, its lock request queued in everyone's way.
const CONNECTION_CHECK_MS: u64 = 5000;

/// How long cancelling the row-count query of an aborted dump may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whole milliseconds, the unit PostgreSQL reads a bare timeout number in.
fn millis(duration: Duration) -> u128 {
    duration.as_millis().max(1)
}

/// A spawned producer (pg_dump, pg_dumpall) with its stderr being collected.
struct Producer {
    program: &'static str,
    child: tokio::process::Child,
    /// Kills the producer's whole process group when the step is dropped
    /// (aborted by the watchdog, abandoned at shutdown).
    group: ProcessGroup,
    stderr_tail: tokio::task::JoinHandle<String>,
    lock_wait: Option<Duration>,
}

impl Producer {
    /// Spawns `path` in a process group of its own, with
    /// `--lock-wait-timeout` when `lock_wait` is set.
    fn spawn(
        program: &'static str,
        path: &Path,
        args: &[&str],
        target: &PgTarget,
        lock_wait: Option<Duration>,
        server_major: u32,
    ) -> Result<(Self, tokio::process::ChildStdout), DumpError> {
        let mut command = tokio::process::Command::new(path);
        command
            .args(args)
            .envs(target.child_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(lock_wait) = lock_wait {
            command.arg(format!("--lock-wait-timeout={}", millis(lock_wait)));
        }
        if server_major >= 14 {
            let mut options = std::env::var("PGOPTIONS").unwrap_or_default();
            if !options.trim().is_empty() {
                options.push(' ');
            }
            options.push_str(&format!(
                "-c client_connection_check_interval={CONNECTION_CHECK_MS}"
            ));
            command.env("PGOPTIONS", options);
        }
        let mut child = command.spawn().map_err(io_err(path))?;
        let group = ProcessGroup::new(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = tokio::spawn(tail_lines(stderr, 20));
        Ok((
            Self {
                program,
                child,
                group,
                stderr_tail,
                lock_wait,
            },
            stdout,
        ))
    }

    async fn finish(mut self) -> Result<(), DumpError> {
        let status = self.child.wait().await.map_err(|source| DumpError::Io {
            path: PathBuf::from(self.program),
            source,
        })?;
        // Whatever the leader left behind goes with it.
        self.group.kill();
        let stderr = self.stderr_tail.await.unwrap_or_default();
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::warn!(program = self.program, stderr = %backup_core::one_line(&stderr), "succeeded with warnings");
            }
            Ok(())
        } else if let (Some(within), Some(table)) = (self.lock_wait, locked_table(&stderr)) {
            Err(DumpError::LockTimeout {
                table: Some(table),
                within,
            })
        } else {
            Err(DumpError::PgDump {
                program: self.program,
                status: status.to_string(),
                stderr: backup_core::one_line(&stderr),
            })
        }
    }
}

/// A failed row count: a lock timeout (the same bound pg_dump has) is worth
/// retrying, any other query failure is not.
fn count_error(
    target: &PgTarget,
    error: &tokio_postgres::Error,
    lock_wait: Option<Duration>,
) -> DumpError {
    match lock_wait {
        Some(within)
            if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            DumpError::LockTimeout {
                table: None,
                within,
            }
        }
        _ => target.query_error(error).into(),
    }
}

fn target_for(settings: &Settings, dbname: &str) -> Result<PgTarget, DumpError> {
    settings.pg.target(dbname).map_err(|e| {
        DumpError::Postgres(PgError::Connect {
            target: dbname.to_owned(),
            cause: e.to_string(),
            transient: false,
        })
    })
}

/// Dumps one database: exported snapshot, row counts in it, pg_dump with
/// `--snapshot`, all streamed through the codec.
pub async fn write_dump(
    settings: &Settings,
    database: &DatabaseName,
    backup_id: &BackupId,
    origin: &Origin,
) -> Result<Manifest, DumpError> {
    let started = Instant::now();
    let dir = settings.spool_dir.join(database.as_str());
    files::ensure_private_dir(&dir).map_err(io_err(&dir))?;
    let target = target_for(settings, database.as_str())?;
    let client = target.connect("backup-dumper").await?;
    // The exported snapshot makes pg_dump see exactly what the row counts
    // see; the transaction must stay open until pg_dump has started.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| target.query_error(&e))?;
    if let Some(lock_wait) = settings.lock_wait_timeout {
        // The row counts wait for the same locks as pg_dump: bounded alike.
        client
            .batch_execute(&format!("SET LOCAL lock_timeout = {}", millis(lock_wait)))
            .await
            .map_err(|e| target.query_error(&e))?;
    }
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version'), \
             current_setting('server_version_num')::int, pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(|e| target.query_error(&e))?;
    let snapshot: String = row.get(0);
    let server_version: String = row.get(1);
    let server_version_num: i32 = row.get(2);
    let database_bytes = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
    let server_major = crate::pg_dump::server_major(u32::try_from(server_version_num).unwrap_or(0));
    if server_major >= 14 {
        client
            .batch_execute(&format!(
                "SET client_connection_check_interval = {CONNECTION_CHECK_MS}"
            ))
            .await
            .map_err(|e| target.query_error(&e))?;
    }
    let (pg_dump, pg_dump_version) =
        crate::pg_dump::select(server_major, settings.pg_bin_dir.as_deref()).await?;
    if settings.space_check {
        check_free_space(&dir, database, database_bytes)?;
    }

    let (kind, artifact, partial, file) =
        open_artifact(settings, &dir, database, settings.format).await?;

    let format_args: &[&str] = match settings.format {
        // Our compressor does the work; pg_dump's own would be single-threaded.
        DumpFormat::Custom => &["--format=custom", "--compress=0"],
        _ => &["--format=plain"],
    };
    let mut args = vec!["--no-password", "--snapshot", &snapshot];
    args.extend_from_slice(format_args);
    let (producer, stdout) = Producer::spawn(
        "pg_dump",
        &pg_dump,
        &args,
        &target,
        settings.lock_wait_timeout,
        server_major,
    )?;
    let progress = Progress::new();
    let stdout = Counted::new(stdout, progress.clone());
    let cancel = client.cancel_token();
    let work = async {
        let counts = backup_core::pg::table_row_counts(&client);
        let copy = compress::stream_to_file(stdout, file, &settings.codec);
        let (copied, counts) = tokio::join!(copy, counts);
        (copied, counts, producer.finish().await)
    };
    let limits = settings.limits_for(&Job::Database(database.clone()));
    let (copied, counts, produced) = match watchdog::guard("dump", &progress, limits, work).await {
        Ok(done) => done,
        Err(aborted) => {
            // pg_dump's group died with the step; the row counts may still
            // wait on whatever stalled it, holding the snapshot open.
            let _ =
                tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query(tokio_postgres::NoTls))
                    .await;
            // Returning drops the partial file.
            return Err(aborted.into());
        }
    };
    let _ = client.batch_execute("COMMIT").await;
    let written = settle(copied, produced, &dir, &artifact, &partial)?;
    let counts: BTreeMap<String, u64> =
        counts.map_err(|e| count_error(&target, &e, settings.lock_wait_timeout))?;
    let manifest = commit_artifact(
        settings,
        partial,
        written,
        ArtifactFacts {
            database,
            backup_id,
            origin,
            artifact: &artifact,
            kind,
            server_version,
            pg_dump_version,
            started,
            tables: counts,
        },
    )
    .await?;
    let stats = SizeStats {
        database_bytes,
        artifact_bytes: manifest.size_bytes,
    };
    if let Ok(bytes) = serde_json::to_vec(&stats) {
        // Only an input to the next free-space estimate; losing it is harmless.
        let _ = files::write_atomic(&dir.join(STATS_FILE), &bytes).await;
    }
    Ok(manifest)
}

/// `pg_dumpall --globals-only`: roles (with their password hashes) and
/// tablespaces, what a fresh server needs before the databases.
pub async fn write_globals(
    settings: &Settings,
    backup_id: &BackupId,
    origin: &Origin,
) -> Result<Manifest, DumpError> {
    let started = Instant::now();
    let name = Job::Globals.name();
    let dir = settings.spool_dir.join(name.as_str());
    let target = target_for(settings, "postgres")?;
    let client = target.connect("backup-dumper").await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| target.query_error(&e))?;
    let server_version: String = row.get(0);
    let server_major =
        crate::pg_dump::server_major(u32::try_from(row.get::<_, i32>(1)).unwrap_or(0));
    let (pg_dump, pg_dump_version) =
        crate::pg_dump::select(server_major, settings.pg_bin_dir.as_deref()).await?;
    let pg_dumpall = pg_dump.with_file_name("pg_dumpall");
    let (kind, artifact, partial, file) =
        open_artifact(settings, &dir, &name, DumpFormat::Globals).await?;
    let (producer, stdout) = Producer::spawn(
        "pg_dumpall",
        &pg_dumpall,
        &["--globals-only", "--no-password"],
        &target,
        settings.lock_wait_timeout,
        server_major,
    )?;
    let progress = Progress::new();
    let stdout = Counted::new(stdout, progress.clone());
    let work = async {
        let copied = compress::stream_to_file(stdout, file, &settings.codec).await;
        (copied, producer.finish().await)
    };
    let limits = settings.limits_for(&Job::Globals);
    let (copied, produced) = watchdog::guard("dump", &progress, limits, work).await?;
    let written = settle(copied, produced, &dir, &artifact, &partial)?;
    commit_artifact(
        settings,
        partial,
        written,
        ArtifactFacts {
            database: &name,
            backup_id,
            origin,
            artifact: &artifact,
            kind,
            server_version,
            pg_dump_version: pg_dump_version.replace("pg_dump", "pg_dumpall"),
            started,
            tables: BTreeMap::new(),
        },
    )
    .await
}

/// A tar stream of `BACKUP_FILES_DIRS`, each directory under its own name.
pub async fn write_media(
    settings: &Settings,
    backup_id: &BackupId,
    origin: &Origin,
) -> Result<Manifest, DumpError> {
    let started = Instant::now();
    let name = Job::Media.name();
    let dir = settings.spool_dir.join(name.as_str());
    for source in &settings.files_dirs {
        if !source.is_dir() {
            return Err(DumpError::Files(format!(
                "{} is not a directory",
                source.display()
            )));
        }
    }
    let (kind, artifact, partial, file) =
        open_artifact(settings, &dir, &name, DumpFormat::Tar).await?;

    let (to_reader, from_tar) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let sources = settings.files_dirs.clone();
    let tar = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSender {
            to: to_reader,
            buf: Vec::with_capacity(compress::BLOCK_SIZE),
        };
        let result = archive(&sources, &mut sink);
        match &result {
            Ok(_) => {
                let _ = sink.flush_chunk();
            }
            // The reader must fail too, or a truncated archive could pass.
            Err(e) => {
                let _ = sink.to.blocking_send(Err(std::io::Error::other(e.clone())));
            }
        }
        result
    });
    let reader = tokio_util::io::StreamReader::new(Box::pin(futures::stream::unfold(
        from_tar,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )));
    let progress = Progress::new();
    let reader = Counted::new(reader, progress.clone());
    let work = async {
        let copied = compress::stream_to_file(reader, file, &settings.codec).await;
        let archived = tar
            .await
            .map_err(|e| DumpError::Files(e.to_string()))
            .and_then(|r| r.map_err(DumpError::Files));
        (copied, archived)
    };
    // An aborted archive closes the channel, which stops the tar thread at
    // its next chunk (a read hung in the kernel keeps it until it returns).
    let limits = settings.limits_for(&Job::Media);
    let (copied, archived) = watchdog::guard("archive", &progress, limits, work).await?;
    let written = settle(copied, archived, &dir, &artifact, &partial)?;
    commit_artifact(
        settings,
        partial,
        written,
        ArtifactFacts {
            database: &name,
            backup_id,
            origin,
            artifact: &artifact,
            kind,
            server_version: String::new(),
            pg_dump_version: format!("tar ({} directories)", settings.files_dirs.len()),
            started,
            tables: BTreeMap::new(),
        },
    )
    .await
}

fn archive(sources: &[PathBuf], sink: &mut ChunkSender) -> Result<(), String> {
    let mut builder = tar::Builder::new(sink);
    builder.follow_symlinks(false);
    for source in sources {
        let label = source
            .file_name()
            .map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned());
        builder
            .append_dir_all(&label, source)
            .map_err(|e| format!("{}: {e}", source.display()))?;
    }
    builder.finish().map_err(|e| e.to_string())
}

/// A `Write` for the tar thread that hands 1 MiB chunks to the async side.
struct ChunkSender {
    to: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(compress::BLOCK_SIZE));
        self.to
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "compression stopped"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= compress::BLOCK_SIZE {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A second handle on the partial file for the writer thread; the
/// `PartialFile` keeps its own for fsync, rename and cleanup.
/// Names the next artifact of `database` in `format` with the configured
/// compression and encryption, and opens its `.partial` file.
async fn open_artifact(
    settings: &Settings,
    dir: &Path,
    database: &DatabaseName,
    format: DumpFormat,
) -> Result<(ArtifactKind, ArtifactName, PartialFile, std::fs::File), DumpError> {
    let kind = ArtifactKind {
        format,
        compression: settings.codec.compression,
        encrypted: settings.codec.encrypted(),
    };
    let artifact = unique_artifact_name(dir, database, kind);
    let final_path = dir.join(artifact.as_str());
    let mut partial = PartialFile::create(&final_path)
        .await
        .map_err(io_err(&final_path))?;
    let file = std_file(&mut partial).await?;
    Ok((kind, artifact, partial, file))
}

async fn std_file(partial: &mut PartialFile) -> Result<std::fs::File, DumpError> {
    let path = partial.partial_path().to_owned();
    let clone = partial.file().try_clone().await.map_err(io_err(&path))?;
    Ok(clone.into_std().await)
}

/// Combines the pass and the producer: the disk filling up explains a
/// producer's broken pipe, so it is reported first.
fn settle(
    copied: std::io::Result<Written>,
    produced: Result<(), DumpError>,
    dir: &Path,
    artifact: &ArtifactName,
    partial: &PartialFile,
) -> Result<Written, DumpError> {
    let written = match copied {
        Err(source) if is_no_space(&source) => {
            return Err(DumpError::NoSpace {
                dir: dir.to_owned(),
                artifact: artifact.to_string(),
            });
        }
        other => other,
    };
    produced?;
    written.map_err(|source| DumpError::Io {
        path: partial.partial_path().to_owned(),
        source,
    })
}

fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(nix::libc::ENOSPC)
        || error.kind() == std::io::ErrorKind::StorageFull
        || error.to_string().contains("No space left")
}

struct ArtifactFacts<'a> {
    database: &'a DatabaseName,
    backup_id: &'a BackupId,
    origin: &'a Origin,
    artifact: &'a ArtifactName,
    kind: ArtifactKind,
    server_version: String,
    pg_dump_version: String,
    started: Instant,
    tables: BTreeMap<String, u64>,
}

/// Size floor, fsync + rename, re-hash of the file on disk, manifest.
async fn commit_artifact(
    settings: &Settings,
    partial: PartialFile,
    written: Written,
    facts: ArtifactFacts<'_>,
) -> Result<Manifest, DumpError> {
    if written.size_bytes < settings.min_artifact_bytes {
        return Err(DumpError::TooSmall {
            database: facts.database.to_string(),
            size: written.size_bytes,
            floor: settings.min_artifact_bytes,
        });
    }
    let dir = partial
        .partial_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let final_path = dir.join(facts.artifact.as_str());
    let path = partial.commit().await.map_err(|source| {
        if is_no_space(&source) {
            DumpError::NoSpace {
                dir: dir.clone(),
                artifact: facts.artifact.to_string(),
            }
        } else {
            DumpError::Io {
                path: final_path.clone(),
                source,
            }
        }
    })?;
    // What we announce must be what is on disk, not what we meant to write.
    let (on_disk, on_disk_size) = files::hash_file(&path).await.map_err(io_err(&path))?;
    if on_disk != written.sha256 || on_disk_size != written.size_bytes {
        let _ = std::fs::remove_file(&path);
        return Err(DumpError::HashMismatch {
            path,
            written: written.sha256.to_string(),
            on_disk: on_disk.to_string(),
        });
    }
    tracing::debug!(
        artifact = %facts.artifact,
        input_bytes = written.input_bytes,
        size_bytes = written.size_bytes,
        "artifact written"
    );
    let manifest = Manifest {
        version: SCHEMA_VERSION,
        backup_id: facts.backup_id.clone(),
        database: facts.database.clone(),
        artifact: facts.artifact.clone(),
        size_bytes: written.size_bytes,
        sha256: written.sha256,
        format: facts.kind.format,
        compression: facts.kind.compression,
        encrypted: facts.kind.encrypted,
        server_version: facts.server_version,
        pg_dump_version: facts.pg_dump_version,
        created_at: Utc::now(),
        duration_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        trigger: if facts.origin.reason.as_deref() == Some(crate::SCHEDULE_REASON) {
            "schedule".into()
        } else {
            "manual".into()
        },
        origin: facts.origin.clone(),
        tables: facts.tables,
    };
    let manifest_path = dir.join(facts.artifact.manifest_name());
    if let Err(source) = files::write_atomic(&manifest_path, &manifest.encode()).await {
        // An artifact without its manifest is not a finished backup.
        let _ = std::fs::remove_file(&path);
        return Err(if is_no_space(&source) {
            DumpError::NoSpace {
                dir,
                artifact: facts.artifact.to_string(),
            }
        } else {
            DumpError::Io {
                path: manifest_path,
                source,
            }
        });
    }
    Ok(manifest)
}

/// Two dumps of one database within a second would share a name; the
/// later one moves to the next free second.
fn unique_artifact_name(dir: &Path, database: &DatabaseName, kind: ArtifactKind) -> ArtifactName {
    let mut at = Utc::now();
    loop {
        let name = ArtifactName::new(database, at, kind);
        if !dir.join(name.as_str()).exists() && !dir.join(name.partial_name()).exists() {
            return name;
        }
        at += chrono::Duration::seconds(1);
    }
}

/// Keeps the last `keep` lines of a child's stderr for the failure event.
async fn tail_lines<R: AsyncRead + Unpin>(stderr: R, keep: usize) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = std::collections::VecDeque::with_capacity(keep);
    while let Ok(Some(line)) = lines.next_line().await {
        if tail.len() == keep {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into_iter().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_table_comes_from_pg_dumps_stderr() {
        // As pg_dump 15 prints it with --lock-wait-timeout.
        let stderr = "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n\
                      pg_dump: detail: Query was: LOCK TABLE \"My Schema\".\"t one\" IN ACCESS SHARE MODE";
        assert_eq!(
            locked_table(stderr).as_deref(),
            Some("\"My Schema\".\"t one\"")
        );
        let nowait = "pg_dump: error: could not obtain lock on relation \"public.audit_log\"\n\
                      This usually means that someone requested an ACCESS EXCLUSIVE lock on the table.";
        assert_eq!(locked_table(nowait).as_deref(), Some("public.audit_log"));
        // Other failures keep their own line.
        assert_eq!(
            locked_table("pg_dump: error: connection to server failed: Connection refused"),
            None
        );
        assert_eq!(
            locked_table("pg_dump: detail: Query was: LOCK TABLE public.t IN ACCESS SHARE MODE"),
            None
        );
    }

    #[test]
    fn a_lock_timeout_reads_as_one_line_naming_the_table() {
        let error = DumpError::LockTimeout {
            table: Some("grading.copy".into()),
            within: Duration::from_secs(300),
        };
        assert_eq!(
            error.to_string(),
            "could not get a lock on table grading.copy within 5m"
        );
        assert!(error.is_transient());
        let stalled = DumpError::from(Aborted::Stalled {
            step: "dump",
            bytes: 123_456,
            idle: Duration::from_secs(300),
        });
        assert_eq!(
            stalled.to_string(),
            "dump stalled: no progress for 5m after 123456 bytes; aborted"
        );
        assert!(stalled.is_transient());
        assert!(stalled.aborted().is_some());
    }
}
