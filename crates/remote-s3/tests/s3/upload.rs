//! Uploads: multipart above the part size, one request below it; the
//! object appears only complete and checked.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_the_part_size_goes_in_parts_and_reads_back_identical() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let remote = remote(&moto, BUCKET);
    // Three parts: 5 MiB, 5 MiB and the rest.
    let data = pseudo_random(12_000_000, 1);
    let sha = sha256_hex(&data);
    let key = remote.key("viatique", "viatique_20260101_020000.sql.gz");
    assert_eq!(key, "prod/viatique/viatique_20260101_020000.sql.gz");
    let acknowledged = AtomicU64::new(0);
    remote
        .upload(&key, &data[..], data.len() as u64, &sha, &|total| {
            acknowledged.store(total, Ordering::Relaxed);
        })
        .await
        .expect("upload");
    assert_eq!(acknowledged.load(Ordering::Relaxed), 12_000_000);
    assert!(
        moto.log().contains("partNumber=3"),
        "not sent in three parts:\n{}",
        moto.log()
    );
    let head = remote.head(&key).await.unwrap().expect("object exists");
    assert_eq!(head.size, 12_000_000);
    assert_eq!(head.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(head.retain_until, None);
    assert_eq!(read_back(&remote, &key).await, data);
    assert_eq!(open_uploads(&moto, BUCKET), 0);

    // Small objects: one request, the same metadata.
    let manifest_key = format!("{key}.manifest.json");
    remote.put_small(&manifest_key, b"{}").await.unwrap();
    assert_eq!(remote.read_small(&manifest_key, 1024).await.unwrap(), b"{}");
    let too_large = remote.read_small(&key, 1024).await.unwrap_err();
    assert!(
        matches!(too_large, remote_s3::S3Error::TooLarge { .. }),
        "{too_large}"
    );
    let small = pseudo_random(1000, 2);
    let small_key = remote.key("viatique", "small");
    remote
        .upload(&small_key, &small[..], 1000, &sha256_hex(&small), &|_| {})
        .await
        .unwrap();
    let head = remote.head(&small_key).await.unwrap().unwrap();
    assert_eq!(head.sha256, Some(sha256_hex(&small)));
    assert_eq!(read_back(&remote, &small_key).await, small);
    assert_eq!(
        remote.head(&remote.key("viatique", "none")).await.unwrap(),
        None
    );
    let missing = remote
        .open_read(&remote.key("viatique", "none"))
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_that_does_not_match_its_checksum_leaves_no_object() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let remote = remote(&moto, BUCKET);
    for len in [12_000_000usize, 1000] {
        let data = pseudo_random(len, 3);
        // One flipped byte: the spool copy is not what was announced.
        let mut corrupted = data.clone();
        corrupted[len / 2] ^= 1;
        let key = remote.key("viatique", &format!("corrupted-{len}"));
        let error = remote
            .upload(
                &key,
                &corrupted[..],
                len as u64,
                &sha256_hex(&data),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, remote_s3::S3Error::ChecksumMismatch { .. }),
            "{error}"
        );
        assert!(!error.is_transient());
        assert_eq!(remote.head(&key).await.unwrap(), None);
    }
    assert!(keys_in(&moto, BUCKET).is_empty());
    assert_eq!(open_uploads(&moto, BUCKET), 0);
}

/// Yields `data`, then fails as a disk or a cut pipe would.
struct FailingAfter {
    data: Vec<u8>,
    at: usize,
}

impl AsyncRead for FailingAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at >= self.data.len() {
            return Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        let n = buf
            .remaining()
            .min(self.data.len() - self.at)
            .min(64 * 1024);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_interrupted_midway_leaves_no_object_and_no_open_upload() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let remote = remote(&moto, BUCKET);
    let whole = pseudo_random(12_000_000, 4);
    let key = remote.key("viatique", "interrupted");
    // Two parts' worth arrive, then reading fails.
    let reader = FailingAfter {
        data: whole[..11_000_000].to_vec(),
        at: 0,
    };
    let error = remote
        .upload(
            &key,
            reader,
            whole.len() as u64,
            &sha256_hex(&whole),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, remote_s3::S3Error::Source { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("disk on fire"), "{error}");
    assert_eq!(remote.head(&key).await.unwrap(), None);
    assert_eq!(open_uploads(&moto, BUCKET), 0);

    // Fewer bytes than announced: refused before completion, too.
    let short = &whole[..6_000_000];
    let error = remote
        .upload(
            &key,
            short,
            whole.len() as u64,
            &sha256_hex(&whole),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, remote_s3::S3Error::SizeMismatch { .. }),
        "{error}"
    );
    assert_eq!(remote.head(&key).await.unwrap(), None);
    assert_eq!(open_uploads(&moto, BUCKET), 0);
}
