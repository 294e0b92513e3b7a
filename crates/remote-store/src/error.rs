//! Why a store operation failed: the error of the destination's kind,
//! wrapped, with the two questions every caller asks of it. Messages are
//! the kinds' own (one line, naming the host or path, never a secret).

use std::io;

use remote_s3::S3Error;
use remote_sftp::RemoteError;

/// A failure of one destination.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SFTP server's.
    #[error(transparent)]
    Sftp(#[from] RemoteError),
    /// The S3 service's (a locked object's refusal is
    /// [`S3Error::Locked`]).
    #[error(transparent)]
    S3(#[from] S3Error),
}

impl StoreError {
    /// Whether the same call may succeed later without anyone changing
    /// configuration, keys or the server (network trouble, timeouts, a lost
    /// connection). Everything else needs a human.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sftp(e) => e.is_transient(),
            StoreError::S3(e) => e.is_transient(),
        }
    }

    /// Whether the file (or directory) asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::Sftp(e) => matches!(e, RemoteError::NotFound { .. }),
            StoreError::S3(e) => e.is_not_found(),
        }
    }

    /// Recovers the kind's error from an error of a [`StoreReader`]
    /// (crate::StoreReader), which has to speak `io::Error` as an
    /// `AsyncRead` (the S3 reader's errors carry an [`S3Error`]). Any
    /// other I/O error is taken for a lost SFTP connection.
    pub fn from_io(error: io::Error) -> StoreError {
        if error.get_ref().is_some_and(|inner| inner.is::<S3Error>()) {
            let inner = error.into_inner().expect("checked above");
            return StoreError::S3(*inner.downcast::<S3Error>().expect("checked above"));
        }
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
        let cut = StoreError::from_io(io::Error::other(S3Error::Unreachable {
            op: "GetObject",
            endpoint: "http://127.0.0.1:9000".into(),
            detail: "body cut".into(),
        }));
        assert!(matches!(cut, StoreError::S3(_)) && cut.is_transient());
        let gone = StoreError::from(S3Error::NotFound {
            target: "s3://b/x".into(),
        });
        assert!(gone.is_not_found() && !gone.is_transient());
    }
}
