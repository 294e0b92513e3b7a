//! An open destination, addressed by `(database, name)`: the layout
//! (`<base>/<database>/<name>` on SFTP, `<prefix>/<database>/<name>` keys
//! on S3) stays in here. Listing an S3 database asks for every object's
//! retention (one `HEAD` each) so that locked backups are known as such. A database with
//! nothing stored lists empty rather than failing, as a key prefix with no
//! object does on object storage; every other missing file is an error
//! whose [`StoreError::is_not_found`] says so.

use backup_core::names::DatabaseName;
use backup_core::sftp::database_dir;
use chrono::{DateTime, Utc};
use remote_s3::{ObjectInfo, S3Remote};
use remote_sftp::{RemoteEntry, SftpRemote};

use crate::StoreError;
use crate::reader::{Inner, StoreReader};

/// One stored file of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name, without the database or base part.
    pub name: String,
    pub size: u64,
    /// When it was last written, by the destination's clock.
    pub modified: Option<DateTime<Utc>>,
    /// Until when the destination refuses to delete it (S3 Object Lock);
    /// always `None` on SFTP.
    pub retain_until: Option<DateTime<Utc>>,
}

impl Entry {
    /// Whether the destination still refuses to delete it at `now`.
    pub fn locked_at(&self, now: DateTime<Utc>) -> bool {
        self.retain_until.is_some_and(|until| until > now)
    }
}

/// A connection to one destination. Methods take `&self` and may run
/// concurrently.
#[derive(Debug)]
pub enum Store {
    /// An SFTP server and the base directory holding one directory per
    /// database (absolute, or relative to the login directory).
    Sftp { remote: SftpRemote, dir: String },
    /// A bucket and the prefix holding one "directory" per database.
    S3 { remote: S3Remote },
}

impl Store {
    /// Where `database`'s files live, for messages: `<dir>/<database>` on
    /// SFTP, `s3://<bucket>/<prefix>/<database>` on S3.
    pub fn location(&self, database: &DatabaseName) -> String {
        match self {
            Store::Sftp { dir, .. } => database_dir(dir, database),
            Store::S3 { remote } => format!(
                "s3://{}/{}",
                remote.settings().bucket,
                remote.dir_key(database.as_str())
            ),
        }
    }

    /// The files of `database` (not directories), in the destination's
    /// order; empty when nothing was ever stored for it.
    pub async fn list(&self, database: &DatabaseName) -> Result<Vec<Entry>, StoreError> {
        match self {
            Store::Sftp { remote, dir } => {
                match remote.list_dir(&database_dir(dir, database)).await {
                    Ok(entries) => Ok(entries
                        .into_iter()
                        .filter(|e| !e.is_dir)
                        .map(entry)
                        .collect()),
                    Err(remote_sftp::RemoteError::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(e.into()),
                }
            }
            Store::S3 { remote } => Ok(remote
                .list_detailed(&remote.dir_key(database.as_str()))
                .await?
                .into_iter()
                .map(object)
                .collect()),
        }
    }

    /// The databases that have files here, sorted; none when nothing was
    /// stored yet. Names that are not valid database names are skipped.
    pub async fn list_databases(&self) -> Result<Vec<DatabaseName>, StoreError> {
        let mut databases: Vec<DatabaseName> = match self {
            Store::Sftp { remote, dir } => match remote.list_dir(dir).await {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|e| e.is_dir)
                    .filter_map(|e| e.name.parse().ok())
                    .collect(),
                Err(remote_sftp::RemoteError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            },
            Store::S3 { remote } => remote
                .list_databases()
                .await?
                .into_iter()
                .filter_map(|name| name.parse().ok())
                .collect(),
        };
        databases.sort();
        Ok(databases)
    }

    /// One file's metadata, `None` if it does not exist.
    pub async fn stat(
        &self,
        database: &DatabaseName,
        name: &str,
    ) -> Result<Option<Entry>, StoreError> {
        match self {
            Store::Sftp { remote, dir } => Ok(remote
                .stat(&path(dir, database, name))
                .await?
                .filter(|e| !e.is_dir)
                .map(entry)),
            Store::S3 { remote } => Ok(remote
                .head(&remote.key(database.as_str(), name))
                .await?
                .map(object)),
        }
    }

    /// A whole small file (a manifest, a verification record); an error
    /// when it holds more than `max_len` bytes.
    pub async fn read_small(
        &self,
        database: &DatabaseName,
        name: &str,
        max_len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Sftp { remote, dir } => Ok(remote
                .read_file(&path(dir, database, name), max_len)
                .await?),
            Store::S3 { remote } => Ok(remote
                .read_small(&remote.key(database.as_str(), name), max_len)
                .await?),
        }
    }

