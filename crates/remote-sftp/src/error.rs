use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to the SFTP server.
///
/// Messages are one line and name the host, path or key file involved, never
/// a passphrase. [`RemoteError::is_transient`] tells callers whether trying
/// again later may succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The settings cannot work (no host key pin, unreadable known_hosts, ...).
    #[error("invalid SFTP settings: {0}")]
    Config(String),

    /// TCP connect failed (refused, unreachable, reset, name not resolved).
    #[error("cannot connect to SFTP server {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },

    /// Connect, handshake, authentication and SFTP start did not finish in
    /// `connect_timeout`.
    #[error("connecting to SFTP server {host}:{port} timed out after {timeout:?}")]
    ConnectTimeout {
        host: String,
        port: u16,
        timeout: Duration,
    },

    /// Neither known_hosts nor the fingerprint pin knows this host.
    #[error(
        "host key of {host}:{port} is not pinned; presented {fingerprint}; \
         add it to SFTP_KNOWN_HOSTS after checking it out of band"
    )]
    HostKeyUnknown {
        host: String,
        port: u16,
        fingerprint: String,
    },

    /// The host is pinned to a different key.
    #[error(
        "host key of {host}:{port} does not match {pinned_at}; presented {fingerprint}; \
         refusing to connect (possible man-in-the-middle); if the server key was rotated, \
         update the pin after checking the new key out of band"
    )]
    HostKeyChanged {
        host: String,
        port: u16,
        fingerprint: String,
        /// Where the expected key is pinned, e.g. `line 3 of /etc/backup/known_hosts`.
        pinned_at: String,
    },

    /// The client key is missing, unreadable, encrypted without a passphrase,
    /// the passphrase is wrong, or the format is not supported.
    #[error("SSH key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },

    /// The server did not accept the key for this user.
    #[error(
        "SFTP server {host}:{port} refused public key authentication of user {user} \
         with key {key_file}"
    )]
    AuthRejected {
        host: String,
        port: u16,
        user: String,
        key_file: PathBuf,
    },

    #[error("permission denied on the SFTP server: {op} {path}")]
    PermissionDenied { op: &'static str, path: String },

    #[error("not found on the SFTP server: {path}")]
    NotFound { path: String },

    /// The server's file system is full (detected with `statvfs@openssh.com`
    /// after a failed write, since SFTP v3 has no status code for it).
    #[error("no space left on the SFTP server while writing {path}")]
    NoSpace { path: String },

    #[error("remote file {path} is {size} bytes, more than the {max_len} allowed")]
    TooLarge {
        path: String,
        size: u64,
        max_len: u64,
    },

    /// All writes were acknowledged, yet the file has another size.
    #[error("upload to {path} is incomplete: the server has {actual} bytes, {expected} were sent")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },

    /// Reading the local file to upload failed.
    #[error("local file {path}: {source}")]
    LocalIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The server refused an operation for another reason (SFTP v3's
    /// catch-all `SSH_FX_FAILURE`: not a directory, exists, quota, I/O
    /// error, ...).
    #[error("SFTP {op} {path} failed: {message}")]
    Failed {
        op: &'static str,
        path: String,
        message: String,
    },

    /// The SSH connection or the SFTP channel went away.
    #[error("connection to the SFTP server was lost: {0}")]
    ConnectionLost(String),

    /// A request got no reply within `io_timeout`.
    #[error("SFTP {op} {path} got no reply within {timeout:?}")]
    Timeout {
        op: &'static str,
        path: String,
        timeout: Duration,
    },

    /// The peer does not speak the protocol as expected (no common algorithm,
    /// sftp subsystem refused, malformed reply, ...).
    #[error("SSH/SFTP protocol error: {0}")]
    Protocol(String),
}

impl RemoteError {
    /// Whether the same call may succeed later without anyone changing
    /// configuration, keys or the server: network trouble, timeouts and
    /// lost connections. Everything else needs a human.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Connect { .. }
            | RemoteError::ConnectTimeout { .. }
            | RemoteError::ConnectionLost(_)
            | RemoteError::Timeout { .. }
            // Every write was acknowledged and the size still differs: the
            // server lost data, and a fresh upload starts over from a new
            // .partial file.
            | RemoteError::SizeMismatch { .. } => true,
            RemoteError::Config(_)
            | RemoteError::HostKeyUnknown { .. }
            | RemoteError::HostKeyChanged { .. }
            | RemoteError::KeyFile { .. }
            | RemoteError::AuthRejected { .. }
            | RemoteError::PermissionDenied { .. }
            | RemoteError::NotFound { .. }
            | RemoteError::NoSpace { .. }
            | RemoteError::TooLarge { .. }
            | RemoteError::LocalIo { .. }
            | RemoteError::Failed { .. }
            | RemoteError::Protocol(_) => false,
        }
    }

    /// Recovers the `RemoteError` from an error returned by
    /// [`RemoteReader`](crate::RemoteReader), which has to speak
    /// `io::Error` as an `AsyncRead`. Other I/O errors become
    /// [`RemoteError::ConnectionLost`].
    pub fn from_io(error: io::Error) -> RemoteError {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<RemoteError>())
        {
            let inner = error.into_inner().expect("checked above");
            return *inner.downcast::<RemoteError>().expect("checked above");
        }
        RemoteError::ConnectionLost(error.to_string())
    }
}

impl From<RemoteError> for io::Error {
    fn from(error: RemoteError) -> io::Error {
        let kind = match &error {
            RemoteError::NotFound { .. } => io::ErrorKind::NotFound,
            RemoteError::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            RemoteError::Timeout { .. } | RemoteError::ConnectTimeout { .. } => {
                io::ErrorKind::TimedOut
            }
            RemoteError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_variant() {
        let error = RemoteError::Timeout {
            op: "read",
            path: "/x".into(),
            timeout: Duration::from_secs(3),
        };
        let io_error = io::Error::from(error);
        assert_eq!(io_error.kind(), io::ErrorKind::TimedOut);
        let back = RemoteError::from_io(io_error);
        assert!(matches!(back, RemoteError::Timeout { .. }));
        assert!(back.is_transient());
    }

    #[test]
    fn foreign_io_errors_are_connection_lost() {
        let back = RemoteError::from_io(io::Error::other("boom"));
        assert!(matches!(back, RemoteError::ConnectionLost(_)));
    }

    #[test]
    fn messages_are_one_line() {
        let error = RemoteError::HostKeyUnknown {
            host: "h".into(),
            port: 22,
            fingerprint: "SHA256:abc".into(),
        };
        let text = error.to_string();
        assert!(!text.contains('\n'));
        assert!(text.contains("h:22") && text.contains("SHA256:abc"));
    }
}
