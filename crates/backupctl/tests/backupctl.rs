//! `backupctl restore`, `backupctl prune --dry-run` and the runbook's
//! by-hand procedures against a real sshd and a real PostgreSQL; `backupctl
//! trigger` against a real NATS. Artifacts are made here with the standard
//! tools (`pg_dump | gzip`, `pg_dump -Fc`, `pg_dumpall`, `tar`, `age`),
//! described by a manifest built from backup-core's types, and uploaded
//! with remote-sftp; where events are needed the test publishes them, so no
//! pipeline service is involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use backup_core::manifest::{Manifest, VerificationRecord};
use backup_core::names::{ArtifactKind, ArtifactName, Compression, DatabaseName, DumpFormat};
use remote_sftp::{SftpRemote, SftpSettings};
use test_support::postgres::TestDatabase;
use test_support::process::workspace_bin;
use test_support::sshd::Sshd;

/// `backupctl doctor` against real servers and services.
mod doctor;

/// Rows the source database holds, keyed as the manifest keys them (`%I.%I`).
fn expected_tables() -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("public.items".to_owned(), 1000),
        ("public.\"Mixed Case\"".to_owned(), 3),
        ("extra.notes".to_owned(), 7),
    ])
}

fn source_database() -> TestDatabase {
    let db = TestDatabase::create("bctl_src");
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, label text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
         CREATE TABLE \"Mixed Case\" (x int);
         INSERT INTO \"Mixed Case\" VALUES (1), (2), (3);
         CREATE SCHEMA extra;
         CREATE TABLE extra.notes (n text);
         INSERT INTO extra.notes SELECT 'note ' || g FROM generate_series(1, 7) g;",
    );
    db
}