    /// A file of any size as a stream (an artifact), read ahead in the
    /// background.
    pub async fn open_read(
        &self,
        database: &DatabaseName,
        name: &str,
    ) -> Result<StoreReader, StoreError> {
        match self {
            Store::Sftp { remote, dir } => {
                let reader = remote.open_read(&path(dir, database, name)).await?;
                Ok(StoreReader(Inner::Sftp(reader)))
            }
            Store::S3 { remote } => {
                let reader = remote
                    .open_read(&remote.key(database.as_str(), name))
                    .await?;
                let settings = remote.settings();
                let endpoint = settings
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("s3.{}.amazonaws.com", settings.region));
                Ok(StoreReader(Inner::S3 { reader, endpoint }))
            }
        }
    }

    /// Writes a small file under its final name atomically (a temporary
    /// name, then a rename over the old one, on SFTP; one `PutObject` on
    /// S3, with the bucket's retention like every object written): a
    /// reader sees the old content or the new, never a part.
    pub async fn write_small(
        &self,
        database: &DatabaseName,
        name: &str,
        contents: &[u8],
    ) -> Result<(), StoreError> {
        match self {
            Store::Sftp { remote, dir } => Ok(remote
                .write_file_atomic(&path(dir, database, name), contents)
                .await?),
            Store::S3 { remote } => Ok(remote
                .put_small(&remote.key(database.as_str(), name), contents)
                .await?),
        }
    }

    /// Deletes one file (on S3 every version of it); an error whose
    /// [`StoreError::is_not_found`] is true when it is not there, and
    /// [`remote_s3::S3Error::Locked`] for an S3 object under retention.
    pub async fn remove(&self, database: &DatabaseName, name: &str) -> Result<(), StoreError> {
        match self {
            Store::Sftp { remote, dir } => {
                Ok(remote.remove_file(&path(dir, database, name)).await?)
            }
            Store::S3 { remote } => Ok(remote.delete(&remote.key(database.as_str(), name)).await?),
        }
    }

    /// Ends the connection politely. Dropping a `Store` closes it too,
    /// without telling the server.
    pub async fn close(self) {
        match self {
            // The only error means the connection is already gone.
            Store::Sftp { remote, .. } => drop(remote.close().await),
            // Requests are independent; the pool closes when dropped.
            Store::S3 { .. } => {}
        }
    }
}

fn path(dir: &str, database: &DatabaseName, name: &str) -> String {
    format!("{}/{name}", database_dir(dir, database))
}

fn entry(e: RemoteEntry) -> Entry {
    Entry {
        name: e.name,
        size: e.size,
        modified: e.modified.map(DateTime::<Utc>::from),
        retain_until: None,
    }
}

fn object(o: ObjectInfo) -> Entry {
    Entry {
        name: o.name,
        size: o.size,
        modified: o.modified,
        retain_until: o.retain_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_until_its_date() {
        let until = "2026-12-05T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let mut entry = Entry {
            name: "x".into(),
            size: 1,
            modified: None,
            retain_until: Some(until),
        };
        assert!(entry.locked_at(until - chrono::TimeDelta::seconds(1)));
        assert!(!entry.locked_at(until));
        entry.retain_until = None;
        assert!(!entry.locked_at(until));
    }

    #[test]
    fn paths_keep_the_layout() {
        let db: DatabaseName = "viatique".parse().unwrap();
        assert_eq!(path("/srv/b/", &db, "f"), "/srv/b/viatique/f");
        assert_eq!(path("backups", &db, "f"), "backups/viatique/f");
    }
}
