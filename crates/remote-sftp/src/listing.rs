//! Listing a directory and looking at one path: what a remote entry is
//! (name, size, kind, modification time, permissions).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, StatusCode};

use crate::paths::file_name;
use crate::{RemoteError, SftpRemote};

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

impl SftpRemote {
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
