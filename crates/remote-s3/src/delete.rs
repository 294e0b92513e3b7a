//! Deleting an object for good. With Object Lock the bucket is versioned,
//! and a plain `DeleteObject` only hides the object behind a delete marker
//! while its bytes stay (and are billed): so every version of the key is
//! deleted by id, delete markers included. A version still under
//! retention is refused by the service; that refusal is
//! [`S3Error::Locked`] with the retention date, not a failure to retry.
//! Nothing here retries beyond the SDK's per-request attempts.

use crate::S3Remote;
use crate::error::{S3Error, classify};

impl S3Remote {
    /// Deletes every version of `key`; [`S3Error::NotFound`] when there
    /// was none.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let target = self.target(key);
        let versions = self.versions_of(key).await?;
        if versions.is_empty() {
            return Err(S3Error::NotFound { target });
        }
        for version in versions {
            let deleted = self
                .client
                .delete_object()
                .bucket(&self.settings.bucket)
                .key(key)
                .set_version_id(version)
                .send()
                .await;
            match deleted.map_err(|e| classify(e, self.ctx("DeleteObject", &target))) {
                Ok(_) | Err(S3Error::NotFound { .. }) => {}
                Err(S3Error::AccessDenied { op, target }) => {
                    // The same answer means "locked" and "not allowed":
                    // the object's retention tells them apart.
                    let until = self
                        .head(key)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|h| h.retain_until);
                    return Err(match until {
                        Some(until) if until > chrono::Utc::now() => S3Error::Locked {
                            target,
                            until: Some(until),
                        },
                        _ => S3Error::AccessDenied { op, target },
                    });
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Version ids of `key` (`None` for an unversioned bucket's object),
    /// delete markers included.
    async fn versions_of(&self, key: &str) -> Result<Vec<Option<String>>, S3Error> {
        let target = self.target(key);
        let mut found = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.settings.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| classify(e, self.ctx("ListObjectVersions", &target)))?;
            for version in page.versions() {
                if version.key() == Some(key) {
                    found.push(version_id(version.version_id()));
                }
            }
            for marker in page.delete_markers() {
                if marker.key() == Some(key) {
                    found.push(version_id(marker.version_id()));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(found)
    }
}

/// An unversioned bucket's object lists as version `null`; deleting it
/// takes no version id.
fn version_id(id: Option<&str>) -> Option<String> {
    id.filter(|id| *id != "null").map(str::to_owned)
}
