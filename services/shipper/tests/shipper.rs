//! The shipper against real servers: `nats-server` with JetStream,
//! OpenSSH `sshd` and moto's S3 server. Each test prepares a spool the way the dumper leaves it
//! (artifact + manifest), runs the library's `run` like the binary does,
//! publishes `dump.created` and watches the events and the remote files.
//!
//! The benchmark against OpenSSH's `sftp` is here too, ignored by default:
//! `cargo test --release -p shipper --test shipper -- --ignored --nocapture benchmark`;
//! `benchmark_wan` adds rclone and the emulated WAN of `test_support::wan`,
//! `benchmark_s3` the S3 destination against `rclone copy`.

#[path = "shipper/access.rs"]
mod access;
#[path = "shipper/append_only.rs"]
mod append_only;
#[path = "shipper/binary.rs"]
mod binary;
#[path = "shipper/delivery.rs"]
mod delivery;
#[path = "shipper/outages.rs"]
mod outages;
#[path = "shipper/overlap.rs"]
mod overlap;
#[path = "shipper/resume.rs"]
mod resume;
#[path = "shipper/s3.rs"]
mod s3;
#[path = "shipper/wan.rs"]
mod wan;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup_core::bus::{Bus, NatsOptions};
use backup_core::events::{ArtifactInfo, DumpCreated, EventHeader, Origin, subject};
use backup_core::manifest::Manifest;
use backup_core::names::{ArtifactKind, ArtifactName, DatabaseName, Sha256Hex};
use backup_core::watchdog::Limits;
use remote_sftp::SftpSettings;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shipper::{Destination, Rate, Settings};
use test_support::pipeline::{EventLog, TestBus, sftp_settings};
use test_support::sshd::Sshd;

const DB: &str = "viatique";
const WAIT: Duration = Duration::from_secs(120);

/// The shipper's log lines are captured (some tests wait on them), and
/// shown on stderr as well with `SHIPPER_TEST_LOG` set.
fn log_if_asked() {
    test_support::pipeline::logs::capture(std::env::var_os("SHIPPER_TEST_LOG").is_some());
}

/// Incompressible, reproducible bytes (xorshift), so sizes mean something
/// on the wire and two seeds give two different artifacts.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes an artifact of `len` pseudo-random bytes and its manifest into
/// `spool/<db>/`, as the dumper does, and returns the matching event.
fn prepare_artifact(spool: &Path, len: usize, seed: u64, second: u32) -> DumpCreated {
    let database: DatabaseName = DB.parse().unwrap();
    let taken_at = chrono::DateTime::from_timestamp(1_780_000_000 + i64::from(second), 0).unwrap();
    let name = ArtifactName::new(&database, taken_at, ArtifactKind::PLAIN_GZIP);
    let dir = spool.join(DB);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name.as_str());
    // Written in 1 MiB pieces: benchmark files must not sit in this
    // process's memory.
    let mut hasher = Sha256::new();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        let mut left = len;
        let mut piece = 0u64;
        while left > 0 {
            let n = left.min(1 << 20);
            let bytes = pseudo_random(n, seed.wrapping_mul(1_000_003).wrapping_add(piece));
            hasher.update(&bytes);
            file.write_all(&bytes).unwrap();
            left -= n;
            piece += 1;
        }
    }
    let sha256: Sha256Hex = hex::encode(hasher.finalize()).parse().unwrap();
    let backup_id: backup_core::names::BackupId = format!("{DB}-{second}-{seed}").parse().unwrap();
    let manifest = Manifest {
        version: 1,
        backup_id: backup_id.clone(),
        database: database.clone(),
        artifact: name.clone(),
        size_bytes: len as u64,
        sha256: sha256.clone(),
        format: ArtifactKind::PLAIN_GZIP.format,
        compression: ArtifactKind::PLAIN_GZIP.compression,
        encrypted: false,
        server_version: "17.2".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 17.2".into(),
        created_at: taken_at,
        duration_ms: 1,
        trigger: "manual".into(),
        origin: Origin::default(),
        tables: BTreeMap::from([("\"public\".\"t\"".to_owned(), 3)]),
        application: None,
    };
    std::fs::write(dir.join(name.manifest_name()), manifest.encode()).unwrap();
    DumpCreated {
        header: EventHeader::now(backup_id, database),
        origin: Origin::default(),
        artifact: ArtifactInfo {
            artifact: name,
            size_bytes: len as u64,
            sha256,
        },
        duration_ms: 1,
        tables: 1,
        rows: 3,
        limits: None,
    }
}

