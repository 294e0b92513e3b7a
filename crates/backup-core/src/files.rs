//! Local files written the safe way: private permissions (0600 files, 0700
//! directories), a temporary `.partial` name while being written, fsync,
//! then rename and fsync of the directory. A crash leaves only `.partial`
//! files, which no reader mistakes for a finished artifact.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::names::{ArtifactName, PARTIAL_SUFFIX, Sha256Hex};

/// Creates `dir` (and parents) and makes it 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Flushes a directory entry change (a rename) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A file being written under `<final>.partial`, renamed to its final name
/// only by [`PartialFile::commit`]. Dropped without commit, the partial file
/// is removed.
#[derive(Debug)]
pub struct PartialFile {
    partial: PathBuf,
    destination: PathBuf,
    file: Option<tokio::fs::File>,
}

impl PartialFile {
    pub async fn create(destination: &Path) -> io::Result<Self> {
        let dir = destination.parent().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination has no parent directory",
            )
        })?;
        ensure_private_dir(dir)?;
        let mut partial = destination.as_os_str().to_owned();
        partial.push(PARTIAL_SUFFIX);
        let partial = PathBuf::from(partial);
        // A partial left by a crash is garbage by definition.
        match std::fs::remove_file(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        Ok(Self {
            partial,
            destination: destination.to_owned(),
            file: Some(tokio::fs::File::from_std(file)),
        })
    }

    pub fn file(&mut self) -> &mut tokio::fs::File {
        self.file.as_mut().expect("file is present until commit")
    }

    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// fsyncs the data, renames to the final name and fsyncs the directory.
    pub async fn commit(mut self) -> io::Result<PathBuf> {
        let file = self.file.take().expect("commit runs once");
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.partial, &self.destination).await?;
        if let Some(dir) = self.destination.parent() {
            fsync_dir(dir)?;
        }
        Ok(std::mem::take(&mut self.destination))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Writes a small file atomically (manifests, records).
pub async fn write_atomic(destination: &Path, contents: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut partial = PartialFile::create(destination).await?;
    partial.file().write_all(contents).await?;
    partial.commit().await.map(drop)
}

/// Removes `.partial` files left in `dir` (one level deep per database
/// directory) by a process that was killed mid-write. Returns what it removed.
pub fn remove_stale_partials(spool: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(spool) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        if entry.file_type()?.is_dir() {
            for inner in std::fs::read_dir(entry.path())?.flatten() {
                let path = inner.path();
                if path.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                    std::fs::remove_file(&path)?;
                    removed.push(path);
                }
            }
        }
    }
    Ok(removed)
}

/// Removes artifacts left in the spool (one level deep per database
/// directory) by a process that was killed between the rename to the final
/// name and the manifest write: a regular file whose name is an
/// [`ArtifactName`] with no manifest beside it, last modified more than
/// `older_than` ago. Such an artifact was never announced and nothing else
/// would ever remove it. The age spares a file another process sharing the
/// spool is still re-hashing before it writes the manifest. Files whose names
/// are not artifacts, and manifests without artifacts, are left alone.
/// Returns what it removed.
pub fn remove_unannounced_artifacts(
    spool: &Path,
    older_than: std::time::Duration,
) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(spool) else {
        return Ok(removed);
    };
    let now = std::time::SystemTime::now();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let mut removed_here = false;
        for inner in std::fs::read_dir(&dir)? {
            let inner = inner?;
            // `file_type` does not follow symlinks: only regular files.
            if !inner.file_type()?.is_file() {
                continue;
            }
            let Some(name) = inner.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(artifact) = name.parse::<ArtifactName>() else {
                continue;
            };
            match std::fs::symlink_metadata(dir.join(artifact.manifest_name())) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let modified = inner.metadata()?.modified()?;
            // A modification time in the future counts as fresh.
            let age = now.duration_since(modified).unwrap_or_default();
            if age <= older_than {
                continue;
            }
            let path = inner.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    removed_here = true;
                    removed.push(path);
                }
                // Removed meanwhile by someone else: the goal is reached.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if removed_here {
            fsync_dir(&dir)?;
        }
    }
    Ok(removed)
}

