//! The verifier against real servers: artifacts made with the real
//! pg_dump / gzip / age / tar, put on a real sshd, announced on a real
//! nats-server, restored into scratch databases on the local PostgreSQL.
//! Every test checks that no scratch database is left behind.

#[path = "verifier/app_state.rs"]
mod app_state;
#[path = "verifier/binary.rs"]
mod binary;
#[path = "verifier/copies.rs"]
mod copies;
#[path = "verifier/failures.rs"]
mod failures;
#[path = "verifier/hangs.rs"]
mod hangs;
#[path = "verifier/restores.rs"]
mod restores;
#[path = "verifier/reverification.rs"]
mod reverification;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backup_core::bus::{Bus, NatsOptions};
use backup_core::pg::PgTarget;
use backup_core::sftp::SftpArgs;
use backup_core::watchdog::Limits;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use test_support::moto::MotoServer;
use test_support::nats::NatsServer;
use test_support::pipeline::{EventLog, sftp_args};
use test_support::postgres::{TestDatabase, databases_with_prefix, ensure_postgres_running};
use test_support::sshd::Sshd;
use tokio_util::sync::CancellationToken;

/// The bucket of the rig's S3 copy.
const S3_BUCKET: &str = "verifier-copies";

/// NATS, sshd and one in-process verifier with its own scratch prefix.
struct Rig {
    nats: NatsServer,
    sshd: Sshd,
    /// The second SFTP server (`sftp2`), when the test asked for one.
    sshd2: Option<Sshd>,
    /// The S3 copy (`s3`): moto and the bucket's settings, when asked for.
    s3: Option<(MotoServer, remote_s3::S3Settings)>,
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
    /// A second SFTP server (`sftp2`) that [`Rig::ship`] copies to too.
    second_copy: bool,
    /// `VERIFY_FROM`.
    verify_from: Option<&'static str>,
    /// An S3 bucket (`s3`, on moto) that [`Rig::ship`] copies to too.
    s3_copy: bool,
}

const NO_OPTIONS: Options = Options {
    age_identity: None,
    sql_checks: None,
    reverify_every: None,
    external: false,
    limits: None,
    second_copy: false,
    verify_from: None,
    s3_copy: false,
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
            sshd2: options.second_copy.then(Sshd::start),
            s3: options.s3_copy.then(|| {
                let mut moto = MotoServer::start();
                moto.create_bucket(S3_BUCKET, false);
                let settings = remote_s3::S3Settings::new(
                    Some(moto.endpoint.clone()),
                    S3_BUCKET,
                    &moto.access_key_id,
                    moto.secret_access_key.clone().into(),
                );
                (moto, settings)
            }),
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
        for base in rig.remote_bases() {
            std::fs::create_dir_all(base).expect("remote base");
        }
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
            io_timeout: Duration::from_secs(60),
            ..sftp_args(&rig.sshd, &rig.remote_base())
        };
        let settings = verifier::Settings {
            sftp: sftp.target().expect("sftp settings"),
            s3: rig.s3.as_ref().map(|(_, settings)| settings.clone()),
            sftp2: rig.sshd2.as_ref().map(|sshd2| {
                sftp_args(sshd2, &sshd2.backups_dir())
                    .target()
                    .expect("sftp2 settings")
                    .expect("SFTP_HOST is set")
            }),
            verify_from: options.verify_from.map(str::to_owned),
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
            concurrency: 1,
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
        self.sshd.backups_dir()
    }

    /// The base directory of every SFTP server of the rig, `sftp` first.
    fn remote_bases(&self) -> Vec<PathBuf> {
        std::iter::once(&self.sshd)
            .chain(&self.sshd2)
            .map(Sshd::backups_dir)
            .collect()
    }

    fn chown_remote(&self) {
        for sshd in std::iter::once(&self.sshd).chain(&self.sshd2) {
            sshd.hand_over(&sshd.remote_root);
        }
    }

    /// Puts an artifact and its manifest on every SFTP server of the rig
    /// and publishes `dump.shipped` for them; returns the backup id.
    fn ship(&self, database: &str, artifact_file: &Path, manifest: &Value) -> String {
        self.place(database, artifact_file, manifest);
        self.publish_shipped(database, manifest)
    }

    /// Puts an artifact and its manifest on every SFTP server of the rig.
    fn place(&self, database: &str, artifact_file: &Path, manifest: &Value) {
        let name = manifest["artifact"].as_str().unwrap().to_owned();
        for base in self.remote_bases() {
            let dir = base.join(database);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(artifact_file, dir.join(&name)).unwrap();
            std::fs::write(
                dir.join(format!("{name}.manifest.json")),
                serde_json::to_vec_pretty(manifest).unwrap(),
            )
            .unwrap();
        }
        self.chown_remote();
        if self.s3.is_some() {
            let manifest = serde_json::to_vec_pretty(manifest).unwrap();
            self.put_s3(database, &name, &std::fs::read(artifact_file).unwrap());
            self.put_s3(database, &format!("{name}.manifest.json"), &manifest);
        }
    }

    /// Writes `bytes` as `<database>/<name>` in the rig's bucket.
    fn put_s3(&self, database: &str, name: &str, bytes: &[u8]) {
        let (_, settings) = self.s3.as_ref().expect("the rig has an S3 copy");
        let remote = remote_s3::S3Remote::connect(settings).expect("S3 client");
        self.runtime
            .block_on(remote.put_small(&remote.key(database, name), bytes))
            .expect("put into the bucket");
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
            if js.get_stream("BACKUPS").await.is_err() {
                return Vec::new();
            }
            let log = EventLog::follow(&js).await;
            log.sync().await;
            log.of(subject)
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
