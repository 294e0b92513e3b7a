//! Removing a file, and renaming one over another: atomically with
//! `posix-rename@openssh.com`, else (not offered, or refused as on an
//! append-only account) by plain SFTP v3 RENAME, which does not replace,
//! after removing the old file if there is one.

use crate::extensions::{EXT_POSIX_RENAME, encode_strings};
use crate::status::status_reply;
use crate::{RemoteError, SftpRemote};

impl SftpRemote {
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

    /// Renames `from` to `to`, replacing `to` if it exists.
    pub(crate) async fn rename_over(&self, from: &str, to: &str) -> Result<(), RemoteError> {
        let what = format!("{from} -> {to}");
        if self.features.posix_rename {
            let reply = self
                .sftp
                .extended(EXT_POSIX_RENAME, encode_strings(&[from, to]))
                .await;
            match status_reply(reply).map_err(|e| self.error("rename", &what, e)) {
                // An append-only account (`internal-sftp -P posix-rename`)
                // still offers the extension but refuses it: plain RENAME
                // below may be allowed.
                Err(RemoteError::PermissionDenied { .. }) => {}
                other => return other,
            }
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
}
