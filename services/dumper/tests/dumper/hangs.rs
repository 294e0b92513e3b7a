//! Hangs: a locked table, a dump that stops moving, a scheduled run during
//! a dump, and a spool that cannot exist at start-up.

use super::*;

/// `BEGIN; LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` held by a tokio-postgres
/// session (a migration, a long transaction) until released.
struct HeldLock {
    client: tokio_postgres::Client,
}

impl HeldLock {
    async fn take(db: &TestDatabase, table: &str) -> HeldLock {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={} application_name=test-locker",
                db.name
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect the locking session");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .expect("take the table lock");
        HeldLock { client }
    }

    async fn release(self) {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .expect("release the table lock");
    }
}

/// Server sessions of the dumper (its snapshot and row counts) and of its
/// pg_dump on `db`.
fn dump_backends(db: &TestDatabase) -> u32 {
    db.query(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name IN ('pg_dump', 'backup-dumper')",
        db.name
    ))
    .parse()
    .expect("a count")
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Neither a partial nor a finished artifact in the database's spool.
fn assert_spool_empty(rig: &Rig, db: &TestDatabase) {
    let left = files_in(&rig.spool.path().join(&db.name));
    assert!(left.is_empty(), "left in the spool: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_table_fails_the_dump_naming_it_and_a_later_trigger_succeeds() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_lockwait");
    let mut settings = rig.settings(&[&db]);
    settings.lock_wait_timeout = Some(Duration::from_secs(2));
    rig.run(settings, now_clock());
    let lock = HeldLock::take(&db, "grading.copy").await;

    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    assert_eq!(event["stage"], "dump");
    assert_eq!(
        event["error"], "could not get a lock on table grading.copy within 2s",
        "{event}"
    );
    assert_eq!(event["will_retry"], true);
    assert!(event.get("aborted").is_none(), "{event}");
    // pg_dump gave up by itself: nothing of the attempt is left, although
    // the lock is still held.
    eventually("pg_dump to exit", || pg_dumps_of(&db.name).is_empty()).await;
    assert_spool_empty(&rig, &db);
    eventually("the dump's server sessions to end", || {
        dump_backends(&db) == 0
    })
    .await;

    lock.release().await;
    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    rig.log
        .wait_for("a dump once the lock is gone", |log| {
            !log.of_database(subject::CREATED, &db.name).is_empty()
        })
        .await;
    let created = rig.log.of_database(subject::CREATED, &db.name).remove(0);
    assert_eq!(
        created["limits"],
        serde_json::json!({"stall_after_s": 300, "deadline_s": 6 * 3600}),
        "{created}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dump_that_stops_moving_is_aborted_by_the_watchdog_and_leaves_nothing() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_stall");
    let mut settings = rig.settings(&[&db]);
    // No lock timeout: pg_dump would wait for the lock forever.
    settings.lock_wait_timeout = None;
    settings.limits.stall_after = Duration::from_secs(2);
    rig.run(settings, now_clock());
    let lock = HeldLock::take(&db, "grading.copy").await;

    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    assert_eq!(event["stage"], "dump");
    assert_eq!(event["will_retry"], true);
    assert_eq!(
        event["error"], "dump stalled: no progress for 2s after 0 bytes; aborted",
        "{event}"
    );
    let aborted = &event["aborted"];
    assert_eq!(aborted["step"], "dump", "{event}");
    assert_eq!(aborted["reason"], "stalled", "{event}");
    assert_eq!(aborted["bytes"], 0, "{event}");
    assert_eq!(aborted["stall_after_s"], 2, "{event}");
    assert_eq!(aborted["deadline_s"], 6 * 3600, "{event}");

    // With the lock still held: pg_dump's whole group was killed, the
    // partial file removed, and the server sessions (pg_dump's, blocked on
    // the lock, and the row counts') went away instead of queueing behind it.
    eventually("pg_dump to be killed", || pg_dumps_of(&db.name).is_empty()).await;
    assert_spool_empty(&rig, &db);
    eventually("the dump's server sessions to end", || {
        dump_backends(&db) == 0
    })
    .await;
    let waiting = db.query(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE d.datname = '{}' AND NOT l.granted",
        db.name
    ));
    assert_eq!(waiting, "0", "lock requests left waiting");

    lock.release().await;
    // The redelivered trigger, or this one, dumps now.
    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    rig.log
        .wait_for("a dump once the lock is gone", |log| {
            !log.of_database(subject::CREATED, &db.name).is_empty()
        })
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_run_during_a_dump_is_skipped_and_announced() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_overlap");
    let mut settings = rig.settings(&[&db]);
    settings.lock_wait_timeout = None;
    settings.schedule = Some(Schedule::parse("0 2 * * *", "UTC").unwrap());
    let clock = ManualClock::new(utc("2026-03-02T01:00:00Z"));
    rig.run(settings, clock.clone());
    let lock = HeldLock::take(&db, "grading.copy").await;

    // A manual dump that cannot finish while the lock is held.
    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    rig.log
        .wait_for("the manual dump to start", |log| {
            !log.of_database(subject::STARTED, &db.name).is_empty()
        })
        .await;
    eventually("pg_dump to run", || !pg_dumps_of(&db.name).is_empty()).await;
    let running_id = rig.log.of_database(subject::STARTED, &db.name)[0]["backup_id"].clone();

    // 02:00 comes while it runs. The scheduler reads the clock once its
    // start-up catch-up is done: move on a day at a time until it fires.
    for day in 2..=28 {
        clock.set(utc(&format!("2026-03-{day:02}T02:00:00Z")));
        let fired = |log: &EventLog| {
            log.of(subject::TRIGGER)
                .iter()
                .any(|t| t["reason"] == "schedule")
        };
        for _ in 0..20 {
            if fired(&rig.log) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if fired(&rig.log) {
            break;
        }
    }
    rig.log
        .wait_for("dump.skipped", |log| {
            !log.of_database(subject::SKIPPED, &db.name).is_empty()
        })
        .await;
    let skipped = rig.log.of_database(subject::SKIPPED, &db.name).remove(0);
    assert_eq!(skipped["running_backup_id"], running_id, "{skipped}");
    let since: DateTime<Utc> = skipped["running_since"].as_str().unwrap().parse().unwrap();
    assert!(since <= Utc::now(), "{skipped}");
    assert!(
        skipped["cause"]
            .as_str()
            .unwrap()
            .contains("is still running"),
        "{skipped}"
    );
    let triggers = rig.log.of(subject::TRIGGER);
    assert!(
        triggers.iter().any(|t| t["reason"] == "schedule"),
        "{}",
        rig.log.dump()
    );

    lock.release().await;
    rig.log
        .wait_for("the manual dump", |log| {
            !log.of_database(subject::CREATED, &db.name).is_empty()
        })
        .await;
    // The scheduled trigger is handled (acked) without a second dump.
    rig.wait_idle().await;
    assert_eq!(
        rig.log.of_database(subject::STARTED, &db.name).len(),
        1,
        "{}",
        rig.log.dump()
    );
    assert_eq!(rig.log.of_database(subject::CREATED, &db.name).len(), 1);
    assert_eq!(
        rig.log.of_database(subject::SKIPPED, &db.name).len(),
        1,
        "{}",
        rig.log.dump()
    );
    rig.stop().await;
}

