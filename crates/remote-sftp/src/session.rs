//! The SFTP session: connecting (host key, authentication, the start of
//! SFTP and what the server offers), the login directory relative paths
//! start from, closing, and what every request shares: opening handles,
//! closing them quietly, and mapping errors so that one lost connection
//! makes the following requests fail fast instead of waiting for their
//! timeout.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::client;
use russh::{ChannelMsg, Disconnect};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tracing::debug;

use crate::chunks::{DEFAULT_CHUNK, MAX_CHUNK, MAX_PACKET, clamp_chunk};
use crate::connect::{self, ClientHandler, HandlerError};
use crate::extensions::{EXT_FSYNC, EXT_LIMITS, EXT_POSIX_RENAME, EXT_STATVFS, version_has};
use crate::status::map_sftp_error;
use crate::{RemoteError, ServerFeatures, SftpSettings};

/// An authenticated SFTP session. Methods take `&self` and may run
/// concurrently; requests are multiplexed over one SSH channel.
pub struct SftpRemote {
    pub(crate) ssh: client::Handle<ClientHandler>,
    pub(crate) sftp: Arc<RawSftpSession>,
    pub(crate) features: ServerFeatures,
    pub(crate) write_chunk: u32,
    pub(crate) read_chunk: u32,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) io_timeout: Duration,
    /// Where the server starts relative paths: its answer to
    /// `realpath(".")` at login (empty if it gave none).
    pub(crate) login_dir: String,
    /// Set once any request saw the connection die. russh-sftp does not
    /// answer requests sent in the moment between its reader stopping and
    /// its writer noticing, so they would wait the full `io_timeout`; after
    /// one loss we fail fast instead.
    pub(crate) lost: Arc<AtomicBool>,
    /// Uploads for an append-only account (see `write_once`).
    pub(crate) write_once: bool,
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
            write_once: false,
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

    pub(crate) async fn open(
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

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed) || self.ssh.is_closed()
    }

    pub(crate) fn check_alive(&self) -> Result<(), RemoteError> {
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
    pub(crate) async fn close_quietly(&self, handle: String) {
        if !self.is_lost() {
            let _ = self.sftp.close(handle).await;
        }
    }

    pub(crate) fn error(&self, op: &'static str, path: &str, error: SftpError) -> RemoteError {
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

fn timeout_secs(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0).max(u64::from(timeout.is_zero()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::RemoteReader;

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
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(timeout_secs(Duration::ZERO), 1);
    }
}
