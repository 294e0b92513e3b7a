//! The verifier against real servers: artifacts made with the real
//! pg_dump / gzip / age / tar, put on a real sshd, announced on a real
//! nats-server, restored into scratch databases on the local PostgreSQL.
//! Every test checks that no scratch database is left behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backup_core::bus::{Bus, NatsOptions};
use backup_core::pg::PgTarget;
use backup_core::sftp::SftpArgs;
use backup_core::watchdog::Limits;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use test_support::nats::NatsServer;
use test_support::postgres::{TestDatabase, databases_with_prefix, ensure_postgres_running};
use test_support::sshd::Sshd;
use tokio_util::sync::CancellationToken;

/// NATS, sshd and one in-process verifier with its own scratch prefix.
struct Rig {
    nats: NatsServer,
    sshd: Sshd,
    prefix: String,
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    worker: Option<tokio::task::JoinHandle<()>>,
    work: tempfile::TempDir,
}

struct Options {
    age_identity: Option<PathBuf>,
    sql_checks: Option<&'static str>,
    reverify_every: Option<Duration>,
    /// No in-process verifier: the test runs the binary itself.
    external: bool,
    /// Watchdog limits; the binary's defaults when `None`.
    limits: Option<Limits>,
}

const NO_OPTIONS: Options = Options {
    age_identity: None,
    sql_checks: None,
    reverify_every: None,
    external: false,
    limits: None,
};

impl Rig {
    fn start(options: Options) -> Rig {
        Self::start_with(options, |_| {})
    }

    /// `before_start` runs once the servers are up, before the verifier.
    fn start_with(options: Options, before_start: impl FnOnce(&Rig)) -> Rig {
        if std::env::var_os("VERIFIER_TEST_LOG").is_some() {
            backup_core::telemetry::init(backup_core::config::LogFormat::Text);
        }
        ensure_postgres_running();
        let mut rig = Rig {
            nats: NatsServer::start(),
            sshd: Sshd::start(),
            prefix: format!("vt{:08x}", rand::random::<u32>()),
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            shutdown: CancellationToken::new(),
            worker: None,
            work: tempfile::tempdir().expect("work dir"),
        };
        std::fs::create_dir_all(rig.remote_base()).expect("remote base");
        rig.chown_remote();
        before_start(&rig);
        if options.external {
            return rig;
        }
        let operator_checks = options.sql_checks.map(|sql| {
            let path = rig.work.path().join("checks.sql");
            std::fs::write(&path, sql).expect("write checks");
            restore::checks::load_operator_checks(&path).expect("load checks")
        });
        let sftp = SftpArgs {
            host: "127.0.0.1".into(),
            port: rig.sshd.port,
            user: rig.sshd.user.clone(),
            dir: rig.remote_base().display().to_string(),
            key_file: rig.sshd.client_key.clone(),
            known_hosts: Some(rig.sshd.known_hosts.clone()),
            host_fingerprint: None,
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(60),
        };
        let settings = verifier::Settings {
            sftp: sftp.target().expect("sftp settings"),
            scratch: PgTarget::from_url("postgresql://postgres@127.0.0.1:5432/postgres").unwrap(),
            scratch_prefix: rig.prefix.clone(),
            restore: verifier::RestoreOptions {
                age_identity: options.age_identity,
                staging_dir: Some(rig.work.path().to_owned()),
                ..verifier::RestoreOptions::default()
            },
            operator_checks: operator_checks.unwrap_or_default(),
            reverify_every: options.reverify_every,
            grace: Duration::from_secs(2),
            limits: options.limits.unwrap_or(verifier::DEFAULT_LIMITS),
        };
        let url = rig.nats.url.clone();
        let shutdown = rig.shutdown.clone();
        rig.worker = Some(rig.runtime.spawn(async move {
            let bus = Bus::connect(&NatsOptions::local(&url), "verifier-test", &shutdown)
                .await
                .expect("connect to NATS");
            verifier::run(bus, settings, shutdown)
                .await
                .expect("verifier runs");
        }));
        rig
    }

    fn remote_base(&self) -> PathBuf {
        self.sshd.remote_root.join("backups")
    }

