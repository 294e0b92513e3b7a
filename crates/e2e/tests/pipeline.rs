//! One backup travels the whole way, over real servers, and a dead SFTP
//! server ends in `dump.failed` and an alert email.

#[path = "pipeline/docs.rs"]
mod docs;
#[path = "pipeline/resilience.rs"]
mod resilience;
#[path = "pipeline/scripts.rs"]
mod scripts;
#[path = "pipeline/settings.rs"]
mod settings;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use test_support::nats::NatsServer;
use test_support::postgres::{
    TestDatabase, databases_with_prefix, ensure_postgres_running, pg_env,
};
use test_support::process::{ServiceProcess, wait_until};
use test_support::smtp::SmtpServer;
use test_support::sshd::Sshd;

/// The servers one pipeline runs against, and the environment each service gets.
struct Rig {
    nats: NatsServer,
    sshd: Sshd,
    smtp: SmtpServer,
    source: TestDatabase,
    spool: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        ensure_postgres_running();
        let source = TestDatabase::create("e2e_src");
        source.execute(
            "CREATE SCHEMA grading;
             CREATE TABLE grading.exam (id bigserial PRIMARY KEY, title text NOT NULL);
             CREATE TABLE grading.copy (id bigserial PRIMARY KEY, exam_id bigint REFERENCES grading.exam(id), score numeric(4,2));
             CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), detail text);
             CREATE TABLE public.empty_table (id int);
             INSERT INTO grading.exam(title) SELECT 'Devoir n°' || i FROM generate_series(1, 40) i;
             INSERT INTO grading.copy(exam_id, score) SELECT 1 + i % 40, (i % 20)::numeric FROM generate_series(1, 5000) i;
             INSERT INTO public.audit_log(detail) SELECT md5(i::text) FROM generate_series(1, 20000) i;",
        );
        Rig {
            nats: NatsServer::start(),
            sshd: Sshd::start(),
            smtp: SmtpServer::start(),
            source,
            spool: tempfile::tempdir().expect("spool dir"),
        }
    }

    /// This rig's own scratch-database prefix, so a test sees only the
    /// scratch databases of its own verifier.
    fn scratch_prefix(&self) -> String {
        format!(
            "vfy{}",
            self.source.name.rsplit('_').next().expect("hex suffix")
        )
    }

    fn remote_dir(&self) -> PathBuf {
        self.sshd.remote_root.join("backups")
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("NATS_URL", self.nats.url.clone()),
            ("RUST_LOG", "info".into()),
            ("BACKUP_DATABASES", self.source.name.clone()),
            ("BACKUP_SPOOL_DIR", self.spool.path().display().to_string()),
            (
                "VERIFY_DATABASE_URL",
                "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            ),
            ("SMTP_URL", self.smtp.url.clone()),
            ("ALERT_EMAIL_FROM", "backups@korrigo.example".into()),
            ("ALERT_EMAIL_TO", "oncall@korrigo.example".into()),
            ("SHUTDOWN_GRACE", "2s".into()),
            ("VERIFY_SCRATCH_PREFIX", self.scratch_prefix()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.sshd.sftp_env(&self.remote_dir()))
        .collect();
        env.extend(pg_env());
        env
    }

    fn spawn_all(&self) -> Vec<ServiceProcess> {
        let env = self.env();
        ["dumper", "shipper", "verifier", "pruner", "notifier"]
            .into_iter()
            .map(|name| {
                let service = ServiceProcess::spawn(name, &[], &env);
                assert!(
                    service.wait_for_log("waiting for work", Duration::from_secs(60)),
                    "{name} did not start:\n{}",
                    service.log()
                );
                service
            })
            .collect()
    }

    fn backupctl(&self, args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
        let mut env = self.env();
        // Its output is parsed: keep the connection logs out of it.
        env.push(("RUST_LOG".into(), "warn".into()));
        let mut ctl = ServiceProcess::spawn("backupctl", args, &env);
        let status = ctl.wait_timeout(Duration::from_secs(180));
        (status, ctl.log())
    }
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read artifact")))
}

/// The last event stored on `subject`, read straight from JetStream.
fn last_event(nats_url: &str, subject: &str) -> serde_json::Value {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("BACKUPS").await.expect("BACKUPS stream");
        let message = stream
            .get_last_raw_message_by_subject(subject)
            .await
            .unwrap_or_else(|e| panic!("no {subject} event: {e}"));
        serde_json::from_slice(&message.payload).expect("event is JSON")
    })
}

