//! The verifier's start-up checks: the scratch server lets it create and
//! drop a database (named like its scratch databases, so a probe left by a
//! crash is swept at the next start; the probe is the restore engine's,
//! shared with `backupctl doctor`), and each destination it reads takes
//! its login (SFTP: pinned host key, key auth; S3: the bucket lists with
//! the configured credentials). `backup_core::preflight` retries them
//! while they fail.

use backup_core::preflight::{self, Check};
use backup_core::sftp::SftpTarget;
use remote_store::{StoreTarget, TargetKind};

use crate::Settings;

/// Runs the verifier's start-up checks once, each bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let scratch = async {
        vec![restore::scratch::preflight_check(&settings.scratch, &settings.scratch_prefix).await]
    };
    let mut checks = preflight::bounded(restore::scratch::CHECK_NAME, scratch).await;
    for target in crate::destinations(settings) {
        checks.extend(preflight::bounded(&target.label, destination(&target)).await);
    }
    checks
}

async fn destination(target: &StoreTarget) -> Vec<Check> {
    match &target.kind {
        TargetKind::Sftp(sftp) => sftp_login(&target.label, sftp).await,
        TargetKind::S3(_) => s3_listing(target).await,
    }
}

async fn s3_listing(target: &StoreTarget) -> Vec<Check> {
    let listed = match target.connect().await {
        Ok(store) => store.list_databases().await,
        Err(e) => Err(e),
    };
    vec![match listed {
        Ok(_) => Check::pass(&target.label, format!("{} readable", target.describe())),
        Err(e) => Check::fail(&target.label, e.to_string()),
    }]
}

async fn sftp_login(label: &str, target: &SftpTarget) -> Vec<Check> {
    let sftp = &target.settings;
    match preflight::sftp_login(label, sftp).await {
        Ok(remote) => {
            let setting = if label == remote_store::SFTP2_LABEL {
                "SHIP_SFTP2_DIR"
            } else {
                "SFTP_DIR"
            };
            backup_core::sftp::note_resolved_dir(setting, &target.dir, &remote);
            let _ = remote.close().await;
            vec![Check::pass(
                label,
                format!("{}@{}:{} logged in", sftp.user, sftp.host, sftp.port),
            )]
        }
        Err(check) => vec![check],
    }
}
