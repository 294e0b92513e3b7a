//! Writing objects so that a key only ever holds complete, checked data.
//!
//! - Below the part size: one `PutObject` with the body in memory and its
//!   `x-amz-checksum-sha256`, so the service checks what it stores.
//! - From the part size up: a multipart upload. Parts are read one at a
//!   time into memory, once a slot is free, and sent by at most
//!   [`PARTS_IN_FLIGHT`] tasks, so an upload holds `PARTS_IN_FLIGHT × part
//!   size` whatever the file size, in buffers reused from part to part
//!   (see `part_buffers` for why). Every part carries its SHA-256
//!   (`ChecksumAlgorithm::Sha256`, which the service checks; the payload
//!   itself goes unsigned, as the signature covers that header), and the
//!   upload is completed only when the bytes read hash to the
//!   SHA-256 the caller announced and add up to the announced size. On any
//!   failure, and when the upload future is dropped (a watchdog), the
//!   multipart upload is aborted: S3 shows the object only once
//!   `CompleteMultipartUpload` succeeds, so a key never holds half a file.
//!   Uploads a killed process left open under the same key are aborted
//!   before a new one starts.
//!
//! Every object carries the whole file's SHA-256 in its `sha256` metadata
//! (what `head` reads back to tell "already shipped" from a conflict) and,
//! when configured, an Object Lock retention (mode, now + days).
//!
//! Requests are retried by the SDK (see [`crate::client`]); the upload as a
//! whole is not: its error says whether the caller may try again.

use aws_sdk_s3::primitives::{ByteStream, DateTime as SdkDateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
};
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::S3Remote;
use crate::error::{Context, S3Error, classify};
use crate::part_buffers::PartBuffers;
use crate::settings::part_size_for;

/// Parts sent at once by one upload.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Metadata key of the whole object's SHA-256 (hex), `x-amz-meta-sha256`.
pub const SHA256_METADATA: &str = "sha256";

