//! The verifier's scratch server: its role can create and drop a database.
//! The probe is the verifier's own start-up check (`restore::scratch`);
//! the doctor adds the fix for each way it fails.

use backup_core::pg::{PgTarget, quote_ident};
use backup_core::preflight::Check;
use restore::scratch::{CHECK_NAME, ProbeError};

/// The verifier's scratch server lets its role create and drop a database
/// (`<prefix>_<12 hex digits>`, the verifier's own naming, so a leftover is
/// swept by the verifier at its next start).
pub async fn scratch(target: &PgTarget, prefix: &str) -> Check {
    let error = match restore::scratch::probe(target, prefix, "backupctl-doctor").await {
        Ok(done) => return Check::pass(CHECK_NAME, done),
        Err(error) => error,
    };
    let fix = match &error {
        ProbeError::InvalidPrefix(_) => "use [a-z][a-z0-9_]*, at most 40 characters".to_owned(),
        ProbeError::Connect(_) => "check VERIFY_DATABASE_URL (host, port, role, password) and that the scratch server admits this host".to_owned(),
        ProbeError::CreateRefused { .. } => format!(
            "on the scratch server (never production): ALTER ROLE {} CREATEDB;",
            quote_ident(&target.user)
        ),
        ProbeError::DropRefused { name, .. } => format!(
            "drop {name} by hand; the verifier's role must be able to drop what it creates"
        ),
    };
    Check::fail(CHECK_NAME, error.to_string()).with_fix(fix)
}
