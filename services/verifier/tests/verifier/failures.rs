//! Artifacts that must fail verification, each for its own reason, and
//! leave no scratch database.

use super::*;

/// The manifest is read while the scratch database is being created: when
/// the remote side fails, the database created beside it is dropped.
#[test]
fn an_event_that_disagrees_with_the_remote_manifest_fails_and_leaves_no_scratch() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    rig.ship(&source.name, &file, &manifest);
    let first = rig.verdict(manifest["backup_id"].as_str().unwrap());
    assert_eq!(first.0, "dump.verified", "{:#}", first.1);
    rig.assert_no_scratch_left();

    let mut forged = manifest;
    forged["backup_id"] = json!("forged-1");
    forged["sha256"] = json!("ab".repeat(32));
    let backup_id = rig.publish_shipped(&source.name, &forged);
    let error = rig.expect_failure(&backup_id);
    assert!(
        error.contains("the event says") && error.contains(&"ab".repeat(32)),
        "{error}"
    );
    // After a failure the drop comes before the event: none may be left
    // now (not only after the start-up sweep's second look).
    assert_eq!(
        databases_with_prefix(&rig.prefix),
        Vec::<String>::new(),
        "scratch database left when the failure was reported"
    );
}

#[test]
fn a_flipped_byte_on_the_remote_fails_the_checksum() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    // Corrupt the copy after the manifest recorded the original's sha256.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.starts_with("checksum:"), "{error}");
    assert!(
        error.contains(manifest["sha256"].as_str().unwrap()),
        "{error}"
    );
    assert!(
        !rig.remote_base()
            .join(&source.name)
            .join(format!("{name}.verified.json"))
            .exists()
    );
    rig.assert_no_scratch_left();
}

#[test]
fn a_truncated_gzip_fails_decompression() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, name) = small_source(&rig);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).unwrap();
    // The manifest describes the truncated file: the checksum passes.
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.starts_with("decompression:"), "{error}");
    rig.assert_no_scratch_left();
}

#[test]
fn a_dump_whose_restore_fails_reports_psqls_first_error() {
    let rig = Rig::start(NO_OPTIONS);
    let db = format!("vbad_{:08x}", rand::random::<u32>());
    let name = artifact_name(&db, "sql.gz");
    let file = rig.work.path().join(&name);
    let script = rig.work.path().join("bad.sql");
    std::fs::write(
        &script,
        "CREATE TABLE t (id int);\nINSERT INTO no_such_table VALUES (1);\nSELECT * FROM also_missing;\n",
    )
    .unwrap();
    sh(
        "gzip -c \"$IN\" > \"$OUT\"",
        &[
            ("IN", script.to_str().unwrap()),
            ("OUT", file.to_str().unwrap()),
        ],
    );
    let manifest = manifest_for(None, &db, &name, &file);
    let backup_id = rig.ship(&db, &file, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.starts_with("restore:"), "{error}");
    assert!(
        error.contains("relation \"no_such_table\" does not exist"),
        "{error}"
    );
    assert!(!error.contains("also_missing"), "{error}");
    rig.assert_no_scratch_left();
}

#[test]
fn a_row_count_that_differs_from_the_manifest_names_the_table() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, name) = small_source(&rig);
    let mut manifest = manifest_for(Some(&source), &source.name, &name, &file);
    assert_eq!(manifest["tables"]["public.copy"], 3000);
    manifest["tables"]["public.copy"] = json!(3001);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.starts_with("row counts: 1 table(s)"), "{error}");
    assert!(
        error.contains("public.copy: manifest 3001, restored 3000"),
        "{error}"
    );
    rig.assert_no_scratch_left();
}

#[test]
fn a_missing_age_identity_is_a_failure_not_a_skip() {
    let rig = Rig::start(NO_OPTIONS);
    let (source, file, _) = small_source(&rig);
    let key = rig.work.path().join("k.key");
    let name = artifact_name(&source.name, "sql.gz.age");
    let encrypted = rig.work.path().join(&name);
    sh(
        "age-keygen -o \"$KEY\" 2>/dev/null && age -r \"$(age-keygen -y \"$KEY\")\" < \"$IN\" > \"$OUT\"",
        &[
            ("KEY", key.to_str().unwrap()),
            ("IN", file.to_str().unwrap()),
            ("OUT", encrypted.to_str().unwrap()),
        ],
    );
    let manifest = manifest_for(Some(&source), &source.name, &name, &encrypted);
    let backup_id = rig.ship(&source.name, &encrypted, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(error.starts_with("decryption:"), "{error}");
    assert!(error.contains("AGE_IDENTITY_FILE is not set"), "{error}");
    rig.assert_no_scratch_left();
}

#[test]
fn an_operator_check_that_does_not_hold_fails_verification() {
    let rig = Rig::start(Options {
        sql_checks: Some(
            "-- there are exams\nSELECT count(*) > 0 FROM exam;\n\
             -- every exam has 200 copies\nSELECT bool_and(n = 200) FROM (SELECT count(*) AS n FROM copy GROUP BY exam_id) x;\n",
        ),
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let error = rig.expect_failure(&backup_id);
    assert!(
        error.starts_with("operator check \"every exam has 200 copies\" failed"),
        "{error}"
    );
    rig.assert_no_scratch_left();
}
