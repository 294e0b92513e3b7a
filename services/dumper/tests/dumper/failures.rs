//! Each failure made to happen for real: PostgreSQL unreachable or refusing,
//! pg_dump too old or killed, the spool full, too small or unwritable, and
//! what a killed dumper leaves behind.

use super::*;

async fn failed_dump(
    settings_for: impl FnOnce(&Rig, &TestDatabase) -> Settings,
) -> (Value, Rig, TestDatabase) {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_fail");
    let settings = settings_for(&rig, &db);
    rig.run(settings, now_clock());
    rig.trigger(&format!(r#"{{"database":"{}"}}"#, db.name))
        .await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "expected a failure, got {event}");
    assert_eq!(event["stage"], "dump");
    (event, rig, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_postgres_fails_and_will_retry() {
    let (event, rig, _db) = failed_dump(|rig, db| {
        let mut settings = rig.settings(&[db]);
        settings.pg.pg_port = test_support::free_port();
        settings
    })
    .await;
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("cannot connect to PostgreSQL"), "{error}");
    assert_eq!(event["will_retry"], true);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_authentication_fails_for_good() {
    let (event, rig, _db) = failed_dump(|rig, db| {
        let mut settings = rig.settings(&[db]);
        settings.pg.pg_user = Some("no_such_backup_role".into());
        settings
    })
    .await;
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("no_such_backup_role"), "{error}");
    assert_eq!(event["will_retry"], false);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pg_dump_too_old_for_the_server_is_refused_before_dumping() {
    let fake = tempfile::tempdir().unwrap();
    let script = fake.path().join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    sh(&format!("chmod 755 '{}'", script.display()));
    let bin_dir = fake.path().to_owned();
    let (event, rig, db) = failed_dump(move |rig, db| {
        let mut settings = rig.settings(&[db]);
        settings.pg_bin_dir = Some(bin_dir);
        settings
    })
    .await;
    let error = event["error"].as_str().unwrap();
    let major = db.query("SELECT current_setting('server_version_num')::int / 10000");
    assert!(
        error.contains(&format!(
            "no pg_dump can dump this PostgreSQL {major} server"
        )) && error.contains("9.6.24")
            && error.contains(&format!("postgresql-client-{major}")),
        "{error}"
    );
    assert!(files_in(&rig.spool.path().join(&db.name)).is_empty());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pg_dump_is_a_failure_and_leaves_nothing() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_kill");
    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    let lock = TableLock::take(&db, "grading.copy");
    rig.trigger("").await;
    let mut pids = Vec::new();
    test_support::wait_until(WAIT, "pg_dump to start", || {
        pids = pg_dumps_of(&db.name);
        !pids.is_empty()
    });
    for pid in &pids {
        sh(&format!("kill -9 {pid}"));
    }
    drop(lock);
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(
        error.contains("pg_dump failed") && error.contains("signal: 9"),
        "{error}"
    );
    assert!(
        files_in(&rig.spool.path().join(&db.name)).is_empty(),
        "{:?}",
        files_in(&rig.spool.path().join(&db.name))
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_fails_with_no_space_left_and_removes_the_partial() {
    let tmpfs = test_support::tmpfs::Tmpfs::mount("2m");
    let mut rig = Rig::start().await;
    let db = TestDatabase::create("dumper_full");
    // ~6 MB of random bytes: does not compress, does not fit.
    db.execute(
        "CREATE TABLE scan (id int, content bytea);
         INSERT INTO scan SELECT i, (SELECT decode(string_agg(md5(random()::text || i || j), ''), 'hex')
                                     FROM generate_series(1, 2500) j)
         FROM generate_series(1, 150) i;",
    );
    let mut settings = rig.settings(&[&db]);
    settings.spool_dir = tmpfs.path().join("spool");
    settings.space_check = false;
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("no space left"), "{error}");
    assert!(
        files_in(&tmpfs.path().join("spool").join(&db.name)).is_empty(),
        "partial left behind"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spool_too_small_for_the_estimate_is_refused_up_front() {
    let tmpfs = test_support::tmpfs::Tmpfs::mount("1m");
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_small");
    let mut settings = rig.settings(&[&db]);
    settings.spool_dir = tmpfs.path().join("spool");
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("not enough free space"), "{error}");
    assert_eq!(event["will_retry"], false);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_spool_fails_the_dump() {
    let tmpfs = test_support::tmpfs::Tmpfs::mount("64m");
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_ro");
    let mut settings = rig.settings(&[&db]);
    settings.spool_dir = tmpfs.path().join("spool");
    rig.run(settings, now_clock());
    rig.log
        .wait_for("the spool to be created", |_| {
            tmpfs.path().join("spool").is_dir()
        })
        .await;
    tmpfs.remount_read_only();
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::FAILED, "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(error.contains("Read-only file system"), "{error}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_files_of_a_killed_dumper_are_swept_at_start_up() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_sweep");
    let dir = rig.spool.path().join(&db.name);
    std::fs::create_dir_all(&dir).unwrap();
    let leftover = dir.join(format!("{}_20260101_020000.sql.gz.partial", db.name));
    std::fs::write(&leftover, b"half a dump").unwrap();
    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, _) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED);
    assert!(!leftover.exists());
    rig.stop().await;
}

/// Sets a file's modification time `ago` in the past.
fn back_date(path: &Path, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unannounced_artifacts_of_a_killed_dumper_are_swept_at_start_up() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_unannounced");
    let dir = rig.spool.path().join(&db.name);
    std::fs::create_dir_all(&dir).unwrap();
    let plant = |name: String, age: Option<Duration>| {
        let path = dir.join(name);
        std::fs::write(&path, b"a whole dump, never announced").unwrap();
        if let Some(age) = age {
            back_date(&path, age);
        }
        path
    };
    let two_hours = Some(Duration::from_secs(2 * 3600));
    // Renamed to its final name, then killed before the manifest.
    let orphan = plant(format!("{}_20010101_020000.sql.gz", db.name), two_hours);
    // Another dumper sharing the spool may still be re-hashing this one.
    let fresh = plant(format!("{}_20010102_020000.sql.gz", db.name), None);
    // A finished backup: artifact and manifest.
    let announced = plant(format!("{}_20010103_020000.sql.gz", db.name), two_hours);
    let manifest = plant(
        format!("{}_20010103_020000.sql.gz.manifest.json", db.name),
        two_hours,
    );
    // Not ours to judge.
    let stranger = plant("operator-notes.txt".to_owned(), two_hours);

    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{event}");
    assert!(artifact_path(rig.spool.path(), &event).exists());

    assert!(
        !orphan.exists(),
        "an unannounced artifact survived start-up: {:?}",
        files_in(&dir)
    );
    for kept in [&fresh, &announced, &manifest, &stranger] {
        assert!(
            kept.exists(),
            "{} was removed: {:?}",
            kept.display(),
            files_in(&dir)
        );
    }
    // The trigger made one fresh dump; nothing planted was announced.
    let created = rig.log.of_database(subject::CREATED, &db.name);
    assert_eq!(created.len(), 1, "{}", rig.log.dump());
    rig.stop().await;
}
