//! The SFTP target's posture against a stolen production host: may the
//! key the shipper holds (`SFTP_KEY_FILE`) delete backups
//! (`sftp.writer_delete`) or overwrite them (`sftp.writer_overwrite`)?
//! Probed on a throwaway file in `SFTP_DIR` (`.backupctl-doctor-<hex>`,
//! a name no service reads as a backup), never on a real artifact; what
//! the writer's key cannot remove is removed with the pruner's identity
//! (`PRUNE_SFTP_*`) when configured, else named in the report.
//!
//! Verdicts: an append-only writer passes. A writer that may delete or
//! overwrite fails when the set-up says it should not (`SFTP_APPEND_ONLY`
//! or a pruner identity of its own), and is reported as skipped with the
//! fix otherwise: the classic set-up, where one key does everything, works
//! but does not survive a stolen host. An append-only key without
//! `SFTP_APPEND_ONLY` fails: the shipper would try to chmod and replace.
//!
//! Retries: none; run the doctor again after a fix.

use backup_core::preflight::Check;
use backup_core::sftp::{PruneIdentityArgs, SftpTarget};
use remote_sftp::{RemoteError, SftpRemote, WritePosture};

use super::probe_name;

const DELETE: &str = "sftp.writer_delete";
const OVERWRITE: &str = "sftp.writer_overwrite";

/// The posture checks of the SFTP target (see the module docs).
pub async fn posture(
    args: &SftpTarget,
    append_only: bool,
    pruner: &PruneIdentityArgs,
) -> Vec<Check> {
    let skipped = |because: &str| {
        vec![
            Check::not_checked(DELETE, because),
            Check::not_checked(OVERWRITE, because),
        ]
    };
    let settings = &args.settings;
    let pruner_settings = match pruner.identity(settings) {
        Ok(own) => own,
        Err(e) => {
            return vec![
                Check::fail(DELETE, format!("pruner identity: {e}")).with_fix(
                    "PRUNE_SFTP_KEY_FILE names the pruner's own private key; PRUNE_SFTP_USER defaults to SFTP_USER",
                ),
                Check::not_checked(OVERWRITE, "the pruner identity is invalid"),
            ];
        }
    };
    let mut writer = match SftpRemote::connect(settings).await {
        Ok(remote) => remote,
        Err(_) => return skipped("no SFTP login with SFTP_KEY_FILE (see sftp.auth)"),
    };
    let dir = args.dir.trim_end_matches('/');
    // A directory that cannot be created or written is sftp.write's
    // failure; the posture is then unknown.
    if writer.create_dir_all(dir).await.is_err() {
        let _ = writer.close().await;
        return skipped("SFTP_DIR is not writable (see sftp.write)");
    }
    let probe = format!("{dir}/{}", probe_name());
    let probed = writer.probe_write_posture(&probe).await;
    let _ = writer.close().await;
    let posture = match probed {
        Ok(posture) => posture,
        Err(e) => return skipped(&format!("no probe could be written in {dir} ({e})")),
    };
    let left = clean_up(&posture, pruner_settings.as_ref()).await;
    let expect_append_only = append_only || pruner_settings.is_some();
    vec![
        delete_check(args, &posture, expect_append_only, append_only, &left),
        overwrite_check(args, &posture, expect_append_only),
    ]
}

/// Removes what the writer's key left with the pruner's identity; returns
/// what is still there.
async fn clean_up(
    posture: &WritePosture,
    pruner: Option<&remote_sftp::SftpSettings>,
) -> Vec<String> {
    if posture.left.is_empty() {
        return Vec::new();
    }
    let Some(pruner) = pruner else {
        return posture.left.clone();
    };
    let Ok(remote) = SftpRemote::connect(pruner).await else {
        return posture.left.clone();
    };
    let mut left = Vec::new();
    for path in &posture.left {
        match remote.remove_file(path).await {
            Ok(()) | Err(RemoteError::NotFound { .. }) => {}
            Err(_) => left.push(path.clone()),
        }
    }
    let _ = remote.close().await;
    left
}

const RESTRICT_FIX: &str = "restrict the shipper's key in the account's authorized_keys: restrict,command=\"internal-sftp -P remove,rmdir,posix-rename,setstat,fsetstat,lsetstat,symlink,hardlink,copy-data\" ssh-ed25519 ...; give the pruner its own unrestricted key (PRUNE_SFTP_KEY_FILE) and set SFTP_APPEND_ONLY=true for the shipper (see the append-only account in docs/guides/backup-setup-guide.md)";

fn delete_check(
    args: &SftpTarget,
    posture: &WritePosture,
    expect_append_only: bool,
    append_only: bool,
    left: &[String],
) -> Check {
    let key = format!(
        "{} with {}",
        args.settings.user,
        args.settings.key_file.display()
    );
    if posture.can_delete {
        let detail = format!(
            "{key} may delete files in {}: a stolen production host can erase the backups",
            args.dir
        );
        return if expect_append_only {
            Check::fail(DELETE, detail).with_fix(RESTRICT_FIX)
        } else {
            Check::skip(
                DELETE,
                format!("{detail} (no append-only set-up configured)"),
            )
            .with_fix(RESTRICT_FIX)
        };
    }
    let leftovers = if left.is_empty() {
        String::new()
    } else {
        format!(
            "; probe files left (this key cannot remove them): {}",
            left.join(", ")
        )
    };
    let detail = format!(
        "{key} may not delete files in {} (append-only){leftovers}",
        args.dir
    );
    if !append_only {
        return Check::fail(DELETE, detail).with_fix(
            "set SFTP_APPEND_ONLY=true for the shipper: with this key it cannot remove its leftovers or replace files, and must upload write-once",
        );
    }
    let check = Check::pass(DELETE, detail);
    if left.is_empty() {
        check
    } else {
        check.with_fix(
            "set PRUNE_SFTP_KEY_FILE to the pruner's key so the doctor removes its probes, or remove them with that key",
        )
    }
}

fn overwrite_check(args: &SftpTarget, posture: &WritePosture, expect_append_only: bool) -> Check {
    let key = format!(
        "{} with {}",
        args.settings.user,
        args.settings.key_file.display()
    );
    match posture.overwrite {
        None => Check::pass(
            OVERWRITE,
            format!(
                "{key} may not overwrite a file once written (no write to a read-only file, no chmod, no rename over it)"
            ),
        ),
        Some(how) => {
            let detail = format!("{key} may overwrite backups in {}: it {how}", args.dir);
            if expect_append_only {
                Check::fail(OVERWRITE, detail).with_fix(RESTRICT_FIX)
            } else {
                Check::skip(
                    OVERWRITE,
                    format!("{detail} (no append-only set-up configured)"),
                )
                .with_fix(RESTRICT_FIX)
            }
        }
    }
}