/// An sshd with an SFTP_DIR, and a scratch directory for artifacts.
struct Rig {
    sshd: Sshd,
    local: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Rig {
    fn start() -> Rig {
        Rig {
            sshd: Sshd::start(),
            local: tempfile::tempdir().expect("temp dir"),
            runtime: tokio::runtime::Runtime::new().expect("tokio runtime"),
        }
    }

    fn remote_dir(&self) -> String {
        format!("{}/backups", self.sshd.remote_root.display())
    }

    fn settings(&self) -> SftpSettings {
        SftpSettings {
            host: "127.0.0.1".into(),
            port: self.sshd.port,
            user: self.sshd.user.clone(),
            key_file: self.sshd.client_key.clone(),
            key_passphrase: None,
            known_hosts: Some(self.sshd.known_hosts.clone()),
            host_key_fingerprint: None,
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(60),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SFTP_HOST".into(), "127.0.0.1".into()),
            ("SFTP_PORT".into(), self.sshd.port.to_string()),
            ("SFTP_USER".into(), self.sshd.user.clone()),
            ("SFTP_DIR".into(), self.remote_dir()),
            (
                "SFTP_KEY_FILE".into(),
                self.sshd.client_key.display().to_string(),
            ),
            (
                "SFTP_KNOWN_HOSTS".into(),
                self.sshd.known_hosts.display().to_string(),
            ),
        ]
    }

    /// Dumps `source` as `kind` with the standard tools, uploads the artifact
    /// and its manifest (and a verification record when `verified`).
    fn publish_backup(
        &self,
        source: &TestDatabase,
        database: &DatabaseName,
        taken_at: chrono::DateTime<chrono::Utc>,
        kind: ArtifactKind,
        verified: bool,
    ) -> ArtifactName {
        self.publish_tagged(source, database, taken_at, kind, verified, None)
    }

    /// [`Rig::publish_backup`] with a tag in the manifest.
    fn publish_tagged(
        &self,
        source: &TestDatabase,
        database: &DatabaseName,
        taken_at: chrono::DateTime<chrono::Utc>,
        kind: ArtifactKind,
        verified: bool,
        tag: Option<&str>,
    ) -> ArtifactName {
        let format = match kind.format {
            DumpFormat::Custom => "--format=custom --compress=0",
            _ => "--format=plain",
        };
        self.publish_artifact(
            database,
            taken_at,
            kind,
            &format!("pg_dump --no-password {format}"),
            &source.env(),
            &expected_tables(),
            verified,
            tag,
        )
    }

    /// Runs `producer` (a shell command writing the uncompressed content to
    /// stdout), compresses (and encrypts) it as `kind`, and uploads it under
    /// `<SFTP_DIR>/<database>/` with its manifest (and a verification
    /// record when `verified`).
    #[allow(clippy::too_many_arguments)]
    fn publish_artifact(
        &self,
        database: &DatabaseName,
        taken_at: chrono::DateTime<chrono::Utc>,
        kind: ArtifactKind,
        producer: &str,
        env: &[(String, String)],
        tables: &BTreeMap<String, u64>,
        verified: bool,
        tag: Option<&str>,
    ) -> ArtifactName {
        let artifact = ArtifactName::new(database, taken_at, kind);
        let local = self.local.path().join(artifact.as_str());
        let encrypt = if kind.encrypted {
            format!("| age -r {}", self.age_recipient())
        } else {
            String::new()
        };
        let script = format!(
            "set -o pipefail; {producer} | gzip {encrypt} > '{}'",
            local.display()
        );
        run_ok(
            Command::new("bash")
                .args(["-c", &script])
                .envs(env.iter().cloned()),
        );
        let bytes = std::fs::read(&local).expect("read artifact");
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "version": 1,
            "backup_id": format!("test{}", taken_at.timestamp()),
            "database": database.as_str(),
            "artifact": artifact.as_str(),
            "size_bytes": bytes.len(),
            "sha256": sha256_hex(&local),
            "format": match kind.format {
                DumpFormat::Custom => "custom",
                DumpFormat::Globals => "globals",
                DumpFormat::Tar => "tar",
                DumpFormat::Plain => "plain",
            },
            "compression": match kind.compression { Compression::Gzip => "gzip", Compression::Zstd => "zstd" },
            "encrypted": kind.encrypted,
            "server_version": "test",
            "pg_dump_version": "test",
            "created_at": taken_at.to_rfc3339(),
            "duration_ms": 1,
            "trigger": "manual",
            "tag": tag,
            "tables": tables,
        }))
        .expect("manifest from backup-core's schema");
        let dir = format!("{}/{}", self.remote_dir(), database);
        self.runtime.block_on(async {
            let remote = SftpRemote::connect(&self.settings()).await.expect("SFTP");
            remote.create_dir_all(&dir).await.expect("mkdir");
            remote
                .upload_file(&local, &format!("{dir}/{artifact}"), &|_| {})
                .await
                .expect("upload artifact");
            remote
                .write_file_atomic(
                    &format!("{dir}/{}", artifact.manifest_name()),
                    &manifest.encode(),
                )
                .await
                .expect("upload manifest");
            if verified {
                let record: VerificationRecord = serde_json::from_value(serde_json::json!({
                    "version": 1,
                    "backup_id": manifest.backup_id,
                    "artifact": artifact.as_str(),
                    "sha256": manifest.sha256,
                    "verified_at": chrono::Utc::now().to_rfc3339(),
                    "checks": ["made by the test"],
                    "tables": manifest.tables.len(),
                    "rows": manifest.total_rows(),
                    "duration_ms": 1,
                }))
                .expect("verification record from backup-core's schema");
                remote
                    .write_file_atomic(
                        &format!("{dir}/{}", artifact.verified_name()),
                        &record.encode(),
                    )
                    .await
                    .expect("upload verification record");
            }
            let _ = remote.close().await;
        });
        artifact
    }

    fn age_identity(&self) -> PathBuf {
        let path = self.local.path().join("age-identity.txt");
        if !path.exists() {
            run_ok(Command::new("age-keygen").arg("-o").arg(&path));
        }
        path
    }

    fn age_recipient(&self) -> String {
        let out = run_ok(
            Command::new("age-keygen")
                .arg("-y")
                .arg(self.age_identity()),
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    /// `backupctl restore --latest --database DATABASE --create --yes` into
    /// the database of `target_url`.
    fn restore_latest_created(&self, database: &DatabaseName, target_url: String) -> Output {
        self.backupctl(
            &[
                "restore",
                "--latest",
                "--database",
                database.as_str(),
                "--create",
                "--yes",
            ],
            &[("RESTORE_TARGET_URL".to_owned(), target_url)],
        )
    }

    /// Runs backupctl with stdin from /dev/null (not a terminal).
    fn backupctl(&self, args: &[&str], env: &[(String, String)]) -> Output {
        Command::new(workspace_bin("backupctl"))
            .args(args)
            .env_remove("RESTORE_TARGET_URL")
            .env_remove("RESTORE_TARGET_URL_FILE")
            .env_remove("AGE_IDENTITY_FILE")
            .envs(self.env())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run backupctl")
    }
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("spawn");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_hex(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8(out.stdout).expect("utf8")[..64].to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn database_name(db: &TestDatabase) -> DatabaseName {
    DatabaseName::try_from(db.name.clone()).expect("valid database name")
}

fn at(seconds_ago: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::TimeDelta::seconds(seconds_ago)
}

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

/// Two login roles for one test (roles are global to the server), dropped
/// when this goes out of scope: declare it before the databases that use
/// them, so those are dropped first.
struct AppRoles {
    owner: String,
    reader: String,
}

impl AppRoles {
    fn create() -> AppRoles {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let roles = AppRoles {
            owner: format!("bctl_app_{suffix}"),
            reader: format!("bctl_reader_{suffix}"),
        };
        for role in [&roles.owner, &roles.reader] {
            admin_sql(&format!("CREATE ROLE {role} LOGIN"));
        }
        roles
    }

    /// Drops both roles (their database must be gone).
    fn drop_roles(&self) {
        for role in [&self.owner, &self.reader] {
            admin_sql(&format!("DROP ROLE IF EXISTS {role}"));
        }
    }
}

impl Drop for AppRoles {
    fn drop(&mut self) {
        for role in [&self.owner, &self.reader] {
            let _ = Command::new("psql")
                .args(["-X", "-q", "-d", "postgres", "-c"])
                .arg(format!("DROP ROLE IF EXISTS {role}"))
                .envs(test_support::postgres::pg_env())
                .output();
        }
    }
}

fn admin_sql(sql: &str) {
    run_ok(
        Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(sql)
            .envs(test_support::postgres::pg_env()),
    );
}

/// The source database with every object owned by the application's role
/// and its main table granted to a second role, as Korrigo's are.
fn owned_source_database(roles: &AppRoles) -> TestDatabase {
    let db = source_database();
    let (owner, reader) = (&roles.owner, &roles.reader);
    db.execute(&format!(
        "ALTER TABLE items OWNER TO {owner};
         ALTER TABLE \"Mixed Case\" OWNER TO {owner};
         ALTER SCHEMA extra OWNER TO {owner};
         ALTER TABLE extra.notes OWNER TO {owner};
         GRANT SELECT ON items TO {reader};"
    ));
    db
}

/// `SELECT` as `role` (a real psql session as that role).
fn query_as(role: &str, database: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            role,
            "-d",
            database,
            "-c",
        ])
        .arg(sql)
        .envs(test_support::postgres::pg_env())
        .env("PGUSER", role)
        .output()
        .expect("run psql")
}

const CUSTOM_GZIP: ArtifactKind = ArtifactKind {
    format: DumpFormat::Custom,
    compression: Compression::Gzip,
    encrypted: false,
};

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

#[test]
fn prune_dry_run_lists_keep_and_delete_with_reasons() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    // Four verified backups on four days; keep only the newest two.
    let mut artifacts = Vec::new();
    for day in 0..4 {
        artifacts.push(rig.publish_backup(
            &source,
            &database,
            at(day * 86_400 + 60),
            ArtifactKind::PLAIN_GZIP,
            true,
        ));
    }
    let policy = [
        "--keep-last=2",
        "--keep-daily=0",
        "--keep-weekly=0",
        "--keep-monthly=0",
        "--min-keep=2",
    ];
    let mut args = vec![
        "prune",
        "--dry-run",
        "--json",
        "--database",
        database.as_str(),
    ];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let action = |artifact: &ArtifactName| {
        json["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .find(|d| d["file"] == artifact.as_str())
            .map(|d| d["action"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        action(&artifacts[0]).as_deref(),
        Some("keep"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[1]).as_deref(),
        Some("keep"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[2]).as_deref(),
        Some("delete"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[3]).as_deref(),
        Some("delete"),
        "{}",
        text(&out)
    );

    let mut args = vec!["prune", "--dry-run", "--database", database.as_str()];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("DELETE {}", artifacts[3])),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains(&format!("KEEP   {}", artifacts[0])),
        "{}",
        text(&out)
    );
    // Nothing deleted.
    let listing = std::fs::read_dir(format!("{}/{database}", rig.remote_dir()))
        .expect("remote dir")
        .count();
    assert_eq!(listing, 12, "a dry run must delete nothing");

    // Without --dry-run: the same plan, still nothing deleted (backupctl
    // never deletes; --dry-run is an accepted no-op).
    let mut args = vec!["prune", "--database", database.as_str()];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plain = String::from_utf8_lossy(&out.stdout);
    assert_eq!(plain, stdout, "{}", text(&out));
    let listing = std::fs::read_dir(format!("{}/{database}", rig.remote_dir()))
        .expect("remote dir")
        .count();
    assert_eq!(listing, 12, "backupctl prune must delete nothing");
}

/// The ```bash blocks of the runbook section that starts with `heading`
/// (`## 3.` or `### 5.1`, up to the next heading of the same or a higher
/// level), in order: those marked `runs-in` this file; the others must be
/// marked `example`.
fn runbook_blocks(heading: &str) -> Vec<String> {
    let path = test_support::process::workspace_root().join("docs/runbooks/database-restore.md");
    let text = std::fs::read_to_string(&path).expect("read the runbook");
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no {heading:?} in the runbook"));
    let section = &text[start + 1..];
    let mut end = section.len();
    let mut offset = 0;
    for line in section.split_inclusive('\n') {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if offset > 0 && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = offset;
            break;
        }
        offset += line.len();
    }
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```bash\n") {
        let marker = rest[..open]
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .trim();
        let body = &rest[open + "```bash\n".len()..];
        let close = body.find("\n```").expect("unclosed code block");
        if marker == "<!-- runs-in: crates/backupctl/tests/backupctl.rs -->" {
            blocks.push(body[..close].to_owned());
        } else {
            assert!(
                marker.starts_with("<!-- example: "),
                "a block of {heading:?} is marked neither runs-in nor example: {marker:?}"
            );
        }
        rest = &body[close + 4..];
    }
    blocks
}

