//! Keys, host keys and permissions: what is refused for good, and says
//! why, and a passphrase-protected key that works.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn wrong_host_key_is_refused_naming_the_presented_fingerprint() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1 << 20, 2, 0);
    let mut sftp = sftp_settings(&sshd);
    sftp.known_hosts = Some(sshd.wrong_known_hosts());
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp)],
    ))
    .await;
    let seq = rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    rig.wait_acked(seq).await;

    assert_eq!(failed["stage"], "ship");
    assert_eq!(failed["will_retry"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&sshd.host_key_fingerprint), "{error}");
    assert!(
        failed["destination"]
            .as_str()
            .unwrap()
            .contains(&sshd.port.to_string())
    );
    assert!(
        names_in(&sshd.remote_root).is_empty(),
        "nothing may be written to an impostor"
    );
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
    assert!(rig.events(subject::SHIPPED).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_file_is_a_permanent_failure_naming_the_file() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1000, 3, 0);
    let mut sftp = sftp_settings(&sshd);
    sftp.key_file = sshd.remote_root.with_file_name("no_such_key");
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp)],
    ))
    .await;
    let seq = rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    rig.wait_acked(seq).await;
    assert_eq!(failed["will_retry"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("no_such_key"), "{error}");
    assert!(names_in(&sshd.remote_root).is_empty());
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn passphrase_protected_key_ships() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1 << 20, 4, 0);
    let mut sftp = sftp_settings(&sshd);
    sftp.key_file = sshd.generate_client_key("rsa", Some("correct horse"), true);
    sftp.key_passphrase = Some("correct horse".to_owned().into());
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp)],
    ))
    .await;
    rig.publish(&created, "created").await;
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert!(rig.events(subject::FAILED).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_dir_without_write_permission_is_a_permanent_failure() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1000, 8, 0);
    // Owned by root and 0755: the SFTP user may look but not write.
    let locked = sshd.remote_root.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let destination = Destination::Sftp {
        label: "sftp".into(),
        dir: locked.display().to_string(),
        settings: sftp_settings(&sshd),
        append_only: false,
    };
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    let seq = rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    rig.wait_acked(seq).await;
    assert_eq!(failed["will_retry"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("permission denied"), "{error}");
    assert!(names_in(&locked).is_empty());
    // Acked at once (above): no retry, no second report; `events` reads
    // everything stored until now.
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

/// Start-up checks: a host key that does not match the pin makes the
/// running shipper unhealthy on `/healthz`, naming the check and the key
/// presented, while the process goes on running (no crash loop).
#[tokio::test(flavor = "multi_thread")]
async fn preflight_reports_a_wrong_host_key_as_unhealthy_without_exiting() {
    let rig = Rig::start().await;
    let sshd = Sshd::start();
    let mut sftp = sftp_settings(&sshd);
    sftp.known_hosts = Some(sshd.wrong_known_hosts());
    let bus = Bus::connect(&NatsOptions::local(&rig.nats.url), "shipper", &rig.shutdown)
        .await
        .unwrap();
    let listen = backup_core::health::serve_at(Some("127.0.0.1:0"), &bus)
        .await
        .unwrap()
        .unwrap()
        .to_string();
    let shutdown = rig.shutdown.clone();
    let settings = settings(rig.spool(), vec![sftp_destination("sftp", &sshd, sftp)]);
    let task = tokio::spawn(async move { shipper::run(bus, settings, shutdown).await });

    let started = Instant::now();
    let probe = loop {
        let probe = backup_core::health::probe_once(Some(&listen)).await;
        if !probe.healthy && probe.line.contains("sftp.host_key") {
            break probe;
        }
        assert!(
            started.elapsed() < WAIT,
            "never unhealthy for the host key; last probe: {}",
            probe.line
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        probe.line.contains(&sshd.host_key_fingerprint),
        "{}",
        probe.line
    );
    assert!(!task.is_finished(), "the shipper must keep running");
    assert!(
        names_in(&sshd.remote_root).is_empty(),
        "no probe may be written to an impostor"
    );

    rig.shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the shipper stops on shutdown")
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}
