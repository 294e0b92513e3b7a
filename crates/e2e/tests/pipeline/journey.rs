//! One backup travels the whole way, from trigger to verified (and is
//! listed, restored and pruned); a dead SFTP server ends in `dump.failed`
//! and an alert email.

use super::*;

#[test]
fn one_backup_travels_from_trigger_to_verified() {
    let rig = Rig::start();
    let mut services = rig.spawn_all();
    let db = rig.source.name.clone();

    let (status, output) =
        rig.backupctl(&["trigger", "--database", &db, "--wait", "--timeout", "150s"]);
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl trigger --wait failed:\n{output}"
    );
    assert!(output.contains("verified"), "{output}");

    let created = last_event(&rig.nats.url, "dump.created");
    let verified = last_event(&rig.nats.url, "dump.verified");
    let artifact = created["artifact"]
        .as_str()
        .expect("artifact name")
        .to_owned();
    assert_eq!(verified["artifact"], created["artifact"]);
    assert_eq!(verified["backup_id"], created["backup_id"]);
    assert!(
        artifact.starts_with(&format!("{db}_")) && artifact.ends_with(".sql.gz"),
        "{artifact}"
    );

    // Final names only, nothing half-written beside them.
    let remote = rig.remote_dir().join(&db);
    assert_eq!(
        files_in(&remote),
        BTreeSet::from([
            artifact.clone(),
            format!("{artifact}.manifest.json"),
            format!("{artifact}.verified.json"),
        ])
    );
    let remote_artifact = remote.join(&artifact);
    assert_eq!(
        sha256_file(&remote_artifact),
        created["sha256"].as_str().unwrap()
    );
    assert_eq!(verified["sha256"], created["sha256"]);
    assert_eq!(
        std::fs::metadata(&remote_artifact).unwrap().len(),
        created["size_bytes"].as_u64().unwrap()
    );
    let gzip_t = Command::new("gzip")
        .arg("-t")
        .arg(&remote_artifact)
        .status()
        .expect("run gzip");
    assert!(gzip_t.success(), "gzip -t rejects the remote artifact");

    // The manifest's row counts are the source's.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(remote.join(format!("{artifact}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["tables"]["grading.copy"], 5000);
    assert_eq!(manifest["tables"]["public.audit_log"], 20000);
    assert_eq!(manifest["sha256"], created["sha256"]);

    // An independent restore with the standard tools gives the same rows.
    let restored = TestDatabase::create("e2e_restore");
    let restore = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$ARTIFACT\" | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d \"$TARGET\"")
        .env("ARTIFACT", &remote_artifact)
        .env("TARGET", &restored.name)
        .status()
        .expect("run gzip | psql");
    assert!(restore.success(), "gzip -dc | psql failed");
    assert_eq!(restored.row_counts(), rig.source.row_counts());

    // The verifier cleaned up after itself. The drop overlaps with the
    // verdict's publication; the message is acked once it is done.
    wait_consumer_idle(&rig.nats.url, "verifier");
    assert!(
        databases_with_prefix(&rig.scratch_prefix()).is_empty(),
        "scratch databases left behind"
    );
    // The pruner ran after verification and kept the only backup.
    let pruned_ok = || {
        std::panic::catch_unwind(|| last_event(&rig.nats.url, "dump.pruned")).is_ok_and(|p| {
            p["kept"]
                .as_array()
                .is_some_and(|k| k.iter().any(|a| a == artifact.as_str()))
        })
    };
    wait_until(
        Duration::from_secs(30),
        "dump.pruned keeping the new backup",
        pruned_ok,
    );
    // Each service reads through its own durable consumer, by name.
    let consumers = consumer_names(&rig.nats.url);
    for name in ["dumper", "shipper", "verifier", "pruner", "notifier"] {
        assert!(
            consumers.contains(name),
            "no durable consumer {name}: {consumers:?}"
        );
    }
    // The operator's view agrees: status healthy, the catalog says verified.
    let (status, output) = rig.backupctl(&["status", "--json"]);
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl status:\n{output}"
    );
    let report = first_json(&output, '{');
    let entry = report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == db.as_str())
        .unwrap();
    assert_eq!(entry["last_verified_artifact"], artifact.as_str());
    assert!(
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["alive"] == true),
        "{report}"
    );
    rig.assert_listed_verified(rig.env(), &db, &artifact);
    // Success sends no alert.
    assert!(
        rig.smtp.messages().is_empty(),
        "unexpected alert on success"
    );

    // Garbage on the bus is refused, reported, and crashes nothing.
    publish_raw(&rig.nats.url, "backup.trigger", b"[\"not an object\"]");
    publish_raw(
        &rig.nats.url,
        "dump.created",
        b"{\"artifact\": \"../../etc/passwd\"}",
    );
    wait_until(
        Duration::from_secs(30),
        "both malformed messages reported",
        || {
            let found = failures(&rig.nats.url);
            let rejected = |stage: &str| {
                found.iter().any(|f| {
                    f["stage"] == stage
                        && f["will_retry"] == false
                        && f["error"].as_str().is_some_and(|e| e.contains("rejected"))
                })
            };
            rejected("trigger") && rejected("ship")
        },
    );
    for service in &mut services {
        assert!(
            service.try_wait().is_none(),
            "{} exited:\n{}",
            service.name,
            service.log()
        );
    }

    // A name that is not configured: backupctl, which has BACKUP_DATABASES
    // here, refuses it before publishing anything.
    let (status, output) = rig.backupctl(&["trigger", "--database", "not_configured"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{output}");
    assert!(
        output.contains("not configured for backup") && output.contains("nothing triggered"),
        "{output}"
    );
    // Without the list, backupctl says it did not check; the dumper refuses
    // and the wait fails at once, with exit 1 and the cause printed once.
    let mut env = rig.env();
    env.push(("RUST_LOG".into(), "warn".into()));
    env.push(("BACKUP_DATABASES".into(), String::new()));
    let mut ctl = ServiceProcess::spawn(
        "backupctl",
        &[
            "trigger",
            "--database",
            "not_configured",
            "--wait",
            "--timeout",
            "60s",
        ],
        &env,
    );
    let code = ctl
        .wait_timeout(Duration::from_secs(90))
        .and_then(|s| s.code());
    let output = ctl.log();
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("not checked"), "{output}");
    assert!(output.contains("trigger failed"), "{output}");
    assert_eq!(
        output.matches("is not configured for backup").count(),
        1,
        "the failure is printed once: {output}"
    );
    // The rejected trigger is listed by status, which stays healthy.
    let (status, output) = rig.backupctl(&["status"]);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{output}");
    assert!(
        output.contains("recent rejected triggers") && output.contains("not_configured"),
        "{output}"
    );
    assert!(!output.contains("FAILING"), "{output}");
    // An unreachable NATS is a prompt, clear failure for the CLI.
    let mut ctl = ServiceProcess::spawn(
        "backupctl",
        &["--connect-timeout", "2s", "trigger"],
        &[("NATS_URL".to_owned(), "nats://127.0.0.1:1".to_owned())],
    );
    let code = ctl
        .wait_timeout(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert_eq!(code, Some(2), "{}", ctl.log());
    assert!(ctl.log().contains("NATS is unreachable"), "{}", ctl.log());
}

#[test]
fn dead_sftp_server_fails_the_ship_stage_and_alerts() {
    let mut rig = Rig::start();
    let _services = rig.spawn_all();
    let db = rig.source.name.clone();
    rig.sshd.stop();

    // --wait reports the failure and keeps waiting while the pipeline retries.
    let (status, output) =
        rig.backupctl(&["trigger", "--database", &db, "--wait", "--timeout", "100s"]);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "backupctl must time out, not succeed:\n{output}"
    );
    assert!(
        output.contains("ship failed") && output.contains("(retrying)"),
        "{output}"
    );

    let failed = last_event(&rig.nats.url, "dump.failed");
    assert_eq!(failed["stage"], "ship");
    assert_eq!(failed["database"], db.as_str());
    assert_eq!(failed["will_retry"], true);
    let error = failed["error"].as_str().unwrap();
    assert!(!error.is_empty() && !error.contains('\n'), "{error}");

    let mail = rig.smtp.wait_for_messages(1, Duration::from_secs(60));
    let alert = &mail[0];
    assert!(alert.subject.contains(&db), "{}", alert.subject);
    assert!(alert.subject.contains("ship"), "{}", alert.subject);
    assert!(
        alert.body_text.contains(error),
        "alert must carry the cause:\n{}",
        alert.body_text
    );
    assert!(
        alert
            .envelope_to
            .iter()
            .any(|to| to.contains("oncall@korrigo.example"))
    );

    // status names the failing stage and exits 1.
    let (status, output) = rig.backupctl(&["status"]);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
    assert!(output.contains("FAILING at ship"), "{output}");

    // Nothing reached the remote under a final name.
    let remote = rig.remote_dir().join(&db);
    assert!(!remote.exists() || files_in(&remote).is_empty());
    // The artifact waits in the spool, with its manifest, for the retry.
    let spooled = files_in(&rig.spool.path().join(&db));
    let artifact = failed["artifact"]
        .as_str()
        .expect("the failure names the artifact");
    assert!(spooled.contains(artifact), "{spooled:?}");
    assert!(
        spooled.contains(&format!("{artifact}.manifest.json")),
        "{spooled:?}"
    );
    assert!(
        !spooled.iter().any(|f| f.ends_with(".partial")),
        "{spooled:?}"
    );
}
