//! The resilience and security suite: what production will do to the
//! pipeline, done to the real binaries against real servers.
//!
//! - [`chaos`]: a series of backups while random services are killed with
//!   SIGKILL mid-dump, mid-upload and mid-restore, then restarted; every
//!   backup must end verified exactly once, with nothing half-written under
//!   a final name, no scratch database and no event lost.
//! - [`outages`]: NATS restarted mid-upload, the SFTP server gone for a few
//!   seconds, PostgreSQL stopped mid-dump, a full spool disk, and a byte
//!   flipped on the remote after shipping.
//! - [`hostile`]: events and names crafted to escape the spool or the
//!   remote directory, or to reach a shell or SQL.
//! - [`config_fuzz`]: the binaries' own configuration parsers under
//!   property tests.
//! - [`security`]: distinctive secrets that must appear in no log line,
//!   event, remote file name or process argument list; private file modes;
//!   NATS with authentication.
//!
//! Every test states its figures on stderr (written directly, so they show
//! even when the test harness captures output), followed by the totals of
//! the tests run so far in this process; the last totals line is the
//! suite's summary. How to run the CI and the long variants:
//! `docs/testing.md`.
//!
//! Everything here reads the outcome from the stream and the file systems,
//! never from timing: waits are generous deadlines, not assertions.

#[path = "chaos.rs"]
mod chaos;
#[path = "config_fuzz.rs"]
mod config_fuzz;
#[path = "hostile.rs"]
mod hostile;
#[path = "outages.rs"]
mod outages;
#[path = "security.rs"]
mod security;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::nats::NatsServer;
use test_support::postgres::{TestDatabase, databases_with_prefix, pg_env};
use test_support::process::ServiceProcess;
use test_support::smtp::SmtpServer;
use test_support::sshd::Sshd;

/// The five services, in start order.
const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];

/// Generous: the machine is shared and builds run beside the tests.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// What a test did, for the figures printed at its end.
#[derive(Debug, Default, Clone)]
struct Figures {
    triggered: usize,
    verified: usize,
    /// Kills, outages, full disks, rot.
    faults: usize,
    /// Hostile messages and settings, each refused.
    refused: usize,
    secrets_found: usize,
}

static TOTALS: Mutex<(usize, Figures)> = Mutex::new((
    0,
    Figures {
        triggered: 0,
        verified: 0,
        faults: 0,
        refused: 0,
        secrets_found: 0,
    },
));

/// Prints a test's figures and the running totals of the suite.
fn report(test: &str, figures: &Figures, details: &str) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    totals.0 += 1;
    totals.1.triggered += figures.triggered;
    totals.1.verified += figures.verified;
    totals.1.faults += figures.faults;
    totals.1.refused += figures.refused;
    totals.1.secrets_found += figures.secrets_found;
    let (tests, all) = &*totals;
    // Straight to stderr: libtest captures print! and eprint!, and these
    // figures belong in the CI log of a passing run too.
    let _ = writeln!(
        std::io::stderr(),
        "resilience figures: {test}: backups triggered {}, verified {}, faults injected {}, \
         hostile inputs refused {}, secrets found {}{}{details}\n\
         resilience totals after {tests} test(s): backups triggered {}, verified {}, \
         faults injected {}, hostile inputs refused {}, secrets found: {}",
        figures.triggered,
        figures.verified,
        figures.faults,
        figures.refused,
        figures.secrets_found,
        if details.is_empty() { "" } else { "; " },
        all.triggered,
        all.verified,
        all.faults,
        all.refused,
        all.secrets_found,
    );
}

/// One event as stored in the stream.
#[derive(Debug, Clone)]
struct Stored {
    sequence: u64,
    subject: String,
    raw: Vec<u8>,
    body: Value,
}

/// Reads the `BACKUPS` stream (every message, in order) and publishes to it.
struct Events {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    seen: Mutex<Vec<Stored>>,
}

impl Events {
    fn connect(url: &str) -> Events {
        Self::connect_with(url, async_nats::ConnectOptions::new())
    }

