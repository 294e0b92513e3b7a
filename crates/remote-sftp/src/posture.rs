//! What the account's key may do to files already written: delete them,
//! or overwrite them (open for writing, chmod, rename over). Probed on a
//! throwaway file, for `backupctl doctor` to tell an append-only account
//! from one whose key could destroy the history it ships.
//!
//! Retries: none; a transient error aborts the probe and the caller may
//! run it again.

use russh_sftp::protocol::{FileAttributes, OpenFlags};

use crate::extensions::{EXT_POSIX_RENAME, encode_strings};
use crate::status::status_reply;
use crate::{RemoteError, SftpRemote};

/// What the key may do to a file written the write-once way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePosture {
    /// The server let the key remove the probe.
    pub can_delete: bool,
    /// How the key could overwrite the probe, `None` if every way was
    /// refused.
    pub overwrite: Option<&'static str>,
    /// Probe files the key could not remove: the caller removes them with
    /// another identity, or names them.
    pub left: Vec<String>,
}

impl SftpRemote {
    /// Writes `probe` (a path nothing else uses) write-once, tries to
    /// overwrite it in every way SFTP offers, then to delete it, and
    /// reports what the server allowed. Errors only when the probe cannot
    /// be written at all or the connection fails.
    pub async fn probe_write_posture(&mut self, probe: &str) -> Result<WritePosture, RemoteError> {
        let probe = self.resolve(probe);
        let was = self.write_once;
        self.write_once = true;
        let written = self
            .write_file_atomic(&probe, b"backupctl doctor probe\n")
            .await;
        let replacement = format!("{probe}.replacement");
        let overwrite = match written {
            Ok(()) => self.try_overwrite(&probe, &replacement).await,
            Err(error) => Err(error),
        };
        self.write_once = was;
        let overwrite = overwrite?;

        let mut left = Vec::new();
        let can_delete = match self.remove_file(&probe).await {
            Ok(()) => true,
            Err(RemoteError::PermissionDenied { .. }) => {
                left.push(probe.clone());
                false
            }
            Err(error) => return Err(error),
        };
        if self.stat(&replacement).await?.is_some()
            && (!can_delete || self.remove_file(&replacement).await.is_err())
        {
            left.push(replacement);
        }
        Ok(WritePosture {
            can_delete,
            overwrite,
            left,
        })
    }

    async fn try_overwrite(
        &self,
        probe: &str,
        replacement: &str,
    ) -> Result<Option<&'static str>, RemoteError> {
        // The probe is 0400: only a server that ignores modes (an account
        // running as root, some non-OpenSSH servers) opens it for writing.
        let open = self
            .sftp
            .open(probe, OpenFlags::WRITE, FileAttributes::empty())
            .await;
        if let Ok(handle) = open {
            self.close_quietly(handle.handle).await;
            return Ok(Some("opens a written file for writing"));
        }
        let chmod = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::empty()
        };
        if self.sftp.setstat(probe, chmod).await.is_ok() {
            return Ok(Some("makes a written file writable again (setstat)"));
        }
        self.check_alive()?;
        // Another complete file (written write-once: the caller set the
        // mode), renamed over the probe.
        if self
            .write_file_atomic(replacement, b"replacement\n")
            .await
            .is_ok()
        {
            if self.features.posix_rename {
                let reply = self
                    .sftp
                    .extended(EXT_POSIX_RENAME, encode_strings(&[replacement, probe]))
                    .await;
                if status_reply(reply).is_ok() {
                    return Ok(Some(
                        "renames another file over a written one (posix-rename)",
                    ));
                }
            }
            if self.sftp.rename(replacement, probe).await.is_ok() {
                return Ok(Some("renames another file over a written one"));
            }
        }
        self.check_alive()?;
        Ok(None)
    }
}