    fn chown_remote(&self) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", self.sshd.user))
            .arg(&self.sshd.remote_root)
            .status()
            .expect("chown");
        assert!(status.success());
    }

    /// Puts an artifact and its manifest on the remote and publishes
    /// `dump.shipped` for them; returns the backup id.
    fn ship(&self, database: &str, artifact_file: &Path, manifest: &Value) -> String {
        let name = manifest["artifact"].as_str().unwrap().to_owned();
        let dir = self.remote_base().join(database);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(artifact_file, dir.join(&name)).unwrap();
        std::fs::write(
            dir.join(format!("{name}.manifest.json")),
            serde_json::to_vec_pretty(manifest).unwrap(),
        )
        .unwrap();
        self.chown_remote();
        self.publish_shipped(database, manifest)
    }

    /// Publishes `dump.shipped` for what `manifest` describes; returns the
    /// backup id.
    fn publish_shipped(&self, database: &str, manifest: &Value) -> String {
        let name = manifest["artifact"].as_str().unwrap().to_owned();
        let backup_id = manifest["backup_id"].as_str().unwrap().to_owned();
        let shipped = json!({
            "version": 1,
            "backup_id": backup_id,
            "database": database,
            "occurred_at": chrono::Utc::now().to_rfc3339(),
            "artifact": name,
            "size_bytes": manifest["size_bytes"],
            "sha256": manifest["sha256"],
            "destination": "sftp://test",
            "duration_ms": 1,
        });
        self.runtime.block_on(async {
            let client = async_nats::connect(&self.nats.url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            // The verifier creates the stream; wait for it.
            for _ in 0..300 {
                if js.get_stream("BACKUPS").await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            js.publish("dump.shipped", serde_json::to_vec(&shipped).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
        backup_id
    }

    /// Every `subject` event stored so far.
    fn events(&self, subject: &str) -> Vec<Value> {
        self.runtime.block_on(async {
            let client = async_nats::connect(&self.nats.url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let Ok(stream) = js.get_stream("BACKUPS").await else {
                return Vec::new();
            };
            let mut events = Vec::new();
            let mut seq = 1;
            let last = stream.cached_info().state.last_sequence;
            while seq <= last {
                if let Ok(message) = stream.get_raw_message(seq).await
                    && message.subject.as_str() == subject
                {
                    events.push(serde_json::from_slice(&message.payload).unwrap());
                }
                seq += 1;
            }
            events
        })
    }

    /// Waits for the verdict on `backup_id`: ("dump.verified" | "dump.failed", event).
    fn verdict(&self, backup_id: &str) -> (String, Value) {
        let mut found = None;
        test_support::wait_until(Duration::from_secs(180), "a verdict", || {
            for subject in ["dump.verified", "dump.failed"] {
                if let Some(event) = self
                    .events(subject)
                    .into_iter()
                    .find(|e| e["backup_id"] == backup_id)
                {
                    found = Some((subject.to_owned(), event));
                    return true;
                }
            }
            false
        });
        found.unwrap()
    }

    fn expect_failure(&self, backup_id: &str) -> String {
        let (subject, event) = self.verdict(backup_id);
        assert_eq!(subject, "dump.failed", "{event:#}");
        assert_eq!(event["stage"], "verify", "{event:#}");
        assert_eq!(event["will_retry"], false, "{event:#}");
        event["error"].as_str().unwrap().to_owned()
    }

    /// After a success the drop overlaps with the verdict's publication (the
    /// message is acked once it is done): give it a moment.
    fn assert_no_scratch_left(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = databases_with_prefix(&self.prefix);
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "scratch databases left behind: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), worker).await });
        }
    }
}

fn sh(script: &str, env: &[(&str, &str)]) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .env("PGHOST", "127.0.0.1")
        .env("PGUSER", "postgres")
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sha256_file(path: &Path) -> (String, u64) {
    let bytes = std::fs::read(path).unwrap();
    (hex::encode(Sha256::digest(&bytes)), bytes.len() as u64)
}

/// The manifest the dumper would write, with row counts taken the same
/// way (`backup_core::pg::table_row_counts`) from `source`.
fn manifest_for(
    source: Option<&TestDatabase>,
    database: &str,
    artifact_name: &str,
    artifact_file: &Path,
) -> Value {
    let (sha256, size) = sha256_file(artifact_file);
    let tables = match source {
        Some(source) => {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let target = PgTarget::from_url(&source.url()).unwrap();
                let client = target.connect("test").await.unwrap();
                backup_core::pg::table_row_counts(&client).await.unwrap()
            })
        }
        None => Default::default(),
    };
    let name: backup_core::ArtifactName = artifact_name.parse().unwrap();
    let kind = name.kind();
    json!({
        "version": 1,
        "backup_id": format!("{database}-{:08x}", rand::random::<u32>()),
        "database": database,
        "artifact": artifact_name,
        "size_bytes": size,
        "sha256": sha256,
        "format": kind.format,
        "compression": kind.compression,
        "encrypted": kind.encrypted,
        "server_version": "15",
        "pg_dump_version": "pg_dump (PostgreSQL) 15",
        "created_at": chrono::Utc::now().to_rfc3339(),
        "duration_ms": 1,
        "trigger": "manual",
        "tables": tables,
    })
}

/// A valid, unique artifact name: `<database>_20260101_HHMMSS.<ext>`.
fn artifact_name(database: &str, ext: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{database}_20260101_{:02}{:02}{:02}.{ext}",
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    )
}

/// A small database and a good plain gzip dump of it.
fn small_source(rig: &Rig) -> (TestDatabase, PathBuf, String) {
    let source = TestDatabase::create("vsrc");
    source.execute(
        "CREATE TABLE exam (id serial PRIMARY KEY, title text);
         CREATE TABLE copy (id serial PRIMARY KEY, exam_id int REFERENCES exam(id));
         INSERT INTO exam(title) SELECT 'exam ' || i FROM generate_series(1, 30) i;
         INSERT INTO copy(exam_id) SELECT 1 + i % 30 FROM generate_series(1, 3000) i;",
    );
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    (source, file, name)
}

const FEATURES_SQL: &str = r#"
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA "Écoles";
CREATE SCHEMA grading;
CREATE TYPE grading.status AS ENUM ('draft', 'graded', 'published');
CREATE DOMAIN grading.score AS numeric(4,2) CHECK (VALUE BETWEEN 0 AND 20);
CREATE TABLE "Écoles"."Élèves" (id bigserial PRIMARY KEY, "Nom complet" text NOT NULL, "Prénom;" text);
CREATE TABLE grading.exam (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    status grading.status NOT NULL DEFAULT 'draft',
    token uuid NOT NULL DEFAULT gen_random_uuid());
CREATE TABLE grading.copy (
    id bigserial PRIMARY KEY,
    exam_id int NOT NULL REFERENCES grading.exam(id),
    student_id bigint REFERENCES "Écoles"."Élèves"(id),
    raw grading.score,
    bonus numeric(4,2) NOT NULL DEFAULT 0,
    total numeric(5,2) GENERATED ALWAYS AS (raw + bonus) STORED,
    owner_name text NOT NULL DEFAULT current_user,
    scan oid);
CREATE TABLE grading.events (at date NOT NULL, detail text) PARTITION BY RANGE (at);
CREATE TABLE grading.events_2025 PARTITION OF grading.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE grading.events_2026 PARTITION OF grading.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE FUNCTION grading.touch() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
  NEW.detail := coalesce(NEW.detail, 'GRANT nothing; -- not a statement');
  RETURN NEW;
END $body$;
CREATE TRIGGER touch BEFORE INSERT ON grading.events_2026 FOR EACH ROW EXECUTE FUNCTION grading.touch();
INSERT INTO "Écoles"."Élèves"("Nom complet", "Prénom;") SELECT 'Élève ' || i, 'Zoé' FROM generate_series(1, 200) i;
INSERT INTO grading.exam(title, status) SELECT 'Devoir n°' || i, 'graded' FROM generate_series(1, 12) i;
INSERT INTO grading.copy(exam_id, student_id, raw, bonus)
  SELECT 1 + i % 12, 1 + i % 200, (i % 20)::numeric, 0.5 FROM generate_series(1, 2400) i;
UPDATE grading.copy SET scan = lo_from_bytea(0, convert_to('scan of copy ' || id, 'UTF8')) WHERE id <= 3;
INSERT INTO grading.events(at, detail) SELECT date '2025-06-01' + (i % 400), NULL FROM generate_series(1, 800) i;
ALTER TABLE grading.copy ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own copies" ON grading.copy FOR SELECT TO {role} USING (owner_name = current_user);
CREATE MATERIALIZED VIEW grading.exam_stats AS
  SELECT exam_id, count(*) AS copies, avg(total) AS mean FROM grading.copy GROUP BY exam_id;
GRANT USAGE ON SCHEMA grading TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA grading TO {role};
ALTER TABLE grading.exam OWNER TO {role};
ALTER SCHEMA "Écoles" OWNER TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA grading GRANT SELECT ON TABLES TO {role};
"#;

/// A source with every feature the verifier must restore, dumped (plain
/// and custom format) while a role that then disappears owns and is
/// granted things: the scratch server will not know it.
fn feature_source(work: &Path) -> (TestDatabase, PathBuf, PathBuf, Value) {
    let source = TestDatabase::create("vsrc");
    let role = format!("korrigo_app_{:08x}", rand::random::<u32>());
    source.execute(&format!("CREATE ROLE {role} NOLOGIN;"));
    source.execute(&FEATURES_SQL.replace("{role}", &role));
    let plain = work.join("features.sql");
    let custom = work.join("features.dump");
    sh(
        "pg_dump -d \"$DB\" > \"$PLAIN\" && pg_dump -Fc -Z0 -d \"$DB\" > \"$CUSTOM\"",
        &[
            ("DB", &source.name),
            ("PLAIN", plain.to_str().unwrap()),
            ("CUSTOM", custom.to_str().unwrap()),
        ],
    );
    let extras: Value = serde_json::from_str(&source.query(
        "SELECT json_build_object(
            'large_objects', (SELECT count(*) FROM pg_largeobject_metadata),
            'sequences', (SELECT json_object_agg(format('%I.%I', schemaname, sequencename), last_value) FROM pg_sequences),
            'materialized_views', json_build_object('grading.exam_stats', (SELECT count(*) FROM grading.exam_stats)))",
    ))
    .unwrap();
    source.execute(&format!(
        "REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; DROP ROLE {role};"
    ));
    (source, plain, custom, extras)
}

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

