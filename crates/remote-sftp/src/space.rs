//! Free space on the remote file system, from `statvfs@openssh.com`.

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::Packet;

use crate::extensions::{EXT_STATVFS, encode_strings};
use crate::{RemoteError, SftpRemote};

impl SftpRemote {
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

/// Bytes available to unprivileged users from a `statvfs@openssh.com` reply.
pub(crate) fn statvfs_available(reply: &Packet) -> Option<u64> {
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
