//! The media artifact: a tar of `BACKUP_FILES_DIRS`, each directory under
//! its own name, built on a blocking thread and streamed through
//! [`crate::compress`] into the spool under the stall watchdog and
//! deadline (step `archive`). No retries here (see the crate docs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use backup_core::manifest::Manifest;
use backup_core::names::DumpFormat;
use backup_core::watchdog::{self, Counted, Progress};

use crate::Settings;
use crate::compress;
use crate::error::DumpError;
use crate::job::Job;
use crate::spool::{ArtifactFacts, commit_artifact, open_artifact, settle};
use crate::writing::ForBackup;

/// A tar stream of `BACKUP_FILES_DIRS`, each directory under its own name.
pub async fn write_media(
    settings: &Settings,
    backup: &ForBackup<'_>,
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
        open_artifact(settings, &dir, &name, DumpFormat::Tar, backup).await?;

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
            backup_id: backup.id,
            origin: backup.origin,
            artifact: &artifact,
            kind,
            server_version: String::new(),
            pg_dump_version: format!("tar ({} directories)", settings.files_dirs.len()),
            started,
            tables: BTreeMap::new(),
            application: None,
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
