//! Write-once uploads, for an append-only account: one whose key may
//! create, write and rename but not remove, replace or change modes
//! (OpenSSH's `internal-sftp -P remove,rmdir,posix-rename,setstat,...`,
//! see docs/guides/backup-setup-guide.md).
//!
//! In this mode ([`SftpRemote::set_write_once`]) every upload:
//!
//! - writes to a fresh `<final>.<8 hex>.partial`, created exclusively, so a
//!   `.partial` left by a killed attempt (which this key cannot remove or
//!   reopen) never blocks the next one; the pruner removes it once stale;
//! - creates it mode 0400: the handle that created the file may still write
//!   it, but no later open for writing succeeds, and the account may not
//!   chmod it back, so a shipped file cannot be truncated or rewritten;
//! - renames it with plain SFTP `rename`, which OpenSSH implements with
//!   link(2): an existing final name is never replaced, the rename fails.
//!
//! Retries: none; a refused request is a permanent [`RemoteError`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use russh_sftp::protocol::{FileAttributes, OpenFlags};

use crate::{RemoteError, SftpRemote};

/// How temporary upload names end.
const PARTIAL_SUFFIX: &str = ".partial";

impl SftpRemote {
    /// Switches write-once uploads on or off for this session (off after
    /// [`SftpRemote::connect`]); see the module docs.
    pub fn set_write_once(&mut self, on: bool) {
        self.write_once = on;
    }

    /// Whether uploads are write-once.
    pub fn write_once(&self) -> bool {
        self.write_once
    }

    /// The temporary name of an upload to `final_path`.
    pub(crate) fn partial_path(&self, final_path: &str) -> String {
        if self.write_once {
            format!("{final_path}.{:08x}{PARTIAL_SUFFIX}", attempt_token())
        } else {
            format!("{final_path}{PARTIAL_SUFFIX}")
        }
    }

    /// How the temporary file is opened: exclusively and read-only (0400)
    /// in write-once mode, else created or truncated, 0600.
    pub(crate) fn partial_open(&self) -> (OpenFlags, FileAttributes) {
        let (flags, mode) = if self.write_once {
            (
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE,
                0o400,
            )
        } else {
            (
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                0o600,
            )
        };
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        (flags, attrs)
    }

    /// Renames a complete upload to its final name without ever replacing
    /// a file there: plain SFTP `rename`. A refusal because the name is
    /// taken says so.
    pub(crate) async fn rename_new(&self, from: &str, to: &str) -> Result<(), RemoteError> {
        let what = format!("{from} -> {to}");
        let Err(error) = self.sftp.rename(from, to).await else {
            return Ok(());
        };
        let error = self.error("rename", &what, error);
        if matches!(error, RemoteError::Failed { .. }) && self.stat(to).await?.is_some() {
            return Err(RemoteError::Failed {
                op: "rename",
                path: what,
                message: "the final name exists and a write-once upload never replaces it".into(),
            });
        }
        Err(error)
    }
}

/// The name of the file a temporary upload name stands for:
/// `<final>.partial` and `<final>.<8 hex>.partial` (write-once) both give
/// `<final>`; `None` for any other name. For callers that clean up or
/// classify leftovers.
pub fn partial_target(name: &str) -> Option<&str> {
    let upload = name.strip_suffix(PARTIAL_SUFFIX)?;
    let attempt = upload.rsplit_once('.').filter(|(stem, token)| {
        !stem.is_empty()
            && token.len() == 8
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    Some(attempt.map_or(upload, |(stem, _)| stem))
}

/// Distinct for every call in this process and, through the clock, most
/// likely from any earlier process's: the leftovers it must not meet.
fn attempt_token() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 20);
    (mixed as u32 ^ (mixed >> 32) as u32)
        .wrapping_add(COUNTER.fetch_add(0x9e37_79b9, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_partial_forms_name_their_target() {
        assert_eq!(partial_target("a.sql.gz.partial"), Some("a.sql.gz"));
        assert_eq!(
            partial_target("a.sql.gz.0badc0de.partial"),
            Some("a.sql.gz")
        );
        assert_eq!(
            partial_target("a.sql.gz.manifest.json.12345678.partial"),
            Some("a.sql.gz.manifest.json")
        );
        // Not an attempt token: kept as part of the name.
        assert_eq!(
            partial_target("a.sql.gz.0BADC0DE.partial"),
            Some("a.sql.gz.0BADC0DE")
        );
        assert_eq!(partial_target("a.sql.gz.abc.partial"), Some("a.sql.gz.abc"));
        assert_eq!(partial_target("a.sql.gz"), None);
    }

    #[test]
    fn attempt_tokens_differ() {
        let tokens: std::collections::HashSet<u32> = (0..1000).map(|_| attempt_token()).collect();
        assert_eq!(tokens.len(), 1000);
    }
}
