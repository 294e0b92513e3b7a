//! The pruner's start-up checks, for each destination it prunes: it takes
//! the pruner's login (SFTP: pinned host key, key auth; S3: the
//! credentials) and its base can be listed, as pruning does. `backup_core::preflight` retries them while
//! they fail.

use backup_core::preflight::{self, Check};
use backup_core::sftp::SftpTarget;
use remote_sftp::RemoteError;
use remote_store::{StoreTarget, TargetKind};

use crate::Settings;

/// Runs the pruner's start-up checks once, each destination bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let mut checks = Vec::new();
    for target in crate::destinations(&settings) {
        checks.extend(preflight::bounded(&target.label, destination(&target)).await);
    }
    checks
}

async fn destination(target: &StoreTarget) -> Vec<Check> {
    match &target.kind {
        TargetKind::Sftp(sftp) => sftp_checks(&target.label, sftp).await,
        TargetKind::S3(_) => s3_checks(target).await,
    }
}

async fn s3_checks(target: &StoreTarget) -> Vec<Check> {
    let listed = match target.connect().await {
        Ok(store) => store.list_databases().await,
        Err(e) => Err(e),
    };
    let name = format!("{}.list", target.label);
    let place = target.describe();
    vec![match listed {
        Ok(databases) => Check::pass(
            name,
            format!("listed {place} ({} databases)", databases.len()),
        ),
        Err(e) => Check::fail(name, format!("cannot list {place}: {e}")),
    }]
}

async fn sftp_checks(label: &str, target: &SftpTarget) -> Vec<Check> {
    let remote = match preflight::sftp_login(label, &target.settings).await {
        Ok(remote) => remote,
        Err(check) => return vec![check],
    };
    let dir = &target.dir;
    let setting = if label == remote_store::SFTP2_LABEL {
        "SHIP_SFTP2_DIR"
    } else {
        "SFTP_DIR"
    };
    backup_core::sftp::note_resolved_dir(setting, dir, &remote);
    let listed = remote.list_dir(dir).await;
    let _ = remote.close().await;
    let name = format!("{label}.list");
    vec![match listed {
        Ok(entries) => Check::pass(name, format!("listed {dir} ({} entries)", entries.len())),
        // Pruning treats it the same: nothing shipped yet, nothing to prune.
        Err(RemoteError::NotFound { .. }) => {
            Check::pass(name, format!("{dir} does not exist yet (nothing shipped)"))
        }
        Err(e) => Check::fail(name, format!("cannot list {dir}: {e}")),
    }]
}