fn sftp_destination(label: &str, sshd: &Sshd, settings: SftpSettings) -> Destination {
    Destination::Sftp {
        label: label.into(),
        dir: sshd.backups_dir().display().to_string(),
        settings,
        append_only: false,
    }
}

/// Test settings: quick alerts and retries, so waits stay short.
fn settings(spool: &Path, destinations: Vec<Destination>) -> Settings {
    let mut settings = Settings::new(spool.to_owned(), destinations);
    settings.shutdown_grace = Duration::from_secs(1);
    settings.alert_after = Duration::from_secs(1);
    settings.retry_max_delay = Duration::from_secs(2);
    settings
}

fn remote_db_dir(sshd: &Sshd) -> PathBuf {
    sshd.backups_dir().join(DB)
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Checks that `dir` holds exactly the artifact and manifest of `created`,
/// byte for byte, private.
fn assert_delivered(dir: &Path, created: &DumpCreated, spool: &Path) {
    let name = created.artifact.artifact.as_str();
    let manifest = created.artifact.artifact.manifest_name();
    assert_eq!(
        names_in(dir),
        BTreeSet::from([name.to_owned(), manifest.clone()]),
        "in {}",
        dir.display()
    );
    assert_eq!(
        sha256_file(&dir.join(name)),
        created.artifact.sha256.as_str()
    );
    assert_eq!(
        std::fs::read(dir.join(&manifest)).unwrap(),
        std::fs::read(spool.join(DB).join(&manifest)).unwrap()
    );
    assert_eq!(mode(&dir.join(name)), 0o600);
    assert_eq!(mode(&dir.join(&manifest)), 0o600);
    assert_eq!(mode(dir), 0o700);
}

/// NATS, the event log, a spool and the shipper library running in this
/// process. Derefs to its [`TestBus`] (`rig.nats`, `rig.bus`,
/// `rig.shutdown`).
struct Rig {
    test_bus: TestBus,
    log: EventLog,
    spool: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for Rig {
    type Target = TestBus;
    fn deref(&self) -> &TestBus {
        &self.test_bus
    }
}

impl Rig {
    async fn start() -> Rig {
        log_if_asked();
        let test_bus = TestBus::start("shipper-test").await;
        let log = EventLog::follow(test_bus.jetstream()).await;
        Rig {
            test_bus,
            log,
            spool: tempfile::tempdir().unwrap(),
            task: None,
        }
    }

    fn spool(&self) -> &Path {
        self.spool.path()
    }

    async fn run_shipper(&mut self, settings: Settings) {
        let bus = self.test_bus.connect("shipper").await;
        let shutdown = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move {
            shipper::run(bus, settings, shutdown).await.unwrap();
        }));
    }

    /// Publishes `dump.created` (under `msg_id`); returns its stream sequence.
    async fn publish(&self, created: &DumpCreated, msg_id: &str) -> u64 {
        self.bus
            .publish_json(subject::CREATED, msg_id, created)
            .await
            .unwrap()
    }

    /// Every event stored on `subject` so far, oldest first.
    async fn events(&self, subject: &str) -> Vec<Value> {
        self.log.sync().await;
        self.log.of(subject)
    }

    /// Waits for an event on `subject` matching `pred`.
    async fn wait_for(&self, subject: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.log.wait_event(subject, pred).await
    }

    /// Waits until the shipper has acked every message up to `seq`.
    async fn wait_acked(&self, seq: u64) {
        test_support::pipeline::wait_acked(self.jetstream(), "shipper", seq).await;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
