//! `backupctl trigger` against a real NATS, the test playing the dumper.

use super::*;

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
