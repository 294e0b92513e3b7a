//! Decoding what is stored into what pg_dump wrote: age decryption when the
//! artifact is encrypted, then decompression (gzip or zstd, several members
//! allowed), skipped for a custom-format archive that carries its own
//! compression. Errors are told apart by layer, so `dump.failed` says
//! whether the key or the compression is at fault.

use std::path::PathBuf;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use backup_core::manifest::Manifest;
use backup_core::names::Compression;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::CHUNK;
use crate::error::{IDENTITY_HINT, VerifyError};
use crate::options::RestoreOptions;

/// Decoded bytes, whatever layers were removed.
pub(crate) type Plaintext = Box<dyn AsyncRead + Unpin + Send>;

/// The age identity file an encrypted artifact needs. Checked before
/// anything is read: a missing key is a configuration failure, and must
/// say so.
pub(crate) fn identity_for(
    manifest: &Manifest,
    options: &RestoreOptions,
) -> Result<Option<PathBuf>, VerifyError> {
    if !manifest.artifact.kind().encrypted {
        return Ok(None);
    }
    let artifact = manifest.artifact.to_string();
    match &options.age_identity {
        None => Err(VerifyError::Decrypt {
            artifact,
            detail: format!(
                "the artifact is age-encrypted and {IDENTITY_HINT} is not set; cannot verify it"
            ),
        }),
        Some(path) if !path.is_file() => Err(VerifyError::Decrypt {
            artifact,
            detail: format!(
                "{IDENTITY_HINT} {} does not exist or is not a file",
                path.display()
            ),
        }),
        Some(path) => Ok(Some(path.clone())),
    }
}

/// The bytes pg_dump wrote, from the bytes as stored.
pub(crate) async fn decoded<R>(
    stored: R,
    manifest: &Manifest,
    options: &RestoreOptions,
) -> Result<Plaintext, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let plaintext = decrypted(stored, manifest, options).await?;
    decompressed(plaintext, manifest).await
}

/// The decrypted bytes (or the stored bytes when not encrypted).
async fn decrypted<R>(
    stored: R,
    manifest: &Manifest,
    options: &RestoreOptions,
) -> Result<Plaintext, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Some(identity) = identity_for(manifest, options)? else {
        return Ok(Box::new(stored));
    };
    let artifact = manifest.artifact.to_string();
    let decrypt_error = |detail: String| VerifyError::Decrypt {
        artifact: artifact.clone(),
        detail,
    };
    let decryptor =
        age::Decryptor::new_async_buffered(BufReader::with_capacity(CHUNK, stored).compat())
            .await
            .map_err(|e| decrypt_error(format!("not a valid age file: {e}")))?;
    // Identities are not Send; they live only in this synchronous scope.
    let reader = {
        let file =
            age::IdentityFile::from_file(identity.to_string_lossy().into_owned()).map_err(|e| {
                decrypt_error(format!(
                    "cannot read {IDENTITY_HINT} {}: {e}",
                    identity.display()
                ))
            })?;
        let identities = file
            .into_identities()
            .map_err(|e| decrypt_error(format!("unusable identity in {IDENTITY_HINT}: {e}")))?;
        decryptor
            .decrypt_async(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| decrypt_error(e.to_string()))?
    };
    Ok(Box::new(reader.compat()))
}

/// Where the decompressed stream comes from, once its first bytes showed
/// what it holds. pg_dump's custom format may carry its own compression,
/// in which case there is no outer layer to remove.
async fn decompressed(plaintext: Plaintext, manifest: &Manifest) -> Result<Plaintext, VerifyError> {
    let mut buffered = BufReader::with_capacity(CHUNK, plaintext);
    let head = buffered
        .fill_buf()
        .await
        .map_err(|e| VerifyError::Decrypt {
            artifact: manifest.artifact.to_string(),
            detail: backup_core::one_line(&e.to_string()),
        })?;
    if head.starts_with(b"PGDMP") {
        return Ok(Box::new(buffered));
    }
    // Parallel writers (pigz-style) produce several members per file.
    Ok(match manifest.artifact.kind().compression {
        Compression::Gzip => {
            let mut decoder = GzipDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::Zstd => {
            let mut decoder = ZstdDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
    })
}

/// A decoding error: decryption (age's stream is authenticated) or
/// decompression, told apart by layer.
pub(crate) fn decode_error(manifest: &Manifest, error: &std::io::Error) -> VerifyError {
    let artifact = manifest.artifact.to_string();
    let detail = backup_core::one_line(&error.to_string());
    if manifest.artifact.kind().encrypted
        && error.kind() == std::io::ErrorKind::InvalidData
        && detail.to_lowercase().contains("decrypt")
    {
        VerifyError::Decrypt { artifact, detail }
    } else {
        VerifyError::Decompress { artifact, detail }
    }
}