/// Start-up checks: a spool that cannot exist (its parent is a regular
/// file) makes the dumper unhealthy naming the spool check and the path,
/// while it keeps running and fails the dumps it is asked for instead of
/// exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_reports_an_unusable_spool_as_unhealthy_without_exiting() {
    let db = TestDatabase::create("dumper_preflight");
    let mut rig = Rig::start().await;
    let blocker = rig.spool.path().join("not-a-directory");
    std::fs::write(&blocker, b"a regular file").unwrap();
    let mut settings = rig.settings(&[&db]);
    settings.spool_dir = blocker.join("spool");
    rig.run(settings, now_clock());

    let health = rig.bus.health().clone();
    let started = std::time::Instant::now();
    let report = loop {
        let report = health.report(&rig.bus.client().connection_state());
        if report.preflight.is_some() {
            break report;
        }
        assert!(started.elapsed() < WAIT, "never unhealthy: {report:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!report.is_healthy());
    let failure = report.preflight.unwrap();
    assert!(failure.starts_with("spool ("), "{failure}");
    assert!(failure.contains("not-a-directory"), "{failure}");
    assert!(
        !failure.contains("postgres."),
        "the database is fine: {failure}"
    );
    assert!(
        report.reasons.iter().any(|r| r.contains("spool")),
        "{:?}",
        report.reasons
    );

    // Still running: a dump asked for fails by its own rules.
    rig.trigger("").await;
    let (outcome, _) = rig.log.outcome(&db.name).await;
    assert_eq!(outcome, subject::FAILED);
    assert!(
        rig.running.iter().all(|task| !task.is_finished()),
        "the dumper must keep running"
    );
    rig.stop().await;
}
