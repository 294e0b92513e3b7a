//! Why a store operation failed: the error of the destination's kind,
//! wrapped, with the two questions every caller asks of it. Messages are
//! the kinds' own (one line, naming the host or path, never a secret).

use std::io;

use remote_sftp::RemoteError;

/// A failure of one destination.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SFTP server's.
    #[error(transparent)]
    Sftp(#[from] RemoteError),
}

impl StoreError {
    /// Whether the same call may succeed later without anyone changing
    /// configuration, keys or the server (network trouble, timeouts, a lost
    /// connection). Everything else needs a human.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sftp(e) => e.is_transient(),
        }
    }

    /// Whether the file (or directory) asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::Sftp(e) => matches!(e, RemoteError::NotFound { .. }),
        }
    }

    /// Recovers the kind's error from an error of a [`StoreReader`]
    /// (crate::StoreReader), which has to speak `io::Error` as an
    /// `AsyncRead`. Any other I/O error is taken for a lost connection.
    pub fn from_io(error: io::Error) -> StoreError {
        StoreError::Sftp(RemoteError::from_io(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kinds_answers_are_kept() {
        let missing = StoreError::from(RemoteError::NotFound {
            path: "/b/x".into(),
        });
        assert!(missing.is_not_found() && !missing.is_transient());
        let lost = StoreError::from_io(io::Error::from(RemoteError::ConnectionLost("eof".into())));
        assert!(lost.is_transient() && !lost.is_not_found());
        assert_eq!(
            lost.to_string(),
            "connection to the SFTP server was lost: eof"
        );
        let foreign = StoreError::from_io(io::Error::other("boom"));
        assert!(foreign.is_transient());
    }
}
