//! The built-in schedule on a manual clock: daylight saving, two schedulers,
//! the catch-up at start-up.

use super::*;

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
    let clock = WatchedClock::new(utc("2026-03-27T12:00:00Z"));
    for _ in 0..2 {
        tokio::spawn(schedule::run_scheduler(
            rig.bus.clone(),
            schedule.clone(),
            Arc::new(clock.clone()),
            rig.shutdown.clone(),
        ));
    }
    // Both schedulers computed their first slot and wait for it.
    clock.sleeping(2).await;
    clock.set(utc("2026-03-28T01:00:00Z"));
    rig.log
        .wait_for("the first scheduled trigger", |log| {
            !log.of(subject::TRIGGER).is_empty()
        })
        .await;
    // Both published (or found published) that slot and wait for the next.
    clock.sleeping(4).await;
    // Two days at once (a suspended machine): one trigger, for the latest slot.
    clock.set(utc("2026-03-30T06:00:00Z"));
    rig.log
        .wait_for("the second scheduled trigger", |log| {
            log.of(subject::TRIGGER).len() >= 2
        })
        .await;
    // Both handled the jump and wait again: whatever they published is
    // stored, and in the log once it has read up to the stream's end.
    clock.sleeping(6).await;
    rig.log.sync().await;
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
            application: None,
        };
        let dir = rig.spool.path().join(&db.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(artifact.manifest_name()), manifest.encode()).unwrap();
    }
    let mut settings = rig.settings(&[&stale, &fresh, &never]);
    settings.schedule = Some(Schedule::parse("0 2 * * *", "UTC").unwrap());
    let clock = WatchedClock::new(Utc::now());
    rig.run(settings, clock.clone());

    let (subject, created) = rig.log.outcome(&stale.name).await;
    assert_eq!(subject, subject::CREATED, "{created}");
    assert_eq!(created["reason"], "schedule");
    // The catch-up is over once the scheduler waits for its first slot;
    // every trigger it published is then handled when the consumer is
    // idle, and in the log once the log has read up to the stream's end.
    clock.sleeping(1).await;
    rig.wait_idle().await;
    rig.log.sync().await;
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
