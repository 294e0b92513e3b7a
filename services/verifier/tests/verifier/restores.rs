//! Artifacts that restore: every feature, plain and encrypted custom
//! format; the globals and the media archive.

use super::*;

#[test]
fn every_feature_restores_from_plain_and_from_encrypted_custom_format() {
    let work = tempfile::tempdir().unwrap();
    let identity = work.path().join("age.key");
    sh(
        "age-keygen -o \"$KEY\" 2>/dev/null",
        &[("KEY", identity.to_str().unwrap())],
    );
    let rig = Rig::start(Options {
        age_identity: Some(identity.clone()),
        sql_checks: Some(
            "-- every copy has an exam\n\
             SELECT NOT EXISTS (SELECT 1 FROM grading.copy c LEFT JOIN grading.exam e ON e.id = c.exam_id WHERE e.id IS NULL);\n\
             -- generated totals survived\n\
             SELECT bool_and(total = raw + bonus) FROM grading.copy;\n\
             -- row-level security is on\n\
             SELECT relrowsecurity FROM pg_class WHERE oid = 'grading.copy'::regclass;\n",
        ),
        ..NO_OPTIONS
    });
    let (source, plain, custom, extras) = feature_source(work.path());
    let db = source.name.clone();

    // Plain, gzip.
    let plain_name = artifact_name(&db, "sql.gz");
    let plain_gz = work.path().join(&plain_name);
    sh(
        "gzip -c \"$IN\" > \"$OUT\"",
        &[
            ("IN", plain.to_str().unwrap()),
            ("OUT", plain_gz.to_str().unwrap()),
        ],
    );
    let mut manifest = manifest_for(Some(&source), &db, &plain_name, &plain_gz);
    for key in ["large_objects", "sequences", "materialized_views"] {
        manifest[key] = extras[key].clone();
    }
    let backup_id = rig.ship(&db, &plain_gz, &manifest);
    let (subject, verified) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{verified:#}");
    let checks = verified["checks"].to_string();
    for needle in [
        "sha256",
        "restore with psql",
        "exact row counts of 5 tables",
        "3 large object(s), as in the manifest",
        "with the manifest's last_value",
        "1 materialized view(s), 1 populated",
        "every copy has an exam",
        "extensions created: pgcrypto",
    ] {
        assert!(checks.contains(needle), "{needle} missing from {checks}");
    }
    let skipped = verified["skipped"].to_string();
    assert!(skipped.contains("ownership statement"), "{skipped}");
    assert!(skipped.contains("privilege statement"), "{skipped}");
    assert!(skipped.contains("own copies: korrigo_app_"), "{skipped}");
    assert!(verified["steps_ms"]["restore"].is_u64(), "{verified:#}");
    let record_path = rig
        .remote_base()
        .join(&db)
        .join(format!("{plain_name}.verified.json"));
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["sha256"], manifest["sha256"]);

    // Custom format, gzip, age-encrypted, restored with pg_restore -j.
    let custom_name = artifact_name(&db, "dump.gz.age");
    let custom_age = work.path().join(&custom_name);
    sh(
        "gzip -c \"$IN\" | age -r \"$(age-keygen -y \"$KEY\")\" > \"$OUT\"",
        &[
            ("IN", custom.to_str().unwrap()),
            ("KEY", identity.to_str().unwrap()),
            ("OUT", custom_age.to_str().unwrap()),
        ],
    );
    let mut manifest = manifest_for(Some(&source), &db, &custom_name, &custom_age);
    manifest["large_objects"] = extras["large_objects"].clone();
    let backup_id = rig.ship(&db, &custom_age, &manifest);
    let (subject, verified) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{verified:#}");
    let checks = verified["checks"].to_string();
    for needle in [
        "age decryption",
        "pg_restore --exit-on-error --no-owner --no-privileges -j 2",
        "exact row counts of 5 tables",
        "3 large object(s), as in the manifest",
        "every copy has an exam",
    ] {
        assert!(checks.contains(needle), "{needle} missing from {checks}");
    }
    assert!(
        verified["skipped"].to_string().contains("--no-owner"),
        "{verified:#}"
    );
    // Nothing staged is left behind.
    let staged: Vec<_> = std::fs::read_dir(rig.work.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("verifier-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    rig.assert_no_scratch_left();
}

#[test]
fn globals_and_media_archives_are_checksummed_decompressed_and_listed() {
    let rig = Rig::start(NO_OPTIONS);
    let db = format!("vmedia_{:08x}", rand::random::<u32>());
    let media = rig.work.path().join("media");
    std::fs::create_dir_all(media.join("copies")).unwrap();
    for i in 0..5 {
        std::fs::write(
            media.join(format!("copies/scan-{i}.pdf")),
            vec![b'x'; 1000 * i],
        )
        .unwrap();
    }
    let tar_name = artifact_name(&db, "tar.gz");
    let tar = rig.work.path().join(&tar_name);
    sh(
        "tar -C \"$DIR\" -czf \"$OUT\" .",
        &[
            ("DIR", media.to_str().unwrap()),
            ("OUT", tar.to_str().unwrap()),
        ],
    );
    let manifest = manifest_for(None, &db, &tar_name, &tar);
    let backup_id = rig.ship(&db, &tar, &manifest);
    let (subject, verified) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{verified:#}");
    assert!(
        verified["checks"]
            .to_string()
            .contains("tar archive listed: 7 entries, 10000 bytes"),
        "{verified:#}"
    );

    let globals_name = artifact_name(&db, "globals.sql.zst");
    let globals = rig.work.path().join(&globals_name);
    sh(
        "pg_dumpall --globals-only | zstd -q -c > \"$OUT\"",
        &[("OUT", globals.to_str().unwrap())],
    );
    let manifest = manifest_for(None, &db, &globals_name, &globals);
    let backup_id = rig.ship(&db, &globals, &manifest);
    let (subject, verified) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{verified:#}");
    assert!(
        verified["checks"]
            .to_string()
            .contains("globals script parsed"),
        "{verified:#}"
    );

    // A truncated media archive is caught even though gzip data ends cleanly.
    let tar_name = artifact_name(&db, "tar.zst");
    let truncated = rig.work.path().join(&tar_name);
    sh(
        "tar -C \"$DIR\" -cf - . | head -c 3000 | zstd -q -c > \"$OUT\"",
        &[
            ("DIR", media.to_str().unwrap()),
            ("OUT", truncated.to_str().unwrap()),
        ],
    );
    let manifest = manifest_for(None, &db, &tar_name, &truncated);
    let backup_id = rig.ship(&db, &truncated, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.contains("truncated"), "{error}");
    rig.assert_no_scratch_left();
}