    fn connect_with(url: &str, options: async_nats::ConnectOptions) -> Events {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(options.connect(url))
            .expect("connect to NATS");
        Events {
            runtime,
            client,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn jetstream(&self) -> async_nats::jetstream::Context {
        // The context spawns a task: it needs the runtime.
        let _runtime = self.runtime.enter();
        async_nats::jetstream::new(self.client.clone())
    }

    /// Every message stored so far (best effort while NATS is down).
    fn all(&self) -> Vec<Stored> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let js = self.jetstream();
        let fresh = self.runtime.block_on(async {
            let mut fresh = Vec::new();
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(5), js.get_stream("BACKUPS")).await
            else {
                return fresh;
            };
            let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(5), stream.info()).await
            else {
                return fresh;
            };
            let last = info.state.last_sequence;
            let mut next = seen.last().map_or(1, |s| s.sequence + 1);
            while next <= last {
                match tokio::time::timeout(Duration::from_secs(5), stream.get_raw_message(next))
                    .await
                {
                    Ok(Ok(message)) => {
                        let raw = message.payload.to_vec();
                        fresh.push(Stored {
                            sequence: next,
                            subject: message.subject.to_string(),
                            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                            raw,
                        });
                    }
                    // Deleted or never stored (a sequence gap): skip it.
                    Ok(Err(error)) if error.to_string().contains("no message found") => {}
                    _ => break,
                }
                next += 1;
            }
            fresh
        });
        seen.extend(fresh);
        seen.clone()
    }

    fn of(&self, subject: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|s| s.subject == subject)
            .map(|s| s.body)
            .collect()
    }

    /// Waits for an event on `subject` that `wanted` accepts.
    fn wait(&self, subject: &str, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.of(subject).into_iter().find(|e| wanted(e)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching {subject} within {timeout:?}; the stream holds:\n{}",
                self.summary()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One line per stored event, for failure messages.
    fn summary(&self) -> String {
        self.all()
            .iter()
            .map(|s| {
                let body = &s.body;
                format!(
                    "#{} {} {} {} {} {}",
                    s.sequence,
                    s.subject,
                    body["backup_id"].as_str().unwrap_or("-"),
                    body["request_id"].as_str().unwrap_or("-"),
                    body["artifact"].as_str().unwrap_or("-"),
                    body["error"].as_str().unwrap_or(""),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Publishes raw bytes; returns the stream sequence.
    fn publish(&self, subject: &str, payload: Vec<u8>) -> u64 {
        let js = self.jetstream();
        self.runtime.block_on(async {
            js.publish(subject.to_owned(), payload.into())
                .await
                .expect("publish")
                .await
                .expect("stored")
                .sequence
        })
    }

    /// Publishes a trigger for one database that `backupctl --wait` would
    /// recognise by `request_id`.
    fn trigger(&self, database: &str, request_id: &str) -> u64 {
        let payload = json!({
            "database": database,
            "request_id": request_id,
            "reason": "resilience suite",
        });
        self.publish(
            "backup.trigger",
            serde_json::to_vec(&payload).expect("JSON"),
        )
    }

    /// The durable consumer's state.
    fn consumer(&self, name: &str) -> async_nats::jetstream::consumer::Info {
        let js = self.jetstream();
        self.runtime
            .block_on(test_support::pipeline::consumer_info(&js, name))
            .unwrap_or_else(|| panic!("no consumer {name} on BACKUPS"))
    }

    /// Hands the message a killed consumer held back to JetStream at once,
    /// as its `ack_wait` (60 s) expiring would, by sending the nak the dead
    /// process never sent. `held` is the consumer's state taken just before
    /// the kill: with `max_ack_pending` 1, the message in flight is its last
    /// delivery. JetStream ignores the nak if that delivery was acked since.
    fn release(&self, name: &str, held: &async_nats::jetstream::consumer::Info) {
        let subject = format!(
            "$JS.ACK.BACKUPS.{name}.1.{}.{}.0.0",
            held.delivered.stream_sequence, held.delivered.consumer_sequence
        );
        let client = self.client.clone();
        self.runtime.block_on(async {
            client
                .publish(subject, "-NAK".into())
                .await
                .expect("publish the nak");
            client.flush().await.expect("flush");
        });
    }
}

/// One process of the machine, from /proc.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    /// Arguments joined by spaces.
    cmdline: String,
}

/// Every process visible in /proc right now (some vanish while read).
fn process_table() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat[open + 1..close].to_owned();
            let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some(Proc {
                pid,
                ppid,
                comm,
                cmdline,
            })
        })
        .collect()
}

/// Data that makes every stage last a moment: about 10 MB of SQL per
/// 100 000 rows, compressing to roughly half.
fn fill(db: &TestDatabase, rows: u32) {
    db.execute(&format!(
        "CREATE SCHEMA grading;
         CREATE TABLE grading.exam (id bigserial PRIMARY KEY, title text NOT NULL);
         CREATE TABLE grading.copy (id bigserial PRIMARY KEY, exam_id bigint REFERENCES grading.exam(id),
                                    score numeric(4,2), comment text);
         INSERT INTO grading.exam(title) SELECT 'Devoir n°' || i FROM generate_series(1, 40) i;
         INSERT INTO grading.copy(exam_id, score, comment)
           SELECT 1 + i % 40, (i % 20)::numeric, md5(i::text) || md5((i * 7)::text)
           FROM generate_series(1, {rows}) i;"
    ));
}

/// A whole pipeline: the servers, the source databases, a spool, and the
/// five services as separate processes, each restartable.
struct Pipeline {
    nats: NatsServer,
    sshd: Sshd,
    smtp: SmtpServer,
    sources: Vec<TestDatabase>,
    spool: PathBuf,
    scratch_prefix: String,
    /// Settings beyond the defaults: (service or `*`, name, value).
    extra: Vec<(&'static str, String, String)>,
    services: BTreeMap<&'static str, ServiceProcess>,
    events: Events,
    _spool_dir: tempfile::TempDir,
}

impl Pipeline {
    /// Servers and sources; no service runs yet.
    fn new(sources: Vec<TestDatabase>) -> Pipeline {
        Self::with_nats(sources, NatsServer::start(), None)
    }

    fn with_nats(sources: Vec<TestDatabase>, nats: NatsServer, events: Option<Events>) -> Pipeline {
        let spool_dir = tempfile::tempdir().expect("spool dir");
        let scratch_prefix = format!("vfy{:012x}", rand_u64() & 0xffff_ffff_ffff);
        let events = events.unwrap_or_else(|| Events::connect(&nats.url));
        Pipeline {
            sshd: Sshd::start(),
            smtp: SmtpServer::start(),
            spool: spool_dir.path().join("spool"),
            nats,
            sources,
            scratch_prefix,
            extra: Vec::new(),
            services: BTreeMap::new(),
            events,
            _spool_dir: spool_dir,
        }
    }

    fn set(&mut self, service: &'static str, name: &str, value: impl Into<String>) {
        self.extra.push((service, name.to_owned(), value.into()));
    }

    fn remote_base(&self) -> PathBuf {
        self.sshd.backups_dir()
    }

    fn env(&self, service: &str) -> Vec<(String, String)> {
        let databases = self
            .sources
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut env: Vec<(String, String)> = [
            ("NATS_URL", self.nats.url.clone()),
            ("RUST_LOG", "info".into()),
            ("BACKUP_DATABASES", databases),
            ("BACKUP_SCHEDULE", "off".into()),
            ("BACKUP_SPOOL_DIR", self.spool.display().to_string()),
            (
                "VERIFY_DATABASE_URL",
                "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            ),
            ("VERIFY_SCRATCH_PREFIX", self.scratch_prefix.clone()),
            ("VERIFY_REVERIFY_EVERY", "off".into()),
            ("PRUNE_SCHEDULE", "off".into()),
            ("SMTP_URL", self.smtp.url.clone()),
            ("ALERT_EMAIL_FROM", "backups@korrigo.example".into()),
            ("ALERT_EMAIL_TO", "oncall@korrigo.example".into()),
            ("ALERT_RETRY_INITIAL", "200ms".into()),
            ("SHUTDOWN_GRACE", "2s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.sshd.sftp_env(&self.remote_base()))
        .collect();
        env.extend(pg_env());
        for (target, name, value) in &self.extra {
            if *target == "*" || *target == service {
                env.retain(|(k, _)| k != name);
                env.push((name.clone(), value.clone()));
            }
        }
        env
    }

    /// Starts (or restarts) one service and waits until it takes work.
    fn start(&mut self, name: &'static str) {
        self.services.remove(name);
        let service = ServiceProcess::spawn(name, &[], &self.env(name));
        assert!(
            service.wait_for_log("waiting for work", START_TIMEOUT),
            "{name} did not start:\n{}",
            service.log()
        );
        self.services.insert(name, service);
    }

    fn start_all(&mut self) {
        for name in SERVICES {
            self.start(name);
        }
    }

    fn service(&self, name: &str) -> &ServiceProcess {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// SIGKILL, as in a crash or an OOM kill.
    fn kill(&mut self, name: &str) {
        if let Some(service) = self.services.get_mut(name) {
            service.kill();
        }
    }

    /// Every service is still running.
    fn assert_alive(&mut self) {
        for (name, service) in &mut self.services {
            assert!(
                service.try_wait().is_none(),
                "{name} exited:\n{}",
                service.log()
            );
        }
    }

    /// What every service has logged, by service.
    fn logs(&self) -> BTreeMap<&'static str, String> {
        self.services
            .iter()
            .map(|(name, service)| (*name, service.log()))
            .collect()
    }

    /// The `dump.verified` (first verification, not a re-verification) of
    /// the backup started by the trigger with `request_id`.
    fn wait_verified(&self, request_id: &str, timeout: Duration) -> Value {
        self.events.wait("dump.verified", timeout, |e| {
            e["request_id"] == request_id && e["reverification"] != true
        })
    }

    /// No scratch database is left, once a verifier restarted after a
    /// crash has had its second look (see the verifier's late sweep).
    fn assert_no_scratch_database(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = databases_with_prefix(&self.scratch_prefix);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scratch databases left behind: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Alerts sent so far (not the resolved messages).
    fn alerts(&self) -> Vec<test_support::smtp::ReceivedMail> {
        self.smtp
            .messages()
            .into_iter()
            .filter(|m| !m.subject.contains("RESOLVED"))
            .collect()
    }

    fn wait_for_mail(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&test_support::smtp::ReceivedMail) -> bool,
    ) -> test_support::smtp::ReceivedMail {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(mail) = self.smtp.messages().into_iter().find(|m| wanted(m)) {
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} mail within {timeout:?}; received: {:?}\nnotifier log:\n{}",
                self.smtp
                    .messages()
                    .iter()
                    .map(|m| m.subject.clone())
                    .collect::<Vec<_>>(),
                self.services
                    .get("notifier")
                    .map(ServiceProcess::log)
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Every file below `root`, as paths relative to it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
        }
    }
    found.sort();
    found
}

/// No file being written (or abandoned mid-write) anywhere below `root`.
fn assert_no_partials(root: &Path) {
    let partials: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".partial"))
        .collect();
    assert!(
        partials.is_empty(),
        "temporary files left below {}: {partials:?}",
        root.display()
    );
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    ))
}