/// Section 0's shell settings (`SSH_OPTS`, `pipefail`), taken from the
/// runbook; the site values (`export SFTP_...`) are the test's.
fn runbook_setup() -> String {
    let setup = runbook_blocks("## 0.")
        .concat()
        .lines()
        .filter(|l| l.starts_with("SSH_OPTS=") || l.starts_with("set -o pipefail"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        setup.contains("SSH_OPTS="),
        "section 0 no longer sets SSH_OPTS"
    );
    setup
}

/// What a runbook script printed, and the database it restored into (the
/// `TARGET` it names), dropped with the test.
struct RunbookRun {
    out: Output,
    stdout: String,
    report: String,
    target: Option<TestDatabase>,
}

/// Runs `blocks` with bash in a fresh directory, after `vars` (the test's
/// values) and section 0's settings, against the rig's sshd; backupctl is
/// on the PATH.
fn run_runbook(rig: &Rig, vars: &str, blocks: &[String], env: &[(String, String)]) -> RunbookRun {
    let work = tempfile::tempdir().expect("work dir");
    let script = format!(
        "{vars}\n{}\ncd '{}'\n{}\necho \"TARGET=$TARGET\"\n",
        runbook_setup(),
        work.path().display(),
        blocks.join("\n")
    );
    let bin_dir = workspace_bin("backupctl")
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .envs(rig.env())
        .envs(test_support::postgres::pg_env())
        .envs(env.iter().cloned())
        .env("PATH", path)
        .env_remove("BACKUP_TZ")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let target_name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TARGET="))
        .unwrap_or_default()
        .to_owned();
    let target = (!target_name.is_empty()).then(|| TestDatabase { name: target_name });
    let report = format!("{}\nscript:\n{script}", text(&out));
    RunbookRun {
        out,
        stdout,
        report,
        target,
    }
}

/// Creates the role the runbook restores as (Korrigo's owner role).
fn create_viatique_user() {
    admin_sql(
        "DO $$ BEGIN CREATE ROLE viatique_user; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
}

/// The row-count check of 3.4 said OK for every table of the manifest.
fn assert_counts_ok(run: &RunbookRun) {
    assert!(!run.stdout.contains("MISMATCH"), "{}", run.report);
    for table in expected_tables().keys() {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("OK") && l.contains(table.as_str())),
            "no OK line for {table}: {}",
            run.report
        );
    }
    assert!(
        run.stdout.contains("tables in the manifest: 3"),
        "{}",
        run.report
    );
}

