//! `backupctl restore`, `backupctl prune --dry-run` and the runbook's
//! by-hand procedures against a real sshd and a real PostgreSQL; `backupctl
//! trigger` against a real NATS. Artifacts are made here with the standard
//! tools (`pg_dump | gzip`, `pg_dump -Fc`, `pg_dumpall`, `tar`, `age`),
//! described by a manifest built from backup-core's types, and uploaded
//! with remote-sftp; where events are needed the test publishes them, so no
//! pipeline service is involved.

#[path = "backupctl/django.rs"]
mod django;
#[path = "backupctl/from.rs"]
mod from;
#[path = "backupctl/interrupts.rs"]
mod interrupts;
#[path = "backupctl/posture.rs"]
mod posture;
#[path = "backupctl/prune.rs"]
mod prune;
#[path = "backupctl/restore.rs"]
mod restore;
#[path = "backupctl/runbook.rs"]
mod runbook;
#[path = "backupctl/s3.rs"]
mod s3;
#[path = "backupctl/trigger.rs"]
mod trigger;

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
            io_timeout: Duration::from_secs(60),
            ..test_support::pipeline::sftp_settings(&self.sshd)
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