/// Publishes raw bytes to the stream, as a buggy or hostile client would.
fn publish_raw(nats_url: &str, subject: &'static str, payload: &'static [u8]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
}

/// The first JSON document in `output` (which also holds stderr lines).
fn first_json(output: &str, opening: char) -> serde_json::Value {
    let start = output
        .find(opening)
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .expect("a JSON value")
        .unwrap_or_else(|e| panic!("bad JSON ({e}) in:\n{output}"))
}

/// Every `dump.failed` stored so far.
fn failures(nats_url: &str) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("BACKUPS").await.expect("BACKUPS stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "dump.failed".into(),
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut found = Vec::new();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(1), messages.next()).await
        {
            found.push(serde_json::from_slice(&message.payload).expect("JSON"));
        }
        found
    })
}

/// Names of the consumers on the `BACKUPS` stream.
fn consumer_names(nats_url: &str) -> BTreeSet<String> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("BACKUPS").await.expect("BACKUPS stream");
        let names: Vec<_> = stream.consumer_names().collect().await;
        names
            .into_iter()
            .map(|n| n.expect("consumer name"))
            .collect()
    })
}

#[test]
fn one_backup_travels_from_trigger_to_verified() {
    let rig = Rig::start();
    let mut services = rig.spawn_all();
    let db = rig.source.name.clone();

    let (status, output) =
        rig.backupctl(&["trigger", "--database", &db, "--wait", "--timeout", "150s"]);
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl trigger --wait failed:\n{output}"
    );
    assert!(output.contains("verified"), "{output}");

    let created = last_event(&rig.nats.url, "dump.created");
    let verified = last_event(&rig.nats.url, "dump.verified");
    let artifact = created["artifact"]
        .as_str()
        .expect("artifact name")
        .to_owned();
    assert_eq!(verified["artifact"], created["artifact"]);
    assert_eq!(verified["backup_id"], created["backup_id"]);
    assert!(
        artifact.starts_with(&format!("{db}_")) && artifact.ends_with(".sql.gz"),
        "{artifact}"
    );

    // Final names only, nothing half-written beside them.
    let remote = rig.remote_dir().join(&db);
    assert_eq!(
        files_in(&remote),
        BTreeSet::from([
            artifact.clone(),
            format!("{artifact}.manifest.json"),
            format!("{artifact}.verified.json"),
        ])
    );
    let remote_artifact = remote.join(&artifact);
    assert_eq!(
        sha256_file(&remote_artifact),
        created["sha256"].as_str().unwrap()
    );
    assert_eq!(verified["sha256"], created["sha256"]);
    assert_eq!(
        std::fs::metadata(&remote_artifact).unwrap().len(),
        created["size_bytes"].as_u64().unwrap()
    );
    let gzip_t = Command::new("gzip")
        .arg("-t")
        .arg(&remote_artifact)
        .status()
        .expect("run gzip");
    assert!(gzip_t.success(), "gzip -t rejects the remote artifact");

    // The manifest's row counts are the source's.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(remote.join(format!("{artifact}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["tables"]["grading.copy"], 5000);
    assert_eq!(manifest["tables"]["public.audit_log"], 20000);
    assert_eq!(manifest["sha256"], created["sha256"]);

    // An independent restore with the standard tools gives the same rows.
    let restored = TestDatabase::create("e2e_restore");
    let restore = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$ARTIFACT\" | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d \"$TARGET\"")
        .env("ARTIFACT", &remote_artifact)
        .env("TARGET", &restored.name)
        .status()
        .expect("run gzip | psql");
    assert!(restore.success(), "gzip -dc | psql failed");
    assert_eq!(restored.row_counts(), rig.source.row_counts());

    // The verifier cleaned up after itself.
    assert!(
        databases_with_prefix(&rig.scratch_prefix()).is_empty(),
        "scratch databases left behind"
    );
    // The pruner ran after verification and kept the only backup.
    let pruned_ok = || {
        std::panic::catch_unwind(|| last_event(&rig.nats.url, "dump.pruned")).is_ok_and(|p| {
            p["kept"]
                .as_array()
                .is_some_and(|k| k.iter().any(|a| a == artifact.as_str()))
        })
    };
    wait_until(
        Duration::from_secs(30),
        "dump.pruned keeping the new backup",
        pruned_ok,
    );
    // Each service reads through its own durable consumer, by name.
    let consumers = consumer_names(&rig.nats.url);
    for name in ["dumper", "shipper", "verifier", "pruner", "notifier"] {
        assert!(
            consumers.contains(name),
            "no durable consumer {name}: {consumers:?}"
        );
    }
    // The operator's view agrees: status healthy, the catalog says verified.
    let (status, output) = rig.backupctl(&["status", "--json"]);
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl status:\n{output}"
    );
    let report = first_json(&output, '{');
    let entry = report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == db.as_str())
        .unwrap();
    assert_eq!(entry["last_verified_artifact"], artifact.as_str());
    assert!(
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["alive"] == true),
        "{report}"
    );
    let (status, output) = rig.backupctl(&["list", "--database", &db, "--json"]);
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl list:\n{output}"
    );
    let catalog = first_json(&output, '[');
    assert_eq!(catalog[0]["artifact"], artifact.as_str());
    assert_eq!(catalog[0]["verified"], true);
    // Success sends no alert.
    assert!(
        rig.smtp.messages().is_empty(),
        "unexpected alert on success"
    );

    // Garbage on the bus is refused, reported, and crashes nothing.
    publish_raw(&rig.nats.url, "backup.trigger", b"[\"not an object\"]");
    publish_raw(
        &rig.nats.url,
        "dump.created",
        b"{\"artifact\": \"../../etc/passwd\"}",
    );
    wait_until(
        Duration::from_secs(30),
        "both malformed messages reported",
        || {
            let found = failures(&rig.nats.url);
            let rejected = |stage: &str| {
                found.iter().any(|f| {
                    f["stage"] == stage
                        && f["will_retry"] == false
                        && f["error"].as_str().is_some_and(|e| e.contains("rejected"))
                })
            };
            rejected("trigger") && rejected("ship")
        },
    );
    for service in &mut services {
        assert!(
            service.try_wait().is_none(),
            "{} exited:\n{}",
            service.name,
            service.log()
        );
    }

    // A name that is not configured: backupctl, which has BACKUP_DATABASES
    // here, refuses it before publishing anything.
    let (status, output) = rig.backupctl(&["trigger", "--database", "not_configured"]);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{output}");
    assert!(
        output.contains("not configured for backup") && output.contains("nothing triggered"),
        "{output}"
    );
    // Without the list, backupctl says it did not check; the dumper refuses
    // and the wait fails at once, with exit 1 and the cause printed once.
    let mut env = rig.env();
    env.push(("RUST_LOG".into(), "warn".into()));
    env.push(("BACKUP_DATABASES".into(), String::new()));
    let mut ctl = ServiceProcess::spawn(
        "backupctl",
        &[
            "trigger",
            "--database",
            "not_configured",
            "--wait",
            "--timeout",
            "60s",
        ],
        &env,
    );
    let code = ctl
        .wait_timeout(Duration::from_secs(90))
        .and_then(|s| s.code());
    let output = ctl.log();
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("not checked"), "{output}");
    assert!(output.contains("trigger failed"), "{output}");
    assert_eq!(
        output.matches("is not configured for backup").count(),
        1,
        "the failure is printed once: {output}"
    );
    // The rejected trigger is listed by status, which stays healthy.
    let (status, output) = rig.backupctl(&["status"]);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{output}");
    assert!(
        output.contains("recent rejected triggers") && output.contains("not_configured"),
        "{output}"
    );
    assert!(!output.contains("FAILING"), "{output}");
    // An unreachable NATS is a prompt, clear failure for the CLI.
    let mut ctl = ServiceProcess::spawn(
        "backupctl",
        &["--connect-timeout", "2s", "trigger"],
        &[("NATS_URL".to_owned(), "nats://127.0.0.1:1".to_owned())],
    );
    let code = ctl
        .wait_timeout(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert_eq!(code, Some(2), "{}", ctl.log());
    assert!(ctl.log().contains("NATS is unreachable"), "{}", ctl.log());
}

