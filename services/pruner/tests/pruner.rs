//! The `pruner` binary against a real OpenSSH SFTP server and a real
//! nats-server: a remote seeded with a month of back-dated backups is
//! pruned to exactly the expected set (after the brake stopped the first
//! run and a dry run listed the plan), a clock jump trips the brake, and
//! the schedule prunes every database without any event; an S3 copy under
//! Object Lock is kept while its SFTP copy is pruned.

#[path = "pruner/append_only.rs"]
mod append_only;
#[path = "pruner/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use backup_core::events::{DumpVerified, Origin};
use backup_core::manifest::{Manifest, VerificationRecord};
use backup_core::names::{
    ArtifactKind, ArtifactName, BackupId, Compression, DatabaseName, DumpFormat, Sha256Hex,
};
use chrono::{DateTime, TimeZone, Utc};
use test_support::nats::NatsServer;
use test_support::pipeline::EventLog;
use test_support::process::ServiceProcess;
use test_support::sshd::Sshd;

/// How a seeded backup looks on the remote.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Verified,
    /// Verification failed or never ran: no record.
    NoRecord,
    /// A record that does not decode.
    BadRecord,
    /// The shipper never wrote the manifest.
    NoManifest,
    /// A manifest that does not decode: its tag is unknown.
    BadManifest,
}

