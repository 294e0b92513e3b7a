//! `backupctl doctor` against a healthy set-up of real servers (NATS with
//! a password, PostgreSQL, OpenSSH sshd, SMTP) and the five real services,
//! then against each broken piece in turn: one environment variable (or
//! one thing on disk) changed per run, the failing line and the exit code
//! checked each time.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::PortReservation;
use test_support::nats::NatsServer;
use test_support::postgres::{TestDatabase, ensure_postgres_running, pg_env};
use test_support::process::{ServiceProcess, workspace_bin};
use test_support::smtp::SmtpServer;
use test_support::sshd::Sshd;

use super::{run_ok, text};

const NATS_USER: &str = "backup";
const NATS_PASSWORD: &str = "s3cret-doctor-pw";
const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];
/// Generous: the doctor bounds each check itself; this only catches a hang.
const DOCTOR_DEADLINE: Duration = Duration::from_secs(180);

struct Rig {
    nats: NatsServer,
    sshd: Sshd,
    smtp: SmtpServer,
    source: TestDatabase,
    dir: tempfile::TempDir,
    scratch_prefix: String,
    recipient: String,
}

impl Rig {
    fn start() -> Rig {
        ensure_postgres_running();
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = dir.path().join("nats-auth.conf");
        std::fs::write(
            &auth,
            format!("authorization {{\n  user: {NATS_USER}\n  password: \"{NATS_PASSWORD}\"\n}}\n"),
        )
        .expect("write nats config");
        let source = TestDatabase::create("doctor_src");
        source.execute(
            "CREATE TABLE items (id int PRIMARY KEY, label text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
        );
        std::fs::create_dir(dir.path().join("spool")).expect("spool dir");
        let recipient = write_identity(&dir.path().join("identity.txt"));
        let suffix = source
            .name
            .rsplit('_')
            .next()
            .expect("hex suffix")
            .to_owned();
        Rig {
            nats: NatsServer::start_with_args(&["-c", &auth.display().to_string()]),
            sshd: Sshd::start(),
            smtp: SmtpServer::start(),
            source,
            dir,
            scratch_prefix: format!("doc{suffix}"),
            recipient,
        }
    }

    fn remote_dir(&self) -> PathBuf {
        self.sshd.remote_root.join("backups")
    }

    fn identity(&self) -> PathBuf {
        self.dir.path().join("identity.txt")
    }

    /// The environment of the services and of a healthy doctor run.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("NATS_URL", self.nats.url.clone()),
            ("NATS_USER", NATS_USER.into()),
            ("NATS_PASSWORD", NATS_PASSWORD.into()),
            ("BACKUP_DATABASES", self.source.name.clone()),
            (
                "BACKUP_SPOOL_DIR",
                self.dir.path().join("spool").display().to_string(),
            ),
            (
                "VERIFY_DATABASE_URL",
                "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            ),
            ("VERIFY_SCRATCH_PREFIX", self.scratch_prefix.clone()),
            ("BACKUP_AGE_RECIPIENTS", self.recipient.clone()),
            ("AGE_IDENTITY_FILE", self.identity().display().to_string()),
            ("SMTP_URL", self.smtp.url.clone()),
            ("ALERT_EMAIL_FROM", "backups@korrigo.example".into()),
            ("ALERT_EMAIL_TO", "oncall@korrigo.example".into()),
            ("BACKUP_SCHEDULE", "30 3 * * *".into()),
            ("BACKUP_TZ", "Europe/Paris".into()),
            ("SHUTDOWN_GRACE", "2s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.sshd.sftp_env(&self.remote_dir()))
        .collect();
        env.extend(pg_env());
        env
    }

    fn spawn_services(&self) -> Vec<ServiceProcess> {
        let mut env = self.env();
        env.push(("RUST_LOG".into(), "info".into()));
        SERVICES
            .iter()
            .map(|name| {
                let service = ServiceProcess::spawn(name, &[], &env);
                assert!(
                    service.wait_for_log("waiting for work", Duration::from_secs(90)),
                    "{name} did not start:\n{}",
                    service.log()
                );
                service
            })
            .collect()
    }

    /// `backupctl doctor ARGS` with the healthy environment changed by
    /// `changes` (an empty value removes the variable).
    fn doctor(&self, args: &[&str], changes: &[(&str, &str)]) -> Output {
        let mut env = self.env();
        for (key, value) in changes {
            env.retain(|(k, _)| k != key);
            if !value.is_empty() {
                env.push(((*key).to_owned(), (*value).to_owned()));
            }
        }
        doctor(args, &env)
    }
}

/// Runs the doctor with exactly `env` (plus PATH and HOME), so nothing of
/// the test runner's own environment leaks in.
fn doctor(args: &[&str], env: &[(String, String)]) -> Output {
    let mut child = Command::new(workspace_bin("backupctl"))
        .arg("doctor")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backupctl doctor");
    // Read the pipes on threads so a chatty child never blocks, and give
    // up (killing it, still unreaped) only if it hangs far beyond its own
    // timeouts.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + DOCTOR_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for backupctl doctor") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backupctl doctor hung for {DOCTOR_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(NATS_PASSWORD),
        "a secret reached the output: {}",
        text(&out)
    );
    out
}

