//! What the pipeline's surroundings do to it: NATS restarted under a
//! running upload, the SFTP server gone for a few seconds, PostgreSQL
//! stopped in the middle of a dump, a spool disk that fills up, and a byte
//! rotting on the remote after the backup was verified.

use std::thread;

use test_support::pg_cluster::PostgresCluster;
use test_support::tmpfs::Tmpfs;

use super::*;

/// Waits until `dir` holds a file whose name passes `wanted`.
fn wait_for_file(dir: &Path, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    while !files_in(dir).iter().any(|f| wanted(f)) {
        assert!(
            Instant::now() < deadline,
            "no {what} in {} within {timeout:?}: {:?}",
            dir.display(),
            files_in(dir)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nats_restarted_mid_upload_and_every_service_reconnects_by_itself() {
    let source = TestDatabase::create("e2e_natsdown");
    fill(&source, 60_000);
    let database = source.name.clone();
    let mut p = Pipeline::new(vec![source]);
    // About five seconds of upload, for NATS to go down and come back in.
    p.set("shipper", "SHIP_BANDWIDTH_LIMIT", "600KiB/s");
    p.start_all();

    p.events.trigger(&database, "nats-before");
    wait_for_file(
        &p.remote_base().join(&database),
        "upload in progress",
        Duration::from_secs(120),
        |f| f.ends_with(".partial"),
    );
    p.nats.kill();
    thread::sleep(Duration::from_secs(2));
    p.nats.restart();
    // A trigger published once NATS is back goes through as well.
    p.events.trigger(&database, "nats-after");

    let before = p.wait_verified("nats-before", Duration::from_secs(180));
    let after = p.wait_verified("nats-after", Duration::from_secs(180));
    assert_ne!(before["backup_id"], after["backup_id"]);
    p.assert_alive();
    for (name, log) in p.logs() {
        let lost = log.find("NATS connection lost");
        assert!(
            lost.is_some_and(|at| log[at..].contains("NATS connection restored")),
            "{name} did not lose NATS and reconnect:\n{log}"
        );
    }
    let manifests = assert_complete_artifacts(&p.remote_base().join(&database));
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    assert_no_partials(&p.remote_base());
    for consumer in SERVICES {
        wait_drained(&p.events, consumer, Duration::from_secs(120));
    }
    let failures = p.events.of("dump.failed");
    assert!(failures.is_empty(), "{failures:#?}");
    report(
        "NATS restart mid-upload",
        &Figures {
            triggered: 2,
            verified: 2,
            faults: 1,
            refused: 0,
            secrets_found: 0,
        },
        "",
    );
}

#[test]
fn sftp_outage_alerts_then_ships_on_return_then_sends_a_recovery_message() {
    let source = TestDatabase::create("e2e_sftpdown");
    fill(&source, 2_000);
    let database = source.name.clone();
    let mut p = Pipeline::new(vec![source]);
    p.set("shipper", "SHIP_ALERT_AFTER", "2s");
    p.set("shipper", "SHIP_RETRY_MAX_DELAY", "2s");
    p.start_all();

    p.sshd.stop();
    let outage = Instant::now();
    p.events.trigger(&database, "sftp-outage");
    let failed = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["request_id"] == "sftp-outage" && e["stage"] == "ship"
    });
    assert_eq!(failed["will_retry"], true, "{failed}");
    let alert = p.wait_for_mail("alert", Duration::from_secs(60), |m| {
        m.subject.contains(&database) && m.subject.contains("ship")
    });
    assert!(
        alert
            .body_text
            .contains(failed["error"].as_str().expect("error")),
        "{}",
        alert.body_text
    );
    // A few seconds of outage in all, then the server is back.
    thread::sleep(Duration::from_secs(5).saturating_sub(outage.elapsed()));
    p.sshd.restart();
    let outage = outage.elapsed();

    p.wait_verified("sftp-outage", Duration::from_secs(120));
    let resolved = p.wait_for_mail("RESOLVED", Duration::from_secs(60), |m| {
        m.subject.contains("RESOLVED") && m.subject.contains(&database)
    });
    assert!(
        resolved.body_text.contains(&database),
        "{}",
        resolved.body_text
    );
    // One alert for the incident, however many attempts failed.
    assert_eq!(
        p.alerts().len(),
        1,
        "{:?}",
        p.alerts().iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let manifests = assert_complete_artifacts(&p.remote_base().join(&database));
    assert_eq!(manifests.len(), 1);
    assert_no_partials(&p.remote_base());
    p.assert_alive();
    report(
        "SFTP outage",
        &Figures {
            triggered: 1,
            verified: 1,
            faults: 1,
            refused: 0,
            secrets_found: 0,
        },
        &format!("SFTP server down for {outage:.1?}"),
    );
}

#[test]
fn postgres_stopped_mid_dump_fails_cleanly_alerts_and_the_next_dump_succeeds() {
    let mut cluster = PostgresCluster::start();
    let database = "korrigo";
    cluster.execute("postgres", &format!("CREATE DATABASE {database}"));
    cluster.execute(
        database,
        "CREATE SCHEMA grading;
         CREATE TABLE grading.copy (id bigserial PRIMARY KEY, score numeric(4,2));
         INSERT INTO grading.copy(score) SELECT (i % 20)::numeric FROM generate_series(1, 5000) i;",
    );
    let mut p = Pipeline::new(Vec::new());
    p.set("*", "BACKUP_DATABASES", database);
    for (name, value) in cluster.env() {
        p.set("dumper", &name, value);
    }
    p.start_all();

    // Someone holds a table lock: pg_dump waits on it, mid-dump, until the
    // server goes away under it.
    let psql = cluster.program("psql");
    let lock_holder = ServiceProcess::spawn(
        psql.to_str().expect("UTF-8 path"),
        &[
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            "BEGIN; LOCK TABLE grading.copy IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);",
        ],
        &[],
    );
    test_support::process::wait_until(Duration::from_secs(30), "the table lock", || {
        cluster.query(
            database,
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted \
             AND relation = 'grading.copy'::regclass",
        ) == "1"
    });
    p.events.trigger(database, "pg-down");
    test_support::process::wait_until(
        Duration::from_secs(60),
        "pg_dump waiting on the lock",
        || {
            cluster.query(
                database,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' \
             AND wait_event_type = 'Lock'",
            ) == "1"
        },
    );
    let spool = p.spool.join(database);
    assert!(
        files_in(&spool).iter().any(|f| f.ends_with(".partial")),
        "the dump is under way: {:?}",
        files_in(&spool)
    );
    cluster.stop_immediately();
    drop(lock_holder);

    let failed = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["request_id"] == "pg-down" && e["stage"] == "dump"
    });
    assert_eq!(
        failed["will_retry"], true,
        "a stopped server may come back: {failed}"
    );
    // Nothing under a final name, and the partial is gone.
    assert!(
        files_in(&spool)
            .iter()
            .all(|f| !f.contains(".sql") && !f.ends_with(".partial")),
        "{:?}",
        files_in(&spool)
    );
    assert!(p.events.of("dump.created").is_empty());
    p.wait_for_mail("alert", Duration::from_secs(60), |m| {
        m.subject.contains(database) && m.subject.contains("dump")
    });

    cluster.start_again();
    // The trigger is retried by itself; a new one works too.
    p.events.trigger(database, "pg-back");
    let retried = p.wait_verified("pg-down", Duration::from_secs(180));
    let next = p.wait_verified("pg-back", Duration::from_secs(180));
    assert_ne!(retried["artifact"], next["artifact"]);
    p.wait_for_mail("RESOLVED", Duration::from_secs(60), |m| {
        m.subject.contains("RESOLVED") && m.subject.contains(database)
    });
    assert_eq!(
        assert_complete_artifacts(&p.remote_base().join(database)).len(),
        2
    );
    assert_no_partials(&p.spool);
    p.assert_alive();
    report(
        "PostgreSQL stopped mid-dump",
        &Figures {
            triggered: 2,
            verified: 2,
            faults: 1,
            refused: 0,
            secrets_found: 0,
        },
        &format!(
            "the failed attempt said: {}",
            failed["error"].as_str().unwrap_or("")
        ),
    );
}

