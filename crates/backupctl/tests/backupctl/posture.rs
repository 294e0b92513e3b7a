//! `backupctl doctor`'s posture checks against both kinds of SFTP account:
//! a key that may do everything, and the append-only account's restricted
//! key with the pruner's own key beside it.

use backup_core::preflight::{Check, Verdict};
use backup_core::sftp::{PruneIdentityArgs, SftpTarget};
use test_support::pipeline::sftp_target;

use super::*;

fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn restricted(target: &SftpTarget, key: &Path) -> SftpTarget {
    let mut restricted = target.clone();
    restricted.settings.key_file = key.to_owned();
    restricted
}

#[tokio::test]
async fn doctor_reports_the_posture_of_both_kinds_of_account() {
    let sshd = Sshd::start();
    let base = sshd.remote_root.join("backups");
    let full = sftp_target(&sshd, &base);
    let append_only_key = sshd.generate_append_only_key();
    let writer = restricted(&full, &append_only_key);
    let pruner = PruneIdentityArgs {
        user: None,
        key_file: Some(sshd.client_key.clone()),
    };
    let none = PruneIdentityArgs::default();
    let posture = backupctl::doctor::posture;

    // One key for everything, nothing claims otherwise: reported, with the
    // fix, but not a failure; the probe is gone.
    let checks = posture(&full, false, &none).await;
    let delete = check(&checks, "sftp.writer_delete");
    assert_eq!(delete.verdict, Verdict::Skip, "{delete:?}");
    assert!(delete.detail.contains("may delete"), "{delete:?}");
    assert!(
        delete.fix.as_deref().unwrap().contains("internal-sftp -P"),
        "{delete:?}"
    );
    let overwrite = check(&checks, "sftp.writer_overwrite");
    assert_eq!(overwrite.verdict, Verdict::Skip, "{overwrite:?}");
    assert!(overwrite.detail.contains("may overwrite"), "{overwrite:?}");
    assert!(files_in(&base).is_empty(), "{:?}", files_in(&base));

    // The same key while the set-up claims append-only: failures.
    let checks = posture(&full, true, &pruner).await;
    assert_eq!(check(&checks, "sftp.writer_delete").verdict, Verdict::Fail);
    assert_eq!(
        check(&checks, "sftp.writer_overwrite").verdict,
        Verdict::Fail
    );
    assert!(files_in(&base).is_empty());

    // The append-only account, configured as such: both pass, and the
    // pruner's key removes the probes the writer's key could not.
    let checks = posture(&writer, true, &pruner).await;
    let delete = check(&checks, "sftp.writer_delete");
    assert_eq!(delete.verdict, Verdict::Pass, "{delete:?}");
    assert!(delete.detail.contains("may not delete"), "{delete:?}");
    let overwrite = check(&checks, "sftp.writer_overwrite");
    assert_eq!(overwrite.verdict, Verdict::Pass, "{overwrite:?}");
    assert!(files_in(&base).is_empty(), "{:?}", files_in(&base));

    // The restricted key without SFTP_APPEND_ONLY: the shipper would try
    // to chmod and replace, so the doctor says to set it; without a pruner
    // identity the probes stay, named.
    let checks = posture(&writer, false, &none).await;
    let delete = check(&checks, "sftp.writer_delete");
    assert_eq!(delete.verdict, Verdict::Fail, "{delete:?}");
    assert!(
        delete
            .fix
            .as_deref()
            .unwrap()
            .contains("SFTP_APPEND_ONLY=true"),
        "{delete:?}"
    );
    let left = files_in(&base);
    assert!(!left.is_empty());
    for name in &left {
        assert!(
            delete.detail.contains(name.as_str()),
            "{name} not named: {delete:?}"
        );
    }
}

/// The binary reads SFTP_APPEND_ONLY and PRUNE_SFTP_* from the
/// environment, and its sftp.write check writes nothing on that account.
#[test]
fn the_doctor_binary_passes_an_append_only_account() {
    let sshd = Sshd::start();
    let base = sshd.remote_root.join("backups");
    let key = sshd.generate_append_only_key();
    let closed = test_support::PortReservation::new();
    let out = Command::new(workspace_bin("backupctl"))
        .args(["doctor", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(sshd.sftp_env(&base))
        .env("SFTP_KEY_FILE", &key)
        .env("SFTP_APPEND_ONLY", "true")
        .env("PRUNE_SFTP_KEY_FILE", &sshd.client_key)
        // Nothing else is set up: point NATS and PostgreSQL at a closed
        // port (never the host's own servers).
        .env("NATS_URL", format!("nats://127.0.0.1:{}", closed.port()))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", closed.port().to_string())
        .env("PGDATABASE", "app")
        .env("BACKUP_SPOOL_DIR", sshd.remote_root.join("spool"))
        .stdin(Stdio::null())
        .output()
        .expect("run backupctl doctor");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let verdict = |name: &str| {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"));
        (
            check["verdict"].as_str().unwrap().to_owned(),
            check.to_string(),
        )
    };
    for name in [
        "sftp.auth",
        "sftp.write",
        "sftp.writer_delete",
        "sftp.writer_overwrite",
    ] {
        let (verdict, check) = verdict(name);
        assert_eq!(verdict, "pass", "{check}");
    }
    assert!(verdict("sftp.write").1.contains("no probe written"));
    assert!(files_in(&base).is_empty(), "{:?}", files_in(&base));
}
