//! The verifier's scratch server: its role can create and drop a database.

use backup_core::pg::{PgTarget, quote_ident};
use backup_core::preflight::Check;
use rand::Rng;

/// The verifier's scratch server lets its role create and drop a database
/// (`<prefix>_<12 hex digits>`, the verifier's own naming, so a leftover is
/// swept by the verifier at its next start).
pub async fn scratch(target: &PgTarget, prefix: &str) -> Check {
    if !verifier::valid_scratch_prefix(prefix) {
        return Check::fail(
            "scratch",
            format!("VERIFY_SCRATCH_PREFIX {prefix:?} is not a plain identifier"),
        )
        .with_fix("use [a-z][a-z0-9_]*, at most 40 characters");
    }
    let where_ = target.describe();
    let client = match target.connect("backupctl-doctor").await {
        Ok(client) => client,
        Err(e) => {
            return Check::fail("scratch", e.to_string()).with_fix("check VERIFY_DATABASE_URL (host, port, role, password) and that the scratch server admits this host");
        }
    };
    let name = format!(
        "{prefix}_{:012x}",
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    );
    if let Err(e) = client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&name)
        ))
        .await
    {
        return Check::fail(
            "scratch",
            format!(
                "CREATE DATABASE refused on {where_}: {}",
                backup_core::error_chain(&e)
            ),
        )
        .with_fix(format!(
            "on the scratch server (never production): ALTER ROLE {} CREATEDB;",
            quote_ident(&target.user)
        ));
    }
    if let Err(e) = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .await
    {
        return Check::fail(
            "scratch",
            format!(
                "created {name} on {where_} but could not drop it: {}",
                backup_core::error_chain(&e)
            ),
        )
        .with_fix(format!(
            "drop {name} by hand; the verifier's role must be able to drop what it creates"
        ));
    }
    Check::pass("scratch", format!("created and dropped {name} on {where_}"))
}
