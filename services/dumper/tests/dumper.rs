//! The dumper against a real PostgreSQL and a real nats-server: schedule
//! (with a controllable clock), catch-up, coalescing and concurrency,
//! trigger validation, each failure made to happen for real, encryption,
//! formats, globals and the media archive.

#[path = "dumper/concurrency.rs"]
mod concurrency;
#[path = "dumper/failures.rs"]
mod failures;
#[path = "dumper/formats.rs"]
mod formats;
#[path = "dumper/hangs.rs"]
mod hangs;
#[path = "dumper/scheduled.rs"]
mod scheduled;
#[path = "dumper/validation.rs"]
mod validation;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use backup_core::events::subject;
use backup_core::names::{Compression, DatabaseName, DumpFormat};
use backup_core::pg::PgArgs;
use chrono::{DateTime, Utc};
use dumper::schedule::{self, Schedule};
use dumper::{ManualClock, Settings};
use serde_json::Value;
use test_support::pipeline::{EventLog, TestBus, WatchedClock};
use test_support::postgres::{PG_HOST, PG_PORT, PG_USER, TestDatabase};

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

/// The dumper's view of the event log: the one outcome of a database.
trait Outcomes {
    /// Waits for the one terminal event (`dump.created` or `dump.failed`)
    /// of `database` and returns (subject, event).
    async fn outcome(&self, database: &str) -> (String, Value);
}

impl Outcomes for EventLog {
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
/// in-process on a manual clock. Derefs to its [`TestBus`] (`rig.bus`,
/// `rig.shutdown`).
struct Rig {
    test_bus: TestBus,
    log: EventLog,
    spool: tempfile::TempDir,
    running: Vec<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for Rig {
    type Target = TestBus;
    fn deref(&self) -> &TestBus {
        &self.test_bus
    }
}

impl Rig {
    async fn start() -> Rig {
        let test_bus = TestBus::start("dumper-test").await;
        let log = EventLog::follow(test_bus.jetstream()).await;
        Rig {
            test_bus,
            log,
            spool: tempfile::tempdir().expect("spool"),
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

    fn run(&mut self, settings: Settings, clock: impl dumper::Clock) {
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

    /// Waits until the dumper has handled every trigger stored so far.
    async fn wait_idle(&self) {
        test_support::pipeline::wait_idle(self.bus.jetstream(), "dumper").await;
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.running.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        drop(self.test_bus);
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