#[test]
fn a_full_spool_fails_one_dump_cleanly_and_disturbs_nothing_else() {
    let tmpfs = Tmpfs::mount("3m");
    let big = TestDatabase::create("e2e_spoolbig");
    // About 6 MB of random bytes: does not compress, does not fit.
    big.execute(
        "CREATE TABLE scan (id int, content bytea);
         INSERT INTO scan SELECT i, (SELECT decode(string_agg(md5(random()::text || i || j), ''), 'hex')
                                     FROM generate_series(1, 2500) j)
         FROM generate_series(1, 150) i;",
    );
    let small = TestDatabase::create("e2e_spoolsmall");
    fill(&small, 500);
    let (big_name, small_name) = (big.name.clone(), small.name.clone());
    let mut p = Pipeline::new(vec![big, small]);
    p.spool = tmpfs.path().join("spool");
    // One job at a time, the big one first: the small one must find its
    // space again once the big one's partial file is gone. The up-front
    // estimate is off so the disk really fills.
    p.set("dumper", "BACKUP_MAX_PARALLEL", "1");
    p.set("dumper", "BACKUP_SPACE_CHECK", "false");
    p.start_all();

    p.events.publish(
        "backup.trigger",
        serde_json::to_vec(&json!({"request_id": "spool-full"})).expect("JSON"),
    );
    let failed = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["request_id"] == "spool-full" && e["database"] == big_name.as_str()
    });
    let error = failed["error"].as_str().expect("error");
    assert!(error.contains("no space left"), "{error}");
    assert_eq!(failed["will_retry"], false, "{failed}");
    p.wait_for_mail("alert", Duration::from_secs(60), |m| {
        m.subject.contains(&big_name) && m.body_text.contains("no space left")
    });
    let small_verified = p
        .events
        .wait("dump.verified", Duration::from_secs(120), |e| {
            e["request_id"] == "spool-full" && e["database"] == small_name.as_str()
        });
    assert!(
        files_in(&p.spool.join(&big_name))
            .iter()
            .all(|f| !f.contains(".sql")),
        "the failed dump left {:?}",
        files_in(&p.spool.join(&big_name))
    );
    assert_no_partials(&p.spool);
    assert!(
        files_in(&p.spool.join(&small_name))
            .contains(small_verified["artifact"].as_str().expect("artifact")),
        "the small database's artifact waits in the spool"
    );
    // The shipper began uploading the big dump while it was written; once
    // the dumper gave it up, that upload removed its remote .partial.
    wait_drained(&p.events, "shipper-follow", Duration::from_secs(120));
    assert!(
        files_in(&p.remote_base().join(&big_name)).is_empty(),
        "the failed dump left {:?} on the server",
        files_in(&p.remote_base().join(&big_name))
    );
    p.assert_alive();
    // And the dumper keeps working on that disk.
    p.events.trigger(&small_name, "after-full");
    p.wait_verified("after-full", Duration::from_secs(120));
    report(
        "spool disk full",
        &Figures {
            triggered: 3,
            verified: 2,
            faults: 1,
            refused: 0,
            secrets_found: 0,
        },
        "",
    );
}

