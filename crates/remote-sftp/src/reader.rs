//! Pipelined download: a background task keeps several READ requests in
//! flight and hands the data, in order, to an `AsyncRead`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::StatusCode;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::RemoteError;
use crate::chunks::pipeline_depth;
use crate::status::map_sftp_error;

/// Chunks buffered between the task and the consumer, on top of the
/// requests in flight. Small: the pipeline depth is what hides latency.
const CHANNEL_CHUNKS: usize = 4;

enum Chunk {
    Data(Bytes),
    End,
    Error(RemoteError),
}

/// A remote file being downloaded; see [`SftpRemote::open_read`](crate::SftpRemote::open_read).
///
/// Errors come out as `io::Error`; [`RemoteError::from_io`] recovers the
/// classified error. Dropping the reader stops the download and closes the
/// remote handle in the background.
pub struct RemoteReader {
    path: String,
    size: Option<u64>,
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    state: State,
}

enum State {
    Open,
    Eof,
    Failed(String),
}

impl fmt::Debug for RemoteReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteReader")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RemoteReader {
    /// Size of the file when it was opened, if the server reported one.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    pub(crate) fn spawn(
        sftp: Arc<RawSftpSession>,
        handle: String,
        path: String,
        size: Option<u64>,
        chunk: u32,
        io_timeout: Duration,
        lost: Arc<AtomicBool>,
    ) -> RemoteReader {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let task_path = path.clone();
        tokio::spawn(async move {
            let result = pump(&sftp, &handle, &task_path, chunk, io_timeout, &tx).await;
            let last = match result {
                Ok(()) => Chunk::End,
                Err(error) => {
                    if matches!(error, RemoteError::ConnectionLost(_)) {
                        lost.store(true, Ordering::Relaxed);
                    }
                    Chunk::Error(error)
                }
            };
            // The consumer may be gone; then nobody needs to know.
            let _ = tx.send(last).await;
            // Best effort: a handle left open only costs the server a slot
            // until the session ends.
            if !lost.load(Ordering::Relaxed) {
                let _ = sftp.close(handle).await;
            }
        });
        RemoteReader {
            path,
            size,
            rx,
            current: Bytes::new(),
            state: State::Open,
        }
    }
}

/// Reads the file front to back with up to `depth` requests outstanding.
/// Returns `Ok` at end of file or when the consumer went away.
async fn pump(
    sftp: &RawSftpSession,
    handle: &str,
    path: &str,
    chunk: u32,
    io_timeout: Duration,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), RemoteError> {
    let depth = pipeline_depth(chunk);
    let mut next_offset = 0u64;
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < depth {
            let offset = next_offset;
            let read = sftp.read(handle, offset, chunk);
            in_flight.push_back(async move { (offset, read.await) });
            next_offset += u64::from(chunk);
        }
        let next = tokio::select! {
            next = in_flight.next() => next,
            () = tx.closed() => return Ok(()),
        };
        let Some((offset, result)) = next else {
            return Ok(());
        };
        match result {
            Ok(data) if data.data.is_empty() => return Ok(()),
            Ok(data) => {
                let received = data.data.len() as u64;
                if tx.send(Chunk::Data(Bytes::from(data.data))).await.is_err() {
                    return Ok(());
                }
                if received < u64::from(chunk) {
                    // A short read: usually the end of the file, but a
                    // server may also return less for other reasons. The
                    // requests after it would leave a gap, so drop them
                    // (their replies are ignored) and continue right after
                    // what arrived; at end of file that read gets EOF.
                    in_flight = FuturesOrdered::new();
                    next_offset = offset + received;
                }
            }
            Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                return Ok(());
            }
            Err(error) => return Err(map_sftp_error("read", path, error, io_timeout)),
        }
    }
}

impl AsyncRead for RemoteReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.current.is_empty() {
                let n = buf.remaining().min(this.current.len());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match &this.state {
                State::Open => {}
                State::Eof => return Poll::Ready(Ok(())),
                State::Failed(message) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "SFTP download of {} already failed: {message}",
                        this.path
                    ))));
                }
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Chunk::Data(data)) => this.current = data,
                Some(Chunk::End) => this.state = State::Eof,
                Some(Chunk::Error(error)) => {
                    this.state = State::Failed(error.to_string());
                    return Poll::Ready(Err(error.into()));
                }
                None => {
                    // Without an explicit End the task died (runtime shut
                    // down): never report a truncated file as complete.
                    let error = RemoteError::ConnectionLost(format!(
                        "download of {} stopped unexpectedly",
                        this.path
                    ));
                    this.state = State::Failed(error.to_string());
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}
