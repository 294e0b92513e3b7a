//! An append-only SFTP account (`SFTP_APPEND_ONLY`): the shipper's key may
//! create and rename but not remove, replace or chmod. Backups arrive
//! read-only, a leftover `.partial` does not block them, and what is there
//! stays as it is.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_ships_to_the_append_only_account() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 2 << 20, 21, 0);
    let name = created.artifact.artifact.as_str().to_owned();
    let manifest = created.artifact.artifact.manifest_name();
    // A read-only .partial of this very artifact, left by a killed
    // write-once attempt: this key can neither remove nor reopen it.
    let remote = remote_db_dir(&sshd);
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o700)).unwrap();
    let leftover = format!("{name}.0badc0de.partial");
    std::fs::write(remote.join(&leftover), b"half").unwrap();
    std::fs::set_permissions(
        remote.join(&leftover),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    std::process::Command::new("chown")
        .args(["-R", &format!("{0}:{0}", sshd.user)])
        .arg(sshd.remote_root.join("backups"))
        .status()
        .unwrap();

    let settings_append_only = SftpSettings {
        key_file: sshd.generate_append_only_key(),
        ..sftp_settings(&sshd)
    };
    let destination = Destination::Sftp {
        label: "sftp".into(),
        dir: sshd.backups_dir().display().to_string(),
        settings: settings_append_only,
        append_only: true,
    };
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    let first = rig.publish(&created, "created-1").await;
    let shipped = rig
        .wait_for(subject::SHIPPED, |e| e["artifact"] == name.as_str())
        .await;
    rig.wait_acked(first).await;
    assert_eq!(shipped["sha256"], created.artifact.sha256.as_str());
    assert!(rig.events(subject::FAILED).await.is_empty());

    assert_eq!(
        names_in(&remote),
        BTreeSet::from([name.clone(), manifest.clone(), leftover.clone()]),
        "the leftover stays for the pruner"
    );
    assert_eq!(
        sha256_file(&remote.join(&name)),
        created.artifact.sha256.as_str()
    );
    assert_eq!(
        std::fs::read(remote.join(&manifest)).unwrap(),
        std::fs::read(rig.spool().join(DB).join(&manifest)).unwrap()
    );
    assert_eq!(mode(&remote.join(&name)), 0o400, "shipped read-only");
    assert_eq!(mode(&remote.join(&manifest)), 0o400);

    // A redelivery finds the backup complete and touches nothing.
    let before = std::fs::metadata(remote.join(&name)).unwrap();
    let again = rig.publish(&created, "created-2").await;
    rig.wait_acked(again).await;
    let after = std::fs::metadata(remote.join(&name)).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(rig.events(subject::SHIPPED).await.len(), 1);
    assert!(rig.events(subject::FAILED).await.is_empty());
}
