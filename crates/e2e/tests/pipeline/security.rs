//! Secrets, file modes and NATS authentication, on a full backup that goes
//! through every secret the pipeline takes: a PostgreSQL password, the
//! scratch server's URL with a password in it, an SFTP key passphrase, an
//! SMTP password inside `SMTP_URL`, a Telegram bot token, a Slack webhook
//! URL, a healthcheck URL and one NATS password per service. Each value is
//! distinctive, and none may appear in a log line, an event, a remote file
//! (name or content), an alert, or the argument list of any process on the
//! machine, sampled throughout the run (pg_dump and psql included).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use test_support::http_stub::{HttpStub, StubResponse};

use super::*;

fn telegram_ok() -> StubResponse {
    StubResponse::json(
        r#"{"ok":true,"result":{"message_id":7,"date":1767225600,"chat":{"id":-1001,"type":"supergroup","title":"on-call"},"text":"alert"}}"#,
    )
}

/// What the process sampler saw.
#[derive(Debug, Default)]
struct Sampled {
    rounds: usize,
    /// Commands seen running as children of the services (pg_dump, psql...).
    children: BTreeSet<String>,
    /// (secret's name, command, pid) for every argument list holding one.
    leaks: Vec<(String, String, u32)>,
    /// Secrets seen in the environment of a child (where they belong):
    /// proof that the secret was in use while the arguments were watched.
    in_child_environment: BTreeSet<String>,
}