/// Sections 1 to 3 of the runbook (find, choose, restore by hand),
/// extracted from the document and run with bash against real backups on a
/// real sshd, so the document cannot rot: the selection picks the newest
/// verified backup, then the newest before a moment, lists the pre-deploy
/// one, and the restore of 3.3 and the checks of 3.2 and 3.4 pass.
#[test]
fn runbook_sections_1_to_3_choose_and_restore_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let kind = ArtifactKind::PLAIN_GZIP;
    let old = rig.publish_tagged(&source, &database, at(300), kind, true, Some("pre-deploy"));
    let newest_verified = rig.publish_backup(&source, &database, at(200), kind, true);
    rig.publish_backup(&source, &database, at(100), kind, false);
    create_viatique_user();

    let mut blocks = runbook_blocks("## 1.");
    blocks.extend(runbook_blocks("## 2."));
    assert!(
        blocks.len() >= 6,
        "sections 1 and 2 lost commands: {blocks:?}"
    );
    let before = at(250).format("%Y%m%d_%H%M%S").to_string();
    let mut replaced = false;
    for block in &mut blocks {
        if block.contains("BEFORE=20261121_224300") {
            *block = block.replace("BEFORE=20261121_224300", &format!("BEFORE={before}"));
            replaced = true;
        }
    }
    assert!(replaced, "section 2 no longer sets BEFORE");
    let section_3 = runbook_blocks("## 3.");
    assert!(
        section_3.len() >= 4,
        "section 3 lost its commands: {section_3:?}"
    );
    blocks.extend(section_3);
    let run = run_runbook(&rig, &format!("DB={database}"), &blocks, &[]);
    assert!(run.out.status.success(), "{}", run.report);
    let chosen: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ARTIFACT="))
        .collect();
    assert_eq!(
        chosen,
        [newest_verified.as_str(), old.as_str()],
        "newest verified, then newest verified before {before}: {}",
        run.report
    );
    assert!(
        run.stdout.lines().any(|l| l == old.as_str()),
        "the pre-deploy listing: {}",
        run.report
    );
    assert!(
        run.stdout.contains(&format!("{old}: OK")),
        "sha256sum -c: {}",
        run.report
    );
    assert!(run.stdout.contains("gzip OK"), "{}", run.report);
    assert!(run.stdout.contains("psql exit status: 0"), "{}", run.report);
    assert_counts_ok(&run);
    assert!(run.stdout.contains("tables restored: 3"), "{}", run.report);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.1: a custom-format archive, downloaded and checked with 3.1 and 3.2,
