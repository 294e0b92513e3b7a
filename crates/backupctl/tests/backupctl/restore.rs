//! `backupctl restore`: exact row counts for every kind of artifact, owners
//! and grants kept, missing roles refused, and the target, the terminal and
//! a corrupted copy checked.

use super::*;

/// Restores `kind` into a fresh empty database and checks the exact counts.
fn round_trip(kind: ArtifactKind, by_latest: bool) {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), kind, true);
    let target = TestDatabase::create("bctl_dst");
    let mut args = vec!["restore", "--database", database.as_str(), "--yes"];
    if by_latest {
        args.push("--latest");
    } else {
        args.push(artifact.as_str());
    }
    let mut env = vec![("RESTORE_TARGET_URL".to_owned(), target.url())];
    if kind.encrypted {
        env.push((
            "AGE_IDENTITY_FILE".to_owned(),
            rig.age_identity().display().to_string(),
        ));
    }
    let out = rig.backupctl(&args, &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(artifact.as_str()), "{}", text(&out));
    assert!(stdout.contains("public.items: 1000 rows"), "{}", text(&out));
    let restored: BTreeMap<String, u64> = target.row_counts();
    assert_eq!(
        restored,
        BTreeMap::from([
            ("public.items".to_owned(), 1000),
            ("public.Mixed Case".to_owned(), 3),
            ("extra.notes".to_owned(), 7),
        ])
    );
    assert_eq!(source.row_counts(), restored);
}

#[test]
fn restore_plain_gzip_round_trip_has_exact_row_counts() {
    round_trip(ArtifactKind::PLAIN_GZIP, true);
}

#[test]
fn restore_custom_format_round_trip_has_exact_row_counts() {
    round_trip(CUSTOM_GZIP, false);
}

#[test]
fn restore_encrypted_round_trip_has_exact_row_counts() {
    round_trip(
        ArtifactKind {
            format: DumpFormat::Plain,
            compression: Compression::Gzip,
            encrypted: true,
        },
        false,
    );
}

#[test]
fn restore_creates_the_target_with_create() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    // Named like a test database so it is dropped even if the test fails.
    let target = TestDatabase {
        name: format!("bctl_new_{:016x}", rand::random::<u64>()),
    };
    let url = target.url();
    let out = rig.restore_latest_created(&database, url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(target.row_counts(), source.row_counts());
}

/// Issue 16: `backupctl restore` must give the application its database
/// back: owners and grants as dumped, so the application's role can read
/// its tables and the granted role its granted one.
fn restore_keeps_owners_and_grants(kind: ArtifactKind) {
    let roles = AppRoles::create();
    let rig = Rig::start();
    let source = owned_source_database(&roles);
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), kind, true);
    let target = TestDatabase {
        name: format!("bctl_own_{:016x}", rand::random::<u64>()),
    };
    let out = rig.restore_latest_created(&database, target.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains("verifier"),
        "an operator hears of the verifier: {all}"
    );
    assert!(!all.contains("skipped"), "nothing may be skipped: {all}");
    assert_eq!(target.row_counts(), source.row_counts());

    for (role, table, rows) in [
        (&roles.owner, "items", "1000"),
        (&roles.owner, "extra.notes", "7"),
        (&roles.reader, "items", "1000"),
    ] {
        let read = query_as(role, &target.name, &format!("SELECT count(*) FROM {table}"));
        assert!(
            read.status.success(),
            "{role} cannot read {table} after the restore: {}",
            text(&read)
        );
        assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), rows);
    }
    assert_eq!(
        target.query(
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables \
             WHERE schemaname IN ('public', 'extra')"
        ),
        roles.owner
    );
    // The reader was granted items only, as in the source.
    let denied = query_as(
        &roles.reader,
        &target.name,
        "SELECT count(*) FROM extra.notes",
    );
    assert!(!denied.status.success(), "{}", text(&denied));
}

#[test]
fn restore_plain_keeps_owners_and_grants_for_the_application() {
    restore_keeps_owners_and_grants(ArtifactKind::PLAIN_GZIP);
}

#[test]
fn restore_custom_keeps_owners_and_grants_for_the_application() {
    restore_keeps_owners_and_grants(CUSTOM_GZIP);
}

