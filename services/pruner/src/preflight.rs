//! The pruner's start-up checks: the SFTP server takes its login (pinned
//! host key, key auth) and its base directory can be listed, as pruning
//! does. `backup_core::preflight` retries them while they fail.

use backup_core::preflight::{self, Check};
use remote_sftp::RemoteError;

use crate::Settings;

/// Runs the pruner's start-up checks once, bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    preflight::bounded("sftp", sftp(settings)).await
}

async fn sftp(settings: &Settings) -> Vec<Check> {
    let remote = match preflight::sftp_login("sftp", &settings.sftp.settings).await {
        Ok(remote) => remote,
        Err(check) => return vec![check],
    };
    let dir = &settings.sftp.dir;
    backup_core::sftp::note_resolved_dir("SFTP_DIR", dir, &remote);
    let listed = remote.list_dir(dir).await;
    let _ = remote.close().await;
    vec![match listed {
        Ok(entries) => Check::pass(
            "sftp.list",
            format!("listed {dir} ({} entries)", entries.len()),
        ),
        // Pruning treats it the same: nothing shipped yet, nothing to prune.
        Err(RemoteError::NotFound { .. }) => Check::pass(
            "sftp.list",
            format!("{dir} does not exist yet (nothing shipped)"),
        ),
        Err(e) => Check::fail("sftp.list", format!("cannot list {dir}: {e}")),
    }]
}