/// restored with pg_restore, counted with 3.4.
#[test]
fn runbook_section_5_1_restores_a_custom_format_archive_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), CUSTOM_GZIP, true);
    let mut blocks = runbook_blocks("### 3.1");
    blocks.extend(runbook_blocks("### 3.2"));
    blocks.extend(runbook_blocks("### 5.1"));
    blocks.extend(runbook_blocks("### 3.4"));
    let run = run_runbook(
        &rig,
        &format!("DB={database}\nARTIFACT={artifact}"),
        &blocks,
        &[],
    );
    assert!(run.out.status.success(), "{}", run.report);
    assert!(
        run.stdout.contains(&format!("{artifact}: OK")),
        "{}",
        run.report
    );
    assert!(
        run.stdout.contains("pg_restore exit status: 0"),
        "{}",
        run.report
    );
    assert_counts_ok(&run);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.2: an age-encrypted plain dump, decrypted as a stream into psql.
#[test]
fn runbook_section_5_2_restores_an_encrypted_artifact_by_hand() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let kind = ArtifactKind {
        encrypted: true,
        ..ArtifactKind::PLAIN_GZIP
    };
    let artifact = rig.publish_backup(&source, &database, at(60), kind, true);
    let mut blocks = runbook_blocks("### 3.1");
    blocks.extend(runbook_blocks("### 5.2"));
    blocks.extend(runbook_blocks("### 3.4"));
    let identity = rig.age_identity().display().to_string();
    let run = run_runbook(
        &rig,
        &format!("DB={database}\nARTIFACT={artifact}"),
        &blocks,
        &[("AGE_IDENTITY_FILE".to_owned(), identity)],
    );
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("psql exit status: 0"), "{}", run.report);
    assert_counts_ok(&run);
    let target = run.target.as_ref().expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{}", run.report);
}