/// Issue 16: a role the dump names is missing on the target: one line that
/// names the roles and the three fixes, exit 2, nothing restored (not even
/// the database `--create` made); `--no-owner` then restores everything as
/// the target URL's role.
fn restore_refuses_missing_roles(kind: ArtifactKind) {
    let roles = AppRoles::create();
    let rig = Rig::start();
    let source = owned_source_database(&roles);
    let database = database_name(&source);
    let expected = source.row_counts();
    rig.publish_backup(&source, &database, at(60), kind, true);
    drop(source);
    roles.drop_roles();

    let created = TestDatabase {
        name: format!("bctl_own_{:016x}", rand::random::<u64>()),
    };
    let out = rig.restore_latest_created(&database, created.url());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refusal: Vec<&str> = stderr.lines().filter(|l| l.contains("refusing")).collect();
    assert_eq!(refusal.len(), 1, "{}", text(&out));
    for needle in [
        roles.owner.as_str(),
        roles.reader.as_str(),
        "BACKUP_GLOBALS",
        "--no-owner",
        "nothing was restored",
    ] {
        assert!(refusal[0].contains(needle), "no {needle:?}: {}", text(&out));
    }
    assert!(!stderr.contains("verifier"), "{}", text(&out));
    assert!(
        test_support::postgres::databases_with_prefix("bctl_own")
            .iter()
            .all(|name| *name != created.name),
        "the database --create made must be gone: {}",
        text(&out)
    );

    // An existing empty target: refused the same way, and still empty.
    let target = TestDatabase::create("bctl_dst");
    let env = [("RESTORE_TARGET_URL".to_owned(), target.url())];
    let mut args = vec![
        "restore",
        "--latest",
        "--database",
        database.as_str(),
        "--yes",
    ];
    let out = rig.backupctl(&args, &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        target.row_counts().is_empty(),
        "nothing may be restored: {}",
        text(&out)
    );
    assert_eq!(
        target.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'extra'"),
        "0",
        "nothing may be restored: {}",
        text(&out)
    );

    args.push("--no-owner");
    let out = rig.backupctl(&args, &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(target.row_counts(), expected);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("objects owned by the role that ran the restore"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("verifier"), "{}", text(&out));
}

#[test]
fn restore_plain_refuses_missing_roles_and_no_owner_works() {
    restore_refuses_missing_roles(ArtifactKind::PLAIN_GZIP);
}

#[test]
fn restore_custom_refuses_missing_roles_and_no_owner_works() {
    restore_refuses_missing_roles(CUSTOM_GZIP);
}

#[test]
fn restore_refuses_a_target_with_tables_unless_forced() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    let target = TestDatabase::create("bctl_dst");
    target.execute("CREATE TABLE precious (id int); INSERT INTO precious VALUES (42);");
    let env = [("RESTORE_TARGET_URL".to_owned(), target.url())];
    let args = [
        "restore",
        "--latest",
        "--database",
        database.as_str(),
        "--yes",
    ];

    let out = rig.backupctl(&args, &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(
        target.row_counts(),
        BTreeMap::from([("public.precious".to_owned(), 1)]),
        "the refused target was touched"
    );

    // With --force the restore goes in beside the table, which the row
    // count check then reports as not in the manifest: exit 1.
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = rig.backupctl(&forced, &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("public.precious: not in the manifest"),
        "{}",
        text(&out)
    );
    assert_eq!(target.query("SELECT count(*) FROM items"), "1000");
}

#[test]
fn restore_without_yes_refuses_when_stdin_is_not_a_terminal() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    let target = TestDatabase::create("bctl_dst");
    let out = rig.backupctl(
        &["restore", "--latest", "--database", database.as_str()],
        &[("RESTORE_TARGET_URL".to_owned(), target.url())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--yes"), "{}", text(&out));
    assert!(
        stderr.contains(&target.name),
        "names the target: {}",
        text(&out)
    );
    assert!(target.row_counts().is_empty(), "nothing may be restored");
}

#[test]
fn restore_reports_a_corrupted_copy_and_exits_1() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    // Same size, one byte changed, on the server.
    let path = format!("{}/{database}/{artifact}", rig.remote_dir());
    let mut bytes = std::fs::read(&path).expect("read remote copy");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt remote copy");
    let target = TestDatabase::create("bctl_dst");
    let out = rig.backupctl(
        &[
            "restore",
            artifact.as_str(),
            "--database",
            database.as_str(),
            "--yes",
        ],
        &[("RESTORE_TARGET_URL".to_owned(), target.url())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        text(&out)
    );
}

/// A `.verified.json` that does not match its artifact (here: a record of
/// other content, as an older upload under the same name would leave) is
/// not a verification: `list` says so and `restore --latest` passes over
/// it, as the pruner does.
#[test]
fn a_record_that_does_not_match_is_not_verified_for_list_and_restore_latest() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let older = rig.publish_backup(&source, &database, at(120), ArtifactKind::PLAIN_GZIP, true);
    let newest = rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    let record_path = format!("{}/{database}/{}", rig.remote_dir(), newest.verified_name());
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("read the record"))
            .expect("a record");
    record["sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(&record_path, serde_json::to_vec(&record).expect("JSON"))
        .expect("rewrite the record");

    let out = rig.backupctl(&["list", "--json", "--database", database.as_str()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let verified = |artifact: &ArtifactName| {
        entries
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["artifact"] == artifact.as_str())
            .map(|e| e["verified"].clone())
    };
    assert_eq!(
        verified(&older),
        Some(serde_json::json!(true)),
        "{}",
        text(&out)
    );
    assert_eq!(
        verified(&newest),
        Some(serde_json::json!(false)),
        "{}",
        text(&out)
    );

    let target = TestDatabase::create("bctl_dst");
    let out = rig.backupctl(
        &[
            "restore",
            "--latest",
            "--database",
            database.as_str(),
            "--yes",
        ],
        &[("RESTORE_TARGET_URL".to_owned(), target.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("restored {older} ")),
        "{}",
        text(&out)
    );
}
