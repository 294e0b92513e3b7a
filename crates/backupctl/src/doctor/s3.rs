//! The S3 destination's posture against a stolen production host: does
//! the bucket keep history that the shipper's S3 key cannot erase
//! (`s3.object_lock`)? Reads the bucket's Object Lock configuration
//! (`GetObjectLockConfiguration`, one request, nothing written) and
//! compares it with `S3_OBJECT_LOCK_DAYS`.
//!
//! Verdicts: Object Lock on the bucket with `S3_OBJECT_LOCK_DAYS` (or a
//! default retention of the bucket) passes. `S3_OBJECT_LOCK_DAYS` on a
//! bucket without Object Lock fails: every upload would be refused. No
//! lock at all is skipped with the fix, like the SFTP key that may delete:
//! it works, but a stolen key can delete every copy. Not configured
//! (`S3_BUCKET` unset) is skipped.
//!
//! Retries: none beyond the SDK's attempts; run the doctor again after a
//! fix.

use backup_core::preflight::Check;
use remote_s3::{DefaultRetention, LockMode, Posture, S3Args, S3Remote};

/// The name of the check.
const OBJECT_LOCK: &str = "s3.object_lock";

/// The posture check of the S3 destination (see the module docs).
pub async fn s3_posture(args: &S3Args) -> Vec<Check> {
    let settings = match args.clone().settings() {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return vec![Check::skip(
                OBJECT_LOCK,
                "no S3 destination (S3_BUCKET unset)",
            )];
        }
        Err(e) => {
            return vec![Check::fail("s3", e.0).with_fix(
                "see the S3 section of docs/guides/backup-setup-guide.md for S3_* settings",
            )];
        }
    };
    let remote = match S3Remote::connect(&settings) {
        Ok(remote) => remote,
        Err(e) => return vec![Check::fail("s3", e.to_string())],
    };
    vec![match remote.posture().await {
        Ok(posture) => verdict(&remote.describe(), &posture),
        Err(e) => Check::fail(OBJECT_LOCK, e.to_string()).with_fix(
            "check S3_ENDPOINT, S3_BUCKET and the key in S3_ACCESS_KEY_ID (it needs s3:GetBucketObjectLockConfiguration)",
        ),
    }]
}

/// The verdict for what the bucket says and what the settings ask.
fn verdict(place: &str, posture: &Posture) -> Check {
    let default = posture
        .default_retention
        .as_ref()
        .map(describe_default)
        .unwrap_or_default();
    match (posture.object_lock_enabled, &posture.writes_retention) {
        (true, Some(lock)) => Check::pass(
            OBJECT_LOCK,
            format!(
                "Object Lock is enabled on {place}; every object is written with {} retention for {} days (S3_OBJECT_LOCK_DAYS){default}",
                mode(lock.mode),
                lock.days
            ),
        ),
        (false, Some(lock)) => Check::fail(
            OBJECT_LOCK,
            format!(
                "S3_OBJECT_LOCK_DAYS={} but {place} has no Object Lock: every upload with a retention date is refused",
                lock.days
            ),
        )
        .with_fix(
            "use a bucket created with Object Lock enabled (most services cannot turn it on later), or unset S3_OBJECT_LOCK_DAYS",
        ),
        (true, None) if posture.default_retention.is_some() => Check::pass(
            OBJECT_LOCK,
            format!("Object Lock is enabled on {place}{default}; S3_OBJECT_LOCK_DAYS is unset"),
        ),
        (true, None) => Check::skip(
            OBJECT_LOCK,
            format!("Object Lock is enabled on {place} but nothing is locked: S3_OBJECT_LOCK_DAYS is unset and the bucket has no default retention"),
        )
        .with_fix("set S3_OBJECT_LOCK_DAYS (e.g. 30) so that every backup is written with a retention date"),
        (false, None) => Check::skip(
            OBJECT_LOCK,
            format!("{place} has no Object Lock: the shipper's S3 key can delete every backup"),
        )
        .with_fix(
            "to survive a stolen host, use a bucket created with Object Lock enabled and set S3_OBJECT_LOCK_DAYS",
        ),
    }
}

fn mode(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Governance => "governance",
        LockMode::Compliance => "compliance",
    }
}

/// `; default retention: compliance, 30 days`
fn describe_default(retention: &DefaultRetention) -> String {
    let mut parts = Vec::new();
    if let Some(m) = retention.mode {
        parts.push(mode(m).to_owned());
    }
    if let Some(days) = retention.days {
        parts.push(format!("{days} days"));
    }
    if let Some(years) = retention.years {
        parts.push(format!("{years} years"));
    }
    format!("; bucket default retention: {}", parts.join(", "))
}
