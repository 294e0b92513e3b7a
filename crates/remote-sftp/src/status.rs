//! What a russh-sftp error or an SFTP status means as a [`RemoteError`]:
//! not found, permission denied, a lost connection, a timeout or a failure
//! with the server's message.

use std::time::Duration;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{Packet, Status, StatusCode};

use crate::RemoteError;

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
pub(crate) fn status_reply(reply: Result<Packet, SftpError>) -> Result<(), SftpError> {
    match reply? {
        Packet::Status(status) if status.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(status) => Err(SftpError::Status(status)),
        _ => Err(SftpError::UnexpectedPacket),
    }
}
