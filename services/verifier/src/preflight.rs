//! The verifier's start-up checks: the scratch server lets it create and
//! drop a database (named like its scratch databases, so a probe left by a
//! crash is swept at the next start; the probe is the restore engine's,
//! shared with `backupctl doctor`), and the SFTP server takes its login
//! (pinned host key, key auth). `backup_core::preflight` retries them
//! while they fail.

use backup_core::preflight::{self, Check};

use crate::Settings;

/// Runs the verifier's start-up checks once, each bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let scratch = async {
        vec![restore::scratch::preflight_check(&settings.scratch, &settings.scratch_prefix).await]
    };
    let mut checks = preflight::bounded(restore::scratch::CHECK_NAME, scratch).await;
    checks.extend(preflight::bounded("sftp", sftp(settings)).await);
    checks
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