#[test]
fn dead_sftp_server_fails_the_ship_stage_and_alerts() {
    let mut rig = Rig::start();
    let _services = rig.spawn_all();
    let db = rig.source.name.clone();
    rig.sshd.stop();

    // --wait reports the failure and keeps waiting while the pipeline retries.
    let (status, output) =
        rig.backupctl(&["trigger", "--database", &db, "--wait", "--timeout", "100s"]);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "backupctl must time out, not succeed:\n{output}"
    );
    assert!(
        output.contains("ship failed") && output.contains("(retrying)"),
        "{output}"
    );

    let failed = last_event(&rig.nats.url, "dump.failed");
    assert_eq!(failed["stage"], "ship");
    assert_eq!(failed["database"], db.as_str());
    assert_eq!(failed["will_retry"], true);
    let error = failed["error"].as_str().unwrap();
    assert!(!error.is_empty() && !error.contains('\n'), "{error}");

    let mail = rig.smtp.wait_for_messages(1, Duration::from_secs(60));
    let alert = &mail[0];
    assert!(alert.subject.contains(&db), "{}", alert.subject);
    assert!(alert.subject.contains("ship"), "{}", alert.subject);
    assert!(
        alert.body_text.contains(error),
        "alert must carry the cause:\n{}",
        alert.body_text
    );
    assert!(
        alert
            .envelope_to
            .iter()
            .any(|to| to.contains("oncall@korrigo.example"))
    );

    // status names the failing stage and exits 1.
    let (status, output) = rig.backupctl(&["status"]);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
    assert!(output.contains("FAILING at ship"), "{output}");

    // Nothing reached the remote under a final name.
    let remote = rig.remote_dir().join(&db);
    assert!(!remote.exists() || files_in(&remote).is_empty());
    // The artifact waits in the spool, with its manifest, for the retry.
    let spooled = files_in(&rig.spool.path().join(&db));
    let artifact = failed["artifact"]
        .as_str()
        .expect("the failure names the artifact");
    assert!(spooled.contains(artifact), "{spooled:?}");
    assert!(
        spooled.contains(&format!("{artifact}.manifest.json")),
        "{spooled:?}"
    );
    assert!(
        !spooled.iter().any(|f| f.ends_with(".partial")),
        "{spooled:?}"
    );
}