/// Running sha256 and byte count of a stream.
#[derive(Debug, Default, Clone)]
pub struct Digester {
    hasher: Sha256,
    bytes: u64,
}

impl Digester {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn finish(self) -> (Sha256Hex, u64) {
        (Sha256Hex::from_digest(&self.hasher.finalize()), self.bytes)
    }
}

/// An `AsyncWrite` that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    digest: Digester,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            digest: Digester::default(),
        }
    }
    pub fn bytes(&self) -> u64 {
        self.digest.bytes()
    }
    pub fn into_parts(self) -> (W, Digester) {
        (self.inner, self.digest)
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = poll {
            this.digest.update(&buf[..written]);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An `AsyncRead` that hashes and counts what is read through it. The
/// digest is shared so it can be read after the reader was consumed by a
/// decoder.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    digest: std::sync::Arc<std::sync::Mutex<Digester>>,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> (Self, std::sync::Arc<std::sync::Mutex<Digester>>) {
        let digest = std::sync::Arc::new(std::sync::Mutex::new(Digester::default()));
        (
            Self {
                inner,
                digest: digest.clone(),
            },
            digest,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                this.digest.lock().expect("digest lock").update(fresh);
            }
        }
        poll
    }
}

/// Hashes a whole file, streaming.
pub async fn hash_file(path: &Path) -> io::Result<(Sha256Hex, u64)> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut digest = Digester::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn partial_file_is_invisible_until_commit_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("db/x.sql.gz");
        let mut partial = PartialFile::create(&dest).await.unwrap();
        partial.file().write_all(b"hello").await.unwrap();
        assert!(!dest.exists());
        let partial_path = partial.partial_path().to_owned();
        assert!(partial_path.exists());
        drop(partial);
        assert!(!partial_path.exists());

        write_atomic(&dest, b"done").await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"done");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dest.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[tokio::test]
    async fn hashing_writer_matches_sha256() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"abc").await.unwrap();
        let (bytes, digest) = writer.into_parts();
        let (sha, n) = digest.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(n, 3);
        assert_eq!(
            sha.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unannounced_artifacts_older_than_the_threshold_are_removed() {
        let spool = tempfile::tempdir().unwrap();
        let dir = spool.path().join("viatique");
        std::fs::create_dir_all(&dir).unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
        let plant = |name: &str, old: bool| {
            let path = dir.join(name);
            std::fs::write(&path, b"data").unwrap();
            if old {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(two_hours_ago)
                    .unwrap();
            }
            path
        };
        let orphan = plant("viatique_20260301_020000.sql.gz", true);
        let fresh = plant("viatique_20260302_020000.sql.gz", false);
        let announced = plant("viatique_20260303_020000.sql.gz", true);
        let manifest = plant("viatique_20260303_020000.sql.gz.manifest.json", true);
        let lonely_manifest = plant("viatique_20260304_020000.sql.gz.manifest.json", true);
        let stranger = plant("notes.txt", true);
        let partial = plant("viatique_20260305_020000.sql.gz.partial", true);
        // Not a regular file: a directory with an artifact's name.
        let not_a_file = dir.join("viatique_20260306_020000.sql.gz");
        std::fs::create_dir(&not_a_file).unwrap();
        // A file directly in the spool is not in a database directory.
        let top_level = spool.path().join("viatique_20260307_020000.sql.gz");
        std::fs::write(&top_level, b"data").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&top_level)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();

        let threshold = std::time::Duration::from_secs(30 * 60);
        let removed = remove_unannounced_artifacts(spool.path(), threshold).unwrap();
        assert_eq!(removed, vec![orphan.clone()]);
        assert!(!orphan.exists());
        for kept in [
            &fresh,
            &announced,
            &manifest,
            &lonely_manifest,
            &stranger,
            &partial,
            &not_a_file,
            &top_level,
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }

        // Nothing left to do the second time; a missing spool is no error.
        assert!(
            remove_unannounced_artifacts(spool.path(), threshold)
                .unwrap()
                .is_empty()
        );
        assert!(
            remove_unannounced_artifacts(&spool.path().join("absent"), threshold)
                .unwrap()
                .is_empty()
        );
    }
}