impl S3Remote {
    /// Uploads exactly `size` bytes from `reader` under `key` (see the
    /// module docs). `sha256` is the hex SHA-256 the data must have;
    /// `progress` gets the bytes the service has acknowledged so far.
    pub async fn upload<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        mut reader: R,
        size: u64,
        sha256: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), S3Error> {
        check_sha256(sha256)?;
        if size < self.settings.part_size {
            let target = self.target(key);
            let data = read_part(
                &mut reader,
                Vec::with_capacity(size as usize),
                size as usize,
                &target,
            )
            .await?;
            expect_end(&mut reader, size, data.len() as u64, &target).await?;
            let actual = hex::encode(Sha256::digest(&data));
            if actual != sha256 {
                return Err(S3Error::ChecksumMismatch {
                    target,
                    expected: sha256.to_owned(),
                    actual,
                });
            }
            self.put(key, Bytes::from(data), sha256).await?;
            progress(size);
            return Ok(());
        }
        self.abort_stale_uploads(key).await;
        self.multipart(key, &mut reader, size, sha256, progress)
            .await
    }

    /// Writes a small object (a manifest, a record) in one request, with
    /// the same checksum, metadata and retention as [`S3Remote::upload`].
    pub async fn put_small(&self, key: &str, bytes: &[u8]) -> Result<(), S3Error> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        self.put(key, Bytes::copy_from_slice(bytes), &sha256).await
    }

    async fn put(&self, key: &str, data: Bytes, sha256: &str) -> Result<(), S3Error> {
        let target = self.target(key);
        let len = data.len() as i64;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_length(len)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(base64_sha256(&data))
            .metadata(SHA256_METADATA, sha256)
            .body(ByteStream::from(data));
        if let Some((mode, until)) = self.retention() {
            request = request
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        request
            .send()
            .await
            .map_err(|e| classify(e, self.ctx("PutObject", &target)))?;
        Ok(())
    }

    /// The Object Lock mode and retain-until date of an object written now.
    fn retention(&self) -> Option<(ObjectLockMode, SdkDateTime)> {
        self.settings.object_lock.map(|lock| {
            let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.days));
            (
                ObjectLockMode::from(lock.mode.as_s3()),
                SdkDateTime::from_secs(until.timestamp()),
            )
        })
    }

    async fn multipart<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        reader: &mut R,
        size: u64,
        sha256: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), S3Error> {
        let target = self.target(key);
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata(SHA256_METADATA, sha256);
        if let Some((mode, until)) = self.retention() {
            create = create
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        let created = create
            .send()
            .await
            .map_err(|e| classify(e, self.ctx("CreateMultipartUpload", &target)))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| S3Error::Protocol {
                op: "CreateMultipartUpload",
                target: target.clone(),
                detail: "no upload id".into(),
            })?
            .to_owned();
        let mut guard = AbortGuard {
            remote: self.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = async {
            let parts = self
                .send_parts(key, &upload_id, reader, size, sha256, progress)
                .await?;
            self.client
                .complete_multipart_upload()
                .bucket(&self.settings.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify(e, self.ctx("CompleteMultipartUpload", &target)))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                self.confirm_retention(key).await
            }
            Err(error) => {
                if let Some(id) = guard.upload_id.take() {
                    self.abort_upload(key, &id).await;
                }
                Err(error)
            }
        }
    }

    /// Reads and sends every part; returns them in order for the
    /// completion, once the whole data matched `size` and `sha256`.
    async fn send_parts<R: AsyncRead + Unpin + Send>(
        &self,
        key: &str,
        upload_id: &str,
        reader: &mut R,
        size: u64,
        sha256: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Vec<CompletedPart>, S3Error> {
        let target = self.target(key);
        let part_size = part_size_for(self.settings.part_size, size);
        let buffers = PartBuffers::new(part_size as usize);
        let mut whole = Sha256::new();
        let mut tasks: JoinSet<Result<(CompletedPart, u64), S3Error>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut read = 0u64;
        let mut acknowledged = 0u64;
        let mut number = 0i32;
        let mut finished = |done: Result<Result<(CompletedPart, u64), S3Error>, _>,
                            parts: &mut Vec<CompletedPart>|
         -> Result<(), S3Error> {
            let (part, len) = done.map_err(|e: tokio::task::JoinError| S3Error::Protocol {
                op: "UploadPart",
                target: target.clone(),
                detail: format!("part task failed: {e}"),
            })??;
            parts.push(part);
            acknowledged += len;
            progress(acknowledged);
            Ok(())
        };
        while read < size {
            // A free slot first, then a buffer: the one the finished part
            // gave back.
            while tasks.len() >= PARTS_IN_FLIGHT {
                let done = tasks.join_next().await.expect("tasks are running");
                finished(done, &mut parts)?;
            }
            let want = part_size.min(size - read) as usize;
            let data = read_part(reader, buffers.take(), want, &target).await?;
            if data.len() < want {
                return Err(S3Error::SizeMismatch {
                    target: target.clone(),
                    expected: size,
                    actual: (read + data.len() as u64).to_string(),
                });
            }
            whole.update(&data);
            read += want as u64;
            number += 1;
            tasks.spawn(upload_part(
                self.clone(),
                key.to_owned(),
                upload_id.to_owned(),
                number,
                buffers.share(data),
            ));
        }
        expect_end(reader, size, read, &target).await?;
        let actual = hex::encode(whole.finalize());
        if actual != sha256 {
            // Dropping the tasks aborts the parts still in flight.
            return Err(S3Error::ChecksumMismatch {
                target: target.clone(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        while let Some(done) = tasks.join_next().await {
            finished(done, &mut parts)?;
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    /// Sets the retention of a completed multipart object again with
    /// `PutObjectRetention`: services differ in whether they carry the
    /// retention given at `CreateMultipartUpload` over to the object
    /// (moto does not), and an object without it would be deletable.
    async fn confirm_retention(&self, key: &str) -> Result<(), S3Error> {
        let Some((mode, until)) = self.retention() else {
            return Ok(());
        };
        let target = self.target(key);
        self.client
            .put_object_retention()
            .bucket(&self.settings.bucket)
            .key(key)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(aws_sdk_s3::types::ObjectLockRetentionMode::from(
                        mode.as_str(),
                    ))
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(e, self.ctx("PutObjectRetention", &target)))?;
        Ok(())
    }

    /// Aborts uploads left open under `key` by a run that died: only one
    /// writer uploads a given key. Best effort: a service that does not
    /// list uploads (or denies it) only keeps them until its own cleanup.
    async fn abort_stale_uploads(&self, key: &str) {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.settings.bucket)
            .prefix(key)
            .send()
            .await;
        match listed {
            Ok(listed) => {
                for upload in listed.uploads() {
                    if upload.key() == Some(key)
                        && let Some(id) = upload.upload_id()
                    {
                        tracing::info!(
                            key,
                            "aborting a multipart upload left by an interrupted run"
                        );
                        self.abort_upload(key, id).await;
                    }
                }
            }
            Err(error) => {
                let target = self.target(key);
                let error = classify(error, self.ctx("ListMultipartUploads", &target));
                tracing::debug!(%error, "cannot list open multipart uploads");
            }
        }
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(error) = aborted {
            let target = self.target(key);
            let error = classify(error, self.ctx("AbortMultipartUpload", &target));
            tracing::warn!(%error, "the failed multipart upload could not be aborted; the next upload of this key or the bucket's lifecycle rule removes it");
        }
    }
}

/// One part, sent with its SHA-256; returns it for the completion and its
/// length for the progress count.
async fn upload_part(
    remote: S3Remote,
    key: String,
    upload_id: String,
    number: i32,
    data: Bytes,
) -> Result<(CompletedPart, u64), S3Error> {
    let len = data.len() as u64;
    let checksum = base64_sha256(&data);
    let sent = remote
        .client
        .upload_part()
        .bucket(&remote.settings.bucket)
        .key(&key)
        .upload_id(&upload_id)
        .part_number(number)
        .content_length(len as i64)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(&checksum)
        .body(ByteStream::from(data))
        // The signature covers the part's x-amz-checksum-sha256 header,
        // which the service checks against the body: hashing the body a
        // second time for SigV4 proves nothing more and cost a third
        // SHA-256 pass over every byte.
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(|e| {
            let target = remote.target(&key);
            let ctx = Context {
                op: "UploadPart",
                target: &target,
                bucket: &remote.settings.bucket,
                endpoint: &remote.endpoint,
            };
            classify(e, ctx)
        })?;
    let part = CompletedPart::builder()
        .part_number(number)
        .set_e_tag(sent.e_tag().map(str::to_owned))
        .checksum_sha256(checksum)
        .build();
    Ok((part, len))
}

/// Aborts the multipart upload when the upload future is dropped before
/// it finished (a watchdog gave up on it): a task does it in the
/// background, since `drop` cannot wait.
struct AbortGuard {
    remote: S3Remote,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let remote = self.remote.clone();
            let key = std::mem::take(&mut self.key);
            runtime.spawn(async move { remote.abort_upload(&key, &upload_id).await });
        }
    }
}

/// Reads up to `len` bytes (fewer only at the end of the data).
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut buf: Vec<u8>,
    len: usize,
    target: &str,
) -> Result<Vec<u8>, S3Error> {
    while buf.len() < len {
        let before = buf.len();
        let mut limited = (&mut *reader).take((len - before) as u64);
        let n = limited
            .read_buf(&mut buf)
            .await
            .map_err(|source| S3Error::Source {
                target: target.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

/// Checks that the data ends after `size` bytes.
async fn expect_end<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: u64,
    read: u64,
    target: &str,
) -> Result<(), S3Error> {
    if read < size {
        return Err(S3Error::SizeMismatch {
            target: target.to_owned(),
            expected: size,
            actual: read.to_string(),
        });
    }
    let mut one = [0u8; 1];
    let extra = reader
        .read(&mut one)
        .await
        .map_err(|source| S3Error::Source {
            target: target.to_owned(),
            source,
        })?;
    if extra > 0 {
        return Err(S3Error::SizeMismatch {
            target: target.to_owned(),
            expected: size,
            actual: "more".into(),
        });
    }
    Ok(())
}

fn check_sha256(sha256: &str) -> Result<(), S3Error> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(S3Error::Config(format!(
            "{sha256:?} is not a lowercase hex SHA-256"
        )))
    }
}

fn base64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}
