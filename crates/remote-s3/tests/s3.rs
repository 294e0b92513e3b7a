//! The S3 client against a real S3 implementation: moto's server, started
//! by `test-support` on a free port. Uploads (single and multipart, with
//! their checksums), reads, listings, Object Lock and refused credentials.

#[path = "s3/auth.rs"]
mod auth;
#[path = "s3/listing.rs"]
mod listing;
#[path = "s3/lock.rs"]
mod lock;
#[path = "s3/upload.rs"]
mod upload;

use remote_s3::{S3Remote, S3Settings};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use test_support::moto::MotoServer;

const BUCKET: &str = "backups";

/// Settings for `moto`'s bucket `bucket` with its credentials, 5 MiB parts.
fn settings(moto: &MotoServer, bucket: &str) -> S3Settings {
    let mut settings = S3Settings::new(
        Some(moto.endpoint.clone()),
        bucket,
        &moto.access_key_id,
        SecretString::from(moto.secret_access_key.clone()),
    );
    settings.prefix = "prod".into();
    settings.part_size = remote_s3::MIN_PART_SIZE;
    settings
}

fn remote(moto: &MotoServer, bucket: &str) -> S3Remote {
    S3Remote::connect(&settings(moto, bucket)).expect("client")
}

/// Incompressible, reproducible bytes (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every key in `bucket`, as moto has them (listed with boto3).
fn keys_in(moto: &MotoServer, bucket: &str) -> Vec<String> {
    let out = moto.python(&format!(
        "for o in s3.list_objects_v2(Bucket={bucket:?}).get('Contents', []): print(o['Key'])"
    ));
    out.lines().map(str::to_owned).collect()
}

/// Multipart uploads left open in `bucket`.
fn open_uploads(moto: &MotoServer, bucket: &str) -> usize {
    moto.python(&format!(
        "print(len(s3.list_multipart_uploads(Bucket={bucket:?}).get('Uploads', [])))"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// Reads `key` back whole.
async fn read_back(remote: &S3Remote, key: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut reader = remote.open_read(key).await.expect("open");
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.expect("read");
    bytes
}