/// 5.3: the globals backup (`pg_dumpall --globals-only` of the shared
/// server) restored into a fresh private server: a role that exists only
/// in the backup exists there afterwards, with its attributes.
#[test]
fn runbook_section_5_3_restores_roles_from_the_globals_backup() {
    let roles = AppRoles::create();
    admin_sql(&format!("ALTER ROLE {} CREATEDB", roles.owner));
    let rig = Rig::start();
    let globals = DatabaseName::try_from("globals".to_owned()).expect("name");
    let kind = ArtifactKind {
        format: DumpFormat::Globals,
        ..ArtifactKind::PLAIN_GZIP
    };
    rig.publish_artifact(
        &globals,
        at(60),
        kind,
        "pg_dumpall --globals-only --no-password",
        &test_support::postgres::pg_env(),
        &BTreeMap::new(),
        true,
        None,
    );
    let fresh = test_support::pg_cluster::PostgresCluster::start();
    let blocks = runbook_blocks("### 5.3");
    assert!(blocks.len() >= 2, "5.3 lost its commands: {blocks:?}");
    let run = run_runbook(&rig, "DB=unused", &blocks, &fresh.env());
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("globals OK"), "{}", run.report);
    assert_eq!(
        fresh.query(
            "postgres",
            &format!(
                "SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = '{}'",
                roles.owner
            )
        ),
        "t",
        "{}",
        run.report
    );
}

/// 5.4: the media archive extracted by hand gives back every file.
#[test]
fn runbook_section_5_4_extracts_the_media_archive() {
    let rig = Rig::start();
    let media_root = tempfile::tempdir().expect("media dir");
    let media = media_root.path().join("media");
    std::fs::create_dir_all(media.join("copies/2026")).expect("mkdir");
    std::fs::write(media.join("copies/2026/scan 1.pdf"), b"%PDF-1.4 scan").expect("write");
    std::fs::write(media.join("logo.png"), [0x89, b'P', b'N', b'G']).expect("write");
    let name = DatabaseName::try_from("media".to_owned()).expect("name");
    let kind = ArtifactKind {
        format: DumpFormat::Tar,
        ..ArtifactKind::PLAIN_GZIP
    };
    rig.publish_artifact(
        &name,
        at(60),
        kind,
        &format!("tar -C '{}' -cf - media", media_root.path().display()),
        &[],
        &BTreeMap::new(),
        true,
        None,
    );
    let run = run_runbook(&rig, "DB=unused", &runbook_blocks("### 5.4"), &[]);
    assert!(run.out.status.success(), "{}", run.report);
    assert!(run.stdout.contains("media OK"), "{}", run.report);
    assert!(
        run.stdout
            .contains("media-restore/media/copies/2026/scan 1.pdf"),
        "{}",
        run.report
    );
}