#[test]
fn remote_rot_is_caught_by_reverification_alerted_and_not_counted_as_good() {
    let source = TestDatabase::create("e2e_rot");
    fill(&source, 2_000);
    let database = source.name.clone();
    let mut p = Pipeline::new(vec![source]);
    p.set("verifier", "VERIFY_REVERIFY_EVERY", "3s");
    p.start_all();

    let first = p.wait_verified_after_trigger(&database, "rot-first");
    let artifact = first["artifact"].as_str().expect("artifact").to_owned();
    let remote = p.remote_base().join(&database);
    let record = remote.join(format!("{artifact}.verified.json"));
    assert!(record.exists());
    // Rot: one bit flipped in place (owner and mode unchanged).
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(remote.join(&artifact))
            .expect("open the remote artifact");
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(100)).expect("seek");
        file.read_exact(&mut byte).expect("read");
        byte[0] ^= 0x04;
        file.seek(SeekFrom::Start(100)).expect("seek");
        file.write_all(&byte).expect("write");
    }
    let caught = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["backup_id"] == first["backup_id"]
            && e["stage"] == "verify"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.starts_with("re-verification of"))
    });
    assert_eq!(caught["will_retry"], false, "{caught}");
    p.wait_for_mail("re-verification alert", Duration::from_secs(60), |m| {
        m.subject.contains(&database) && m.body_text.contains("re-verification of")
    });
    test_support::process::wait_until(
        Duration::from_secs(30),
        "the rotten backup's record withdrawn",
        || !record.exists(),
    );

    // The pruner, after the next backup, no longer counts it as verified.
    let second = p.wait_verified_after_trigger(&database, "rot-second");
    let pruned = p.events.wait("dump.pruned", Duration::from_secs(120), |e| {
        e["backup_id"] == second["backup_id"]
    });
    let reasons: Vec<String> = pruned["kept_reasons"][&artifact]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        names_in(&pruned["kept"]).contains(&artifact),
        "within the grace, the rotten backup stays for a person to look at: {pruned}"
    );
    assert!(
        reasons.iter().all(|r| r == "awaiting verification"),
        "the pruner still counts the rotten backup as good: {pruned}"
    );
    assert_eq!(
        pruned["kept_reasons"][second["artifact"].as_str().expect("artifact")][0],
        "newest verified",
        "{pruned}"
    );
    p.assert_no_scratch_database();
    p.assert_alive();
    report(
        "remote rot",
        &Figures {
            triggered: 2,
            verified: 2,
            faults: 1,
            refused: 0,
            secrets_found: 0,
        },
        "",
    );
}

fn names_in(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Pipeline {
    fn wait_verified_after_trigger(&self, database: &str, request_id: &str) -> Value {
        self.events.trigger(database, request_id);
        self.wait_verified(request_id, Duration::from_secs(120))
    }
}
