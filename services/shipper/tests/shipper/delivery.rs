//! Deliveries that work: once per artifact, to a relative base directory,
//! to several destinations each on its own, and a different file already
//! under the final name.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn ships_once_cleans_stale_partials_and_answers_a_redelivery_without_uploading() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 3 << 20, 1, 0);
    // Left by a shipper killed mid-upload: a .partial of this artifact and
    // one of its manifest. Those of an older artifact are left alone:
    // another upload may be writing them (SHIP_CONCURRENCY), and the pruner
    // removes them once stale. The verifier's temporary record is not ours
    // to remove either.
    let remote = remote_db_dir(&sshd);
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o700)).unwrap();
    let name = created.artifact.artifact.as_str();
    let stale = [
        format!("{name}.partial"),
        format!("{name}.manifest.json.partial"),
    ];
    let others = [
        format!("{DB}_20200101_000000.sql.gz.partial"),
        format!("{DB}_20200101_000000.sql.gz.manifest.json.partial"),
        format!("{DB}_20200101_000000.sql.gz.verified.json.partial"),
    ];
    for file in stale.iter().chain(&others) {
        std::fs::write(remote.join(file), b"half").unwrap();
    }
    std::process::Command::new("chown")
        .args(["-R", &format!("{0}:{0}", sshd.user)])
        .arg(sshd.remote_root.join("backups"))
        .status()
        .unwrap();

    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    ))
    .await;
    let first = rig.publish(&created, "created-1").await;
    let shipped = rig
        .wait_for(subject::SHIPPED, |e| e["artifact"] == name)
        .await;
    rig.wait_acked(first).await;
    assert_eq!(shipped["sha256"], created.artifact.sha256.as_str());
    assert_eq!(shipped["size_bytes"], 3 << 20);
    assert!(
        shipped["destination"]
            .as_str()
            .unwrap()
            .starts_with("sftp://")
    );
    for file in &others {
        assert_eq!(std::fs::read(remote.join(file)).unwrap(), b"half", "{file}");
        std::fs::remove_file(remote.join(file)).unwrap();
    }
    assert_delivered(&remote, &created, rig.spool());

    // A redelivery (here: the same event published again) finds everything
    // in place: no upload (the file keeps its inode; an upload renames a new
    // file over it) and the same dump.shipped id, which JetStream
    // deduplicates.
    let before = std::fs::metadata(remote.join(name)).unwrap();
    let again = rig.publish(&created, "created-2").await;
    assert!(again > first);
    rig.wait_acked(again).await;
    let after = std::fs::metadata(remote.join(name)).unwrap();
    assert_eq!(before.ino(), after.ino(), "the artifact was uploaded again");
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert_delivered(&remote, &created, rig.spool());
    assert_eq!(rig.events(subject::SHIPPED).await.len(), 1);
    assert!(rig.events(subject::FAILED).await.is_empty());
}

/// A relative base directory (an `SFTP_DIR` of `backups` on a hosting
/// account) starts at the SFTP login directory: the test user's home holds
/// the remote root.
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_base_directory_starts_at_the_login_directory() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1 << 20, 3, 0);
    let data = sshd
        .remote_root
        .file_name()
        .expect("remote root name")
        .to_string_lossy()
        .into_owned();
    let destination = Destination::Sftp {
        label: "sftp".into(),
        dir: format!("{data}/backups"),
        settings: sftp_settings(&sshd),
        append_only: false,
    };
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    let first = rig.publish(&created, "relative-1").await;
    let name = created.artifact.artifact.as_str();
    rig.wait_for(subject::SHIPPED, |e| e["artifact"] == name)
        .await;
    rig.wait_acked(first).await;
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert!(rig.events(subject::FAILED).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn second_sftp_server_and_local_directory_each_get_a_copy_and_fail_on_their_own() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let mut sshd2 = Sshd::start();
    let nas = tempfile::tempdir().unwrap();
    let created = prepare_artifact(rig.spool(), 2 << 20, 9, 0);
    let destinations = vec![
        sftp_destination("sftp", &sshd, sftp_settings(&sshd)),
        sftp_destination("sftp2", &sshd2, sftp_settings(&sshd2)),
        Destination::Local {
            label: "local".into(),
            dir: nas.path().to_owned(),
        },
    ];
    let described: Vec<String> = destinations.iter().map(Destination::describe).collect();
    sshd2.stop();
    rig.run_shipper(settings(rig.spool(), destinations)).await;
    rig.publish(&created, "created").await;

    // Only the second server is down: it alone is reported, the others
    // already have their copy.
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    assert_eq!(failed["destination"], described[1].as_str());
    assert_eq!(failed["will_retry"], true);
    assert!(failed["error"].as_str().unwrap().starts_with(&described[1]));
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert_delivered(&nas.path().join(DB), &created, rig.spool());
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    sshd2.restart();
    let shipped = rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_eq!(shipped["destination"], described[0].as_str());
    let listed: Vec<&str> = shipped["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(listed, described);
    assert_delivered(&remote_db_dir(&sshd2), &created, rig.spool());
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_file_under_the_final_name_is_kept_and_reported() {
    let mut rig = Rig::start().await;
    let nas = tempfile::tempdir().unwrap();
    let created = prepare_artifact(rig.spool(), 4096, 10, 0);
    let dir = nas.path().join(DB);
    std::fs::create_dir_all(&dir).unwrap();
    let name = created.artifact.artifact.as_str();
    // Same size, no manifest, other bytes: only the checksum tells.
    let other = pseudo_random(4096, 99);
    std::fs::write(dir.join(name), &other).unwrap();
    let destination = Destination::Local {
        label: "local".into(),
        dir: nas.path().to_owned(),
    };
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    let seq = rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    rig.wait_acked(seq).await;
    assert_eq!(failed["will_retry"], false);
    assert!(
        failed["error"].as_str().unwrap().contains("both are kept"),
        "{failed}"
    );
    assert_eq!(std::fs::read(dir.join(name)).unwrap(), other);
    assert_eq!(names_in(&dir), BTreeSet::from([name.to_owned()]));
    assert!(rig.spool().join(DB).join(name).exists());
    assert_ne!(sha256_hex(&other), created.artifact.sha256.as_str());
}