/// Ctrl-C in the operator's terminal (SIGINT to the foreground process
/// group: backupctl and its psql) while the restore waits on a lock: exit
/// 130, a line naming the target as partially restored, and no restore
/// session left on the server.
#[test]
fn an_interrupted_restore_exits_130_and_names_the_partial_target() {
    interrupt_a_blocked_restore("-INT", true);
}

/// SIGTERM to backupctl alone: its psql is killed without a chance to
/// cancel its query, so backupctl must end the server session itself.
#[test]
fn a_terminated_restore_leaves_no_session_waiting_on_the_server() {
    interrupt_a_blocked_restore("-TERM", false);
}

fn interrupt_a_blocked_restore(signal: &str, whole_group: bool) {
    use std::io::Write;
    use std::os::unix::process::CommandExt;

    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    let target = TestDatabase::create("bctl_dst");
    // Another session creates schema `extra` and keeps its transaction
    // open: the restore's own CREATE SCHEMA extra waits for it.
    let mut blocker = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .envs(target.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the blocking psql");
    blocker
        .stdin
        .as_mut()
        .expect("blocker stdin")
        .write_all(b"BEGIN;\nCREATE SCHEMA extra;\n")
        .expect("write to the blocking psql");
    let waiting_on_locks = || {
        target.query(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
    };

    let mut restore = Command::new(workspace_bin("backupctl"))
        .args([
            "restore",
            "--latest",
            "--database",
            database.as_str(),
            "--yes",
        ])
        .env_remove("RESTORE_TARGET_URL_FILE")
        .env_remove("AGE_IDENTITY_FILE")
        .envs(rig.env())
        .env("RESTORE_TARGET_URL", target.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, as a shell gives a foreground job.
        .process_group(0)
        .spawn()
        .expect("run backupctl restore");
    let group = i32::try_from(restore.id()).expect("pid fits");
    assert!(group > 1, "never signal pid {group}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while waiting_on_locks() != "1" {
        assert!(
            restore.try_wait().expect("poll backupctl").is_none(),
            "backupctl ended before the restore blocked"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never waited on the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = if whole_group {
        format!("-{group}")
    } else {
        group.to_string()
    };
    run_ok(Command::new("kill").args([signal, "--", &victim]));

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while restore.try_wait().expect("poll backupctl").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "backupctl did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = restore.wait_with_output().expect("backupctl output");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interrupted")
            && stderr.contains(&target.name)
            && stderr.contains("partial restore")
            && stderr.contains("--force"),
        "{}",
        text(&out)
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|line| line.starts_with("backupctl: interrupted: ")),
        "the cause is the last line: {}",
        text(&out)
    );
    // The restore's psql is gone from the server: nothing waits any more.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while waiting_on_locks() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "a restore session still waits on the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(blocker.stdin.take());
    let _ = blocker.wait();
}

/// Issue 16: `trigger --wait` said nothing while a stage was retried or
/// quiet, and printed a failure twice. Against a real NATS, the test plays
/// the dumper: a quiet stage gets a line, a retried failure one line, the
/// final failure is printed once (stderr only) and the exit status is 1.
#[test]
fn trigger_wait_shows_quiet_stages_and_retries_and_prints_a_failure_once() {
    use std::io::BufRead;
    use test_support::nats::NatsServer;

    let nats = NatsServer::start();
    let mut child = Command::new(workspace_bin("backupctl"))
        .args([
            "trigger",
            "--database",
            "viatique",
            "--wait",
            "--timeout",
            "120s",
        ])
        .env("NATS_URL", &nats.url)
        .env("BACKUP_DATABASES", "viatique")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backupctl trigger");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what:?}; stdout so far: {seen:#?}"),
            }
        }
    };
    let accepted = wait_for(" accepted (stream sequence ", &mut seen);
    let request_id = accepted
        .split_whitespace()
        .nth(1)
        .expect("request id")
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let bus = runtime.block_on(async {
        backup_core::bus::Bus::connect(
            &backup_core::bus::NatsOptions::local(&nats.url),
            "test-dumper",
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("connect to NATS")
    });
    let event = |extra: serde_json::Value| {
        let mut event = serde_json::json!({
            "version": 1, "backup_id": "viatique-t1", "database": "viatique",
            "occurred_at": chrono::Utc::now(), "request_id": request_id,
        });
        for (k, v) in extra.as_object().expect("object") {
            event[k] = v.clone();
        }
        event
    };
    let publish = |subject: &str, id: &str, value: serde_json::Value| {
        runtime
            .block_on(bus.publish_json(subject, id, &value))
            .expect("publish");
    };
    publish(
        "dump.started",
        "t1-started",
        event(serde_json::json!({"batch": ["viatique"]})),
    );
    wait_for("viatique: dump started", &mut seen);
    // Nothing more for a while: the wait says what it waits for.
    let quiet = wait_for("viatique: dumping (", &mut seen);
    assert!(quiet.contains("so far, no event yet"), "{quiet}");
    publish(
        "dump.failed",
        "t1-failed-1",
        event(
            serde_json::json!({"stage": "dump", "error": "could not connect: refused",
                                 "attempt": 1, "will_retry": true}),
        ),
    );
    let retry = wait_for("(retrying)", &mut seen);
    assert!(
        retry.contains("dump failed (attempt 1): could not connect: refused"),
        "{retry}"
    );
    publish(
        "dump.failed",
        "t1-failed-2",
        event(
            serde_json::json!({"stage": "dump", "error": "pg_dump failed for good",
                                 "attempt": 2, "will_retry": false}),
        ),
    );
    let status = child.wait().expect("backupctl exits");
    reader.join().expect("stdout reader");
    seen.extend(lines.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    let stdout = seen.join("\n");
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("pg_dump failed for good"),
        "the failure goes to stderr only: {stdout}"
    );
    assert_eq!(
        stderr.matches("pg_dump failed for good").count(),
        1,
        "stderr:\n{stderr}"
    );
}

