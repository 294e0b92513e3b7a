//! The dumper against a real PostgreSQL and a real nats-server: schedule
//! (with a controllable clock), catch-up, coalescing and concurrency,
//! trigger validation, each failure made to happen for real, encryption,
//! formats, globals and the media archive.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::bus::{Bus, NatsOptions};
use backup_core::events::subject;
use backup_core::names::{Compression, DatabaseName, DumpFormat};
use backup_core::pg::PgArgs;
use chrono::{DateTime, Utc};
use dumper::schedule::{self, Schedule};
use dumper::{ManualClock, Settings};
use futures::StreamExt;
use serde_json::Value;
use test_support::nats::NatsServer;
use test_support::postgres::{PG_HOST, PG_PORT, PG_USER, TestDatabase};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);

fn pg_args() -> PgArgs {
    PgArgs {
        pg_host: Some(PG_HOST.to_owned()),
        pg_port: PG_PORT,
        pg_user: Some(PG_USER.to_owned()),
    }
}

fn db_name(db: &TestDatabase) -> DatabaseName {
    db.name
        .parse()
        .expect("test database names are identifiers")
}

/// A small database whose plain dump is a few MiB: several gzip blocks.
fn sample_database(prefix: &str) -> TestDatabase {
    let db = TestDatabase::create(prefix);
    db.execute(
        "CREATE SCHEMA grading;
         CREATE TABLE grading.copy (id bigserial PRIMARY KEY, student text, feedback text);
         CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, detail text);
         CREATE TABLE public.empty_table (id int);
         INSERT INTO grading.copy(student, feedback)
           SELECT 'ELV-' || i, repeat(md5(i::text), 3) FROM generate_series(1, 20000) i;
         INSERT INTO public.audit_log(detail) SELECT md5(i::text) FROM generate_series(1, 30000) i;",
    );
    db
}

/// Every `dump.*` and `backup.trigger` message of the stream, in order.
#[derive(Clone)]
struct EventLog {
    events: Arc<Mutex<Vec<(String, Value)>>>,
}

impl EventLog {
    async fn follow(bus: &Bus) -> EventLog {
        use async_nats::jetstream::consumer::pull;
        let stream = bus.ensure_stream().await.expect("stream");
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: vec!["dump.>".into(), "backup.>".into()],
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap()
                    .push((message.subject.to_string(), value));
            }
        });
        EventLog { events }
    }

    fn of(&self, subject: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == subject)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn of_database(&self, subject: &str, database: &str) -> Vec<Value> {
        self.of(subject)
            .into_iter()
            .filter(|v| v["database"] == database)
            .collect()
    }

    fn dump(&self) -> String {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(s, v)| format!("{s} {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&EventLog) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; events so far:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the one terminal event (`dump.created` or `dump.failed`)
    /// of `database` and returns (subject, event).
    async fn outcome(&self, database: &str) -> (String, Value) {
        self.wait_for(&format!("the outcome of {database}"), |log| {
            !log.of_database(subject::CREATED, database).is_empty()
                || !log.of_database(subject::FAILED, database).is_empty()
        })
        .await;
        if let Some(created) = self.of_database(subject::CREATED, database).pop() {
            (subject::CREATED.into(), created)
        } else {
            (
                subject::FAILED.into(),
                self.of_database(subject::FAILED, database).remove(0),
            )
        }
    }
}

/// A NATS server, a bus client, the event log, and a dumper running
/// in-process on a manual clock.
struct Rig {
    nats: NatsServer,
    bus: Bus,
    log: EventLog,
    spool: tempfile::TempDir,
    shutdown: CancellationToken,
    running: Vec<tokio::task::JoinHandle<()>>,
}

impl Rig {
    async fn start() -> Rig {
        let nats = NatsServer::start();
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&NatsOptions::local(&nats.url), "dumper-test", &shutdown)
            .await
            .expect("connect to NATS");
        let log = EventLog::follow(&bus).await;
        Rig {
            nats,
            bus,
            log,
            spool: tempfile::tempdir().expect("spool"),
            shutdown,
            running: Vec::new(),
        }
    }

    fn settings(&self, databases: &[&TestDatabase]) -> Settings {
        let mut settings = Settings::new(
            databases.iter().map(|db| db_name(db)).collect(),
            self.spool.path().to_owned(),
            pg_args(),
        );
        settings.grace = Duration::from_secs(1);
        settings
    }

    fn run(&mut self, settings: Settings, clock: ManualClock) {
        let bus = self.bus.clone();
        let shutdown = self.shutdown.clone();
        self.running.push(tokio::spawn(async move {
            dumper::run_with_clock(bus, settings, Arc::new(clock), shutdown)
                .await
                .expect("dumper run");
        }));
    }

    async fn trigger(&self, payload: &str) {
        let id = format!("test-{}", rand_id());
        self.bus
            .publish_raw(subject::TRIGGER, &id, payload.to_owned().into())
            .await
            .expect("publish trigger");
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.running.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        drop(self.nats);
    }
}

