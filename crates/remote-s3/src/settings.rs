//! The checked settings of an S3 destination ([`S3Settings`]) and the
//! small values they are made of: Object Lock retention and sizes.
//! Built from the environment by [`crate::S3Args`]; tests build them
//! directly. Nothing here talks to the network.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

/// S3's smallest part (every part but the last must be at least this).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Default part size: with [`crate::PARTS_IN_FLIGHT`] parts in memory an
/// upload holds 32 MiB up to 160 GiB files (the shipper peaked at 50 MiB
/// of RSS), and fewer, larger requests were faster than 8 MiB parts
/// (170 against 147 MB/s to moto, docs/benchmarks.md).
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3's limit on the parts of one upload: larger files get larger parts.
pub const MAX_PARTS: u64 = 10_000;

/// How a retention date binds (S3 Object Lock modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody without `s3:BypassGovernanceRetention` can delete or
    /// overwrite the version before its date; an administrator with that
    /// permission can (to undo a mistaken setting).
    Governance,
    /// Nobody, the account's root included, can delete the version before
    /// its date.
    Compliance,
}

impl LockMode {
    /// The name S3 uses on the wire.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// Retention written on every object: `mode` until now + `days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub days: u32,
    pub mode: LockMode,
}

/// Where and how to reach the bucket. `Debug` never shows the secret key.
#[derive(Clone)]
pub struct S3Settings {
    /// `http(s)://host[:port]` of an S3-compatible service; `None` for AWS
    /// (the regional endpoint).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix of everything this destination writes, without leading
    /// or trailing `/`; may be empty.
    pub prefix: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    /// Retention written on every object, when the bucket has Object Lock.
    pub object_lock: Option<ObjectLock>,
    /// Uploads larger than this go in parts of this size (at least
    /// [`MIN_PART_SIZE`]); smaller ones in one request.
    pub part_size: u64,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for the server's answer to one request.
    pub io_timeout: Duration,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("object_lock", &self.object_lock)
            .field("part_size", &self.part_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl S3Settings {
    /// Settings with the defaults of [`crate::S3Args`] for everything but
    /// where the bucket is and who writes to it.
    pub fn new(
        endpoint: Option<String>,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: SecretString,
    ) -> S3Settings {
        S3Settings {
            path_style: endpoint.is_some(),
            endpoint,
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: String::new(),
            access_key_id: access_key_id.into(),
            secret_access_key,
            object_lock: None,
            part_size: DEFAULT_PART_SIZE,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// Checks a bucket name by S3's rules (3 to 63 lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit).
pub(crate) fn check_bucket(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if (3..=63).contains(&name.len())
        && ok_chars
        && ends_ok(name.as_bytes().first())
        && ends_ok(name.as_bytes().last())
        && !name.contains("..")
    {
        Ok(())
    } else {
        Err(format!(
            "S3_BUCKET {name:?} is not a bucket name: 3 to 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// Normalises a key prefix: surrounding `/` removed; empty segments, `.`
/// and `..` refused (some services resolve them, which would move the
/// backups somewhere unexpected).
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "S3_PREFIX {prefix:?} must be path segments separated by single '/', without '.' or '..'"
        ));
    }
    Ok(trimmed.to_owned())
}

/// Parses a size such as `8MiB`, `16 MB` or `10485760` (bytes).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; try 8MiB or 16MB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size; try 8MiB or 16MB")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The part size of an upload of `size` bytes: the configured one, or more
/// when the file would need more than [`MAX_PARTS`] parts (rounded up to
/// whole MiB).
pub(crate) fn part_size_for(configured: u64, size: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    configured.max(needed).min(MAX_PART_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["backups", "my-backups.2026", "abc"] {
            assert!(check_bucket(good).is_ok(), "{good}");
        }
        for bad in ["ab", "Backups", "-backups", "backups-", "a..b", "a_b", ""] {
            let error = check_bucket(bad).unwrap_err();
            assert!(error.starts_with("S3_BUCKET "), "{error}");
        }
    }

    #[test]
    fn prefixes_are_trimmed_and_checked() {
        assert_eq!(normalize_prefix("/prod/db/").unwrap(), "prod/db");
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        for bad in ["a//b", "a/../b", "./a"] {
            assert!(normalize_prefix(bad).unwrap_err().starts_with("S3_PREFIX "));
        }
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("16 MB").unwrap(), 16_000_000);
        assert_eq!(parse_size("5242880").unwrap(), 5 << 20);
        assert!(parse_size("big").is_err());
        assert!(parse_size("8 parsecs").is_err());
    }

    #[test]
    fn huge_files_get_larger_parts() {
        assert_eq!(part_size_for(DEFAULT_PART_SIZE, 1 << 30), DEFAULT_PART_SIZE);
        // 200 GiB in 10,000 parts: 21 MiB each (20.48 rounded up).
        assert_eq!(part_size_for(DEFAULT_PART_SIZE, 200 << 30), 21 << 20);
    }

    #[test]
    fn debug_hides_the_secret() {
        let settings = S3Settings::new(None, "bkt", "AKIA", SecretString::from("hunter2"));
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("AKIA"),
            "{shown}"
        );
    }
}