#[test]
fn reverification_catches_rot_and_withdraws_the_record() {
    let rig = Rig::start(Options {
        reverify_every: Some(Duration::from_secs(2)),
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    // A round re-verifies it while it is intact.
    test_support::wait_until(
        Duration::from_secs(120),
        "a successful re-verification",
        || {
            rig.events("dump.verified")
                .iter()
                .any(|e| e["backup_id"] == backup_id.as_str() && e["reverification"] == true)
        },
    );
    let remote_file = rig.remote_base().join(&source.name).join(&name);
    let record = remote_file.with_file_name(format!("{name}.verified.json"));
    assert!(record.exists());
    // Rot on the remote.
    let mut bytes = std::fs::read(&remote_file).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&remote_file, bytes).unwrap();
    test_support::wait_until(Duration::from_secs(120), "a failed re-verification", || {
        rig.events("dump.failed").iter().any(|e| {
            e["backup_id"] == backup_id.as_str()
                && e["stage"] == "verify"
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("re-verification of") && m.contains("checksum:"))
        })
    });
    assert!(
        !record.exists(),
        "the corrupt backup's record must be withdrawn"
    );
    rig.assert_no_scratch_left();
}

/// Pids of the psql processes the in-process verifier started (children
/// of this test process with the verifier's arguments), zombies excluded.
fn verifier_psqls() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if process_alive_child_of(pid, me)
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "psql")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(13).any(|w| w == b"--no-password"))
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a live (not zombie) child of `parent`.
fn process_alive_child_of(pid: u32, parent: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid ...`
    let mut fields = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let state = fields.next().unwrap_or("Z");
    let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    state != "Z" && ppid == parent
}

/// A process gone or a zombie: either way it holds nothing any more.
fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_restore_blocked_by_a_lock_on_the_scratch_server_is_aborted_without_leftovers_then_verified() {
    let rig = Rig::start(Options {
        limits: Some(Limits::new(
            Duration::from_secs(3),
            Duration::from_secs(3600),
        )),
        ..NO_OPTIONS
    });
    // A row-level security policy for a role that exists on the scratch
    // server (the same server here): the restore keeps it (ownership and
    // grants are skipped, policies are not) after all the data.
    let role = format!("vlock_{:08x}", rand::random::<u32>());
    let source = TestDatabase::create("vsrc");
    source.execute(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE exam (id serial PRIMARY KEY, title text);
         INSERT INTO exam(title) SELECT 'exam ' || i FROM generate_series(1, 20000) i;
         ALTER TABLE exam ENABLE ROW LEVEL SECURITY;
         CREATE POLICY readers ON exam FOR SELECT TO {role} USING (true);"
    ));
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    // Nothing depends on the role any more, so that the operator below can
    // drop it.
    source.execute("DROP POLICY readers ON exam;");

    // An operator's transaction on the scratch server, still open: it
    // dropped the role and holds the role's lock until it ends. Recording
    // a policy's (or an owner's, a grant's) dependency on a role takes a
    // share lock on the role, so the restore waits on it, as on a lock held
    // by a long migration.
    // Watched from another session: inside a transaction,
    // pg_stat_activity does not change.
    let (holder, observer) = rig.runtime.block_on(async {
        let target = PgTarget::from_url("postgresql://postgres@127.0.0.1:5432/postgres").unwrap();
        let holder = target.connect("lock-holder").await.unwrap();
        holder
            .batch_execute(&format!("BEGIN; DROP ROLE {role};"))
            .await
            .unwrap();
        (holder, target.connect("observer").await.unwrap())
    });

    let backup_id = rig.ship(&source.name, &file, &manifest);
    let mut scratch_seen = std::collections::BTreeSet::new();
    let mut psql_seen = std::collections::BTreeSet::new();
    test_support::wait_until(
        Duration::from_secs(120),
        "the restore to wait on the role's lock",
        || {
            let blocked = rig.runtime.block_on(async {
                observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname LIKE $1 AND wait_event_type = 'Lock'",
                        &[&format!("{}\\_%", rig.prefix)],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    > 0
            });
            // Taken while blocked: the names and pids of this attempt.
            scratch_seen.extend(databases_with_prefix(&rig.prefix));
            psql_seen.extend(verifier_psqls());
            blocked && !scratch_seen.is_empty() && !psql_seen.is_empty()
        },
    );

    let (subject, failed) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.failed", "{failed:#}");
    assert_eq!(failed["stage"], "verify", "{failed:#}");
    assert_eq!(failed["will_retry"], true, "{failed:#}");
    let aborted = &failed["aborted"];
    assert_eq!(aborted["step"], "restore", "{failed:#}");
    assert_eq!(aborted["reason"], "stalled", "{failed:#}");
    assert_eq!(aborted["stall_after_s"], 3, "{failed:#}");
    let bytes = aborted["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{failed:#}");
    assert_eq!(
        failed["error"],
        format!("restore of {name} stalled: no progress for 3s after {bytes} bytes; aborted")
    );
    // Nothing of the aborted attempt is left: its psql is gone, and so is
    // its scratch database, with the backend that waited on the lock.
    for pid in &psql_seen {
        assert!(process_gone(*pid), "psql {pid} survived the abort");
    }
    let left: Vec<String> = databases_with_prefix(&rig.prefix)
        .into_iter()
        .filter(|d| scratch_seen.contains(d))
        .collect();
    assert!(left.is_empty(), "scratch databases left: {left:?}");

    // The operator's transaction ends; the retry verifies the backup.
    rig.runtime
        .block_on(holder.batch_execute("ROLLBACK"))
        .unwrap();
    let mut verified = None;
    test_support::wait_until(Duration::from_secs(180), "the retry to verify", || {
        verified = rig
            .events("dump.verified")
            .into_iter()
            .find(|e| e["backup_id"] == backup_id.as_str());
        verified.is_some()
    });
    let verified = verified.unwrap();
    assert_eq!(
        verified["limits"],
        json!({"stall_after_s": 3, "deadline_s": 3600})
    );
    assert!(
        verified["checks"].to_string().contains("exact row counts"),
        "{verified:#}"
    );
    rig.assert_no_scratch_left();
    assert!(verifier_psqls().is_empty());
    drop(source);
    sh(
        "psql -X -q -d postgres -c \"DROP ROLE IF EXISTS $ROLE\"",
        &[("ROLE", &role)],
    );
}

#[test]
fn binary_documents_its_limits_and_rejects_a_zero_stall_timeout() {
    let bin = test_support::process::workspace_bin("verifier");
    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in ["VERIFY_STALL_TIMEOUT", "VERIFY_DEADLINE"] {
        assert!(help.contains(variable), "--help lacks {variable}:\n{help}");
    }
    let output = Command::new(&bin)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("SFTP_HOST", "127.0.0.1")
        .env("SFTP_USER", "backup")
        .env("SFTP_DIR", "/backups")
        .env("SFTP_KEY_FILE", "/nonexistent")
        .env("SFTP_HOST_FINGERPRINT", "SHA256:AAAA")
        .env("VERIFY_STALL_TIMEOUT", "0s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("verifier: ") && l.contains("VERIFY_STALL_TIMEOUT")),
        "{stderr}"
    );
}

#[test]
fn leftover_scratch_databases_are_swept_at_start() {
    let prefix_holder = std::sync::Mutex::new(String::new());
    let rig = Rig::start_with(NO_OPTIONS, |rig| {
        let leftover = format!("{}_{:012x}", rig.prefix, 0xdead_beefu64);
        sh(
            "psql -X -q -d postgres -c \"CREATE DATABASE $NAME\"",
            &[("NAME", &leftover)],
        );
        *prefix_holder.lock().unwrap() = leftover;
    });
    let leftover = prefix_holder.lock().unwrap().clone();
    assert!(!leftover.is_empty());
    test_support::wait_until(Duration::from_secs(60), "the sweep", || {
        databases_with_prefix(&rig.prefix).is_empty()
    });
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

/// Not a test: the benchmark of docs/benchmarks.md ("Verifier"). Run with
/// `BENCH_SCALE=1 cargo test --release -p verifier --test verifier -- --ignored --nocapture benchmark`.
/// The verifier binary verifies one artifact from the SFTP server while
/// `gzip -dc | psql` restores the same artifact from local disk into a
/// fresh database; both are timed, and the verifier's peak RSS is read
/// from /proc.
#[test]
#[ignore = "benchmark; run by hand"]
fn benchmark_verifier_against_gzip_psql() {
    let scale: u32 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rig = Rig::start(Options {
        external: true,
        ..NO_OPTIONS
    });
    let source = TestDatabase::create("vbench");
    // The shared dataset lives beside the checkout (../shared), or where BENCH_DATASET says.
    let dataset = std::env::var("BENCH_DATASET").unwrap_or_else(|_| {
        test_support::process::workspace_root()
            .join("../shared/bench/korrigo-dataset.sql")
            .display()
            .to_string()
    });
    sh(
        "psql -X -q -v ON_ERROR_STOP=1 -v scale=$SCALE -d \"$DB\" -f \"$DATASET\"",
        &[
            ("DB", &source.name),
            ("SCALE", &scale.to_string()),
            ("DATASET", &dataset),
        ],
    );
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip -6 > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let env: Vec<(String, String)> = [
        ("NATS_URL", rig.nats.url.clone()),
        ("RUST_LOG", "info".into()),
        (
            "VERIFY_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres".into(),
        ),
        ("VERIFY_SCRATCH_PREFIX", rig.prefix.clone()),
        ("VERIFY_REVERIFY_EVERY", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(rig.sshd.sftp_env(&rig.remote_base()))
    .collect();
    let verifier = test_support::ServiceProcess::spawn("verifier", &[], &env);
    assert!(
        verifier.wait_for_log("waiting for work", Duration::from_secs(60)),
        "{}",
        verifier.log()
    );

    let baseline = |round: u32| {
        let target = TestDatabase::create("vbase");
        let started = std::time::Instant::now();
        sh(
            "gzip -dc \"$IN\" | psql -X -q -v ON_ERROR_STOP=1 -d \"$DB\" > /dev/null",
            &[("IN", file.to_str().unwrap()), ("DB", &target.name)],
        );
        let took = started.elapsed();
        eprintln!(
            "round {round}: gzip -dc | psql: {:.2} s",
            took.as_secs_f64()
        );
        took
    };
    let mut manifest = manifest;
    let mut verify = |round: u32| {
        manifest["backup_id"] = json!(format!("bench-{round}-{:08x}", rand::random::<u32>()));
        let started = std::time::Instant::now();
        let backup_id = rig.ship(&source.name, &file, &manifest);
        let (subject, event) = rig.verdict(&backup_id);
        let took = started.elapsed();
        assert_eq!(subject, "dump.verified", "{event:#}");
        // The scratch database is dropped after the verdict: let that end
        // before the next baseline runs beside it (untimed).
        rig.assert_no_scratch_left();
        eprintln!(
            "round {round}: verifier: {:.2} s wall (duration_ms {}), steps {}",
            took.as_secs_f64(),
            event["duration_ms"],
            event["steps_ms"]
        );
        took
    };
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let base = baseline(round);
        let ours = verify(round);
        ratios.push(ours.as_secs_f64() / base.as_secs_f64());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", verifier.pid())).unwrap();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_owned();
    eprintln!(
        "artifact {} bytes; ratios verifier/baseline {ratios:.3?}; verifier peak RSS {peak}",
        std::fs::metadata(&file).unwrap().len()
    );
    rig.assert_no_scratch_left();
}
