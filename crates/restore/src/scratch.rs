//! Scratch databases: where a restore is tried before anyone relies on it.
//! They are named `<prefix>_<12 hex digits>`, a name generated here, so it
//! can neither collide nor inject, and a leftover of a crash is recognised
//! and swept by its pattern.
//!
//! [`probe`] is the start-up check of a scratch server: its role can
//! create such a database and drop it again. The verifier runs it before
//! taking work ([`preflight_check`]) and `backupctl doctor` runs the very
//! same probe, adding its own advice to each way it can fail.

use backup_core::pg::{PgError, PgTarget, quote_ident};
use backup_core::preflight::Check;
use rand::Rng;

/// Default prefix of scratch database names (`verify_<12 hex digits>`).
pub const SCRATCH_PREFIX: &str = "verify";

/// Name of the start-up check, as `backupctl doctor` names it too.
pub const CHECK_NAME: &str = "scratch";

/// Whether `prefix` is usable as a scratch database prefix: a plain
/// lower-case identifier, short enough to leave room for the suffix.
pub fn valid_scratch_prefix(prefix: &str) -> bool {
    prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.len() <= 40
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A fresh scratch database name: `<prefix>_` and 12 random hex digits.
pub fn scratch_name(prefix: &str) -> String {
    format!(
        "{prefix}_{:012x}",
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    )
}

/// Why the scratch server failed the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("VERIFY_SCRATCH_PREFIX {0:?} is not a plain identifier")]
    InvalidPrefix(String),
    #[error(transparent)]
    Connect(#[from] PgError),
    #[error("CREATE DATABASE refused on {server}: {error}")]
    CreateRefused { server: String, error: PgError },
    #[error("created {name} on {server} but could not drop it: {error}")]
    DropRefused {
        name: String,
        server: String,
        error: PgError,
    },
}

/// Creates a scratch database on `target` (the server and its maintenance
/// database) and drops it again; on success, says what was done.
pub async fn probe(
    target: &PgTarget,
    prefix: &str,
    application: &str,
) -> Result<String, ProbeError> {
    if !valid_scratch_prefix(prefix) {
        return Err(ProbeError::InvalidPrefix(prefix.to_owned()));
    }
    let server = target.describe();
    let client = target.connect(application).await?;
    let name = scratch_name(prefix);
    let create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&name));
    if let Err(e) = client.batch_execute(&create).await {
        return Err(ProbeError::CreateRefused {
            server,
            error: target.query_error(&e),
        });
    }
    let drop = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(&name)
    );
    match client.batch_execute(&drop).await {
        Ok(()) => Ok(format!("created and dropped {name} on {server}")),
        Err(e) => Err(ProbeError::DropRefused {
            name,
            server,
            error: target.query_error(&e),
        }),
    }
}

/// [`probe`] as the verifier's start-up check.
pub async fn preflight_check(target: &PgTarget, prefix: &str) -> Check {
    match probe(target, prefix, "backup-verifier-preflight").await {
        Ok(done) => Check::pass(CHECK_NAME, done),
        Err(error) => Check::fail(CHECK_NAME, error.to_string()),
    }
}

/// Drops scratch databases an interrupted verifier left behind. Only names
/// this verifier generates (`<prefix>_` and 12 hex digits) are touched,
/// and only when nobody is connected (another verifier's restore).
pub async fn sweep(
    scratch: &PgTarget,
    prefix: &str,
    application: &str,
) -> Result<Vec<String>, PgError> {
    let client = scratch.connect(application).await?;
    let pattern = format!("^{prefix}_[0-9a-f]{{12}}$");
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database d WHERE datname ~ $1 \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
            &[&pattern],
        )
        .await
        .map_err(|e| scratch.query_error(&e))?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await
            .map_err(|e| scratch.query_error(&e))?;
        dropped.push(name);
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_follow_the_prefix_and_the_pattern_swept() {
        assert!(valid_scratch_prefix(SCRATCH_PREFIX));
        assert!(valid_scratch_prefix("verify_ci2"));
        for bad in [
            "",
            "Verify",
            "1verify",
            "verify-x",
            "verify x",
            &"v".repeat(41),
        ] {
            assert!(!valid_scratch_prefix(bad), "{bad:?}");
        }
        let name = scratch_name("verify");
        let suffix = name.strip_prefix("verify_").expect("prefixed");
        assert_eq!(suffix.len(), 12, "{name}");
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
}
