//! The download task of one restore: it reads the whole artifact as stored,
//! hashes it, reports progress, and forwards the bytes to the restore while
//! the restore listens.
//!
//! It always reads to the end, even when the restore stops early, so a
//! corrupted copy is reported as a checksum mismatch ([`Download::finish`])
//! rather than as whatever error the corruption caused downstream. Memory
//! stays flat: a few [`CHUNK`]-sized buffers in flight whatever the size
//! of the dump. Dropping the [`Download`] (an aborted restore) stops the
//! task, so nothing keeps reading from the remote.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backup_core::files::Digester;
use backup_core::manifest::Manifest;
use backup_core::names::Sha256Hex;
use backup_core::watchdog::Counted;
use bytes::Bytes;
use remote_store::StoreError;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::CHUNK;
use crate::error::VerifyError;
use crate::meter::{Meter, ProgressFn, RestoreProgress};

/// A running download task.
pub(crate) struct Download {
    task: AbortOnDrop<std::io::Result<(Digester, Duration)>>,
}

/// What the download read, once the checksum matched.
pub(crate) struct Downloaded {
    pub(crate) sha256: Sha256Hex,
    pub(crate) bytes: u64,
    /// Time from the first read to the last.
    pub(crate) took: Duration,
}

impl Download {
    /// Starts reading `stored` (of `manifest.size_bytes` bytes, as far as
    /// progress reports go); returns the task and the bytes as they come.
    pub(crate) fn start<R>(
        stored: R,
        total: u64,
        progress: Option<ProgressFn>,
        meter: &Meter,
    ) -> (Self, impl AsyncRead + Unpin + Send + 'static)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let task = AbortOnDrop(tokio::spawn(pump(
            stored,
            tx,
            total,
            progress,
            meter.clone(),
        )));
        let chunks = Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        (Self { task }, tokio_util::io::StreamReader::new(chunks))
    }

    /// Waits until the whole artifact was read, then checks its sha256 and
    /// size against the manifest.
    pub(crate) async fn finish(mut self, manifest: &Manifest) -> Result<Downloaded, VerifyError> {
        let pumped = (&mut self.task.0)
            .await
            .map_err(|e| VerifyError::Staging(e.to_string()))?;
        let (digest, took) = pumped.map_err(|e| VerifyError::Remote(StoreError::from_io(e)))?;
        let (sha256, bytes) = digest.finish();
        if sha256 != manifest.sha256 || bytes != manifest.size_bytes {
            return Err(VerifyError::Checksum {
                artifact: manifest.artifact.to_string(),
                expected: manifest.sha256.to_string(),
                actual: sha256.to_string(),
                bytes,
            });
        }
        Ok(Downloaded {
            sha256,
            bytes,
            took,
        })
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
