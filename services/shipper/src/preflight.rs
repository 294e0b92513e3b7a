//! The shipper's start-up checks: each destination takes a file. An SFTP
//! destination is logged in to as uploads do (pinned host key, key auth)
//! and its base directory takes a probe written under a `.partial` name,
//! renamed and deleted (on an append-only account, whose key cannot
//! delete, the directory is only created and listed); a local
//! destination's directory takes the same probe. An S3 destination is
//! asked for an object that does not exist (credentials, bucket and
//! listing permission at once; no probe is written, since under Object
//! Lock it could not be removed) and, when `S3_OBJECT_LOCK_DAYS` is set,
//! whether the bucket has Object Lock. `backup_core::preflight` retries
//! them while they fail.

use backup_core::preflight::{self, Check};

use crate::{Destination, Settings};

/// Runs the shipper's start-up checks once, each bounded in time.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let mut checks = Vec::new();
    for destination in &settings.destinations {
        checks.extend(match destination {
            Destination::Sftp {
                label,
                dir,
                settings,
                append_only,
            } => preflight::bounded(label, sftp(label, dir, settings, *append_only)).await,
            Destination::S3 { label, remote } => {
                let name = format!("{label}.access");
                preflight::bounded(&name, s3(&name, remote)).await
            }
            Destination::Local { label, dir } => {
                let name = format!("{label}.write");
                preflight::bounded(&name, async {
                    vec![preflight::dir_writable(&name, dir, "shipper").await]
                })
                .await
            }
        });
    }
    checks
}

async fn sftp(
    label: &str,
    dir: &str,
    settings: &remote_sftp::SftpSettings,
    append_only: bool,
) -> Vec<Check> {
    let remote = match preflight::sftp_login(label, settings).await {
        Ok(remote) => remote,
        Err(check) => return vec![check],
    };
    let setting = if label == "sftp" {
        "SFTP_DIR"
    } else {
        "SHIP_SFTP2_DIR"
    };
    backup_core::sftp::note_resolved_dir(setting, dir, &remote);
    let name = format!("{label}.write");
    let dir = dir.trim_end_matches('/');
    let probe = format!("{dir}/{}", preflight::probe_name("shipper"));
    if append_only {
        // A probe written here could never be removed by this key: check
        // that the directory is there and readable, and leave the rest to
        // `backupctl doctor`'s posture check.
        let listed = async {
            remote.create_dir_all(dir).await?;
            remote.list_dir(dir).await
        }
        .await;
        let _ = remote.close().await;
        return vec![match listed {
            Ok(_) => Check::pass(
                name,
                format!(
                    "{}@{}:{}: logged in and listed {dir} (append-only: no probe written)",
                    settings.user, settings.host, settings.port
                ),
            ),
            Err(e) => Check::fail(name, format!("cannot use {dir}: {e}")),
        }];
    }
    let written = async {
        // Uploads create the base directory the same way.
        remote.create_dir_all(dir).await?;
        remote
            .write_file_atomic(&probe, b"shipper start-up check\n")
            .await?;
        remote.remove_file(&probe).await
    }
    .await;
    let _ = remote.close().await;
    vec![match written {
        Ok(()) => Check::pass(
            name,
            format!(
                "{}@{}:{}: logged in, wrote, renamed and deleted a probe in {dir}",
                settings.user, settings.host, settings.port
            ),
        ),
        Err(e) => Check::fail(name, format!("cannot write in {dir}: {e}")),
    }]
}

async fn s3(name: &str, remote: &remote_s3::S3Remote) -> Vec<Check> {
    let probe = remote.key(".shipper-start-up-check", "absent");
    let where_to = remote.describe();
    if let Err(e) = remote.head(&probe).await {
        return vec![Check::fail(name, format!("{where_to}: {e}"))];
    }
    if remote.settings().object_lock.is_some() {
        match remote.posture().await {
            Ok(posture) if !posture.object_lock_enabled => {
                return vec![Check::fail(
                    name,
                    format!(
                        "{where_to}: S3_OBJECT_LOCK_DAYS is set but the bucket does not have Object Lock enabled"
                    ),
                )];
            }
            Ok(_) => {}
            Err(e) => return vec![Check::fail(name, format!("{where_to}: {e}"))],
        }
    }
    vec![Check::pass(
        name,
        format!("{where_to}: credentials accepted, bucket reachable"),
    )]
}