#[test]
fn every_binary_answers_help_and_rejects_bad_configuration_in_one_line() {
    for name in [
        "dumper",
        "shipper",
        "verifier",
        "pruner",
        "notifier",
        "backupctl",
    ] {
        let bin = test_support::process::workspace_bin(name);
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .expect("run --help");
        assert!(
            help.status.success(),
            "{name} --help failed: {}",
            String::from_utf8_lossy(&help.stderr)
        );
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("NATS_URL"),
            "{name} --help lists NATS_URL"
        );
    }
    // Invalid settings: exit 2 with one line naming the cause, no panic.
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("dumper", &[("BACKUP_DATABASES", "bad-name;drop")]),
        (
            "dumper",
            &[("BACKUP_DATABASES", "ok"), ("NATS_PASSWORD", "x")],
        ),
        (
            "shipper",
            &[
                ("SFTP_HOST", "h"),
                ("SFTP_USER", "u"),
                ("SFTP_DIR", "/d"),
                ("SFTP_KEY_FILE", "/nonexistent"),
            ],
        ),
        ("notifier", &[("SMTP_URL", "smtp://127.0.0.1:1")]),
    ];
    for (name, env) in cases {
        let output = Command::new(test_support::process::workspace_bin(name))
            .env_remove("BACKUP_DATABASES")
            .env_remove("PGDATABASE")
            .envs(env.iter().copied())
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .expect("run binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(output.status.code(), Some(2), "{name} {env:?}: {stderr}");
        assert!(
            last.starts_with(&format!("{name}: ")),
            "{name} {env:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `docker-compose config` output as JSON (PyYAML ships with docker-compose).
fn compose_config(env_file: &Path) -> serde_json::Value {
    let root = test_support::process::workspace_root();
    let output = Command::new("docker-compose")
        .arg("--env-file")
        .arg(env_file)
        .arg("-f")
        .arg(root.join("deploy/compose.yaml"))
        .arg("config")
        .output()
        .expect("run docker-compose (Debian package docker-compose)");
    assert!(
        output.status.success(),
        "docker-compose config rejects deploy/compose.yaml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut to_json = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml, json; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with yaml");
    use std::io::Write;
    to_json
        .stdin
        .take()
        .unwrap()
        .write_all(&output.stdout)
        .unwrap();
    let json = to_json.wait_with_output().unwrap();
    serde_json::from_slice(&json.stdout).expect("compose config as JSON")
}

/// Variables a binary reads without a clap flag: secrets (and their `_FILE`
/// form) and libpq's own.
const SECRET_VARIABLES: [&str; 11] = [
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "PGPASSWORD",
    "SFTP_KEY_PASSPHRASE",
    "VERIFY_DATABASE_URL",
    "SMTP_URL",
    "SMTP_PASSWORD",
    "TELEGRAM_BOT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "HEALTHCHECK_URL",
    "RESTORE_TARGET_URL",
];

fn accepted_by(binary: &str, variable: &str) -> bool {
    // backupctl takes its settings on its subcommands.
    let commands: &[&[&str]] = if binary == "backupctl" {
        &[
            &["--help"],
            &["trigger", "--help"],
            &["status", "--help"],
            &["list", "--help"],
            &["restore", "--help"],
            &["doctor", "--help"],
        ]
    } else {
        &[&["--help"]]
    };
    let help: String = commands
        .iter()
        .map(|args| {
            let out = Command::new(test_support::process::workspace_bin(binary))
                .args(*args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let base = variable.strip_suffix("_FILE").unwrap_or(variable);
    help.contains(&format!("[env: {variable}=")) || SECRET_VARIABLES.contains(&base)
}

#[test]
fn compose_environment_runs_natively_to_a_verified_backup() {
    let rig = Rig::start();
    let root = test_support::process::workspace_root();
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for user in [
        "dumper", "shipper", "verifier", "pruner", "notifier", "operator",
    ] {
        std::fs::write(
            secrets.join(format!("nats_{user}_password")),
            format!("pw-{user}-{}\n", rig.nats.port),
        )
        .unwrap();
    }
    std::fs::copy(&rig.sshd.client_key, secrets.join("sftp_key")).unwrap();
    std::fs::copy(&rig.sshd.known_hosts, secrets.join("sftp_known_hosts")).unwrap();
    std::fs::write(
        secrets.join("backup_reader_password"),
        "unused-with-trust-auth\n",
    )
    .unwrap();
    std::fs::write(
        secrets.join("verify_database_url"),
        "postgresql://postgres@127.0.0.1:5432/postgres\n",
    )
    .unwrap();
    std::fs::write(secrets.join("smtp_url"), format!("{}\n", rig.smtp.url)).unwrap();
    // Channels and keys this site does not use: empty secrets, as init-secrets.sh leaves them.
    for unused in [
        "telegram_bot_token",
        "slack_webhook_url",
        "healthcheck_url",
        "age_identity",
        "restore_target_url",
    ] {
        std::fs::write(secrets.join(unused), "\n").unwrap();
    }
    // Korrigo's media volume, mounted read-only into the dumper.
    let media = work.path().join("media");
    std::fs::create_dir_all(media.join("copies")).unwrap();
    std::fs::write(media.join("copies/copie_1.pdf"), b"%PDF-1.4 scanned copy").unwrap();

    // The operator's .env, as .env.example asks for it.
    let env_file = work.path().join(".env");
    std::fs::write(
        &env_file,
        format!(
            "POSTGRES_DB={db}\nBACKUP_PGUSER=postgres\nKORRIGO_NETWORK=korrigo_default\nSFTP_HOST=127.0.0.1\n\
             SFTP_PORT={port}\nSFTP_USER={user}\nSFTP_DIR={dir}\nALERT_EMAIL_FROM=backups@korrigo.example\n\
             ALERT_EMAIL_TO=oncall@korrigo.example\nBACKUP_TZ=Europe/Paris\n",
            db = rig.source.name,
            port = rig.sshd.port,
            user = rig.sshd.user,
            dir = rig.remote_dir().display(),
        ),
    )
    .unwrap();
    let config = compose_config(&env_file);

    // NATS with the compose file's configuration and generated users.
    let auth = Command::new("bash")
        .arg(root.join("deploy/scripts/nats-auth.sh"))
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(
        auth.status.success(),
        "{}",
        String::from_utf8_lossy(&auth.stderr)
    );
    let nats_dir = work.path().join("nats");
    std::fs::create_dir(&nats_dir).unwrap();
    std::fs::write(nats_dir.join("auth.conf"), &auth.stdout).unwrap();
    // The harness picks the port and the store; the rest is the compose file's.
    let nats_conf = std::fs::read_to_string(root.join("deploy/nats/nats.conf")).unwrap();
    assert!(
        nats_conf.contains("store_dir: /data"),
        "nats.conf keeps JetStream on the volume"
    );
    std::fs::write(
        nats_dir.join("nats.conf"),
        nats_conf.replace("store_dir: /data", ""),
    )
    .unwrap();
    let mut nats =
        NatsServer::start_with_args(&["-c", nats_dir.join("nats.conf").to_str().unwrap()]);

    // Compose gives every service the same 0.0.0.0:9464 (one per container);
    // side by side on one host, each gets its own loopback port.
    let health_ports: std::collections::BTreeMap<&str, u16> =
        ["dumper", "shipper", "verifier", "pruner", "notifier"]
            .into_iter()
            .map(|name| (name, test_support::free_port()))
            .collect();
    for name in health_ports.keys() {
        let service = &config["services"][*name];
        assert_eq!(
            service["environment"]["HEALTH_LISTEN"], "0.0.0.0:9464",
            "{name} serves /healthz and /metrics inside its container"
        );
        assert_eq!(
            service["healthcheck"]["test"],
            serde_json::json!(["CMD", name, "--health-probe"]),
            "{name}'s compose health check runs its own probe"
        );
        assert!(
            service.get("ports").is_none(),
            "{name}: the metrics port stays off the host"
        );
    }

    // scripts/compose-test.sh builds and runs the image on a real engine;
    // here, every binary compose runs is one the Dockerfile copies into it,
    // and the spool compose mounts is the directory the image makes for its
    // user.
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let copied = dockerfile
        .lines()
        .find(|line| line.trim_start().starts_with("for bin in"))
        .expect("the Dockerfile copies a list of binaries");
    for name in health_ports.keys().chain(&["backupctl"]) {
        assert!(copied.contains(name), "the image lacks {name}: {copied}");
    }
    assert!(
        dockerfile.contains("USER 10001:10001")
            && dockerfile.contains("-m 0700 /var/lib/backup /var/lib/backup/spool"),
        "the image's user owns the spool compose mounts"
    );

    let spool = work.path().join("spool");
    let rewrite = |value: &str| -> String {
        value
            .replace("nats://nats:4222", &nats.url)
            .replace("/run/secrets/", &format!("{}/", secrets.display()))
            .replace("/var/lib/backup/spool", &spool.display().to_string())
            .replace("/srv/korrigo-media", &media.display().to_string())
    };
    let service_env = |name: &str| -> Vec<(String, String)> {
        let environment = config["services"][name]["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("service {name} has an environment"));
        let mut env: Vec<(String, String)> = environment
            .iter()
            .map(|(key, value)| {
                assert!(
                    accepted_by(
                        if name == "backupctl" {
                            "backupctl"
                        } else {
                            name
                        },
                        key
                    ),
                    "compose passes {key} to {name}, which does not read it"
                );
                let value = value
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| value.to_string());
                let value = if key == "PGHOST" && value == "db" {
                    "127.0.0.1".to_owned()
                } else if key == "HEALTH_LISTEN" {
                    format!("127.0.0.1:{}", health_ports[name])
                } else {
                    rewrite(&value)
                };
                (key.clone(), value)
            })
            .collect();
        env.push(("SHUTDOWN_GRACE".into(), "2s".into()));
        env
    };
    let mut services = Vec::new();
    for name in ["dumper", "shipper", "verifier", "pruner", "notifier"] {
        let service = ServiceProcess::spawn(name, &[], &service_env(name));
        assert!(
            service.wait_for_log("waiting for work", Duration::from_secs(60)),
            "{name}:\n{}",
            service.log()
        );
        services.push(service);
    }
    // Without credentials, nobody may trigger.
    let mut anonymous = ServiceProcess::spawn(
        "backupctl",
        &["trigger", "--timeout", "10s"],
        &[("NATS_URL".to_owned(), nats.url.clone())],
    );
    let refused = anonymous.wait_timeout(Duration::from_secs(30));
    assert!(
        refused.is_some_and(|s| !s.success()),
        "an anonymous trigger was accepted:\n{}",
        anonymous.log()
    );

    let mut ctl = ServiceProcess::spawn(
        "backupctl",
        &["trigger", "--wait", "--timeout", "150s"],
        &service_env("backupctl"),
    );
    let status = ctl.wait_timeout(Duration::from_secs(180));
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl with the compose settings:\n{}",
        ctl.log()
    );
    assert!(ctl.log().contains("verified"), "{}", ctl.log());
    // The media volume went the same way: archived, shipped, verified.
    let media_remote = rig.remote_dir().join("media");
    wait_until(
        Duration::from_secs(90),
        "the media archive verified on the remote",
        || {
            media_remote.is_dir()
                && files_in(&media_remote)
                    .iter()
                    .any(|f| f.ends_with(".tar.gz.verified.json"))
        },
    );
    for service in &services {
        assert!(
            !service.log().contains("Permissions Violation"),
            "{}:\n{}",
            service.name,
            service.log()
        );
    }

    // Health and metrics, as compose's health checks and Prometheus see them.
    let database = rig.source.name.clone();
    let probe_env: std::collections::BTreeMap<&str, Vec<(String, String)>> = health_ports
        .keys()
        .map(|name| (*name, service_env(name)))
        .collect();
    let stage_of = |name: &str| match name {
        "dumper" => "dump",
        "shipper" => "ship",
        "verifier" => "verify",
        "pruner" => "prune",
        // The notifier consumes every event: it sees the verification too.
        _ => "verify",
    };
    for (name, port) in &health_ports {
        let (status, body) = http_get(*port, "/healthz");
        assert_eq!(status, 200, "{name} /healthz: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(report["status"], "ok", "{name}: {body}");
        assert_eq!(report["nats"], "connected", "{name}: {body}");
        // The pruner runs after dump.verified: give it its time.
        let wanted = format!(
            "backup_last_success_timestamp_seconds{{database=\"{database}\",stage=\"{}\"}} ",
            stage_of(name)
        );
        wait_until(
            Duration::from_secs(60),
            &format!("{name} /metrics shows {wanted}"),
            || {
                http_get(*port, "/metrics")
                    .1
                    .lines()
                    .any(|l| l.starts_with(&wanted))
            },
        );
        let (_, metrics) = http_get(*port, "/metrics");
        assert!(
            metrics.lines().any(|l| l == "backup_nats_connected 1"),
            "{name}:\n{metrics}"
        );
        let mut probe = ServiceProcess::spawn(name, &["--health-probe"], &probe_env[name]);
        let status = probe.wait_timeout(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()) && probe.log().contains("healthy"),
            "{name} --health-probe:\n{}",
            probe.log()
        );
    }
    let (_, verifier_metrics) = http_get(health_ports["verifier"], "/metrics");
    for wanted in [
        format!("backup_stage_duration_seconds{{database=\"{database}\",stage=\"verify\"}} "),
        format!("backup_artifact_size_bytes{{database=\"{database}\"}} "),
    ] {
        assert!(
            verifier_metrics.lines().any(|l| l.starts_with(&wanted)),
            "no {wanted} in:\n{verifier_metrics}"
        );
    }

    // NATS gone: every probe turns unhealthy (exit 1) and says why.
    nats.kill();
    for name in health_ports.keys() {
        let mut last = String::new();
        wait_until(
            Duration::from_secs(60),
            &format!("{name} --health-probe turns unhealthy without NATS"),
            || {
                let mut probe = ServiceProcess::spawn(name, &["--health-probe"], &probe_env[name]);
                let status = probe.wait_timeout(Duration::from_secs(30));
                last = probe.log();
                status.is_some_and(|s| s.code() == Some(1))
            },
        );
        assert!(
            last.contains("unhealthy") && last.contains("NATS connection is"),
            "{name} --health-probe:\n{last}"
        );
    }
}

/// GET `path` from a service's health endpoint on 127.0.0.1:`port`: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the health endpoint on port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    (status, body.to_owned())
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let root = test_support::process::workspace_root();
    let units = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("deploy/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        // Point ExecStart at the freshly built binaries instead of /usr/local/bin.
        let mut text = std::fs::read_to_string(&path).unwrap();
        for bin in [
            "dumper",
            "shipper",
            "verifier",
            "pruner",
            "notifier",
            "backupctl",
        ] {
            text = text.replace(
                &format!("/usr/local/bin/{bin}"),
                &test_support::process::workspace_bin(bin)
                    .display()
                    .to_string(),
            );
        }
        std::fs::write(units.path().join(&name), text).unwrap();
        names.push(name);
    }
    assert!(
        names.len() >= 7,
        "expected a unit per service plus the timer pair: {names:?}"
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|n| units.path().join(n)))
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        // Not about our units: the host's own unit files and missing users on a build machine.
        .filter(|l| l.contains("pg-backup-") && !l.contains("User=") && !l.contains("Group="))
        .collect();
    assert!(
        output.status.success() && problems.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
