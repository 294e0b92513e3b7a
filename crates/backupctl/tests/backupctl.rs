//! `backupctl restore` and `backupctl prune --dry-run` against a real sshd
//! and a real PostgreSQL. Artifacts are made here with the standard tools
//! (`pg_dump | gzip`, `pg_dump -Fc`, `age`), described by a manifest built
//! from backup-core's types, and uploaded with remote-sftp, so no NATS or
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
        let artifact = ArtifactName::new(database, taken_at, kind);
        let local = self.local.path().join(artifact.as_str());
        let format = match kind.format {
            DumpFormat::Custom => "--format=custom --compress=0",
            _ => "--format=plain",
        };
        let encrypt = if kind.encrypted {
            format!("| age -r {}", self.age_recipient())
        } else {
            String::new()
        };
        let script = format!(
            "set -o pipefail; pg_dump --no-password {format} | gzip {encrypt} > '{}'",
            local.display()
        );
        run_ok(
            Command::new("bash")
                .args(["-c", &script])
                .envs(source.env()),
        );
        let bytes = std::fs::read(&local).expect("read artifact");
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "version": 1,
            "backup_id": format!("test{}", taken_at.timestamp()),
            "database": database.as_str(),
            "artifact": artifact.as_str(),
            "size_bytes": bytes.len(),
            "sha256": sha256_hex(&local),
            "format": match kind.format { DumpFormat::Custom => "custom", _ => "plain" },
            "compression": match kind.compression { Compression::Gzip => "gzip", Compression::Zstd => "zstd" },
            "encrypted": kind.encrypted,
            "server_version": "test",
            "pg_dump_version": "test",
            "created_at": taken_at.to_rfc3339(),
            "duration_ms": 1,
            "trigger": "manual",
            "tables": expected_tables(),
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
    round_trip(
        ArtifactKind {
            format: DumpFormat::Custom,
            compression: Compression::Gzip,
            encrypted: false,
        },
        false,
    );
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
    let out = rig.backupctl(
        &[
            "restore",
            "--latest",
            "--database",
            database.as_str(),
            "--create",
            "--yes",
        ],
        &[("RESTORE_TARGET_URL".to_owned(), url)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(target.row_counts(), source.row_counts());
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
/// (up to the next `## ` heading), in order.
fn runbook_blocks(heading: &str) -> Vec<String> {
    let path = test_support::process::workspace_root().join("docs/runbooks/database-restore.md");
    let text = std::fs::read_to_string(&path).expect("read the runbook");
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no {heading:?} in the runbook"));
    let section = &text[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```bash\n") {
        let body = &rest[open + "```bash\n".len()..];
        let close = body.find("\n```").expect("unclosed code block");
        blocks.push(body[..close].to_owned());
        rest = &body[close + 4..];
    }
    blocks
}

/// Section 3 of the runbook ("restore by hand"), extracted from the
/// document and run with bash against a real backup on a real sshd, so the
/// document cannot rot. Section 0's shell settings (`SSH_OPTS`, `pipefail`)
/// are taken from the document too; only the site values are the test's.
#[test]
fn runbook_section_3_by_hand_restore_works() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    // The runbook restores as the application's owner role.
    run_ok(
        Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg("DO $$ BEGIN CREATE ROLE viatique_user; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            .envs(test_support::postgres::pg_env()),
    );

    let setup: String = runbook_blocks("## 0.")
        .concat()
        .lines()
        .filter(|l| l.starts_with("SSH_OPTS=") || l.starts_with("set -o pipefail"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        setup.contains("SSH_OPTS="),
        "section 0 no longer sets SSH_OPTS"
    );
    let blocks = runbook_blocks("## 3.");
    assert!(blocks.len() >= 4, "section 3 lost its commands: {blocks:?}");
    let work = tempfile::tempdir().expect("work dir");
    let script = format!(
        "DB={database}\nARTIFACT={artifact}\n{setup}\ncd '{}'\n{}\necho \"TARGET=$TARGET\"\n",
        work.path().display(),
        blocks.join("\n")
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .envs(rig.env())
        .envs(test_support::postgres::pg_env())
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
    assert!(out.status.success(), "{report}");
    assert!(
        stdout.contains(&format!("{artifact}: OK")),
        "sha256sum -c: {report}"
    );
    assert!(stdout.contains("gzip OK"), "{report}");
    assert!(stdout.contains("psql exit status: 0"), "{report}");
    assert!(!stdout.contains("MISMATCH"), "{report}");
    for table in expected_tables().keys() {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("OK") && l.contains(table.as_str())),
            "no OK line for {table}: {report}"
        );
    }
    let target = target.expect("the runbook names its TARGET");
    assert_eq!(target.row_counts(), source.row_counts(), "{report}");
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