/// `trigger --wait` stopped only at its `--timeout` on Ctrl-C or SIGTERM:
/// the signal ends the waiting at once (exit 130) and says the backup goes
/// on, since the trigger is already in the stream.
#[test]
fn trigger_wait_stops_waiting_on_sigterm() {
    use std::io::BufRead;
    use test_support::nats::NatsServer;

    let nats = NatsServer::start();
    let mut child = Command::new(workspace_bin("backupctl"))
        .args(["trigger", "--wait", "--timeout", "10m"])
        .env("NATS_URL", &nats.url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backupctl trigger");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut accepted = String::new();
    stdout.read_line(&mut accepted).expect("read stdout");
    assert!(
        accepted.contains(" accepted (stream sequence "),
        "{accepted}"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backupctl still waits 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(exit.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("the backup goes on"), "{stderr}");
}

/// A name that is not configured is refused before anything is published;
/// without the list, the trigger says it was not checked.
#[test]
fn trigger_refuses_an_unconfigured_database_when_it_knows_the_list() {
    use test_support::nats::NatsServer;

    let nats = NatsServer::start();
    let trigger = |env: &[(&str, &str)]| {
        Command::new(workspace_bin("backupctl"))
            .args(["trigger", "--database", "viatique_ncc"])
            .env("NATS_URL", &nats.url)
            .env_remove("BACKUP_DATABASES")
            .env_remove("PGDATABASE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run backupctl")
    };
    let out = trigger(&[("BACKUP_DATABASES", "viatique")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "backupctl: database viatique_ncc is not configured for backup (BACKUP_DATABASES: viatique); nothing triggered"
    );
    let out = trigger(&[("PGDATABASE", "viatique")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(PGDATABASE: viatique)"),
        "{}",
        text(&out)
    );
    // Nothing reached the stream: the first trigger published gets sequence 1.
    let out = trigger(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accepted (stream sequence 1); not checked"),
        "{}",
        text(&out)
    );
}
