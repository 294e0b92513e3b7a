//! Formats, compression and encryption, restored with the standard tools;
//! the globals and the media archive.

use super::*;

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
