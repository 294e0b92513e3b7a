//! Async SFTP client for shipping backups: connect with a pinned host key
//! and a public key, upload files atomically (`.partial`, fsync, size check,
//! rename), read them back (pipelined), list, stat and delete.
//!
//! Built on `russh` and `russh-sftp`'s low-level `RawSftpSession`, which
//! gives access to OpenSSH's extensions (`posix-rename@openssh.com`,
//! `fsync@openssh.com`, `statvfs@openssh.com`, `limits@openssh.com`) and
//! lets this crate pipeline reads and writes itself.
//!
//! # Retries
//!
//! Nothing here retries. Every failure is a [`RemoteError`] whose
//! [`RemoteError::is_transient`] says whether trying again later may help
//! (connection refused or lost, timeouts) or whether a human has to act
//! (unknown or changed host key, rejected key, permission denied, no
//! space). Callers own the retry policy because only they know the
//! deadlines. An upload that failed half-way leaves at most a `.partial`
//! file, which the next attempt overwrites; the final name only ever
//! appears complete.
//!
//! Host key verification is mandatory: without a known_hosts file or a
//! fingerprint pin, [`SftpRemote::connect`] refuses to connect.

mod connect;
mod error;
mod reader;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use russh::client;
use russh::{ChannelMsg, Disconnect};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, Status, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

pub use error::RemoteError;
pub use reader::RemoteReader;

use connect::{ClientHandler, HandlerError};

/// Largest data block per READ/WRITE request. OpenSSH's sftp-server caps
/// both at 255 KiB (its 256 KiB packet limit minus headers) and says so via
/// `limits@openssh.com`.
const MAX_CHUNK: u32 = 255 * 1024;
/// Block size for servers that do not announce limits: the size every
/// server must accept, and what OpenSSH's own client uses then.
const DEFAULT_CHUNK: u32 = 32 * 1024;
/// Bytes kept in flight per transfer: 4 MiB hides a round trip of ~40 ms
/// at 100 MB/s and keeps memory flat.
const IN_FLIGHT_BYTES: usize = 4 << 20;
/// Largest SFTP packet we accept; must hold a full READ reply.
const MAX_PACKET: u32 = 256 * 1024;

const EXT_POSIX_RENAME: &str = "posix-rename@openssh.com";
const EXT_FSYNC: &str = "fsync@openssh.com";
const EXT_STATVFS: &str = "statvfs@openssh.com";
const EXT_LIMITS: &str = "limits@openssh.com";

/// Where and how to connect. `Debug` does not reveal the passphrase.
#[derive(Clone, Debug)]
pub struct SftpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key (ed25519, ECDSA or RSA; OpenSSH, PKCS#1/PKCS#8 PEM).
    pub key_file: PathBuf,
    pub key_passphrase: Option<secrecy::SecretString>,
    /// OpenSSH known_hosts file, including `[host]:port` and hashed (`|1|`)
    /// entries.
    pub known_hosts: Option<PathBuf>,
    /// Alternative pin: `SHA256:<base64>` as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: Option<String>,
    /// Limit for TCP connect, handshake, authentication and SFTP start.
    pub connect_timeout: Duration,
    /// Limit for any single SFTP request to be answered (one second
    /// granularity, at least one second).
    pub io_timeout: Duration,
}

/// Which OpenSSH extensions the server offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerFeatures {
    /// Atomic rename that replaces the target (`rename(2)`).
    pub posix_rename: bool,
    /// `fsync(2)` on an open handle.
    pub fsync: bool,
    /// `statvfs(2)`, used to recognise a full disk behind a generic failure.
    pub statvfs: bool,
}

/// One directory entry or `stat` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// File name (for [`SftpRemote::stat`], the last path component).
    pub name: String,
    pub size: u64,
    pub is_dir: bool,
    pub modified: Option<SystemTime>,
    /// Permission bits (`0o7777` part of the mode).
    pub permissions: Option<u32>,
}

