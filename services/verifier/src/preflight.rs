//! The verifier's start-up checks: the scratch server lets it create and
//! drop a database (named like its scratch databases, so a probe left by a
//! crash is swept at the next start), and the SFTP server takes its login
//! (pinned host key, key auth). `backup_core::preflight` retries them
//! while they fail.

use backup_core::pg::quote_ident;
use backup_core::preflight::{self, Check};
use rand::Rng;

use crate::Settings;

/// Runs the verifier's start-up checks once, each bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let mut checks = preflight::bounded("scratch", scratch(settings)).await;
    checks.extend(preflight::bounded("sftp", sftp(settings)).await);
    checks
}

async fn scratch(settings: &Settings) -> Vec<Check> {
    let target = &settings.scratch;
    let where_ = target.describe();
    let client = match target.connect("backup-verifier-preflight").await {
        Ok(client) => client,
        Err(e) => return vec![Check::fail("scratch", e.to_string())],
    };
    let name = format!(
        "{}_{:012x}",
        settings.scratch_prefix,
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    );
    let create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&name));
    if let Err(e) = client.batch_execute(&create).await {
        return vec![Check::fail(
            "scratch",
            format!(
                "CREATE DATABASE refused on {where_}: {}",
                target.query_error(&e)
            ),
        )];
    }
    let drop = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(&name)
    );
    vec![match client.batch_execute(&drop).await {
        Ok(()) => Check::pass("scratch", format!("created and dropped {name} on {where_}")),
        Err(e) => Check::fail(
            "scratch",
            format!(
                "created {name} on {where_} but could not drop it: {}",
                target.query_error(&e)
            ),
        ),
    }]
}

async fn sftp(settings: &Settings) -> Vec<Check> {
    let sftp = &settings.sftp.settings;
    match preflight::sftp_login("sftp", sftp).await {
        Ok(remote) => {
            backup_core::sftp::note_resolved_dir("SFTP_DIR", &settings.sftp.dir, &remote);
            let _ = remote.close().await;
            vec![Check::pass(
                "sftp",
                format!("{}@{}:{} logged in", sftp.user, sftp.host, sftp.port),
            )]
        }
        Err(check) => vec![check],
    }
}
