//! Listing one "directory" level of the bucket (`ListObjectsV2` with a
//! `/` delimiter, every page followed), and the databases under the
//! prefix. Listings carry names, sizes and dates; retention and the
//! `sha256` metadata need a `head` per object, which
//! [`S3Remote::list_detailed`] does.

use chrono::{DateTime, Utc};

use crate::S3Remote;
use crate::error::{S3Error, classify};
use crate::read::to_chrono;

/// One object, named relative to the listed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
    /// Object Lock retention date (from `head`; `None` in plain listings).
    pub retain_until: Option<DateTime<Utc>>,
    /// The whole object's SHA-256 as written by the uploader (from
    /// `head`; `None` in plain listings).
    pub sha256: Option<String>,
}

impl S3Remote {
    /// The objects directly under `dir_key` (e.g. [`S3Remote::dir_key`]),
    /// named relative to it; "subdirectories" are left out.
    pub async fn list(&self, dir_key: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let prefix = dir_prefix(dir_key);
        let (objects, _) = self.list_level(&prefix).await?;
        Ok(objects)
    }

    /// [`S3Remote::list`] with each object's retention and `sha256`
    /// metadata (one `HeadObject` per object).
    pub async fn list_detailed(&self, dir_key: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let prefix = dir_prefix(dir_key);
        let mut objects = self.list(dir_key).await?;
        for object in &mut objects {
            if let Some(head) = self.head(&format!("{prefix}{}", object.name)).await? {
                object.retain_until = head.retain_until;
                object.sha256 = head.sha256;
            }
        }
        Ok(objects)
    }

    /// The databases that have a "directory" under the prefix.
    pub async fn list_databases(&self) -> Result<Vec<String>, S3Error> {
        let prefix = dir_prefix(&self.settings.prefix);
        let (_, mut dirs) = self.list_level(&prefix).await?;
        dirs.sort();
        Ok(dirs)
    }

    /// Objects and sub-"directories" directly under `prefix` (which is
    /// empty or ends with `/`).
    async fn list_level(&self, prefix: &str) -> Result<(Vec<ObjectInfo>, Vec<String>), S3Error> {
        let target = self.target(prefix);
        let mut objects = Vec::new();
        let mut dirs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .delimiter("/")
                .set_continuation_token(token.take());
            if !prefix.is_empty() {
                request = request.prefix(prefix);
            }
            let page = request
                .send()
                .await
                .map_err(|e| classify(e, self.ctx("ListObjectsV2", &target)))?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(prefix)) else {
                    continue;
                };
                if name.is_empty() {
                    continue;
                }
                objects.push(ObjectInfo {
                    name: name.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    modified: object.last_modified().and_then(to_chrono),
                    retain_until: None,
                    sha256: None,
                });
            }
            for common in page.common_prefixes() {
                if let Some(dir) = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(prefix))
                    .map(|p| p.trim_end_matches('/'))
                    .filter(|p| !p.is_empty())
                {
                    dirs.push(dir.to_owned());
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok((objects, dirs))
    }
}

/// `dir` as a listing prefix: empty, or ending with exactly one `/`.
fn dir_prefix(dir: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    }
}
