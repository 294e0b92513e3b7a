//! The shipper against real servers: `nats-server` with JetStream and
//! OpenSSH `sshd`. Each test prepares a spool the way the dumper leaves it
//! (artifact + manifest), runs the library's `run` like the binary does,
//! publishes `dump.created` and watches the events and the remote files.
//!
//! The benchmark against OpenSSH's `sftp` is here too, ignored by default:
//! `cargo test --release -p shipper --test shipper -- --ignored --nocapture benchmark`

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use backup_core::bus::{Bus, NatsOptions};
use backup_core::events::{ArtifactInfo, DumpCreated, EventHeader, Origin, subject};
use backup_core::manifest::Manifest;
use backup_core::names::{ArtifactKind, ArtifactName, DatabaseName, Sha256Hex};
use backup_core::watchdog::Limits;
use futures::StreamExt;
use remote_sftp::SftpSettings;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shipper::{Destination, Rate, Settings};
use test_support::nats::NatsServer;
use test_support::sshd::Sshd;
use tokio_util::sync::CancellationToken;

const DB: &str = "viatique";
const WAIT: Duration = Duration::from_secs(120);

fn log_if_asked() {
    if std::env::var_os("SHIPPER_TEST_LOG").is_some() {
        backup_core::telemetry::init(backup_core::config::LogFormat::Text);
    }
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

fn sftp_settings(sshd: &Sshd) -> SftpSettings {
    SftpSettings {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        key_file: sshd.client_key.clone(),
        key_passphrase: None,
        known_hosts: Some(sshd.known_hosts.clone()),
        host_key_fingerprint: None,
        connect_timeout: Duration::from_secs(20),
        io_timeout: Duration::from_secs(20),
    }
}

fn sftp_destination(label: &str, sshd: &Sshd, settings: SftpSettings) -> Destination {
    Destination::Sftp {
        label: label.into(),
        dir: sshd.remote_root.join("backups").display().to_string(),
        settings,
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
    sshd.remote_root.join("backups").join(DB)
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

/// NATS, a spool and the shipper library running in this process.
struct Rig {
    nats: NatsServer,
    js: jetstream::Context,
    bus: Bus,
    spool: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Rig {
    async fn start() -> Rig {
        log_if_asked();
        let nats = NatsServer::start();
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&NatsOptions::local(&nats.url), "shipper-test", &shutdown)
            .await
            .unwrap();
        bus.ensure_stream().await.unwrap();
        let js = bus.jetstream().clone();
        Rig {
            nats,
            js,
            bus,
            spool: tempfile::tempdir().unwrap(),
            shutdown,
            task: None,
        }
    }

    fn spool(&self) -> &Path {
        self.spool.path()
    }

    async fn run_shipper(&mut self, settings: Settings) {
        let bus = Bus::connect(
            &NatsOptions::local(&self.nats.url),
            "shipper",
            &self.shutdown,
        )
        .await
        .unwrap();
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

    /// Every event stored on `subject`, oldest first.
    async fn events(&self, subject: &str) -> Vec<Value> {
        let stream = self.js.get_stream("BACKUPS").await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.into(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return out;
        }
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(pending).unwrap())
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            out.push(serde_json::from_slice(&message.unwrap().payload).unwrap());
        }
        out
    }

    /// Waits for an event on `subject` matching `pred`.
    async fn wait_for(&self, subject: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.events(subject).await.into_iter().find(&pred) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching {subject} within {WAIT:?}; dump.failed so far: {:?}",
                self.events(subject::FAILED).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the shipper has acked every message up to `seq`.
    async fn wait_acked(&self, seq: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let stream = self.js.get_stream("BACKUPS").await.unwrap();
            if let Ok(info) = stream.consumer_info("shipper").await
                && info.ack_floor.stream_sequence >= seq
                && info.num_ack_pending == 0
            {
                return;
            }
            assert!(Instant::now() < deadline, "message {seq} never acked");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

#[tokio::test(flavor = "multi_thread")]
async fn ships_once_cleans_stale_partials_and_answers_a_redelivery_without_uploading() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 3 << 20, 1, 0);
    // Left by a shipper killed mid-upload: a .partial of this artifact, one
    // of an older one and one of its manifest. The verifier's temporary
    // record is not ours to remove.
    let remote = remote_db_dir(&sshd);
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o700)).unwrap();
    let name = created.artifact.artifact.as_str();
    let stale = [
        format!("{name}.partial"),
        format!("{DB}_20200101_000000.sql.gz.partial"),
        format!("{DB}_20200101_000000.sql.gz.manifest.json.partial"),
    ];
    for file in &stale {
        std::fs::write(remote.join(file), b"half").unwrap();
    }
    let foreign = format!("{DB}_20200101_000000.sql.gz.verified.json.partial");
    std::fs::write(remote.join(&foreign), b"verifier").unwrap();
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
    std::fs::remove_file(remote.join(&foreign)).unwrap();
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
async fn outage_is_reported_once_and_ships_when_sshd_returns_without_a_new_trigger() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1 << 20, 5, 0);
    sshd.stop();
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    ))
    .await;
    rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    assert_eq!(failed["stage"], "ship");
    assert_eq!(failed["will_retry"], true);
    assert_eq!(failed["artifact"], created.artifact.artifact.as_str());
    let error = failed["error"].as_str().unwrap();
    assert!(
        !error.contains('\n') && error.contains("connect"),
        "{error}"
    );

    // Let several retries (at most 2 s apart) fail: none is reported again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    sshd.restart();
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_horizon_with_a_final_report() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1000, 6, 0);
    sshd.stop();
    let mut settings = settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    );
    settings.retry_horizon = Duration::from_secs(6);
    rig.run_shipper(settings).await;
    let seq = rig.publish(&created, "created").await;
    let last = rig
        .wait_for(subject::FAILED, |e| e["will_retry"] == false)
        .await;
    rig.wait_acked(seq).await;
    assert!(
        last["error"].as_str().unwrap().contains("gave up after"),
        "{last}"
    );
    let failed = rig.events(subject::FAILED).await;
    let retrying: Vec<&Value> = failed.iter().filter(|e| e["will_retry"] == true).collect();
    assert_eq!(retrying.len(), 1, "{failed:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_killed_mid_upload_leaves_no_final_name_and_the_upload_is_retried() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 24 << 20, 7, 0);
    let mut settings = settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    );
    // About 6 s of upload: long enough to be caught in the middle.
    settings.bandwidth_limit = Some("4MiB/s".parse::<Rate>().unwrap());
    rig.run_shipper(settings).await;
    rig.publish(&created, "created").await;

    let remote = remote_db_dir(&sshd);
    let name = created.artifact.artifact.as_str();
    let partial = remote.join(format!("{name}.partial"));
    test_support::wait_until(WAIT, "the upload to start", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > (1 << 20))
    });
    sshd.stop();
    let sent = std::fs::metadata(&partial).unwrap().len();
    assert!(sent < 24 << 20, "caught too late: {sent} bytes");
    assert!(
        !remote.join(name).exists(),
        "a final name before completion"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!remote.join(name).exists(), "a final name after the kill");
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    sshd.restart();
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote, &created, rig.spool());
}

/// Parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pids of the processes running as `user` below `listener`: with
/// privilege separation, the post-authentication half of each sshd session
/// (`sshd: user@...`, which speaks SSH and runs internal-sftp). A process of
/// the user that is not below the listener (reparented after its session
/// ended) is not one of them.
fn session_pids(user: &str, listener: u32) -> Vec<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-u", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| {
            std::iter::successors(parent_of(pid), |&p| parent_of(p))
                .take(8)
                .any(|ancestor| ancestor == listener)
        })
        .collect()
}

fn signal(signal: &str, pid: u32) {
    // `kill -STOP 0` would stop the test's own process group (cargo
    // included): only ever signal a real process.
    assert!(pid > 1, "refusing to send {signal} to pid {pid}");
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_that_stops_reading_mid_upload_is_aborted_by_the_watchdog_then_shipped() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let size = 16usize << 20;
    let created = prepare_artifact(rig.spool(), size, 11, 0);
    let mut sftp = sftp_settings(&sshd);
    // Far above the stall interval (keepalives give up after half of it):
    // the abort must come from the watchdog, not from the SFTP client.
    sftp.io_timeout = Duration::from_secs(120);
    let mut settings = settings(rig.spool(), vec![sftp_destination("sftp", &sshd, sftp)]);
    // About 8 s of upload: long enough to be caught in the middle.
    settings.bandwidth_limit = Some("2MiB/s".parse::<Rate>().unwrap());
    settings.limits = Limits::new(Duration::from_secs(3), Duration::from_secs(3600));
    let described = settings.destinations[0].describe();
    rig.run_shipper(settings).await;
    rig.publish(&created, "created").await;

    let remote = remote_db_dir(&sshd);
    let name = created.artifact.artifact.as_str();
    let partial = remote.join(format!("{name}.partial"));
    test_support::wait_until(WAIT, "the upload to start", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > (1 << 20))
    });
    // The session process stops: the TCP connection stays up, nothing is
    // read or answered any more. The listener is stopped too, so that no
    // retry gets through while the test looks at the remote.
    let listener = sshd.listener_pid().expect("sshd is running");
    let stopped = session_pids(&sshd.user, listener);
    assert!(!stopped.is_empty(), "no session process of {}", sshd.user);
    signal("-STOP", listener);
    for &pid in &stopped {
        signal("-STOP", pid);
    }

    let failed = rig
        .wait_for(subject::FAILED, |e| e["aborted"].is_object())
        .await;
    assert_eq!(failed["stage"], "ship", "{failed:#}");
    assert_eq!(failed["will_retry"], true, "{failed:#}");
    assert_eq!(failed["destination"], described.as_str());
    let aborted = &failed["aborted"];
    assert_eq!(aborted["step"], "upload", "{failed:#}");
    assert_eq!(aborted["reason"], "stalled", "{failed:#}");
    assert_eq!(aborted["stall_after_s"], 3, "{failed:#}");
    assert_eq!(aborted["deadline_s"], 3600, "{failed:#}");
    let bytes = aborted["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < size as u64, "{failed:#}");
    assert_eq!(
        failed["error"],
        format!("upload to {described} stalled: no progress for 3s after {bytes} bytes; aborted"),
    );
    // Not renamed: the final name never appears for an incomplete upload.
    assert!(!remote.join(name).exists(), "a final name after the abort");
    let left = std::fs::metadata(&partial).unwrap().len();
    assert!(left < size as u64, "{left} bytes");
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    // The stopped session goes away (as a hung one would be reaped by the
    // server's own timeouts), the listener comes back, and the retry cleans
    // the stale .partial and ships.
    for &pid in &stopped {
        signal("-KILL", pid);
    }
    signal("-CONT", listener);
    let shipped = rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_eq!(
        shipped["limits"],
        serde_json::json!({"stall_after_s": 3, "deadline_s": 3600})
    );
    assert_delivered(&remote, &created, rig.spool());
    // One alert for the incident, however many attempts stalled meanwhile.
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
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
    // Acked at once: no retry, no second report.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
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

#[test]
fn binary_documents_its_destinations_and_rejects_incomplete_ones_in_one_line() {
    let bin = test_support::process::workspace_bin("shipper");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "SFTP_HOST",
        "SHIP_SFTP2_HOST",
        "SHIP_SFTP2_KEY_PASSPHRASE",
        "SHIP_LOCAL_DIR",
        "SHIP_BANDWIDTH_LIMIT",
        "SHIP_RETRY_HORIZON",
        "SHIP_ALERT_AFTER",
        "SHIP_STALL_TIMEOUT",
        "SHIP_DEADLINE",
    ] {
        assert!(help.contains(variable), "--help lacks {variable}:\n{help}");
    }

    let files = tempfile::tempdir().unwrap();
    let key = files.path().join("key");
    let known_hosts = files.path().join("known_hosts");
    std::fs::write(&key, "not checked before NATS").unwrap();
    std::fs::write(&known_hosts, "").unwrap();
    let run = |extra: &[(&str, &str)]| {
        let output = std::process::Command::new(&bin)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("SFTP_HOST", "127.0.0.1")
            .env("SFTP_USER", "backup")
            .env("SFTP_DIR", "/backups")
            .env("SFTP_KEY_FILE", &key)
            .env("SFTP_KNOWN_HOSTS", &known_hosts)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        // The cause comes as one line, from clap (`error: ...`) or from
        // the binary (`shipper: ...`, after its log line).
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        stderr
            .lines()
            .find(|l| l.starts_with("shipper: ") || l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no one-line cause in:\n{stderr}"))
            .to_owned()
    };
    let error = run(&[("SHIP_SFTP2_HOST", "nas.example")]);
    assert!(error.contains("SHIP_SFTP2_USER"), "{error}");
    let error = run(&[
        ("SHIP_SFTP2_HOST", "nas.example"),
        ("SHIP_SFTP2_USER", "u"),
        ("SHIP_SFTP2_DIR", "/b"),
        ("SHIP_SFTP2_KEY_FILE", key.to_str().unwrap()),
    ]);
    assert!(error.contains("SHIP_SFTP2_KNOWN_HOSTS"), "{error}");
    let error = run(&[("SHIP_ALERT_AFTER", "5m")]);
    assert!(error.contains("SHIP_ALERT_AFTER"), "{error}");
    let error = run(&[("SHIP_BANDWIDTH_LIMIT", "fast")]);
    assert!(error.contains("fast"), "{error}");
    let error = run(&[("SHIP_STALL_TIMEOUT", "0s")]);
    assert!(error.contains("SHIP_STALL_TIMEOUT"), "{error}");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Uploads the same files with the shipper binary (through NATS, like in
/// production) and with OpenSSH's `sftp put` to the same sshd, and prints
/// throughput, ratio and the shipper's peak RSS. Sizes in MB (10^6 bytes)
/// from `SHIP_BENCH_SIZES_MB`, default `250,1200`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: slow, run by hand with --release"]
async fn benchmark_against_openssh_sftp() {
    let sizes: Vec<usize> = std::env::var("SHIP_BENCH_SIZES_MB")
        .unwrap_or_else(|_| "250,1200".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let started = Instant::now();
    let rig = Rig::start().await;
    let sshd = Sshd::start();
    eprintln!("servers up after {:?}", started.elapsed());
    let env: Vec<(String, String)> = [
        ("NATS_URL", rig.nats.url.clone()),
        ("RUST_LOG", "info".into()),
        ("BACKUP_SPOOL_DIR", rig.spool().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(sshd.sftp_env(&sshd.remote_root.join("backups")))
    .collect();
    let service = test_support::ServiceProcess::spawn("shipper", &[], &env);
    assert!(
        service.wait_for_log("waiting for work", Duration::from_secs(60)),
        "{}",
        service.log()
    );

    let openssh_put = |local: &Path, remote: &Path, cipher: Option<&str>| {
        let elapsed = sshd.openssh_sftp(
            &format!("put {} {}", local.display(), remote.display()),
            cipher,
        );
        std::fs::remove_file(remote).unwrap();
        elapsed
    };

    let mut rows = Vec::new();
    for (i, mb) in sizes.iter().enumerate() {
        let created = prepare_artifact(rig.spool(), mb * 1_000_000, 100 + i as u64, i as u32);
        let local = rig
            .spool()
            .join(DB)
            .join(created.artifact.artifact.as_str());
        let name = created.artifact.artifact.to_string();
        rig.publish(&created, &format!("bench-{i}")).await;
        let shipped = rig
            .wait_for(subject::SHIPPED, |e| e["artifact"] == name.as_str())
            .await;
        // Connect, checks, upload, fsync, rename and manifest, as timed by
        // the shipper itself.
        let ours = Duration::from_millis(shipped["duration_ms"].as_u64().unwrap());
        let remote = sshd.remote_root.join("openssh.bin");
        let theirs = openssh_put(&local, &remote, None);
        let theirs_gcm = openssh_put(&local, &remote, Some("aes128-gcm@openssh.com"));
        let rate = |d: Duration| (mb * 1_000_000) as f64 / d.as_secs_f64() / 1e6;
        rows.push(format!(
            "| {mb} MB | {:.0} MB/s | {:.0} MB/s | {:.2} | {:.0} MB/s | {:.2} |",
            rate(ours),
            rate(theirs),
            rate(ours) / rate(theirs),
            rate(theirs_gcm),
            rate(ours) / rate(theirs_gcm),
        ));
        std::fs::remove_file(&local).unwrap();
        std::fs::remove_file(remote_db_dir(&sshd).join(&name)).unwrap();
    }
    let rss = peak_rss_kib(service.pid());
    eprintln!(
        "\n| file | shipper | OpenSSH sftp put (default cipher) | ratio | OpenSSH sftp put (aes128-gcm) | ratio |\n\
         | --- | --- | --- | --- | --- | --- |\n{}\n\nshipper peak RSS (VmHWM): {:.1} MiB",
        rows.join("\n"),
        rss as f64 / 1024.0
    );
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
