//! Reading an artifact while the dumper writes it. [`GrowingFile`] yields
//! the bytes of `<artifact>.partial` in the spool as they arrive, waits at
//! the end of what is written so far, and ends once the dumper has renamed
//! the file to its final name (it does so after its last write and fsync).
//! It fails when the dumper gave the file up (removed it: the dump failed
//! or was aborted, or replaced it), and when nothing was written for the
//! idle limit. What it yields is hashed, so its end gives the size and
//! checksum the upload recorded.
//!
//! Completion and abandonment are read off the file system, not from
//! events, so the reader needs nothing but the path: the open handle
//! follows the file through the rename, and a file that nobody links to
//! any more (`st_nlink` 0) was removed.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use backup_core::files::Digester;
use backup_core::names::Sha256Hex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How often the end of the file is looked at again while the dumper is
/// still writing: a few dozen stat calls a second, nothing next to a dump,
/// and a wait short enough not to hold the upload back.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why a followed file will not be complete.
#[derive(Debug, thiserror::Error)]
pub enum Abandoned {
    #[error("the dumper removed {}: the dump was given up", .0.display())]
    Removed(PathBuf),
    #[error("nothing was written to {} for {}", .0.display(), humantime::format_duration(*.1))]
    Idle(PathBuf, Duration),
}

/// The `.partial` of an artifact being dumped, read as it grows.
#[derive(Debug)]
pub struct GrowingFile {
    file: tokio::fs::File,
    /// The same file, for `fstat` without a round trip through tokio.
    handle: std::fs::File,
    partial: PathBuf,
    final_path: PathBuf,
    identity: (u64, u64),
    digest: Digester,
    complete: bool,
    idle_since: Instant,
    idle_limit: Duration,
    wait: Option<Pin<Box<Sleep>>>,
}

/// What the file system says at the end of what was read.
enum State {
    /// More bytes than were read: read again.
    More,
    /// Renamed to the final name: what is there is all there is.
    Complete,
    /// Still being written.
    Writing,
}

impl GrowingFile {
    /// Opens `partial`, whose final name is `final_path`; `None` when it
    /// is not there (already renamed, or removed).
    pub fn open(
        partial: &Path,
        final_path: &Path,
        idle_limit: Duration,
    ) -> io::Result<Option<GrowingFile>> {
        let handle = match std::fs::File::open(partial) {
            Ok(handle) => handle,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta = handle.metadata()?;
        let file = tokio::fs::File::from_std(handle.try_clone()?);
        Ok(Some(GrowingFile {
            file,
            handle,
            partial: partial.to_owned(),
            final_path: final_path.to_owned(),
            identity: identity(&meta),
            digest: Digester::default(),
            complete: false,
            idle_since: Instant::now(),
            idle_limit,
            wait: None,
        }))
    }

    /// The checksum and size of what was read; the artifact's when the
    /// reader reached its end.
    pub fn finish(self) -> (Sha256Hex, u64) {
        self.digest.finish()
    }

    fn state(&self) -> io::Result<State> {
        let meta = self.handle.metadata()?;
        if meta.nlink() == 0 {
            return Err(abandoned(Abandoned::Removed(self.partial.clone())));
        }
        if meta.len() > self.digest.bytes() {
            return Ok(State::More);
        }
        match std::fs::metadata(&self.partial) {
            Ok(there) if identity(&there) == self.identity => return Ok(State::Writing),
            Ok(_) => return Err(abandoned(Abandoned::Removed(self.partial.clone()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        match std::fs::metadata(&self.final_path) {
            Ok(there) if identity(&there) == self.identity => Ok(State::Complete),
            Ok(_) => Err(abandoned(Abandoned::Removed(self.partial.clone()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(abandoned(Abandoned::Removed(self.partial.clone())))
            }
            Err(error) => Err(error),
        }
    }
}

/// Whether `error` (from a [`GrowingFile`], possibly wrapped by an
/// upload) says the dump was given up.
pub fn abandonment<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Abandoned> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(abandoned) = error.downcast_ref::<Abandoned>() {
            return Some(abandoned);
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(abandoned) = io.get_ref().and_then(|e| e.downcast_ref::<Abandoned>())
        {
            return Some(abandoned);
        }
        cause = error.source();
    }
    None
}

fn abandoned(why: Abandoned) -> io::Error {
    io::Error::other(why)
}

fn identity(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl AsyncRead for GrowingFile {
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
            if let Some(wait) = this.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.file).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.digest.update(read);
                this.idle_since = Instant::now();
                return Poll::Ready(Ok(()));
            }
            if this.complete {
                return Poll::Ready(Ok(()));
            }
            match this.state()? {
                State::More => {}
                // Everything was written before the rename: one more read
                // to the end, then the end is real.
                State::Complete => this.complete = true,
                State::Writing => {
                    if this.idle_since.elapsed() >= this.idle_limit {
                        return Poll::Ready(Err(abandoned(Abandoned::Idle(
                            this.partial.clone(),
                            this.idle_limit,
                        ))));
                    }
                    this.wait = Some(Box::pin(tokio::time::sleep(POLL_INTERVAL)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::AsyncReadExt;

    use super::*;

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (
            dir.join("db_20260101_000000.sql.gz.partial"),
            dir.join("db_20260101_000000.sql.gz"),
        )
    }

    #[tokio::test]
    async fn yields_what_is_written_until_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, final_path) = paths(dir.path());
        let mut writer = std::fs::File::create(&partial).unwrap();
        writer.write_all(b"first ").unwrap();
        let mut reader = GrowingFile::open(&partial, &final_path, Duration::from_secs(30))
            .unwrap()
            .unwrap();
        let mut buf = [0u8; 6];
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first ");

        let write_rest = async {
            tokio::task::yield_now().await;
            writer.write_all(b"second").unwrap();
            std::fs::rename(&partial, &final_path).unwrap();
        };
        let mut rest = Vec::new();
        let (read, ()) = tokio::join!(reader.read_to_end(&mut rest), write_rest);
        read.unwrap();
        assert_eq!(rest, b"second");
        let (sha256, size) = reader.finish();
        assert_eq!(size, 12);
        assert_eq!(sha256, Sha256Hex::from_digest(&sha2_of(b"first second")));
    }

    #[tokio::test]
    async fn a_removed_file_is_an_abandoned_dump() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, final_path) = paths(dir.path());
        std::fs::write(&partial, b"half").unwrap();
        let mut reader = GrowingFile::open(&partial, &final_path, Duration::from_secs(30))
            .unwrap()
            .unwrap();
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).await.unwrap();
        std::fs::remove_file(&partial).unwrap();
        let error = reader.read(&mut buf).await.unwrap_err();
        assert!(
            matches!(abandonment(&error), Some(Abandoned::Removed(_))),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dump_that_stops_writing_is_given_up_after_the_idle_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, final_path) = paths(dir.path());
        std::fs::write(&partial, b"").unwrap();
        let mut reader = GrowingFile::open(&partial, &final_path, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let error = reader.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(
            matches!(abandonment(&error), Some(Abandoned::Idle(..))),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_is_not_there_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, final_path) = paths(dir.path());
        assert!(
            GrowingFile::open(&partial, &final_path, Duration::from_secs(1))
                .unwrap()
                .is_none()
        );
    }

    fn sha2_of(data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(data).to_vec()
    }
}
