//! Property and clock tests of the pruner itself (the catalogue's own are
//! in the `catalogue` crate):
//!
//! - a forward jump of the pruner's clock (days, years) deletes no verified
//!   backup and no upload in progress, against a real remote;
//! - `PRUNE_SCHEDULE` / `PRUNE_INTERVAL` never panic, and refuse in one line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use backup_core::events::Origin;
use backup_core::manifest::{Manifest, VerificationRecord};
use backup_core::names::{ArtifactKind, ArtifactName, Compression, DatabaseName, DumpFormat};
use backup_core::sftp::SftpTarget;
use catalogue::Policy;
use chrono::{TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use test_support::sshd::Sshd;

use crate::{Schedule, Settings, prune_database};

const DB: &str = "viatique";

fn db() -> DatabaseName {
    DB.parse().expect("valid name")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes an artifact, its manifest and, when `verified`, a record that
/// matches them.
fn seed(dir: &Path, artifact: &ArtifactName, verified: bool) {
    let contents = format!("dump of {artifact}");
    write(&dir.join(artifact.as_str()), contents.as_bytes());
    let backup_id: backup_core::names::BackupId = format!("b-{}", artifact.taken_at().timestamp())
        .parse()
        .expect("valid id");
    let sha256: backup_core::names::Sha256Hex = format!("{:064x}", artifact.taken_at().timestamp())
        .parse()
        .expect("64 hex digits");
    let manifest = Manifest {
        version: 1,
        backup_id: backup_id.clone(),
        database: db(),
        artifact: artifact.clone(),
        size_bytes: contents.len() as u64,
        sha256: sha256.clone(),
        format: DumpFormat::Plain,
        compression: Compression::Gzip,
        encrypted: false,
        server_version: "15.8".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.8".into(),
        created_at: artifact.taken_at(),
        duration_ms: 1,
        trigger: "manual".into(),
        origin: Origin::default(),
        tables: BTreeMap::from([("public.t".to_owned(), 1)]),
        application: None,
    };
    write(&dir.join(artifact.manifest_name()), &manifest.encode());
    if verified {
        let record = VerificationRecord {
            version: 1,
            backup_id,
            artifact: artifact.clone(),
            sha256,
            verified_at: artifact.taken_at() + TimeDelta::minutes(5),
            checks: vec!["restore".into()],
            tables: 1,
            rows: 1,
            duration_ms: 1,
            steps_ms: BTreeMap::new(),
            skipped: Vec::new(),
        };
        write(&dir.join(artifact.verified_name()), &record.encode());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn prune_schedules_are_parsed_or_refused_in_one_line(
        cron in prop_oneof![
            any::<String>(),
            "([0-9*/,-]{1,6} ){4}[0-9*/,-]{1,6}",
            "(@daily|@hourly|off|none|OFF| )",
            "[0-9]{1,12} [0-9]{1,12} [0-9]{1,12} [0-9]{1,12} [0-9A-Za-z]{1,12}",
        ],
        interval_ms in prop::option::of(0u64..u64::MAX),
        now_s in 0i64..8_000_000_000,
        zone in prop::sample::select(&[chrono_tz::UTC, chrono_tz::Europe::Paris, chrono_tz::Pacific::Chatham][..]),
    ) {
        let interval = interval_ms.map(Duration::from_millis);
        match Schedule::parse(&cron, interval, zone) {
            Ok(schedule) => {
                let now = Utc.timestamp_opt(now_s, 0).single().expect("in range");
                if let Some(next) = schedule.next_after(now) {
                    prop_assert!(next > now, "{next} is not after {now}");
                }
            }
            Err(error) => {
                prop_assert!(!error.contains('\n'), "{error:?}");
                prop_assert!(error.chars().count() <= 800);
            }
        }
    }
}

/// The pruner with its clock (the `now` it is handed) jumped 40 days ahead,
/// against a real remote: nothing verified goes, and a `.partial` being
/// uploaded right now is not mistaken for an abandoned one.
#[test]
fn a_clock_jumped_forty_days_deletes_no_verified_backup_and_no_upload_in_flight() {
    let sshd = Sshd::start();
    let base = sshd.remote_root.join("backups");
    let dir = base.join(DB);
    std::fs::create_dir_all(&dir).expect("create the remote dir");
    let now = Utc::now();
    // A nightly backup for two weeks, all verified; one not verified yet;
    // and the upload of tonight's still running.
    let nightly: Vec<ArtifactName> = (1..=14)
        .map(|days| ArtifactName::new(&db(), now - TimeDelta::days(days), ArtifactKind::PLAIN_GZIP))
        .collect();
    for artifact in &nightly {
        seed(&dir, artifact, true);
    }
    let awaiting = ArtifactName::new(&db(), now - TimeDelta::hours(2), ArtifactKind::PLAIN_GZIP);
    seed(&dir, &awaiting, false);
    let uploading = ArtifactName::new(&db(), now - TimeDelta::minutes(1), ArtifactKind::PLAIN_GZIP);
    write(&dir.join(uploading.partial_name()), b"the first megabytes");
    sshd.hand_over(&base);

    let spool = tempfile::tempdir().expect("spool");
    let settings = Settings {
        s3: None,
        sftp: Some(SftpTarget {
            settings: test_support::pipeline::sftp_settings(&sshd),
            dir: base.display().to_string(),
        }),
        sftp2: None,
        // Two weeks of nightly backups all stay: anything deleted later is
        // the clock's doing.
        policy: Policy {
            keep_daily: 30,
            ..Policy::default()
        },
        dry_run: false,
        force: false,
        spool_dir: spool.path().to_owned(),
        spool_keep_last: 2,
        schedule: Schedule::Off,
        grace: Duration::from_secs(2),
    };
    let files = || -> BTreeSet<String> {
        std::fs::read_dir(&dir)
            .expect("list the remote dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let on_time = runtime
        .block_on(prune_database(&settings, &db(), now))
        .into_reports()
        .expect("a run on time")
        .remove(0);
    let after_on_time = files();
    assert!(
        on_time.plan.plan.delete.is_empty(),
        "two weeks of nightly backups are all within the default policy: {:?}",
        on_time.plan.plan.delete
    );
    for jump in [
        TimeDelta::days(3),
        TimeDelta::days(40),
        TimeDelta::days(3650),
    ] {
        let report = runtime
            .block_on(prune_database(&settings, &db(), now + jump))
            .into_reports()
            .unwrap_or_else(|e| panic!("a run {} days ahead: {e}", jump.num_days()))
            .remove(0);
        assert!(
            report.plan.plan.delete.is_empty(),
            "{} days ahead, the pruner deletes {:?}",
            jump.num_days(),
            report.plan.plan.delete
        );
        assert_eq!(
            files(),
            after_on_time,
            "{} days ahead, the pruner removed files (cleaned {:?})",
            jump.num_days(),
            report.cleaned
        );
    }
}