/// An authenticated SFTP session. Methods take `&self` and may run
/// concurrently; requests are multiplexed over one SSH channel.
pub struct SftpRemote {
    ssh: client::Handle<ClientHandler>,
    sftp: Arc<RawSftpSession>,
    features: ServerFeatures,
    write_chunk: u32,
    read_chunk: u32,
    host: String,
    port: u16,
    user: String,
    io_timeout: Duration,
    /// Where the server starts relative paths: its answer to
    /// `realpath(".")` at login (empty if it gave none).
    login_dir: String,
    /// Set once any request saw the connection die. russh-sftp does not
    /// answer requests sent in the moment between its reader stopping and
    /// its writer noticing, so they would wait the full `io_timeout`; after
    /// one loss we fail fast instead.
    lost: Arc<AtomicBool>,
}

impl fmt::Debug for SftpRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpRemote")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("features", &self.features)
            .field("closed", &self.ssh.is_closed())
            .finish_non_exhaustive()
    }
}

impl SftpRemote {
    /// Connects, verifies the host key, authenticates and starts SFTP,
    /// all within `settings.connect_timeout`.
    pub async fn connect(settings: &SftpSettings) -> Result<SftpRemote, RemoteError> {
        let pin = connect::validate(settings)?;
        // Load the key before touching the network: a bad key is a
        // permanent error and must not look like a connection problem.
        let key = connect::load_key(settings).await?;
        let establish = Box::pin(Self::establish(settings, key, pin));
        match tokio::time::timeout(settings.connect_timeout, establish).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::ConnectTimeout {
                host: settings.host.clone(),
                port: settings.port,
                timeout: settings.connect_timeout,
            }),
        }
    }

    async fn establish(
        settings: &SftpSettings,
        key: russh::keys::PrivateKey,
        pin: Option<String>,
    ) -> Result<SftpRemote, RemoteError> {
        let host = settings.host.as_str();
        let port = settings.port;
        let ssh_error = |e| connect::ssh_error(e, host, port);
        let handler = ClientHandler {
            host: host.to_owned(),
            port,
            known_hosts: settings.known_hosts.clone(),
            fingerprint_pin: pin,
        };
        let config = Arc::new(connect::ssh_config(settings));
        let mut ssh = client::connect(config, (host, port), handler)
            .await
            .map_err(|e| match e {
                HandlerError::Rejected(error) => error,
                HandlerError::Ssh(error) => ssh_error(error),
            })?;

        let key = connect::key_with_hash(&ssh, key).await.map_err(ssh_error)?;
        let auth = ssh
            .authenticate_publickey(settings.user.clone(), key)
            .await
            .map_err(ssh_error)?;
        if !auth.success() {
            return Err(RemoteError::AuthRejected {
                host: host.to_owned(),
                port,
                user: settings.user.clone(),
                key_file: settings.key_file.clone(),
            });
        }

        let mut channel = ssh.channel_open_session().await.map_err(ssh_error)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(ssh_error)?;
        // Wait for the answer: a refused subsystem would otherwise only
        // show up as a timeout of the first SFTP request.
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(RemoteError::Protocol(format!(
                        "{host}:{port} refused to start the sftp subsystem"
                    )));
                }
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                    return Err(RemoteError::ConnectionLost(format!(
                        "{host}:{port} closed the channel while starting sftp"
                    )));
                }
                Some(_) => {}
            }
        }

        let config = russh_sftp::client::Config {
            max_packet_len: MAX_PACKET,
            request_timeout_secs: timeout_secs(settings.io_timeout),
            ..russh_sftp::client::Config::default()
        };
        let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), config);
        let start_error = |e| map_sftp_error("init", "", e, settings.io_timeout);
        let version = sftp.init().await.map_err(start_error)?;
        let has =
            |name: &str, ext_version: &str| version_has(&version.extensions, name, ext_version);
        let features = ServerFeatures {
            posix_rename: has(EXT_POSIX_RENAME, "1"),
            fsync: has(EXT_FSYNC, "1"),
            statvfs: has(EXT_STATVFS, "2"),
        };
        let mut write_chunk = DEFAULT_CHUNK;
        let mut read_chunk = DEFAULT_CHUNK;
        if has(EXT_LIMITS, "1") {
            write_chunk = MAX_CHUNK;
            read_chunk = MAX_CHUNK;
            let limits = Limits::from(sftp.limits().await.map_err(start_error)?);
            sftp.set_limits(limits);
            write_chunk = clamp_chunk(write_chunk, limits.write_len);
            read_chunk = clamp_chunk(read_chunk, limits.read_len);
            if let Some(packet) = limits.packet_len {
                // Room for the WRITE header (type, id, handle, offset, length).
                let room = packet.saturating_sub(64);
                write_chunk = clamp_chunk(write_chunk, Some(room));
            }
        }
        // Relative paths (an SFTP_DIR written for a hosting account) start
        // at the login directory, as OpenSSH's sftp resolves them.
        let login_dir = match sftp.realpath(".").await {
            Ok(name) => name
                .files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .filter(|d| d.starts_with('/'))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        debug!(
            host,
            port,
            login_dir,
            sftp_version = version.version,
            ?features,
            write_chunk,
            read_chunk,
            "SFTP session started"
        );
        Ok(SftpRemote {
            ssh,
            sftp: Arc::new(sftp),
            features,
            write_chunk,
            read_chunk,
            host: host.to_owned(),
            port,
            user: settings.user.clone(),
            io_timeout: settings.io_timeout,
            login_dir,
            lost: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The directory relative paths start from on this server (the
    /// answer to `realpath(".")` at login), empty if it gave none.
    pub fn login_dir(&self) -> &str {
        &self.login_dir
    }

    /// `path` as an absolute path: unchanged when it already is one (or
    /// the server gave no login directory), else joined to
    /// [`SftpRemote::login_dir`]. Every method takes relative paths.
    pub fn resolve(&self, path: &str) -> String {
        if path.starts_with('/') || self.login_dir.is_empty() {
            return path.to_owned();
        }
        let rest = path.trim_start_matches("./");
        let base = self.login_dir.trim_end_matches('/');
        if rest.is_empty() || rest == "." {
            return if base.is_empty() {
                "/".into()
            } else {
                base.to_owned()
            };
        }
        format!("{base}/{rest}")
    }

    /// OpenSSH extensions the server offered.
    pub fn features(&self) -> ServerFeatures {
        self.features
    }

    /// Creates `path` and missing parents with mode 0700 (backups are
    /// nobody else's business). Existing directories are left as they are.
    pub async fn create_dir_all(&self, path: &str) -> Result<(), RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let prefixes = path_prefixes(path);
        // Find the deepest existing ancestor; usually the base dir exists
        // and only the last component or two are new.
        let mut existing = prefixes.len();
        while existing > 0 {
            match self.stat(&prefixes[existing - 1]).await? {
                Some(entry) if entry.is_dir => break,
                Some(_) => return Err(not_a_directory(&prefixes[existing - 1])),
                None => existing -= 1,
            }
        }
        for dir in &prefixes[existing..] {
            let attrs = FileAttributes {
                permissions: Some(0o700),
                ..FileAttributes::empty()
            };
            if let Err(error) = self.sftp.mkdir(dir.as_str(), attrs).await {
                // Another writer may have created it meanwhile.
                match self.stat(dir).await? {
                    Some(entry) if entry.is_dir => {}
                    Some(_) => return Err(not_a_directory(dir)),
                    None => return Err(self.error("mkdir", dir, error)),
                }
            }
        }
        Ok(())
    }

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
            len: expected,
            progress,
        };
        self.write_atomic(final_path, source).await
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
            len,
            progress,
        };
        self.write_atomic(final_path, source).await
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
            len: contents.len() as u64,
            progress: &|_| {},
        };
        self.write_atomic(final_path, source).await.map(|_| ())
    }

    /// Reads a whole small file; fails with [`RemoteError::TooLarge`] if it
    /// has more than `max_len` bytes.
    pub async fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let result = self.read_small(&handle, path, max_len).await;
        self.close_quietly(handle).await;
        result
    }

    async fn read_small(
        &self,
        handle: &str,
        path: &str,
        max_len: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let size = self
            .sftp
            .fstat(handle)
            .await
            .map_err(|e| self.error("stat", path, e))?
            .attrs
            .size;
        if let Some(size) = size
            && size > max_len
        {
            return Err(RemoteError::TooLarge {
                path: path.to_owned(),
                size,
                max_len,
            });
        }
        let capacity = size.unwrap_or(0).min(max_len);
        let mut contents = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        loop {
            let offset = contents.len() as u64;
            match self.sftp.read(handle, offset, self.read_chunk).await {
                Ok(data) if data.data.is_empty() => break,
                Ok(data) => contents.extend_from_slice(&data.data),
                Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => break,
                Err(error) => return Err(self.error("read", path, error)),
            }
            // The file may grow after the fstat above.
            if contents.len() as u64 > max_len {
                return Err(RemoteError::TooLarge {
                    path: path.to_owned(),
                    size: contents.len() as u64,
                    max_len,
                });
            }
        }
        Ok(contents)
    }

    /// Opens a remote file for a streaming, pipelined download (several
    /// 255 KiB reads in flight).
    pub async fn open_read(&self, path: &str) -> Result<RemoteReader, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let size = match self.sftp.fstat(handle.as_str()).await {
            Ok(attrs) => attrs.attrs.size,
            Err(error) => {
                let error = self.error("stat", path, error);
                self.close_quietly(handle).await;
                return Err(error);
            }
        };
        Ok(RemoteReader::spawn(
            Arc::clone(&self.sftp),
            handle,
            path.to_owned(),
            size,
            self.read_chunk,
            self.io_timeout,
            Arc::clone(&self.lost),
        ))
    }

    /// Entries of `dir` without `.` and `..`, in server order.
    /// [`RemoteError::NotFound`] if `dir` does not exist.
    pub async fn list_dir(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let dir = &self.resolve(dir);
        let dir = dir.as_str();
        self.check_alive()?;
        let handle = self
            .sftp
            .opendir(dir)
            .await
            .map_err(|e| self.error("opendir", dir, e))?
            .handle;
        let mut entries = Vec::new();
        let result = loop {
            match self.sftp.readdir(handle.as_str()).await {
                Ok(name) => entries.extend(
                    name.files
                        .into_iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| entry(f.filename, &f.attrs)),
                ),
                Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                    break Ok(entries);
                }
                Err(error) => break Err(self.error("readdir", dir, error)),
            }
        };
        self.close_quietly(handle).await;
        result
    }

    /// Metadata of `path` (following symlinks), `None` if it does not exist.
    pub async fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        match self.sftp.stat(path).await {
            Ok(attrs) => Ok(Some(entry(file_name(path).to_owned(), &attrs.attrs))),
            Err(SftpError::Status(status)) if status.status_code == StatusCode::NoSuchFile => {
                Ok(None)
            }
            Err(error) => Err(self.error("stat", path, error)),
        }
    }

    /// Deletes a file. [`RemoteError::NotFound`] if it does not exist.
    pub async fn remove_file(&self, path: &str) -> Result<(), RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        self.sftp
            .remove(path)
            .await
            .map(|_| ())
            .map_err(|e| self.error("remove", path, e))
    }

    /// Ends the SFTP session and the SSH connection politely. Dropping an
    /// `SftpRemote` also closes it, just without telling the server why.
    pub async fn close(self) -> Result<(), RemoteError> {
        // Errors only mean the connection is already gone, which is the
        // goal anyway.
        let _ = self.sftp.close_session();
        if !self.ssh.is_closed() {
            let _ = self
                .ssh
                .disconnect(Disconnect::ByApplication, "done", "en")
                .await;
        }
        Ok(())
    }

    async fn open(
        &self,
        path: &str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<String, RemoteError> {
        self.sftp
            .open(path, flags, attrs)
            .await
            .map(|handle| handle.handle)
            .map_err(|e| self.error("open", path, e))
    }

    /// The temp-then-rename discipline shared by uploads of files and
    /// in-memory data. On failure the `.partial` file is removed if the
    /// connection still allows it.
    async fn write_atomic<R: AsyncRead + Unpin + Send>(
        &self,
        final_path: &str,
        source: Source<'_, R>,
    ) -> Result<u64, RemoteError> {
        self.check_alive()?;
        let final_path = &self.resolve(final_path);
        let final_path = final_path.as_str();
        let partial = format!("{final_path}.partial");
        let handle = self
            .open(
                &partial,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                private_file(),
            )
            .await?;
        let result = match self.fill_partial(&handle, &partial, source).await {
            Ok(sent) => match self.sftp.close(handle.as_str()).await {
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
        // O_TRUNC, and the open attributes only apply to new files.
        self.sftp
            .fsetstat(handle, private_file())
            .await
            .map_err(|e| self.error("chmod", partial, e))?;

        let expected = source.len;
        let local = source.local;
        let sent = self.write_pipelined(handle, partial, source).await?;
        if sent != expected {
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

    /// Sends `source` in chunks with up to [`pipeline_depth`] writes
    /// unacknowledged; returns the number of bytes written.
    async fn write_pipelined<R: AsyncRead + Unpin + Send>(
        &self,
        handle: &str,
        partial: &str,
        source: Source<'_, R>,
    ) -> Result<u64, RemoteError> {
        let Source {
            reader,
            local,
            progress,
            ..
        } = source;
        let chunk = self.write_chunk as usize;
        let depth = pipeline_depth(self.write_chunk);
        let mut in_flight = FuturesOrdered::new();
        let mut offset = 0u64;
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

    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename_over(&self, from: &str, to: &str) -> Result<(), RemoteError> {
        let what = format!("{from} -> {to}");
        if self.features.posix_rename {
            let reply = self
                .sftp
                .extended(EXT_POSIX_RENAME, encode_strings(&[from, to]))
                .await;
            return status_reply(reply).map_err(|e| self.error("rename", &what, e));
        }
        // Plain SFTP v3 RENAME refuses to replace an existing file (OpenSSH
        // implements it with link(2)), so remove the old copy and try again.
        // Not atomic: a crash in between leaves only the complete .partial.
        match self.sftp.rename(from, to).await {
            Ok(_) => Ok(()),
            Err(first) => {
                if self.stat(to).await?.is_none() {
                    return Err(self.error("rename", &what, first));
                }
                self.remove_file(to).await?;
                self.sftp
                    .rename(from, to)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.error("rename", &what, e))
            }
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed) || self.ssh.is_closed()
    }

    fn check_alive(&self) -> Result<(), RemoteError> {
        if self.is_lost() {
            return Err(RemoteError::ConnectionLost(format!(
                "the connection to {}:{} is closed; connect again",
                self.host, self.port
            )));
        }
        Ok(())
    }

    /// Closes a handle after a failure or a read, where the close result
    /// changes nothing; skipped on a dead connection, where it would only
    /// wait for the timeout.
    async fn close_quietly(&self, handle: String) {
        if !self.is_lost() {
            let _ = self.sftp.close(handle).await;
        }
    }

    fn error(&self, op: &'static str, path: &str, error: SftpError) -> RemoteError {
        let mapped = map_sftp_error(op, path, error, self.io_timeout);
        if matches!(mapped, RemoteError::ConnectionLost(_)) {
            self.lost.store(true, Ordering::Relaxed);
        }
        match mapped {
            // russh-sftp reports some transport ends as protocol oddities;
            // a closed SSH session says what really happened.
            RemoteError::Protocol(message) if self.ssh.is_closed() => {
                RemoteError::ConnectionLost(message)
            }
            other => other,
        }
    }
}

/// Helpers for preflight checks (`backupctl doctor`).
impl SftpRemote {
    /// Connects only as far as the key exchange and returns the fingerprint
    /// (`SHA256:...`) of the host key the server presents, offering the
    /// same host key algorithms as [`SftpRemote::connect`]. The key is not
    /// checked against the pin and nothing is authenticated: the connection
    /// is dropped before any credential is sent, so it is safe against an
    /// impostor. Bounded by `settings.connect_timeout`.
    pub async fn presented_host_key(settings: &SftpSettings) -> Result<String, RemoteError> {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let handler = KeyRecorder(Arc::clone(&seen));
        let config = Arc::new(connect::ssh_config(settings));
        let host = settings.host.as_str();
        let port = settings.port;
        let attempt = client::connect(config, (host, port), handler);
        let result = tokio::time::timeout(settings.connect_timeout, attempt).await;
        let recorded = seen.lock().ok().and_then(|mut seen| seen.take());
        match (recorded, result) {
            (Some(fingerprint), _) => Ok(fingerprint),
            (None, Err(_)) => Err(RemoteError::ConnectTimeout {
                host: host.to_owned(),
                port,
                timeout: settings.connect_timeout,
            }),
            (None, Ok(Err(error))) => Err(connect::ssh_error(error, host, port)),
            (None, Ok(Ok(_))) => Err(RemoteError::Protocol(format!(
                "{host}:{port} finished the key exchange without presenting a host key"
            ))),
        }
    }

    /// Bytes available to unprivileged users on the file system holding
    /// `path`, as `statvfs@openssh.com` reports them; `None` when the
    /// server does not offer that extension.
    pub async fn free_space(&self, path: &str) -> Result<Option<u64>, RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        if !self.features.statvfs {
            return Ok(None);
        }
        let reply = self
            .sftp
            .extended(EXT_STATVFS, encode_strings(&[path]))
            .await
            .map_err(|e| self.error("statvfs", path, e))?;
        if let Packet::Status(status) = reply {
            return Err(self.error("statvfs", path, SftpError::Status(status)));
        }
        statvfs_available(&reply)
            .map(Some)
            .ok_or_else(|| RemoteError::Protocol(format!("statvfs {path}: malformed reply")))
    }
}

/// Records the presented host key and refuses it, which ends the
/// connection before authentication.
struct KeyRecorder(Arc<std::sync::Mutex<Option<String>>>);

impl client::Handler for KeyRecorder {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key
            && let Ok(mut seen) = self.0.lock()
        {
            *seen = Some(connect::fingerprint(key));
        }
        Ok(false)
    }
}

/// Requests to keep in flight for blocks of `chunk` bytes: about
/// [`IN_FLIGHT_BYTES`], at least 16 (small files still overlap) and at most
/// 64 (OpenSSH's default, servers may queue no more).
pub(crate) fn pipeline_depth(chunk: u32) -> usize {
    (IN_FLIGHT_BYTES / chunk.max(1) as usize).clamp(16, 64)
}

/// What an atomic write sends: a reader and, for messages, where it reads.
struct Source<'a, R> {
    reader: &'a mut R,
    /// The local file, `None` for in-memory data.
    local: Option<&'a Path>,
    /// Bytes the reader must yield; anything else means the file changed.
    len: u64,
    /// Called with the bytes acknowledged so far.
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// Attributes of the files this crate creates: owner read/write only.
fn private_file() -> FileAttributes {
    FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::empty()
    }
}

/// Classifies a russh-sftp error for `op` on `path`.
pub(crate) fn map_sftp_error(
    op: &'static str,
    path: &str,
    error: SftpError,
    io_timeout: Duration,
) -> RemoteError {
    match error {
        SftpError::Status(status) => status_error(op, path, status),
        SftpError::Timeout => RemoteError::Timeout {
            op,
            path: path.to_owned(),
            timeout: io_timeout,
        },
        SftpError::IO(message) => RemoteError::ConnectionLost(message),
        SftpError::Limited(message) => {
            RemoteError::Protocol(format!("{op} {path}: server limit: {message}"))
        }
        SftpError::UnexpectedPacket => {
            RemoteError::Protocol(format!("{op} {path}: unexpected reply packet"))
        }
        SftpError::UnexpectedBehavior(message) => {
            // These are the messages russh-sftp uses once its channel is
            // gone: a send to a closed session, or a pending request whose
            // reply slot was dropped when the reader stopped.
            let gone = message == "session closed"
                || message == "sender dropped"
                || message.starts_with("SendError")
                || message.starts_with("RecvError");
            if gone {
                RemoteError::ConnectionLost(format!("{op} {path}: SFTP channel closed ({message})"))
            } else {
                RemoteError::Protocol(format!("{op} {path}: {message}"))
            }
        }
    }
}

fn status_error(op: &'static str, path: &str, status: Status) -> RemoteError {
    let path = path.to_owned();
    match status.status_code {
        StatusCode::NoSuchFile => RemoteError::NotFound { path },
        StatusCode::PermissionDenied => RemoteError::PermissionDenied { op, path },
        StatusCode::NoConnection | StatusCode::ConnectionLost => {
            RemoteError::ConnectionLost(format!("{op} {path}: {}", status.error_message))
        }
        code => {
            let message = if status.error_message.is_empty() {
                code.to_string()
            } else {
                status.error_message
            };
            RemoteError::Failed { op, path, message }
        }
    }
}

/// A `Status` reply to an extended request as a result.
fn status_reply(reply: Result<Packet, SftpError>) -> Result<(), SftpError> {
    match reply? {
        Packet::Status(status) if status.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(status) => Err(SftpError::Status(status)),
        _ => Err(SftpError::UnexpectedPacket),
    }
}

/// Bytes available to unprivileged users from a `statvfs@openssh.com` reply.
fn statvfs_available(reply: &Packet) -> Option<u64> {
    let Packet::ExtendedReply(reply) = reply else {
        return None;
    };
    // Eleven big-endian u64: bsize, frsize, blocks, bfree, bavail, ...
    let field = |i: usize| {
        let bytes = reply.data.get(i * 8..i * 8 + 8)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    };
    let block_size = field(0)?;
    let fragment_size = field(1)?;
    let available_blocks = field(4)?;
    let unit = if fragment_size > 0 {
        fragment_size
    } else {
        block_size
    };
    Some(available_blocks.saturating_mul(unit))
}

/// SSH wire encoding of strings (u32 length + bytes), the payload of the
/// OpenSSH extended requests.
fn encode_strings(strings: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        let len = u32::try_from(s.len()).expect("SFTP paths are far below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn version_has(
    extensions: &std::collections::HashMap<String, String>,
    name: &str,
    version: &str,
) -> bool {
    extensions.get(name).is_some_and(|v| v == version)
}

fn clamp_chunk(chunk: u32, limit: Option<u64>) -> u32 {
    match limit {
        Some(limit) if limit > 0 => chunk.min(u32::try_from(limit).unwrap_or(u32::MAX)),
        _ => chunk,
    }
}

fn timeout_secs(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0).max(u64::from(timeout.is_zero()))
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

fn entry(name: String, attrs: &FileAttributes) -> RemoteEntry {
    RemoteEntry {
        name,
        size: attrs.size.unwrap_or(0),
        is_dir: attrs.is_dir(),
        modified: attrs
            .mtime
            .map(|secs| UNIX_EPOCH + Duration::from_secs(u64::from(secs))),
        permissions: attrs.permissions.map(|mode| mode & 0o7777),
    }
}

fn local_name(local: Option<&Path>) -> PathBuf {
    local.map_or_else(|| PathBuf::from("<memory>"), Path::to_owned)
}

fn not_a_directory(path: &str) -> RemoteError {
    RemoteError::Failed {
        op: "mkdir",
        path: path.to_owned(),
        message: "exists and is not a directory".into(),
    }
}

fn file_name(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

fn parent_dir(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/",
        Some((parent, _)) => parent,
        None => ".",
    }
}

/// `/a/b/c` → `["/a", "/a/b", "/a/b/c"]`; relative paths stay relative.
fn path_prefixes(path: &str) -> Vec<String> {
    let absolute = path.starts_with('/');
    let mut current = String::new();
    let mut prefixes = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if absolute || !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        prefixes.push(current.clone());
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers spawn these futures on multi-threaded runtimes.
    #[allow(dead_code, clippy::large_futures)]
    fn futures_are_send(remote: &SftpRemote, settings: &SftpSettings) {
        fn send<T: Send>(_: T) {}
        send(SftpRemote::connect(settings));
        send(remote.upload_file(Path::new("x"), "y", &|_| {}));
        send(remote.write_file_atomic("y", b""));
        send(remote.upload_reader(&mut tokio::io::empty(), Path::new("x"), 0, "y", &|_| {}));
        send(remote.read_file("y", 1));
        send(remote.open_read("y"));
        send(remote.list_dir("y"));
    }

    #[test]
    fn shared_types_are_thread_safe() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<SftpRemote>();
        send_sync::<RemoteError>();
        send_sync::<SftpSettings>();
        fn send_unpin<T: Send + Unpin + 'static>() {}
        send_unpin::<RemoteReader>();
    }

    /// OpenSSH always offers posix-rename and fsync, so the fallbacks for
    /// other servers are exercised by switching them off here.
    #[tokio::test]
    async fn works_without_openssh_extensions() {
        let sshd = test_support::sshd::Sshd::start();
        let settings = SftpSettings {
            host: "127.0.0.1".into(),
            port: sshd.port,
            user: sshd.user.clone(),
            key_file: sshd.client_key.clone(),
            key_passphrase: None,
            known_hosts: Some(sshd.known_hosts.clone()),
            host_key_fingerprint: None,
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(20),
        };
        let mut remote = SftpRemote::connect(&settings).await.unwrap();
        remote.features = ServerFeatures::default();
        let path = format!("{}/file", sshd.remote_root.display());
        remote.write_file_atomic(&path, b"one").await.unwrap();
        // Plain RENAME cannot replace; the fallback removes the old file.
        remote.write_file_atomic(&path, b"two").await.unwrap();
        assert_eq!(remote.read_file(&path, 10).await.unwrap(), b"two");
        let names: Vec<String> = remote
            .list_dir(&sshd.remote_root.display().to_string())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["file"]);
    }

    #[test]
    fn pipeline_depth_targets_a_few_mib() {
        assert_eq!(pipeline_depth(MAX_CHUNK), 16);
        assert_eq!(pipeline_depth(DEFAULT_CHUNK), 64);
        assert_eq!(pipeline_depth(0), 64);
    }

    #[test]
    fn prefixes() {
        assert_eq!(path_prefixes("/a//b/c/"), ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(path_prefixes("a/./b"), ["a", "a/b"]);
        assert!(path_prefixes("/").is_empty());
    }

    #[test]
    fn names_and_parents() {
        assert_eq!(file_name("/a/b.txt"), "b.txt");
        assert_eq!(file_name("/a/dir/"), "dir");
        assert_eq!(parent_dir("/a/b"), "/a");
        assert_eq!(parent_dir("/b"), "/");
        assert_eq!(parent_dir("b"), ".");
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(timeout_secs(Duration::ZERO), 1);
    }

    #[test]
    fn strings_are_length_prefixed() {
        assert_eq!(
            encode_strings(&["ab", ""]),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }
}
