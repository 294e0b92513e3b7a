//! Creating directories: the missing part of a path, private to the
//! backup user, tolerant of another writer creating them at the same time.

use russh_sftp::protocol::FileAttributes;

use crate::paths::path_prefixes;
use crate::{RemoteError, SftpRemote};

impl SftpRemote {
    /// Creates `path` and missing parents with mode 0700 (backups are
    /// nobody else's business). Existing directories are left as they are.
    pub async fn create_dir_all(&self, path: &str) -> Result<(), RemoteError> {
        let path = &self.resolve(path);
        let path = path.as_str();
        self.check_alive()?;
        let prefixes = path_prefixes(path);
        // Find the deepest existing ancestor; usually the base dir exists
        // and only the last component or two are new.
        let mut existing = prefixes.len();
        while existing > 0 {
            match self.stat(&prefixes[existing - 1]).await? {
                Some(entry) if entry.is_dir => break,
                Some(_) => return Err(not_a_directory(&prefixes[existing - 1])),
                None => existing -= 1,
            }
        }
        for dir in &prefixes[existing..] {
            let attrs = FileAttributes {
                permissions: Some(0o700),
                ..FileAttributes::empty()
            };
            if let Err(error) = self.sftp.mkdir(dir.as_str(), attrs).await {
                // Another writer may have created it meanwhile.
                match self.stat(dir).await? {
                    Some(entry) if entry.is_dir => {}
                    Some(_) => return Err(not_a_directory(dir)),
                    None => return Err(self.error("mkdir", dir, error)),
                }
            }
        }
        Ok(())
    }
}

fn not_a_directory(path: &str) -> RemoteError {
    RemoteError::Failed {
        op: "mkdir",
        path: path.to_owned(),
        message: "exists and is not a directory".into(),
    }
}