/// Writes a new age identity file (as `age-keygen -o` does) and returns
/// its recipient.
fn write_identity(path: &Path) -> String {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    std::fs::write(path, format!("{}\n", identity.to_string().expose_secret()))
        .expect("write age identity");
    identity.to_public().to_string()
}

/// The report line of check `name` and the line after it (the fix).
fn line_of(out: &Output, name: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let index = lines
        .iter()
        .position(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no line for check {name}: {}", text(out)));
    (
        lines[index].to_owned(),
        lines.get(index + 1).copied().unwrap_or_default().to_owned(),
    )
}

/// Asserts that check `name` has `verdict` (PASS, FAIL, SKIP), that its
/// line holds every one of `needles`, and that a failure comes with a fix.
fn expect(out: &Output, name: &str, verdict: &str, needles: &[&str]) -> String {
    let (line, next) = line_of(out, name);
    assert!(
        line.starts_with(&format!("{verdict}  ")),
        "{name} is not {verdict}: {line}\n{}",
        text(out)
    );
    for needle in needles {
        assert!(
            line.contains(needle),
            "{name}: {needle:?} missing in {line}\n{}",
            text(out)
        );
    }
    if verdict == "FAIL" {
        assert!(
            next.starts_with("      fix: "),
            "{name} fails without a fix: {}",
            text(out)
        );
    }
    line
}

fn failing(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(str::to_owned)
        .collect()
}

/// Asserts the run failed (exit 1) on exactly the checks in `names`.
fn expect_only_failures(out: &Output, names: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let mut failed: Vec<String> = failing(out)
        .iter()
        .map(|l| l[6..].split(':').next().unwrap_or_default().to_owned())
        .collect();
    failed.sort();
    let mut wanted: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    wanted.sort();
    assert_eq!(failed, wanted, "{}", text(out));
}

/// A role dropped on drop, for the privilege and CREATEDB cases.
struct Role(String);

impl Role {
    fn create(prefix: &str) -> Role {
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        psql_admin(&format!("CREATE ROLE {name} LOGIN"));
        Role(name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-d", "postgres", "-c"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.0))
            .envs(pg_env())
            .output();
    }
}

fn psql_admin(sql: &str) {
    run_ok(
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .envs(pg_env()),
    );
}

/// A 64 KiB tmpfs: room for the probe file, not for a dump. Unmounted on
/// drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(at: PathBuf) -> TinyFs {
        std::fs::create_dir_all(&at).expect("mount point");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
                .arg(&at),
        );
        TinyFs(at)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn doctor_passes_on_a_healthy_set_up_and_names_each_broken_piece() {
    let mut rig = Rig::start();
    let mut services = rig.spawn_services();

    // Healthy, with a test alert: every check passes or is skipped (the
    // channels that are not configured), exit 0.
    let out = rig.doctor(&["--send-test-alert"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(failing(&out).is_empty(), "{}", text(&out));
    expect(&out, "nats", "PASS", &["as user backup"]);
    expect(&out, "nats.stream", "PASS", &["BACKUPS"]);
    for service in SERVICES {
        expect(
            &out,
            &format!("nats.consumer.{service}"),
            "PASS",
            &["a worker is connected"],
        );
    }
    let db = rig.source.name.clone();
    expect(&out, &format!("postgres.{db}"), "PASS", &["PostgreSQL 15"]);
    expect(
        &out,
        &format!("postgres.{db}.privileges"),
        "PASS",
        &["superuser"],
    );
    expect(
        &out,
        &format!("postgres.{db}.pg_dump"),
        "PASS",
        &["pg_dump"],
    );
    expect(
        &out,
        "sftp.host",
        "PASS",
        &[rig.sshd.host_key_fingerprint.as_str()],
    );
    expect(&out, "sftp.host_key", "PASS", &["matches"]);
    expect(&out, "sftp.auth", "PASS", &[rig.sshd.user.as_str()]);
    expect(&out, "sftp.write", "PASS", &["wrote, renamed and deleted"]);
    expect(&out, "sftp.space", "PASS", &["MiB free"]);
    expect(&out, "spool.write", "PASS", &[]);
    expect(&out, "spool.space", "PASS", &[db.as_str()]);
    expect(&out, "scratch", "PASS", &["created and dropped"]);
    expect(&out, "age.recipients", "PASS", &["1 recipient"]);
    expect(&out, "age.identity", "PASS", &["opens"]);
    expect(&out, "alert.email", "PASS", &["test message accepted"]);
    expect(&out, "alert.telegram", "SKIP", &["not configured"]);
    expect(&out, "alert.slack", "SKIP", &["not configured"]);
    expect(&out, "alert.healthcheck", "SKIP", &["not configured"]);
    expect(&out, "schedule", "PASS", &["Europe/Paris", "03:30"]);
    let mails = rig.smtp.wait_for_messages(1, Duration::from_secs(60));
    assert!(
        mails.iter().any(|m| m.subject.contains("backupctl doctor")),
        "no test alert among {:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    // The probes left nothing behind.
    assert_eq!(
        std::fs::read_dir(rig.remote_dir())
            .expect("SFTP_DIR")
            .count(),
        0,
        "the SFTP probe file is still there"
    );
    assert!(
        test_support::postgres::databases_with_prefix(&rig.scratch_prefix).is_empty(),
        "the scratch probe database is still there"
    );

    // The same as one JSON document.
    let out = rig.doctor(&["--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 20, "{report}");
    for check in checks {
        assert_eq!(check["ok"], check["verdict"] != "fail", "{check}");
        assert!(check["name"].is_string() && check["detail"].is_string());
    }
    let email = checks
        .iter()
        .find(|c| c["name"] == "alert.email")
        .expect("alert.email");
    assert_eq!(email["verdict"], "pass");
    let detail = email["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("--send-test-alert"),
        "without the flag no message is sent: {email}"
    );
    // ... but the server was spoken to: no credentials, so STARTTLS when
    // offered, and this one offers none.
    assert!(
        detail.contains("answered EHLO") && detail.contains("STARTTLS when offered"),
        "{email}"
    );

    // An unreachable relay fails without --send-test-alert, naming SMTP_URL.
    let out = rig.doctor(&[], &[("SMTP_URL", "smtp://127.0.0.1:1")]);
    expect_only_failures(&out, &["alert.email"]);
    expect(&out, "alert.email", "FAIL", &["SMTP_URL", "127.0.0.1:1"]);

    // Credentials without tls=: STARTTLS is required, and this relay does
    // not offer it, so they are never sent in clear.
    let out = rig.doctor(
        &[],
        &[
            ("SMTP_USERNAME", "alerts"),
            ("SMTP_PASSWORD", "smtp-secret-pw"),
        ],
    );
    expect_only_failures(&out, &["alert.email"]);
    let line = expect(
        &out,
        "alert.email",
        "FAIL",
        &["SMTP_URL", "STARTTLS required"],
    );
    assert!(!text(&out).contains("smtp-secret-pw"), "{}", text(&out));
    assert!(line.to_lowercase().contains("starttls"), "{line}");

    // No alert channel for people at all is a failure of its own.
    let out = rig.doctor(&[], &[("SMTP_URL", "")]);
    expect_only_failures(&out, &["alert"]);
    expect(&out, "alert", "FAIL", &["no alert channel"]);
    expect(&out, "alert.email", "SKIP", &["not configured"]);

    // A key file that is not there: the fix is about the key file.
    let missing_key = rig.dir.path().join("no-such-key");
    let out = rig.doctor(
        &[],
        &[("SFTP_KEY_FILE", &missing_key.display().to_string())],
    );
    expect_only_failures(&out, &["sftp.auth"]);
    expect(
        &out,
        "sftp.auth",
        "FAIL",
        &["SFTP_KEY_FILE", "does not exist"],
    );
    let fix = line_of(&out, "sftp.auth").1;
    assert!(fix.contains("point SFTP_KEY_FILE"), "{fix}");

    // A private key others can read fails, naming the file, mode and fix.
    let open_key = rig.dir.path().join("open_key");
    std::fs::copy(&rig.sshd.client_key, &open_key).expect("copy key");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let shown = open_key.display().to_string();
    let out = rig.doctor(&[], &[("SFTP_KEY_FILE", &shown)]);
    expect_only_failures(&out, &["sftp.auth"]);
    expect(&out, "sftp.auth", "FAIL", &[shown.as_str(), "0644"]);
    let fix = line_of(&out, "sftp.auth").1;
    assert!(fix.contains(&format!("chmod 0600 {shown}")), "{fix}");

    // A relative SFTP_DIR starts at the login directory (the test user's
    // home holds the remote root).
    let data = rig
        .sshd
        .remote_root
        .file_name()
        .expect("remote root name")
        .to_string_lossy()
        .into_owned();
    let out = rig.doctor(&[], &[("SFTP_DIR", &format!("{data}/backups"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    expect(
        &out,
        "sftp.auth",
        "PASS",
        &[&format!("{}", rig.remote_dir().display())],
    );
    expect(&out, "sftp.write", "PASS", &["wrote, renamed and deleted"]);

    // Wrong NATS password: only NATS fails, the other checks still run.
    let out = rig.doctor(&[], &[("NATS_PASSWORD", "not-the-password")]);
    expect_only_failures(&out, &["nats"]);
    expect(&out, "nats", "FAIL", &["credentials", "as user backup"]);
    expect(&out, "nats.stream", "SKIP", &["not checked"]);
    expect(&out, "sftp.write", "PASS", &[]);

    // A role with LOGIN and nothing else, on a database whose tables it
    // cannot read.
    let fresh = TestDatabase::create("doctor_priv");
    fresh.execute("CREATE TABLE items (id int); CREATE SEQUENCE counter;");
    let reader = Role::create("doctor_ro");
    let out = rig.doctor(
        &[],
        &[("BACKUP_DATABASES", &fresh.name), ("PGUSER", &reader.0)],
    );
    expect_only_failures(&out, &[&format!("postgres.{}.privileges", fresh.name)]);
    let line = expect(
        &out,
        &format!("postgres.{}.privileges", fresh.name),
        "FAIL",
        &["public.items", "public.counter", "cannot read 2 of 2"],
    );
    assert!(line.contains(&reader.0), "{line}");
    assert!(
        line_of(&out, &format!("postgres.{}.privileges", fresh.name))
            .1
            .contains("GRANT pg_read_all_data"),
        "{}",
        text(&out)
    );
    // The documented fix works.
    psql_admin(&format!("GRANT pg_read_all_data TO {}", reader.0));
    let out = rig.doctor(
        &[],
        &[("BACKUP_DATABASES", &fresh.name), ("PGUSER", &reader.0)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    expect(
        &out,
        &format!("postgres.{}.privileges", fresh.name),
        "PASS",
        &["pg_read_all_data"],
    );

    // A pg_dump older than the server (PG_BIN_DIR pinned to it).
    let old_bin = rig.dir.path().join("old-bin");
    std::fs::create_dir(&old_bin).expect("old-bin");
    let fake = old_bin.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.22'\n").expect("fake pg_dump");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = rig.doctor(&[], &[("PG_BIN_DIR", &old_bin.display().to_string())]);
    expect_only_failures(&out, &[&format!("postgres.{db}.pg_dump")]);
    expect(&out, &format!("postgres.{db}.pg_dump"), "FAIL", &["11.22"]);

    // The server presents a key other than the pinned one.
    let wrong = rig.sshd.wrong_known_hosts();
    let out = rig.doctor(&[], &[("SFTP_KNOWN_HOSTS", &wrong.display().to_string())]);
    expect_only_failures(&out, &["sftp.host_key"]);
    expect(
        &out,
        "sftp.host_key",
        "FAIL",
        &["does not match", rig.sshd.host_key_fingerprint.as_str()],
    );
    expect(&out, "sftp.write", "SKIP", &["not checked"]);

    // SFTP_DIR read-only for the SFTP user.
    let remote = rig.remote_dir();
    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let out = rig.doctor(&[], &[]);
    std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    expect_only_failures(&out, &["sftp.write"]);
    expect(&out, "sftp.write", "FAIL", &["permission denied"]);

    // A spool path below a regular file: not even root can write there.
    let file = rig.dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("file");
    let out = rig.doctor(
        &[],
        &[(
            "BACKUP_SPOOL_DIR",
            &file.join("spool").display().to_string(),
        )],
    );
    expect_only_failures(&out, &["spool.write"]);
    expect(&out, "spool.write", "FAIL", &["Not a directory"]);
    expect(&out, "spool.space", "SKIP", &["not checked"]);

    // A spool with room for the probe but not for a dump.
    let tiny = TinyFs::mount(rig.dir.path().join("tiny"));
    let out = rig.doctor(&[], &[("BACKUP_SPOOL_DIR", &tiny.0.display().to_string())]);
    drop(tiny);
    expect_only_failures(&out, &["spool.space"]);
    expect(&out, "spool.write", "PASS", &[]);
    expect(
        &out,
        "spool.space",
        "FAIL",
        &["not enough free space", db.as_str()],
    );

    // A scratch server role without CREATEDB.
    let no_createdb = Role::create("doctor_nocreate");
    let url = format!("postgresql://{}@127.0.0.1:5432/postgres", no_createdb.0);
    let out = rig.doctor(&[], &[("VERIFY_DATABASE_URL", &url)]);
    expect_only_failures(&out, &["scratch"]);
    expect(&out, "scratch", "FAIL", &["CREATE DATABASE refused"]);
    assert!(
        line_of(&out, "scratch").1.contains("CREATEDB"),
        "{}",
        text(&out)
    );

    // An age identity that opens none of the recipients.
    let stranger = rig.dir.path().join("stranger.txt");
    write_identity(&stranger);
    let out = rig.doctor(
        &[],
        &[("AGE_IDENTITY_FILE", &stranger.display().to_string())],
    );
    expect_only_failures(&out, &["age.identity"]);
    expect(
        &out,
        "age.identity",
        "FAIL",
        &["opens none of the 1 recipient"],
    );

    // The SMTP server is down (a port that refuses connections).
    let down = PortReservation::new();
    let smtp_down = format!("smtp://127.0.0.1:{}", down.port());
    let out = rig.doctor(&["--send-test-alert"], &[("SMTP_URL", &smtp_down)]);
    expect_only_failures(&out, &["alert.email"]);
    expect(&out, "alert.email", "FAIL", &["not delivered"]);

    // A service that stopped: its consumer stays, but no worker pulls.
    let pruner = services
        .iter_mut()
        .find(|s| s.name == "pruner")
        .expect("pruner");
    pruner.terminate(Duration::from_secs(10));
    let out = rig.doctor(&[], &[]);
    expect_only_failures(&out, &["nats.consumer.pruner"]);
    expect(
        &out,
        "nats.consumer.pruner",
        "FAIL",
        &["no worker is connected"],
    );

    // NATS down.
    rig.nats.kill();
    let out = rig.doctor(&[], &[]);
    expect_only_failures(&out, &["nats"]);
    expect(&out, "nats", "FAIL", &["cannot reach", "refused"]);
    expect(&out, "scratch", "PASS", &[]);
    drop(services);
}

/// Hosts that accept a connection and then say nothing: each check gives
/// up after `--timeout` and the others still report.
#[test]
fn doctor_does_not_hang_on_silent_hosts() {
    ensure_postgres_running();
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("known_hosts"), "").expect("known_hosts");
    std::fs::write(dir.path().join("key"), "").expect("key");
    let env: Vec<(String, String)> = [
        ("NATS_URL", format!("nats://127.0.0.1:{port}")),
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".to_owned()),
        ("PGDATABASE", "postgres".to_owned()),
        ("SFTP_HOST", "127.0.0.1".to_owned()),
        ("SFTP_PORT", port.to_string()),
        ("SFTP_USER", "nobody".to_owned()),
        ("SFTP_DIR", "/srv/backups".to_owned()),
        (
            "SFTP_KEY_FILE",
            dir.path().join("key").display().to_string(),
        ),
        (
            "SFTP_KNOWN_HOSTS",
            dir.path().join("known_hosts").display().to_string(),
        ),
        ("SFTP_CONNECT_TIMEOUT", "10m".to_owned()),
        ("BACKUP_SPOOL_DIR", dir.path().display().to_string()),
        (
            "VERIFY_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres".to_owned(),
        ),
        ("VERIFY_SCRATCH_PREFIX", "docsilent".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let out = doctor(&["--timeout", "3s"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for name in ["nats", "postgres.postgres", "sftp"] {
        expect(&out, name, "FAIL", &["no answer within 3s"]);
    }
    // The healthy scratch server is still checked.
    expect(&out, "scratch", "PASS", &["created and dropped"]);
    drop(silent);
}

/// Bad usage of the doctor itself is exit 2, as everywhere in backupctl.
#[test]
fn doctor_refuses_bad_flags_with_exit_2() {
    let out = doctor(&["--timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// NATS with the compose file's per-service users (deploy/scripts/nats-auth.sh):
/// the doctor run with a service's credentials reports what that user may
/// not see as such, never as "no answer", and a refusal of something it
/// needs as a permission failure with the operator's fix.
#[test]
fn doctor_reports_nats_permission_refusals_as_such() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    let users = [
        "dumper", "shipper", "verifier", "pruner", "notifier", "operator",
    ];
    for user in users {
        std::fs::write(
            secrets.join(format!("nats_{user}_password")),
            format!("pw-{user}-doctor\n"),
        )
        .expect("password file");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let auth = Command::new("bash")
        .arg(root.join("deploy/scripts/nats-auth.sh"))
        .arg(&secrets)
        .output()
        .expect("run nats-auth.sh");
    assert!(auth.status.success(), "{}", text(&auth));
    // One more user, allowed no JetStream API at all.
    let conf = String::from_utf8(auth.stdout)
        .expect("utf-8")
        .replacen(
            "  users: [\n",
            "  users: [\n    { user: \"viewer\", password: \"pw-viewer-doctor\", permissions: { publish: { allow: [\"backup.trigger\"] }, subscribe: { allow: [\"_INBOX.>\"] } } }\n",
            1,
        );
    let conf_path = dir.path().join("auth.conf");
    std::fs::write(&conf_path, conf).expect("auth.conf");
    let nats = NatsServer::start_with_args(&["-c", &conf_path.display().to_string()]);
    let as_user = |user: &str| -> Vec<(String, String)> {
        vec![
            ("NATS_URL".to_owned(), nats.url.clone()),
            ("NATS_USER".to_owned(), user.to_owned()),
            ("NATS_PASSWORD".to_owned(), format!("pw-{user}-doctor")),
        ]
    };

    // The notifier needs nothing but NATS: it creates the stream and its
    // consumer, as user notifier.
    let mut env = as_user("notifier");
    env.push(("RUST_LOG".into(), "info".into()));
    let notifier = ServiceProcess::spawn("notifier", &[], &env);
    assert!(
        notifier.wait_for_log("waiting for work", Duration::from_secs(90)),
        "notifier did not start:\n{}",
        notifier.log()
    );

    let out = doctor(&[], &as_user("notifier"));
    expect(&out, "nats", "PASS", &["as user notifier"]);
    expect(&out, "nats.stream", "PASS", &["BACKUPS"]);
    expect(
        &out,
        "nats.consumer.notifier",
        "PASS",
        &["a worker is connected"],
    );
    for other in ["dumper", "shipper", "verifier", "pruner"] {
        expect(
            &out,
            &format!("nats.consumer.{other}"),
            "SKIP",
            &[
                "not visible to NATS user notifier",
                &format!("$JS.API.CONSUMER.INFO.BACKUPS.{other}"),
            ],
        );
    }
    assert!(!text(&out).contains("no answer within"), "{}", text(&out));
    let failed: Vec<String> = failing(&out)
        .into_iter()
        .filter(|l| l.starts_with("FAIL  nats"))
        .collect();
    assert!(failed.is_empty(), "{}", text(&out));

    // The operator sees every consumer: the missing ones are missing.
    let out = doctor(&[], &as_user("operator"));
    expect(&out, "nats.consumer.notifier", "PASS", &[]);
    expect(
        &out,
        "nats.consumer.dumper",
        "FAIL",
        &["no durable consumer dumper"],
    );

    // A user refused what the check needs: a permission failure naming the
    // user and the subject, with the operator's fix.
    let out = doctor(&[], &as_user("viewer"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(
        &out,
        "nats.stream",
        "FAIL",
        &[
            "$JS.API.STREAM.INFO.BACKUPS",
            "user viewer",
            "permissions violation",
        ],
    );
    let fix = line_of(&out, "nats.stream").1;
    assert!(
        fix.contains("docker compose run --rm backupctl doctor"),
        "{fix}"
    );
    drop(notifier);
}