fn rand_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_clock() -> ManualClock {
    ManualClock::new(Utc::now())
}

fn artifact_path(spool: &Path, created: &Value) -> PathBuf {
    spool
        .join(created["database"].as_str().unwrap())
        .join(created["artifact"].as_str().unwrap())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn sh(script: &str) -> String {
    let output = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail; {script}")])
        .env("PGHOST", PG_HOST)
        .env("PGPORT", PG_PORT.to_string())
        .env("PGUSER", PG_USER)
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Holds `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` in an open psql session
/// until dropped, which makes pg_dump (and the row counts) wait.
struct TableLock {
    psql: std::process::Child,
}

impl TableLock {
    fn take(db: &TestDatabase, table: &str) -> TableLock {
        use std::io::Write;
        let mut psql = Command::new("psql")
            .args(["-X", "-q", "-h", PG_HOST, "-U", PG_USER, "-d", &db.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let stdin = psql.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 1;"
        )
        .unwrap();
        stdin.flush().unwrap();
        let locked = format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = '{}' AND l.mode = 'AccessExclusiveLock' AND l.granted",
            table.rsplit('.').next().unwrap()
        );
        test_support::wait_until(WAIT, "the table lock", || db.query(&locked) == "1");
        TableLock { psql }
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

/// Pids of the pg_dump processes dumping `database`.
fn pg_dumps_of(database: &str) -> Vec<u32> {
    let needle = format!("PGDATABASE={database}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "pg_dump")
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------- schedule

#[test]
fn a_daily_job_runs_once_on_both_daylight_saving_nights() {
    let schedule = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
    let slots = |from: &str, to: &str| {
        let mut slots = Vec::new();
        let mut cursor = utc(from);
        loop {
            let slot = schedule.next_after(cursor).unwrap();
            if slot >= utc(to) {
                return slots;
            }
            slots.push(slot.to_rfc3339());
            cursor = slot;
        }
    };
    // 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 never exists
    // that night, and the job runs once, right after the gap.
    assert_eq!(
        slots("2026-03-27T12:00:00Z", "2026-03-31T00:00:00Z"),
        [
            "2026-03-28T01:30:00+00:00",
            "2026-03-29T01:00:00+00:00",
            "2026-03-30T00:30:00+00:00",
        ]
    );
    // 25 October 2026: 03:00 CEST falls back to 02:00 CET; 02:30 happens
    // twice, the job runs at the first one only.
    assert_eq!(
        slots("2026-10-23T12:00:00Z", "2026-10-27T00:00:00Z"),
        [
            "2026-10-24T00:30:00+00:00",
            "2026-10-25T00:30:00+00:00",
            "2026-10-26T01:30:00+00:00",
        ]
    );
    assert_eq!(
        schedule::slot_msg_id(utc("2026-10-25T00:30:00Z")),
        "schedule:2026-10-25T00:30:00Z"
    );
    assert!(Schedule::parse("30 2 * *", "Europe/Paris").is_err());
    assert!(Schedule::parse("30 2 * * *", "Europe/Pariss").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_publish_each_slot_once() {
    let rig = Rig::start().await;
    let schedule = Schedule::parse("0 2 * * *", "Europe/Paris").unwrap();
    let clock = ManualClock::new(utc("2026-03-27T12:00:00Z"));
    for _ in 0..2 {
        tokio::spawn(schedule::run_scheduler(
            rig.bus.clone(),
            schedule.clone(),
            Arc::new(clock.clone()),
            rig.shutdown.clone(),
        ));
    }
    // Give both schedulers time to compute their first slot from the clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(utc("2026-03-28T01:00:00Z"));
    rig.log
        .wait_for("the first scheduled trigger", |log| {
            !log.of(subject::TRIGGER).is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two days at once (a suspended machine): one trigger, for the latest slot.
    clock.set(utc("2026-03-30T06:00:00Z"));
    rig.log
        .wait_for("the second scheduled trigger", |log| {
            log.of(subject::TRIGGER).len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let triggers = rig.log.of(subject::TRIGGER);
    assert_eq!(triggers.len(), 2, "{}", rig.log.dump());
    for trigger in &triggers {
        assert_eq!(trigger["reason"], "schedule");
        assert!(trigger.get("database").is_none());
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_catches_up_a_database_whose_last_dump_is_too_old() {
    let mut rig = Rig::start().await;
    let stale = sample_database("dumper_stale");
    let fresh = sample_database("dumper_fresh");
    let never = sample_database("dumper_never");
    // Earlier runs, as their manifests in the spool say.
    for (db, age_hours) in [(&stale, 30), (&fresh, 2)] {
        let created_at = Utc::now() - chrono::Duration::hours(age_hours);
        let name = db_name(db);
        let artifact = backup_core::names::ArtifactName::new(
            &name,
            created_at,
            backup_core::names::ArtifactKind::PLAIN_GZIP,
        );
        let manifest = backup_core::manifest::Manifest {
            version: 1,
            backup_id: format!("{}-old", db.name).parse().unwrap(),
            database: name.clone(),
            artifact: artifact.clone(),
            size_bytes: 100,
            sha256: "0".repeat(64).parse().unwrap(),
            format: DumpFormat::Plain,
            compression: Compression::Gzip,
            encrypted: false,
            server_version: "15".into(),
            pg_dump_version: "15".into(),
            created_at,
            duration_ms: 1,
            trigger: "schedule".into(),
            origin: Default::default(),
            tables: BTreeMap::new(),
        };
        let dir = rig.spool.path().join(&db.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(artifact.manifest_name()), manifest.encode()).unwrap();
    }
    let mut settings = rig.settings(&[&stale, &fresh, &never]);
    settings.schedule = Some(Schedule::parse("0 2 * * *", "UTC").unwrap());
    rig.run(settings, now_clock());

    let (subject, created) = rig.log.outcome(&stale.name).await;
    assert_eq!(subject, subject::CREATED, "{created}");
    assert_eq!(created["reason"], "schedule");
    // Give the others every chance to (wrongly) start too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rig.log
            .of_database(subject::STARTED, &fresh.name)
            .is_empty()
    );
    assert!(
        rig.log
            .of_database(subject::STARTED, &never.name)
            .is_empty()
    );
    assert_eq!(rig.log.of(subject::TRIGGER).len(), 1, "{}", rig.log.dump());
    rig.stop().await;
}

// ------------------------------------------------- concurrency, coalescing

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triggers_during_a_dump_coalesce_and_databases_run_side_by_side() {
    let mut rig = Rig::start().await;
    let slow = sample_database("dumper_slow");
    let quick = sample_database("dumper_quick");
    let mut settings = rig.settings(&[&slow, &quick]);
    settings.max_parallel = 2;
    rig.run(settings, now_clock());

    let lock = TableLock::take(&slow, "grading.copy");
    rig.trigger("").await;
    // The quick database finishes while the slow one is stuck: they run
    // side by side.
    rig.log
        .wait_for("the quick database's dump", |log| {
            log.of_database(subject::CREATED, &quick.name).len() == 1
        })
        .await;
    assert!(rig.log.of_database(subject::CREATED, &slow.name).is_empty());
    assert_eq!(rig.log.of_database(subject::STARTED, &slow.name).len(), 1);
    // Two more triggers while the slow dump runs.
    rig.trigger("").await;
    rig.trigger("{}").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rig.log.of_database(subject::STARTED, &slow.name).len(),
        1,
        "a second dump of the same database started concurrently"
    );
    drop(lock);

    // One more dump of each after the first, not two.
    rig.log
        .wait_for("the second round", |log| {
            log.of_database(subject::CREATED, &slow.name).len() == 2
                && log.of_database(subject::CREATED, &quick.name).len() == 2
        })
        .await;
    let js = rig.bus.jetstream().clone();
    let mut idle = false;
    for _ in 0..600 {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("dumper", "BACKUPS")
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle, "the dumper did not finish the queued triggers");
    assert_eq!(
        rig.log.of_database(subject::CREATED, &slow.name).len(),
        2,
        "{}",
        rig.log.dump()
    );
    assert_eq!(
        rig.log.of_database(subject::CREATED, &quick.name).len(),
        2,
        "{}",
        rig.log.dump()
    );
    rig.stop().await;
}

// -------------------------------------------------------------- validation

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_triggers_are_rejected_with_a_clear_cause() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_valid");
    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    let cases = [
        ("[1]", "must be a JSON object"),
        ("\"viatique\"", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        (r#"{"database":"x; DROP TABLE y"}"#, "invalid database name"),
        (r#"{"database":42}"#, "invalid payload"),
        (r#"{"tag":"../../etc"}"#, "invalid tag"),
        (
            r#"{"database":"not_configured"}"#,
            "not configured for backup",
        ),
    ];
    for (payload, _) in cases {
        rig.trigger(payload).await;
    }
    rig.log
        .wait_for("one rejection per invalid trigger", |log| {
            log.of(subject::FAILED).len() >= cases.len()
        })
        .await;
    let failures = rig.log.of(subject::FAILED);
    for (payload, cause) in cases {
        assert!(
            failures
                .iter()
                .any(|f| f["stage"] == "trigger" && f["error"].as_str().unwrap().contains(cause)),
            "no trigger failure saying {cause:?} for {payload}:\n{}",
            rig.log.dump()
        );
    }
    assert!(failures.iter().all(|f| f["stage"] == "trigger"));
    assert!(rig.log.of(subject::STARTED).is_empty());
    // Still alive: a valid trigger works.
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{event}");
    rig.stop().await;
}

// ---------------------------------------------------------------- failures

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

// --------------------------------------------------- formats and restores

fn restore_plain(script_to_stdout: &str, into: &TestDatabase) {
    sh(&format!(
        "{script_to_stdout} | psql -X -q -v ON_ERROR_STOP=1 -d {} > /dev/null",
        into.name
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_gzip_is_multi_member_and_restores_with_gunzip_and_psql() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_gzip");
    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    rig.trigger(r#"{"tag":"pre-deploy","reason":"release 1.2"}"#)
        .await;
    let (subject, created) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{created}");
    assert_eq!(created["tag"], "pre-deploy");
    let path = artifact_path(rig.spool.path(), &created);
    assert!(path.to_string_lossy().ends_with(".sql.gz"));
    sh(&format!("gzip -t '{}'", path.display()));
    let bytes = std::fs::read(&path).unwrap();
    // A single-member decoder stops after the first block: proof that the
    // stream is made of several members (compressed in parallel).
    let mut first_member = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut first_member)
        .unwrap();
    assert_eq!(first_member.len(), dumper::compress::BLOCK_SIZE);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(path.with_file_name(format!(
            "{}.manifest.json",
            created["artifact"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["tag"], "pre-deploy");
    assert_eq!(manifest["tables"]["grading.copy"], 20000);
    assert_eq!(manifest["sha256"], created["sha256"]);

    let restored = TestDatabase::create("dumper_gzip_restored");
    restore_plain(&format!("gunzip -c '{}'", path.display()), &restored);
    assert_eq!(restored.row_counts(), db.row_counts());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_artifacts_round_trip_with_the_age_cli() {
    let keys = tempfile::tempdir().unwrap();
    let ops = keys.path().join("ops.key");
    let offline = keys.path().join("offline.key");
    sh(&format!("age-keygen -o '{}' 2>/dev/null", ops.display()));
    sh(&format!(
        "age-keygen -o '{}' 2>/dev/null",
        offline.display()
    ));
    let recipients = format!(
        "{},{}",
        sh(&format!("age-keygen -y '{}'", ops.display())).trim(),
        sh(&format!("age-keygen -y '{}'", offline.display())).trim()
    );
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_age");
    let mut settings = rig.settings(&[&db]);
    settings.codec.recipients = dumper::compress::parse_recipients(&recipients).unwrap();
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, created) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{created}");
    let path = artifact_path(rig.spool.path(), &created);
    assert!(
        path.to_string_lossy().ends_with(".sql.gz.age"),
        "{}",
        path.display()
    );
    assert!(
        std::fs::read(&path)
            .unwrap()
            .starts_with(b"age-encryption.org/v1")
    );
    // Either key opens it.
    for key in [&ops, &offline] {
        let restored = TestDatabase::create("dumper_age_restored");
        restore_plain(
            &format!(
                "age -d -i '{}' '{}' | gunzip -c",
                key.display(),
                path.display()
            ),
            &restored,
        );
        assert_eq!(restored.row_counts(), db.row_counts());
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_format_with_zstd_restores_with_pg_restore() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_custom");
    let mut settings = rig.settings(&[&db]);
    settings.format = DumpFormat::Custom;
    settings.codec = dumper::Codec::new(Compression::Zstd, Some(5));
    rig.run(settings, now_clock());
    rig.trigger("").await;
    let (subject, created) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{created}");
    let path = artifact_path(rig.spool.path(), &created);
    assert!(path.to_string_lossy().ends_with(".dump.zst"));
    let restored = TestDatabase::create("dumper_custom_restored");
    sh(&format!(
        "zstd -dc '{}' | pg_restore --exit-on-error -d {}",
        path.display(),
        restored.name
    ));
    assert_eq!(restored.row_counts(), db.row_counts());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_backup_adds_the_globals_and_the_media_archive() {
    let media = tempfile::tempdir().unwrap();
    let uploads = media.path().join("uploads");
    std::fs::create_dir_all(uploads.join("2026/11")).unwrap();
    std::fs::write(
        uploads.join("2026/11/copie_1.pdf"),
        (0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(uploads.join("readme.txt"), "copies scannées\n").unwrap();
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_dr");
    let mut settings = rig.settings(&[&db]);
    settings.globals = true;
    settings.files_dirs = vec![uploads.clone()];
    rig.run(settings, now_clock());
    rig.trigger("").await;
    for name in [db.name.as_str(), "globals", "media"] {
        let (subject, event) = rig.log.outcome(name).await;
        assert_eq!(subject, subject::CREATED, "{name}: {event}");
    }
    let globals = rig.log.of_database(subject::CREATED, "globals").remove(0);
    let globals_path = artifact_path(rig.spool.path(), &globals);
    assert!(globals_path.to_string_lossy().ends_with(".globals.sql.gz"));
    let sql = sh(&format!("gunzip -c '{}'", globals_path.display()));
    assert!(sql.contains("CREATE ROLE postgres"), "{sql}");

    let archive = rig.log.of_database(subject::CREATED, "media").remove(0);
    let archive_path = artifact_path(rig.spool.path(), &archive);
    assert!(archive_path.to_string_lossy().ends_with(".tar.gz"));
    let out = tempfile::tempdir().unwrap();
    sh(&format!(
        "tar -xzf '{}' -C '{}'",
        archive_path.display(),
        out.path().display()
    ));
    for file in ["2026/11/copie_1.pdf", "readme.txt"] {
        assert_eq!(
            std::fs::read(out.path().join("uploads").join(file)).unwrap(),
            std::fs::read(uploads.join(file)).unwrap(),
            "{file}"
        );
    }
    // Every artifact parses as one of ours.
    for event in [&globals, &archive] {
        let name: backup_core::names::ArtifactName =
            event["artifact"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            name.database().as_str(),
            event["database"].as_str().unwrap()
        );
    }
    rig.stop().await;
}

// ------------------------------------------------------------------ hangs

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
    let js = rig.bus.jetstream().clone();
    let mut idle = false;
    for _ in 0..600 {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("dumper", "BACKUPS")
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle, "the dumper did not finish the scheduled trigger");
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
