//! Uploads: a file, a reader or bytes written to `<name>.partial` (mode
//! 0600; in write-once mode a fresh read-only one, see `write_once`) with
//! several WRITE requests in flight, checked (bytes read equal
//! the announced length, fsync, remote size) and only then renamed to the
//! final name. A full disk is told apart from other write failures by
//! asking the server for its free space.
//!
//! An upload cut by a lost connection can be continued
//! ([`SftpRemote::resume_reader`]): the `.partial` is truncated to the
//! offset the caller knows was acknowledged (writes in flight when the
//! connection dropped may or may not have landed) and the rest is written
//! from there. Deciding whether the kept prefix can be trusted is the
//! caller's job; nothing here retries.

use std::path::{Path, PathBuf};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::chunks::pipeline_depth;
use crate::extensions::{EXT_FSYNC, EXT_STATVFS, encode_strings};
use crate::paths::parent_dir;
use crate::space::statvfs_available;
use crate::status::status_reply;
use crate::{RemoteError, SftpRemote};

impl SftpRemote {
    /// Streams a local file to `<final_path>.partial` (mode 0600), fsyncs it
    /// (`fsync@openssh.com`, if offered), checks that the remote size equals
    /// the bytes sent, and renames it to `final_path`, replacing any
    /// existing file (`posix-rename@openssh.com` if offered, which is
    /// atomic; otherwise remove + rename). `progress` gets the number of
    /// bytes acknowledged so far. Returns the number of bytes written.
    ///
    /// Several writes of up to 255 KiB are kept in flight; memory use does
    /// not depend on the file size.
    pub async fn upload_file(
        &self,
        local: &Path,
        final_path: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, RemoteError> {
        let local_error = |source| RemoteError::LocalIo {
            path: local.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let expected = file.metadata().await.map_err(local_error)?.len();
        let source = Source {
            reader: &mut file,
            local: Some(local),
            start: 0,
            len: Some(expected),
            progress,
        };
        self.write_atomic(final_path, source, Then::Rename).await
    }

    /// [`SftpRemote::upload_file`] from any reader that yields exactly
    /// `len` bytes, e.g. a file behind a bandwidth limiter. Fewer or more
    /// bytes fail the upload (as a changed local file) before the rename.
    /// `source` names the data in errors.
    pub async fn upload_reader<R: AsyncRead + Unpin + Send>(
        &self,
        reader: &mut R,
        source: &Path,
        len: u64,
        final_path: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, RemoteError> {
        let source = Source {
            reader,
            local: Some(source),
            start: 0,
            len: Some(len),
            progress,
        };
        self.write_atomic(final_path, source, Then::Rename).await
    }

    /// [`SftpRemote::upload_reader`] continuing an interrupted upload of
    /// the same data: `<final_path>.partial` must exist; it is truncated to
    /// `offset` (what was written past the last acknowledged WRITE is
    /// dropped), checked to be exactly that long, and `reader`, positioned
    /// at `offset` of the data, must yield the remaining `len - offset`
    /// bytes. Then the same fsync, size check and rename as a fresh upload.
    /// `progress` gets the bytes acknowledged by this call. Returns the
    /// number of bytes written by this call.
    ///
    /// The caller vouches that the first `offset` bytes of the `.partial`
    /// are the first `offset` bytes of the data.
    pub async fn resume_reader<R: AsyncRead + Unpin + Send>(
        &self,
        reader: &mut R,
        source: &Path,
        len: u64,
        offset: u64,
        final_path: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, RemoteError> {
        let source = Source {
            reader,
            local: Some(source),
            start: offset.min(len),
            len: Some(len),
            progress,
        };
        let start = source.start;
        self.write_atomic(final_path, source, Then::Rename)
            .await
            .map(|end| end - start)
    }

    /// Streams `reader` to its end into a fresh `<final_path>.partial`
    /// (mode 0600), fsyncs it and checks its size as any upload, and leaves
    /// it there, closed and not renamed, for a later
    /// [`SftpRemote::resume_reader`] to finish: the first part of an upload
    /// whose data is still being produced, so that its length and checksum
    /// are not known yet. `progress` gets the bytes acknowledged so far.
    /// Returns the bytes written, every one of them acknowledged. On
    /// failure the `.partial` is removed if the connection still allows it.
    ///
    /// Not in write-once mode, whose `.partial` can never be reopened for
    /// writing: that is refused as [`RemoteError::Config`].
    pub async fn upload_partial<R: AsyncRead + Unpin + Send>(
        &self,
        reader: &mut R,
        source: &Path,
        final_path: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, RemoteError> {
        if self.write_once {
            return Err(RemoteError::Config(
                "an append-only account cannot continue an upload later".into(),
            ));
        }
        let source = Source {
            reader,
            local: Some(source),
            start: 0,
            len: None,
            progress,
        };
        self.write_atomic(final_path, source, Then::Keep).await
    }

    /// [`SftpRemote::upload_file`] for a small in-memory file (manifests,
    /// records): same `.partial` + fsync + size check + rename discipline.
    pub async fn write_file_atomic(
        &self,
        final_path: &str,
        contents: &[u8],
    ) -> Result<(), RemoteError> {
        let mut reader = contents;
        let source = Source {
            reader: &mut reader,
            local: None,
            start: 0,
            len: Some(contents.len() as u64),
            progress: &|_| {},
        };
        self.write_atomic(final_path, source, Then::Rename)
            .await
            .map(|_| ())
    }

    /// The temp-then-rename discipline shared by uploads of files and
    /// in-memory data, and by the first part of an upload that is kept
    /// (`then`). On failure the `.partial` file is removed if the
    /// connection still allows it.
    async fn write_atomic<R: AsyncRead + Unpin + Send>(
        &self,
        final_path: &str,
        source: Source<'_, R>,
        then: Then,
    ) -> Result<u64, RemoteError> {
        self.check_alive()?;
        let final_path = &self.resolve(final_path);
        let final_path = final_path.as_str();
        let partial = self.partial_path(final_path);
        // A resumed upload keeps the .partial's content (and needs it to
        // exist); a fresh one starts from an empty file. Write-once uploads
        // never resume: their partial cannot be reopened for writing.
        let (flags, attrs) = if source.start > 0 {
            (OpenFlags::WRITE, private_file())
        } else {
            self.partial_open()
        };
        let handle = self.open(&partial, flags, attrs).await?;
        let result = match self.fill_partial(&handle, &partial, source).await {
            Ok(sent) => match self.sftp.close(handle.as_str()).await {
                Ok(_) if then == Then::Keep => Ok(sent),
                Ok(_) if self.write_once => {
                    self.rename_new(&partial, final_path).await.map(|()| sent)
                }
                Ok(_) => self.rename_over(&partial, final_path).await.map(|()| sent),
                // Close can be where a network file system reports a
                // failed write, so it counts like one.
                Err(error) => Err(self.write_error("close", &partial, error).await),
            },
            Err(error) => {
                self.close_quietly(handle).await;
                Err(error)
            }
        };
        if result.is_err() && !self.is_lost() {
            let _ = self.sftp.remove(partial.as_str()).await;
        }
        result
    }

    async fn fill_partial<R: AsyncRead + Unpin + Send>(
        &self,
        handle: &str,
        partial: &str,
        source: Source<'_, R>,
    ) -> Result<u64, RemoteError> {
        // A .partial left by a crashed attempt keeps its old mode through
        // O_TRUNC, and the open attributes only apply to new files. A
        // write-once partial is always new (and chmod may be refused).
        if !self.write_once {
            self.sftp
                .fsetstat(handle, private_file())
                .await
                .map_err(|e| self.error("chmod", partial, e))?;
        }
        if source.start > 0 {
            self.truncate_to(handle, partial, source.start).await?;
        }

        let expected = source.len;
        let local = source.local;
        let sent = self.write_pipelined(handle, partial, source).await?;
        if let Some(expected) = expected
            && sent != expected
        {
            // The dump is still being written or was truncated: renaming
            // would ship a broken backup under its final name.
            return Err(RemoteError::LocalIo {
                path: local_name(local),
                source: std::io::Error::other(format!(
                    "file changed size during upload: {expected} bytes at start, {sent} read"
                )),
            });
        }

        if self.features.fsync {
            let data = encode_strings(&[handle]);
            let reply = self.sftp.extended(EXT_FSYNC, data).await;
            if let Err(error) = status_reply(reply) {
                return Err(self.write_error("fsync", partial, error).await);
            }
        }
        let size = self
            .sftp
            .fstat(handle)
            .await
            .map_err(|e| self.error("stat", partial, e))?
            .attrs
            .size;
        match size {
            Some(actual) if actual != sent => Err(RemoteError::SizeMismatch {
                path: partial.to_owned(),
                expected: sent,
                actual,
            }),
            _ => Ok(sent),
        }
    }

    /// Cuts the `.partial` to `offset` bytes (SETSTAT size, an ftruncate
    /// on OpenSSH) and checks that it is now exactly that long: shorter
    /// means the acknowledged prefix is not all there.
    async fn truncate_to(
        &self,
        handle: &str,
        partial: &str,
        offset: u64,
    ) -> Result<(), RemoteError> {
        let attrs = FileAttributes {
            size: Some(offset),
            ..FileAttributes::empty()
        };
        self.sftp
            .fsetstat(handle, attrs)
            .await
            .map_err(|e| self.error("truncate", partial, e))?;
        let size = self
            .sftp
            .fstat(handle)
            .await
            .map_err(|e| self.error("stat", partial, e))?
            .attrs
            .size;
        match size {
            Some(actual) if actual == offset => Ok(()),
            actual => Err(RemoteError::SizeMismatch {
                path: partial.to_owned(),
                expected: offset,
                actual: actual.unwrap_or(0),
            }),
        }
    }

    /// Sends `source` from its start offset in chunks with up to
    /// [`pipeline_depth`] writes unacknowledged; returns the offset after
    /// the last byte written.
    async fn write_pipelined<R: AsyncRead + Unpin + Send>(
        &self,
        handle: &str,
        partial: &str,
        source: Source<'_, R>,
    ) -> Result<u64, RemoteError> {
        let Source {
            reader,
            local,
            start,
            progress,
            ..
        } = source;
        let chunk = self.write_chunk as usize;
        let depth = pipeline_depth(self.write_chunk);
        let mut in_flight = FuturesOrdered::new();
        let mut offset = start;
        let mut acknowledged = 0u64;
        let mut at_end = false;
        loop {
            while !at_end && in_flight.len() < depth {
                let mut data = vec![0u8; chunk];
                let filled =
                    read_full(reader, &mut data)
                        .await
                        .map_err(|source| RemoteError::LocalIo {
                            path: local_name(local),
                            source,
                        })?;
                at_end = filled < chunk;
                if filled > 0 {
                    data.truncate(filled);
                    let len = filled as u64;
                    let write = self.sftp.write(handle, offset, data);
                    in_flight.push_back(async move { (len, write.await) });
                    offset += len;
                }
                // A request is only sent when first polled: poll without
                // waiting, so the server works while we read the next chunk,
                // and take whatever acknowledgements are already there.
                while let Some(Some((len, result))) = in_flight.next().now_or_never() {
                    self.check_write(result, partial).await?;
                    acknowledged += len;
                    progress(acknowledged);
                }
            }
            match in_flight.next().await {
                Some((len, result)) => {
                    self.check_write(result, partial).await?;
                    acknowledged += len;
                    progress(acknowledged);
                }
                None => break,
            }
        }
        Ok(offset)
    }

    async fn check_write(
        &self,
        result: Result<Status, SftpError>,
        partial: &str,
    ) -> Result<(), RemoteError> {
        match result {
            Ok(_) => Ok(()),
            Err(error) => Err(self.write_error("write", partial, error).await),
        }
    }

    /// SFTP v3 reports a full disk (ENOSPC) as the generic
    /// `SSH_FX_FAILURE`. Ask the server how much space is left to tell
    /// "disk full" (permanent until someone cleans up) from other failures.
    async fn write_error(&self, op: &'static str, path: &str, error: SftpError) -> RemoteError {
        let error = self.error(op, path, error);
        if matches!(error, RemoteError::Failed { .. })
            && self.features.statvfs
            && let Ok(reply) = self
                .sftp
                .extended(EXT_STATVFS, encode_strings(&[parent_dir(path)]))
                .await
            && let Some(available) = statvfs_available(&reply)
            && available < 2 * u64::from(self.write_chunk)
        {
            return RemoteError::NoSpace {
                path: path.to_owned(),
            };
        }
        error
    }
}

/// What an atomic write sends: a reader and, for messages, where it reads.
struct Source<'a, R> {
    reader: &'a mut R,
    /// The local file, `None` for in-memory data.
    local: Option<&'a Path>,
    /// Offset of the reader's first byte in the data: 0, or where a
    /// resumed upload continues.
    start: u64,
    /// Bytes the reader must yield, anything else meaning the file
    /// changed; `None`: everything up to its end.
    len: Option<u64>,
    /// Called with the bytes acknowledged so far (by this call).
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// What becomes of a filled and closed `.partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Renamed to the final name.
    Rename,
    /// Left for a later upload to continue.
    Keep,
}

/// Attributes of the files this crate creates: owner read/write only.
fn private_file() -> FileAttributes {
    FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::empty()
    }
}

/// Fills `buf` unless the source ends first; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(source: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn local_name(local: Option<&Path>) -> PathBuf {
    local.map_or_else(|| PathBuf::from("<memory>"), Path::to_owned)
}