/// Reads every process's argument list until `stop`, looking for secrets.
fn sample_processes(
    secrets: Vec<(String, String)>,
    services: Arc<Mutex<BTreeSet<u32>>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Sampled> {
    thread::spawn(move || {
        let mut sampled = Sampled::default();
        while !stop.load(Ordering::SeqCst) {
            let ours = services.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for process in process_table() {
                if ours.contains(&process.ppid) {
                    sampled.children.insert(process.comm.clone());
                    let environment =
                        std::fs::read(format!("/proc/{}/environ", process.pid)).unwrap_or_default();
                    let environment = String::from_utf8_lossy(&environment);
                    for (name, value) in &secrets {
                        if environment.contains(value.as_str()) {
                            sampled.in_child_environment.insert(name.clone());
                        }
                    }
                }
                for (name, value) in &secrets {
                    if process.cmdline.contains(value.as_str()) {
                        sampled
                            .leaks
                            .push((name.clone(), process.comm.clone(), process.pid));
                    }
                }
            }
            sampled.rounds += 1;
            thread::sleep(Duration::from_millis(10));
        }
        sampled
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Files 0600 and directories 0700 below `root` (and `root` itself).
fn assert_private(root: &Path) -> usize {
    assert_eq!(mode(root), 0o700, "{}", root.display());
    let entries = walk(root);
    for relative in &entries {
        let path = root.join(relative);
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode(&path),
            expected,
            "{} is {:o}",
            path.display(),
            mode(&path)
        );
    }
    entries.len()
}

#[test]
fn secrets_never_leak_files_are_private_and_nats_wants_credentials() {
    let tag = format!("{:012x}", rand_u64() & 0xffff_ffff_ffff);
    let work = tempfile::tempdir().expect("work dir");
    let secrets_dir = work.path().join("secrets");
    std::fs::create_dir(&secrets_dir).expect("secrets dir");
    let write_secret = |name: &str, value: &str| -> String {
        let path = secrets_dir.join(name);
        std::fs::write(&path, format!("{value}\n")).expect("write a secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod a secret");
        path.display().to_string()
    };

    // NATS as compose runs it: one user per service, limited to its subjects.
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut nats_password_files = BTreeMap::new();
    for user in SERVICES.iter().chain(&["operator"]) {
        let password = format!("NatsPw-{user}-{tag}");
        let file = write_secret(&format!("nats_{user}_password"), &password);
        nats_password_files.insert(*user, file);
        secrets.push((format!("NATS password of {user}"), password));
    }
    let root = test_support::process::workspace_root();
    let auth = std::process::Command::new("bash")
        .arg(root.join("deploy/scripts/nats-auth.sh"))
        .arg(&secrets_dir)
        .output()
        .expect("run nats-auth.sh");
    assert!(
        auth.status.success(),
        "{}",
        String::from_utf8_lossy(&auth.stderr)
    );
    let auth_conf = work.path().join("auth.conf");
    std::fs::write(&auth_conf, &auth.stdout).expect("write auth.conf");
    let nats = NatsServer::start_with_args(&["-c", auth_conf.to_str().expect("UTF-8 path")]);
    let operator_password = format!("NatsPw-operator-{tag}");
    let events = Events::connect_with(
        &nats.url,
        async_nats::ConnectOptions::with_user_and_password("operator".into(), operator_password),
    );

    let source = TestDatabase::create("e2e_secrets");
    fill(&source, 30_000);
    let database = source.name.clone();
    let mut p = Pipeline::with_nats(vec![source], nats, Some(events));

    let pg_password = format!("PgPw-{tag}");
    let scratch_password = format!("ScratchPw-{tag}");
    let passphrase = format!("SftpPass-{tag}");
    let smtp_password = format!("SmtpPw-{tag}");
    let telegram_token = format!("7301234567:TgTok-{tag}");
    let slack_key = format!("SlackKey-{tag}");
    let healthcheck_key = format!("HcKey-{tag}");
    for (name, value) in [
        ("PGPASSWORD", &pg_password),
        ("password in VERIFY_DATABASE_URL", &scratch_password),
        ("SFTP_KEY_PASSPHRASE", &passphrase),
        ("password in SMTP_URL", &smtp_password),
        ("TELEGRAM_BOT_TOKEN", &telegram_token),
        ("key in SLACK_WEBHOOK_URL", &slack_key),
        ("key in HEALTHCHECK_URL", &healthcheck_key),
    ] {
        secrets.push((name.to_owned(), value.clone()));
    }
    let telegram = HttpStub::start(telegram_ok());
    let slack = HttpStub::start(StubResponse::new(200, "ok"));
    let healthchecks = HttpStub::start(StubResponse::new(200, "OK"));
    let key_file = p
        .sshd
        .generate_client_key("ed25519", Some(&passphrase), false);

    for service in SERVICES {
        p.set(service, "NATS_USER", service);
        p.set(
            service,
            "NATS_PASSWORD_FILE",
            nats_password_files[service].clone(),
        );
    }
    // Through the environment for some, through files for others.
    p.set("dumper", "PGPASSWORD", pg_password);
    p.set("*", "SFTP_KEY_FILE", key_file.display().to_string());
    p.set("shipper", "SFTP_KEY_PASSPHRASE", passphrase.clone());
    let passphrase_file = write_secret("sftp_passphrase", &passphrase);
    for service in ["verifier", "pruner"] {
        p.set(service, "SFTP_KEY_PASSPHRASE_FILE", passphrase_file.clone());
    }
    p.set("verifier", "VERIFY_DATABASE_URL", "");
    p.set(
        "verifier",
        "VERIFY_DATABASE_URL_FILE",
        write_secret(
            "verify_database_url",
            &format!("postgresql://postgres:{scratch_password}@127.0.0.1:5432/postgres"),
        ),
    );
    p.set("notifier", "SMTP_URL", "");
    p.set(
        "notifier",
        "SMTP_URL_FILE",
        write_secret(
            "smtp_url",
            &format!("smtp://alerts:{smtp_password}@127.0.0.1:{}", p.smtp.port),
        ),
    );
    p.set("notifier", "TELEGRAM_BOT_TOKEN", telegram_token.clone());
    p.set("notifier", "TELEGRAM_CHAT_ID", "-1001");
    p.set("notifier", "TELEGRAM_API_URL", telegram.url.clone());
    p.set(
        "notifier",
        "SLACK_WEBHOOK_URL_FILE",
        write_secret(
            "slack_webhook_url",
            &format!("{}/services/T0/B0/{slack_key}", slack.url),
        ),
    );
    p.set(
        "notifier",
        "HEALTHCHECK_URL",
        format!("{}/ping/{healthcheck_key}", healthchecks.url),
    );
    p.set("notifier", "ALERT_DELIVERY_ATTEMPTS", "2");
    p.set(
        "*",
        "RUST_LOG",
        "debug,async_nats=info,russh=info,hyper=info",
    );

    let service_pids = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_processes(
        secrets.clone(),
        Arc::clone(&service_pids),
        Arc::clone(&stop),
    );
    p.start_all();
    *service_pids.lock().unwrap_or_else(|e| e.into_inner()) =
        p.services.values().map(ServiceProcess::pid).collect();

    // A full backup, and a failure for the alert channels to carry.
    p.events.trigger(&database, "secrets");
    let verified = p.wait_verified("secrets", Duration::from_secs(180));
    // The pruner's answer too, so the stream is complete before the
    // "nothing stored without permission" count below.
    p.events.wait("dump.pruned", Duration::from_secs(120), |e| {
        e["backup_id"] == verified["backup_id"]
    });
    p.events.trigger("not_configured", "secrets-alert");
    p.events.wait("dump.failed", Duration::from_secs(60), |e| {
        e["request_id"] == "secrets-alert"
    });
    telegram.wait_for_requests(1, Duration::from_secs(60));
    slack.wait_for_requests(1, Duration::from_secs(60));
    healthchecks.wait_for_requests(1, Duration::from_secs(60));
    // The URL holds credentials, so STARTTLS is required, and aiosmtpd
    // offers neither it nor AUTH: the email fails, which is the path where
    // a client library's error might quote the URL and its password.
    test_support::process::wait_until(
        Duration::from_secs(60),
        "the notifier done with the email",
        || {
            p.service("notifier").log().lines().any(|l| {
                l.contains("email") && (l.contains("GAVE UP") || l.contains("notice delivered"))
            })
        },
    );
    stop.store(true, Ordering::SeqCst);
    let sampled = sampler.join().expect("the sampler");

    // Look everywhere.
    let mut found: Vec<String> = sampled
        .leaks
        .iter()
        .map(|(name, comm, pid)| format!("{name} in the arguments of {comm} (pid {pid})"))
        .collect();
    let mut look = |place: &str, text: &str| {
        for (name, value) in &secrets {
            if text.contains(value.as_str()) {
                found.push(format!("{name} in {place}"));
            }
        }
    };
    let mut log_lines = 0;
    for (service, log) in p.logs() {
        log_lines += log.lines().count();
        look(&format!("the {service} log"), &log);
    }
    let all_events = p.events.all();
    for event in &all_events {
        look(
            &format!("event #{} ({})", event.sequence, event.subject),
            &String::from_utf8_lossy(&event.raw),
        );
    }
    let mut files_read = 0;
    for base in [p.remote_base(), p.spool.clone()] {
        for relative in walk(&base) {
            look(
                &format!("the file name {}", relative.display()),
                &relative.to_string_lossy(),
            );
            let path = base.join(&relative);
            if path.is_file() && std::fs::metadata(&path).is_ok_and(|m| m.len() < 1 << 20) {
                look(
                    &format!("the file {}", path.display()),
                    &String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()),
                );
                files_read += 1;
            }
        }
    }
    // The token and the webhook key are in the URLs called, by design;
    // the messages themselves must not carry any secret.
    for (channel, stub) in [
        ("Telegram", &telegram),
        ("Slack", &slack),
        ("healthcheck", &healthchecks),
    ] {
        for request in stub.requests() {
            look(&format!("a {channel} message"), &request.body);
        }
    }
    for mail in p.smtp.messages() {
        look("an email", &mail.raw);
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    // The sampler saw the children it had to check, many times over.
    assert!(sampled.rounds >= 20, "only {} samples", sampled.rounds);
    for child in ["pg_dump", "psql"] {
        assert!(
            sampled.children.contains(child),
            "{child} never seen while sampling: {:?}",
            sampled.children
        );
    }
    // The passwords did reach pg_dump and psql, through their environment.
    for name in ["PGPASSWORD", "password in VERIFY_DATABASE_URL"] {
        assert!(
            sampled.in_child_environment.contains(name),
            "{name} never seen in a child's environment: {:?}",
            sampled.in_child_environment
        );
    }
    // And the channels were really used with theirs.
    assert!(telegram.requests()[0].path.contains(&telegram_token));
    assert!(slack.requests()[0].path.contains(&slack_key));
    assert!(healthchecks.requests()[0].path.contains(&healthcheck_key));
    assert!(
        p.service("notifier")
            .log()
            .lines()
            .any(|l| l.contains("GAVE UP") && l.contains("email")),
        "the email was expected to fail on a server without STARTTLS or AUTH"
    );

    // Private files, on both sides.
    let spool_entries = assert_private(&p.spool);
    let remote_entries = assert_private(&p.remote_base());
    assert!(spool_entries >= 3 && remote_entries >= 4);

    // Without credentials, nobody gets in: neither to trigger nor to read.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let last = all_events.last().map_or(0, |e| e.sequence);
    for (who, options) in [
        ("anonymous", async_nats::ConnectOptions::new()),
        (
            "operator with a wrong password",
            async_nats::ConnectOptions::with_user_and_password("operator".into(), "guess".into()),
        ),
    ] {
        let connected = runtime.block_on(
            options
                .connection_timeout(Duration::from_secs(5))
                .connect(p.nats.url.as_str()),
        );
        assert!(connected.is_err(), "{who} connected to NATS");
    }
    // A service's user cannot trigger backups either.
    let notifier = runtime
        .block_on(
            async_nats::ConnectOptions::with_user_and_password(
                "notifier".into(),
                format!("NatsPw-notifier-{tag}"),
            )
            .connect(p.nats.url.as_str()),
        )
        .expect("the notifier's user connects");
    let published = runtime.block_on(async {
        let js = async_nats::jetstream::new(notifier);
        match js.publish("backup.trigger", "{}".into()).await {
            Ok(ack) => tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        }
    });
    assert!(
        published.is_none(),
        "the notifier's user published a trigger"
    );
    let after = p.events.all().last().map_or(0, |e| e.sequence);
    assert_eq!(after, last, "something was stored without permission");
    p.assert_alive();

    report(
        "secrets and permissions",
        &Figures {
            triggered: 2,
            verified: 1,
            faults: 0,
            refused: 0,
            secrets_found: found.len(),
        },
        &format!(
            "{} secrets checked in {log_lines} log lines, {} events, {files_read} files, \
             {} process-table samples (children seen: {}); {spool_entries} spool and \
             {remote_entries} remote entries private",
            secrets.len(),
            all_events.len(),
            sampled.rounds,
            sampled
                .children
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
}