/// Every artifact under a final name in `dir` is complete: its manifest is
/// there and its bytes hash to the manifest's checksum. Returns the
/// manifests by artifact name.
fn assert_complete_artifacts(dir: &Path) -> BTreeMap<String, Value> {
    let names = files_in(dir);
    let mut manifests = BTreeMap::new();
    for name in &names {
        let is_artifact = [".sql.gz", ".sql.zst", ".dump.gz", ".dump.zst", ".tar.gz"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if !is_artifact {
            continue;
        }
        let manifest_name = format!("{name}.manifest.json");
        assert!(
            names.contains(&manifest_name),
            "{name} in {} has no manifest: {names:?}",
            dir.display()
        );
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join(&manifest_name)).expect("manifest"))
                .expect("manifest is JSON");
        assert_eq!(
            sha256_hex(&dir.join(name)),
            manifest["sha256"].as_str().expect("sha256"),
            "{name} in {} does not hash to its manifest",
            dir.display()
        );
        manifests.insert(name.clone(), manifest);
    }
    manifests
}

/// Waits until `service`'s durable consumer has nothing pending and
/// nothing unacknowledged: every message it was given is done with.
fn wait_drained(events: &Events, consumer: &str, timeout: Duration) {
    let js = events.jetstream();
    events
        .runtime
        .block_on(test_support::pipeline::wait_idle_within(
            &js, consumer, timeout,
        ));
}