struct Rig {
    nats: NatsServer,
    sshd: Sshd,
    spool: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        Rig {
            nats: NatsServer::start(),
            sshd: Sshd::start(),
            spool: tempfile::tempdir().expect("spool dir"),
        }
    }

    fn base(&self) -> PathBuf {
        self.sshd.backups_dir()
    }

    fn dir(&self, database: &str) -> PathBuf {
        self.base().join(database)
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("NATS_URL", self.nats.url.clone()),
            ("RUST_LOG", "info".into()),
            ("BACKUP_SPOOL_DIR", self.spool.path().display().to_string()),
            ("BACKUP_TZ", "Europe/Paris".into()),
            ("PRUNE_SCHEDULE", "off".into()),
            ("SHUTDOWN_GRACE", "2s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.sshd.sftp_env(&self.base()))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    fn spawn_pruner(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let pruner = ServiceProcess::spawn("pruner", &[], &self.env(extra));
        assert!(
            pruner.wait_for_log("waiting for work", Duration::from_secs(120)),
            "pruner did not start:\n{}",
            pruner.log()
        );
        pruner
    }

    /// Files written as root are handed to the SFTP user, as if uploaded.
    fn hand_over_to_sftp_user(&self) {
        self.sshd.hand_over(&self.base());
    }
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn sha_of(artifact: &ArtifactName) -> Sha256Hex {
    format!("{:064x}", artifact.taken_at().timestamp())
        .parse()
        .unwrap()
}

/// Writes an artifact and the sidecars its state calls for; returns its name.
fn seed(
    dir: &Path,
    database: &str,
    taken_at: DateTime<Utc>,
    state: State,
    tag: Option<&str>,
) -> ArtifactName {
    std::fs::create_dir_all(dir).unwrap();
    let database: DatabaseName = database.parse().unwrap();
    let artifact = ArtifactName::new(&database, taken_at, ArtifactKind::PLAIN_GZIP);
    let contents = format!("compressed dump of {artifact}");
    std::fs::write(dir.join(artifact.as_str()), &contents).unwrap();
    let backup_id: BackupId = format!("b-{}", taken_at.format("%Y%m%dT%H%M%SZ"))
        .parse()
        .unwrap();
    let manifest = Manifest {
        version: 1,
        backup_id: backup_id.clone(),
        database,
        artifact: artifact.clone(),
        size_bytes: contents.len() as u64,
        sha256: sha_of(&artifact),
        format: DumpFormat::Plain,
        compression: Compression::Gzip,
        encrypted: false,
        server_version: "17.2".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 17.2".into(),
        created_at: taken_at,
        duration_ms: 1200,
        trigger: "schedule".into(),
        origin: Origin {
            tag: tag.map(|t| t.parse().unwrap()),
            ..Origin::default()
        },
        tables: BTreeMap::from([("public.copy".to_owned(), 5000)]),
        application: None,
    };
    match state {
        State::NoManifest => return artifact,
        State::BadManifest => {
            std::fs::write(dir.join(artifact.manifest_name()), b"{ truncated").unwrap();
            return artifact;
        }
        _ => std::fs::write(dir.join(artifact.manifest_name()), manifest.encode()).unwrap(),
    }
    // Through JSON so that fields other stages add (with defaults) do not
    // break this seed.
    let record: VerificationRecord = serde_json::from_value(serde_json::json!({
        "version": 1,
        "backup_id": backup_id,
        "artifact": artifact,
        "sha256": sha_of(&artifact),
        "verified_at": taken_at + chrono::TimeDelta::minutes(20),
        "checks": ["sha256", "restore", "row counts"],
        "tables": 1,
        "rows": 5000,
        "duration_ms": 9000,
    }))
    .expect("a valid verification record");
    match state {
        State::Verified => {
            std::fs::write(dir.join(artifact.verified_name()), record.encode()).unwrap()
        }
        State::BadRecord => std::fs::write(dir.join(artifact.verified_name()), b"null").unwrap(),
        _ => {}
    }
    artifact
}

fn touch(path: &Path, age: Duration) {
    std::fs::write(path, b"half an upload").unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// An artifact with the sidecars it was seeded with.
fn with_sidecars(dir: &Path, artifact: &ArtifactName) -> Vec<String> {
    [
        artifact.to_string(),
        artifact.manifest_name(),
        artifact.verified_name(),
    ]
    .into_iter()
    .filter(|name| dir.join(name).exists())
    .collect()
}

struct Events {
    js: async_nats::jetstream::Context,
}

impl Events {
    async fn connect(url: &str) -> Events {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        Events {
            js: async_nats::jetstream::new(client),
        }
    }

    /// Tells the pruner that `artifact` was verified.
    async fn verified(&self, backup_id: &str, artifact: &ArtifactName) {
        let event: DumpVerified = serde_json::from_value(serde_json::json!({
            "version": 1,
            "backup_id": backup_id,
            "database": artifact.database(),
            "occurred_at": Utc::now(),
            "artifact": artifact,
            "size_bytes": 42,
            "sha256": sha_of(artifact),
            "checks": ["restore"],
            "tables": 1,
            "rows": 5000,
            "duration_ms": 9000,
        }))
        .expect("a valid dump.verified");
        self.js
            .publish("dump.verified", serde_json::to_vec(&event).unwrap().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Waits for an event on `subject` whose backup id passes `wanted`,
    /// reading the stream from its start.
    async fn wait(&self, subject: &str, wanted: impl Fn(&str) -> bool) -> serde_json::Value {
        EventLog::follow(&self.js)
            .await
            .wait_event(subject, |event| {
                wanted(event["backup_id"].as_str().unwrap_or_default())
            })
            .await
    }
}

fn names(event: &serde_json::Value, field: &str) -> BTreeSet<String> {
    event[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is not an array: {event}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn strings(artifacts: &[&ArtifactName]) -> BTreeSet<String> {
    artifacts.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_of_backups_is_pruned_to_exactly_the_expected_set() {
    let rig = Rig::start();
    let dir = rig.dir("viatique");
    let db = "viatique";

    // Every night at 01:30 UTC in March 2025; two nights did not verify.
    let mut nightly = BTreeMap::new();
    for day in 1..=31 {
        let state = match day {
            20 => State::NoRecord,
            12 => State::BadRecord,
            _ => State::Verified,
        };
        nightly.insert(day, seed(&dir, db, at(2025, 3, day, 1, 30), state, None));
    }
    let pre_deploy = seed(
        &dir,
        db,
        at(2025, 3, 5, 15, 0),
        State::Verified,
        Some("pre-deploy"),
    );
    // 30 March 00:30 in Paris: the 30 March bucket, where the 01:30 UTC
    // backup is newer. In UTC it would be the newest of 29 March instead.
    let late_evening = seed(&dir, db, at(2025, 3, 29, 23, 30), State::Verified, None);
    let pending = seed(&dir, db, at(2025, 3, 31, 13, 0), State::NoRecord, None);
    let never_shipped = seed(&dir, db, at(2025, 3, 14, 10, 0), State::NoManifest, None);
    let unreadable = seed(&dir, db, at(2025, 3, 10, 10, 0), State::BadManifest, None);
    // Left by an interrupted delete and by abandoned uploads.
    let orphans = [
        "viatique_20250210_013000.sql.gz.manifest.json",
        "viatique_20250210_013000.sql.gz.verified.json",
    ];
    for orphan in orphans {
        std::fs::write(dir.join(orphan), b"{}").unwrap();
    }
    touch(
        &dir.join("viatique_20250331_140000.sql.gz.partial"),
        Duration::from_secs(3 * 24 * 3600),
    );
    touch(
        &dir.join("viatique_20250331_150000.sql.gz.manifest.json.partial"),
        Duration::from_secs(3 * 24 * 3600),
    );
    touch(
        &dir.join("viatique_20250331_160000.sql.gz.partial"),
        Duration::from_secs(60),
    );
    // Not ours: never touched.
    let foreign = [
        "notes.txt",
        "viatique_20250301_013000.sql.gz.bak",
        "other_20250301_013000.sql.gz",
        "other_20250301_013000.sql.gz.manifest.json",
        "viatique_20250301_013000.sql.gz.partial.old",
    ];
    for name in foreign {
        std::fs::write(dir.join(name), b"someone else's").unwrap();
    }
    rig.hand_over_to_sftp_user();

    // The local spool: the newest (not shipped yet), then copies of what
    // the remote holds, one of them with a different size.
    let spool = rig.spool.path().join(db);
    std::fs::create_dir_all(&spool).unwrap();
    let unshipped = ArtifactName::new(
        &db.parse().unwrap(),
        at(2025, 4, 1, 1, 30),
        ArtifactKind::PLAIN_GZIP,
    );
    std::fs::write(spool.join(unshipped.as_str()), b"not shipped yet").unwrap();
    for day in [1, 28, 29, 30, 31] {
        let artifact = &nightly[&day];
        std::fs::copy(dir.join(artifact.as_str()), spool.join(artifact.as_str())).unwrap();
        std::fs::copy(
            dir.join(artifact.manifest_name()),
            spool.join(artifact.manifest_name()),
        )
        .unwrap();
    }
    std::fs::write(spool.join(nightly[&28].as_str()), b"a different size").unwrap();
    let spool_before = files_in(&spool);

    let kept: Vec<&ArtifactName> = [16, 23, 25, 26, 27, 28, 29, 30, 31]
        .iter()
        .map(|d| &nightly[d])
        .chain([&pre_deploy, &pending, &unreadable])
        .collect();
    let all: Vec<&ArtifactName> = nightly
        .values()
        .chain([
            &pre_deploy,
            &late_evening,
            &pending,
            &never_shipped,
            &unreadable,
        ])
        .collect();
    let deleted: Vec<&ArtifactName> = all.iter().copied().filter(|a| !kept.contains(a)).collect();
    assert_eq!((all.len(), kept.len(), deleted.len()), (36, 12, 24));
    assert!(deleted.contains(&&late_evening) && deleted.contains(&&nightly[&20]));

    let seeded = files_in(&dir);
    let events = Events::connect(&rig.nats.url).await;
    let newest = &nightly[&31];

    // 1. A first run would delete 24 of 36: the brake stops it.
    let mut pruner = rig.spawn_pruner(&[]);
    events.verified("month-1", newest).await;
    let failed = events.wait("dump.failed", |id| id == "prune-month-1").await;
    assert_eq!(failed["stage"], "prune");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("refusing to delete 24 of 36 backups of viatique"),
        "{error}"
    );
    assert_eq!(failed["will_retry"], false);
    assert_eq!(files_in(&dir), seeded, "the brake deleted something");
    assert_eq!(files_in(&spool), spool_before);
    pruner.terminate(Duration::from_secs(10));

    // 2. The dry run lists what would go and why, and deletes nothing.
    let mut pruner = rig.spawn_pruner(&[("RETENTION_DRY_RUN", "true")]);
    events.verified("month-2", newest).await;
    let dry = events.wait("dump.pruned", |id| id == "month-2").await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(names(&dry, "deleted"), strings(&deleted));
    assert_eq!(names(&dry, "kept"), strings(&kept));
    let reasons = &dry["kept_reasons"];
    assert_eq!(
        reasons[newest.as_str()],
        serde_json::json!([
            "newest verified",
            "daily 2025-03-31",
            "weekly 2025-W14",
            "monthly 2025-03"
        ])
    );
    assert_eq!(
        reasons[nightly[&30].as_str()],
        serde_json::json!(["daily 2025-03-30", "weekly 2025-W13"])
    );
    assert_eq!(
        reasons[pre_deploy.as_str()],
        serde_json::json!(["tag pre-deploy"])
    );
    assert_eq!(
        reasons[pending.as_str()],
        serde_json::json!(["awaiting verification"])
    );
    assert!(
        reasons[unreadable.as_str()][0]
            .as_str()
            .unwrap()
            .starts_with("held: manifest unreadable")
    );
    assert!(pruner.wait_for_log("would delete", Duration::from_secs(10)));
    assert!(
        pruner
            .log()
            .contains("never verified, older than the newest verified backup")
    );
    assert_eq!(files_in(&dir), seeded, "the dry run deleted something");
    assert_eq!(files_in(&spool), spool_before);
    pruner.terminate(Duration::from_secs(10));

    // 3. The operator lifts the brake for one run.
    let mut pruner = rig.spawn_pruner(&[("RETENTION_FORCE", "true")]);
    events.verified("month-3", newest).await;
    let pruned = events.wait("dump.pruned", |id| id == "month-3").await;
    assert_eq!(pruned["dry_run"], false);
    // One event per database and destination, naming the destination as
    // dump.shipped does.
    assert_eq!(
        pruned["destination"],
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            rig.sshd.user,
            rig.sshd.port,
            rig.base().display()
        )
    );
    assert_eq!(names(&pruned, "deleted"), strings(&deleted));
    assert_eq!(names(&pruned, "kept"), strings(&kept));
    pruner.terminate(Duration::from_secs(10));

    let mut expected: BTreeSet<String> = BTreeSet::new();
    for artifact in &kept {
        let sidecars: Vec<String> = [
            artifact.to_string(),
            artifact.manifest_name(),
            artifact.verified_name(),
        ]
        .into_iter()
        .filter(|name| seeded.contains(name))
        .collect();
        expected.extend(sidecars);
    }
    expected.extend(foreign.iter().map(|s| (*s).to_owned()));
    expected.insert("viatique_20250331_160000.sql.gz.partial".into());
    assert_eq!(files_in(&dir), expected);
    assert_eq!(with_sidecars(&dir, newest).len(), 3);

    // Spool: the two newest stay (one not even shipped), the copy whose
    // size differs from the remote stays, shipped older ones go.
    let mut spool_expected = BTreeSet::from([unshipped.to_string()]);
    for day in [28, 31] {
        spool_expected.insert(nightly[&day].to_string());
        spool_expected.insert(nightly[&day].manifest_name());
    }
    assert_eq!(files_in(&spool), spool_expected);

    // 4. Running again changes nothing, and the brake has nothing to stop.
    let mut pruner = rig.spawn_pruner(&[]);
    events.verified("month-4", newest).await;
    let again = events.wait("dump.pruned", |id| id == "month-4").await;
    assert!(names(&again, "deleted").is_empty());
    assert_eq!(names(&again, "kept"), strings(&kept));
    assert_eq!(files_in(&dir), expected);
    pruner.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_jump_trips_the_brake() {
    let rig = Rig::start();
    let dir = rig.dir("viatique");
    // Steady state of a two-week window.
    let history: Vec<ArtifactName> = (17..=31)
        .map(|d| {
            seed(
                &dir,
                "viatique",
                at(2025, 3, d, 1, 30),
                State::Verified,
                None,
            )
        })
        .collect();
    rig.hand_over_to_sftp_user();
    let policy = [
        ("RETENTION_KEEP_WITHIN", "14d"),
        ("RETENTION_KEEP_DAILY", "0"),
        ("RETENTION_KEEP_WEEKLY", "0"),
        ("RETENTION_KEEP_MONTHLY", "0"),
    ];
    let events = Events::connect(&rig.nats.url).await;
    let mut pruner = rig.spawn_pruner(&policy);
    events.verified("steady", &history[14]).await;
    let steady = events.wait("dump.pruned", |id| id == "steady").await;
    assert!(names(&steady, "deleted").is_empty(), "{steady}");

    // The database server's clock jumped a month ahead: its backup is
    // named (and verified) as of 1 May, and 14 days before that nothing
    // else exists.
    let jumped = seed(
        &dir,
        "viatique",
        at(2025, 5, 1, 1, 30),
        State::Verified,
        None,
    );
    rig.hand_over_to_sftp_user();
    let before = files_in(&dir);
    events.verified("jumped", &jumped).await;
    let failed = events.wait("dump.failed", |id| id == "prune-jumped").await;
    assert_eq!(failed["stage"], "prune");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("refusing to delete 13 of 16 backups of viatique")
            && error.contains("viatique_20250501_013000.sql.gz")
            && error.contains("RETENTION_FORCE"),
        "{error}"
    );
    assert_eq!(files_in(&dir), before, "the brake deleted something");
    pruner.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_prunes_every_database_without_an_event() {
    let rig = Rig::start();
    let mut failed_nights = Vec::new();
    for database in ["viatique", "korrigo_media"] {
        let dir = rig.dir(database);
        for day in 1..=4 {
            seed(
                &dir,
                database,
                at(2025, 3, day, 1, 30),
                State::Verified,
                None,
            );
        }
        failed_nights.push(seed(
            &dir,
            database,
            at(2025, 3, 2, 12, 0),
            State::NoRecord,
            None,
        ));
    }
    // A directory whose name is not a database name is not visited.
    std::fs::create_dir_all(rig.base().join("lost+found")).unwrap();
    rig.hand_over_to_sftp_user();
    let events = Events::connect(&rig.nats.url).await;
    let mut pruner = rig.spawn_pruner(&[("PRUNE_INTERVAL", "1s")]);
    for failed in &failed_nights {
        let database = failed.database().to_string();
        let prefix = format!("prune-{database}-");
        let pruned = events
            .wait("dump.pruned", |id| id.starts_with(&prefix))
            .await;
        assert_eq!(pruned["database"], database.as_str());
        assert_eq!(names(&pruned, "deleted"), strings(&[failed]));
        assert!(!rig.dir(&database).join(failed.as_str()).exists());
        assert_eq!(files_in(&rig.dir(&database)).len(), 4 * 3);
    }
    pruner.terminate(Duration::from_secs(10));
}
