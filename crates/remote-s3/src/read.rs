//! Reading objects back: `head` (size, retention, the `sha256` metadata),
//! a bounded read of small objects, and a streaming reader for artifacts
//! (`GetObject`'s body, never held in memory as a whole). Nothing here
//! retries beyond the SDK's per-request attempts; a stream cut in the
//! middle fails the read with an I/O error.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, ReadBuf};

use crate::error::{S3Error, classify};
use crate::upload::SHA256_METADATA;
use crate::{ObjectInfo, S3Remote};

/// A streaming object body.
pub struct S3Reader {
    inner: Pin<Box<dyn AsyncBufRead + Send>>,
    size: Option<u64>,
}

impl std::fmt::Debug for S3Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Reader")
            .field("size", &self.size)
            .finish()
    }
}

impl S3Reader {
    /// The object's size, as the service announced it.
    pub fn size(&self) -> Option<u64> {
        self.size
    }
}

impl AsyncRead for S3Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl S3Remote {
    /// Size, dates, retention and `sha256` metadata of `key`; `None` when
    /// there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let target = self.target(key);
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(info_of(key, &head))),
            Err(error) => match classify(error, self.ctx("HeadObject", &target)) {
                S3Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The whole of a small object; [`S3Error::TooLarge`] past `max_len`.
    pub async fn read_small(&self, key: &str, max_len: u64) -> Result<Vec<u8>, S3Error> {
        let target = self.target(key);
        let reader = self.open_read(key).await?;
        if let Some(size) = reader.size().filter(|s| *s > max_len) {
            return Err(S3Error::TooLarge {
                target,
                size,
                max_len,
            });
        }
        let mut bytes = Vec::new();
        reader
            .take(max_len + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| S3Error::Unreachable {
                op: "GetObject",
                endpoint: self.endpoint.clone(),
                detail: format!("reading {target}: {e}"),
            })?;
        if bytes.len() as u64 > max_len {
            return Err(S3Error::TooLarge {
                target,
                size: bytes.len() as u64,
                max_len,
            });
        }
        Ok(bytes)
    }

    /// Streams `key`'s bytes.
    pub async fn open_read(&self, key: &str) -> Result<S3Reader, S3Error> {
        let target = self.target(key);
        let object = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, self.ctx("GetObject", &target)))?;
        let size = object.content_length().and_then(|l| u64::try_from(l).ok());
        Ok(S3Reader {
            inner: Box::pin(object.body.into_async_read()),
            size,
        })
    }
}

pub(crate) fn to_chrono(date: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(date.secs(), date.subsec_nanos())
}

fn info_of(key: &str, head: &HeadObjectOutput) -> ObjectInfo {
    ObjectInfo {
        name: key.rsplit('/').next().unwrap_or(key).to_owned(),
        size: head
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0),
        modified: head.last_modified().and_then(to_chrono),
        retain_until: head.object_lock_retain_until_date().and_then(to_chrono),
        sha256: head
            .metadata()
            .and_then(|m| m.get(SHA256_METADATA))
            .cloned(),
    }
}
