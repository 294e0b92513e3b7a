//! Bad settings, as an operator sets them (environment variables), given
//! to the real binaries: each is refused at start-up with exit status 2 and
//! exactly one line on stderr that names the variable the operator set,
//! never clap's flag, and says what is wrong with it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use test_support::process::workspace_bin;

/// Settings that get each binary past its other checks, so the one under
/// test is what stops it (no server is contacted before settings pass).
fn base_env(binary: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![("NATS_URL", "nats://127.0.0.1:1".to_owned())];
    if matches!(binary, "shipper" | "verifier" | "pruner") {
        env.extend([
            ("SFTP_HOST", "sftp.invalid".to_owned()),
            ("SFTP_USER", "backup".to_owned()),
            ("SFTP_DIR", "/srv/backups".to_owned()),
            ("SFTP_KEY_FILE", "/nonexistent/key".to_owned()),
            ("SFTP_HOST_FINGERPRINT", "SHA256:x".to_owned()),
        ]);
    }
    if binary == "dumper" {
        env.push(("BACKUP_DATABASES", "app".to_owned()));
    }
    env
}

fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(workspace_bin(binary));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in base_env(binary) {
        command.env(key, value);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the binary")
}

/// Exit 2 and one stderr line starting with `binary: ` that holds every
/// needle and none of the refused words; returns the line.
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let out = run(binary, args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let context = format!("{binary} {args:?} {env:?}:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "{context}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, {context}");
    let line = lines[0];
    assert!(line.starts_with(&format!("{binary}: ")), "{context}");
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} missing, {context}");
    }
    for clap_word in ["--help", "For more information", "error: invalid value"] {
        assert!(!line.contains(clap_word), "{clap_word:?} in {context}");
    }
    line.to_owned()
}

#[test]
fn a_bad_value_names_the_variable_in_one_line() {
    refused(
        "shipper",
        &[],
        &[("SFTP_PORT", "abc")],
        &["SFTP_PORT \"abc\"", "invalid digit"],
    );
    refused(
        "dumper",
        &[],
        &[("BACKUP_COMPRESSION", "gzp")],
        &["BACKUP_COMPRESSION \"gzp\"", "use gzip or zstd"],
    );
    refused(
        "verifier",
        &[],
        &[("LOG_FORMAT", "xml")],
        &["LOG_FORMAT \"xml\"", "text, json"],
    );
    refused(
        "notifier",
        &[],
        &[("SHUTDOWN_GRACE", "soon")],
        &["SHUTDOWN_GRACE \"soon\"", "not a duration"],
    );
    refused(
        "pruner",
        &[],
        &[("PRUNE_INTERVAL", "often")],
        &["PRUNE_INTERVAL \"often\""],
    );
    refused(
        "backupctl",
        &["status"],
        &[("LOG_FORMAT", "xml")],
        &["LOG_FORMAT \"xml\""],
    );
    // Missing settings are named by their variables too: with no
    // destination at all, both kinds.
    let out = Command::new(workspace_bin("shipper"))
        .env_clear()
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run shipper");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no destination is configured")
            && stderr.contains("SFTP_HOST")
            && stderr.contains("S3_BUCKET"),
        "{stderr}"
    );
    // A flag typed on the command line is named as typed.
    refused(
        "shipper",
        &["--sftp-port", "abc"],
        &[],
        &["--sftp-port \"abc\""],
    );
    // --help is still help, exit 0.
    let help = run("shipper", &["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("SFTP_PORT"));
}

#[test]
fn a_bad_schedule_names_the_variable_the_field_and_its_range_once() {
    let line = refused(
        "dumper",
        &[],
        &[("BACKUP_SCHEDULE", "0 25 * * *")],
        &["BACKUP_SCHEDULE \"0 25 * * *\"", "hour", "0-23"],
    );
    assert!(!line.contains("Component error"), "{line}");
    let line = refused(
        "dumper",
        &[],
        &[("BACKUP_SCHEDULE", "0 2 * *")],
        &["BACKUP_SCHEDULE", "4 field(s)", "five"],
    );
    assert_eq!(line.matches("\"0 2 * *\"").count(), 1, "{line}");
    refused(
        "pruner",
        &[],
        &[("PRUNE_SCHEDULE", "0 25 * * *")],
        &["PRUNE_SCHEDULE \"0 25 * * *\"", "hour", "0-23"],
    );
    refused(
        "notifier",
        &[],
        &[("ALERT_DIGEST_SCHEDULE", "0 8 * 13 *")],
        &["ALERT_DIGEST_SCHEDULE", "month", "1-12"],
    );
}

#[test]
fn an_unreadable_secret_file_names_the_variable_the_file_and_the_fix_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory where a file is expected: unreadable even for root.
    let line = refused(
        "verifier",
        &[],
        &[
            ("NATS_USER", "verifier"),
            ("NATS_PASSWORD_FILE", dir.path().to_str().expect("utf-8")),
        ],
        &["NATS_PASSWORD_FILE", dir.path().to_str().expect("utf-8")],
    );
    assert_eq!(line.matches("os error").count(), 1, "{line}");

    // A 0600 file of root's, read by a process of another user (the
    // container's case: a secret owned by the host's user).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = dir.path().join("nats_password");
    std::fs::write(&secret, "pw\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let binary = workspace_bin("notifier");
    let out = Command::new(&binary)
        .env_clear()
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("NATS_USER", "notifier")
        .env("NATS_PASSWORD_FILE", &secret)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run notifier as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let shown = secret.display().to_string();
    for needle in [
        "NATS_PASSWORD_FILE",
        shown.as_str(),
        "Permission denied",
        "uid 65534",
        &format!("chown 65534 {shown}"),
        "chmod 0400",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    assert_eq!(stderr.matches("Permission denied").count(), 1, "{stderr}");
}

/// The log of a service's start-up and of a NATS restart: one line for the
/// connection, a warning for the loss, an INFO for the recovery, no ERROR;
/// and `backupctl` with NATS down prints one error line, nothing before it.
#[test]
fn nats_connections_are_logged_once_and_a_recovery_is_no_error() {
    use std::time::Duration;
    use test_support::nats::NatsServer;
    use test_support::process::ServiceProcess;

    let mut nats = NatsServer::start();
    let env = vec![
        ("NATS_URL".to_owned(), nats.url.clone()),
        // The default filter, as a deployment without RUST_LOG has it.
        ("RUST_LOG".to_owned(), String::new()),
    ];
    let notifier = ServiceProcess::spawn("notifier", &[], &env);
    assert!(
        notifier.wait_for_log("waiting for work", Duration::from_secs(90)),
        "{}",
        notifier.log()
    );
    let log = notifier.log();
    let connected: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("connected"))
        .collect();
    assert_eq!(connected.len(), 1, "one connection line expected:\n{log}");
    assert!(connected[0].contains(&nats.url), "{log}");

    nats.kill();
    assert!(
        notifier.wait_for_log("NATS connection lost", Duration::from_secs(30)),
        "{}",
        notifier.log()
    );
    nats.restart();
    assert!(
        notifier.wait_for_log("NATS connection restored", Duration::from_secs(60)),
        "{}",
        notifier.log()
    );
    let log = notifier.log();
    let restored = log
        .lines()
        .find(|l| l.contains("NATS connection restored"))
        .unwrap_or_default();
    assert!(restored.contains(" INFO "), "{log}");
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "an ERROR line in a recovery:\n{log}"
    );
    assert!(
        !log.contains("event: "),
        "the client's own event lines:\n{log}"
    );
    drop(notifier);

    // backupctl with NATS down: one line, the error.
    nats.kill();
    let out = Command::new(workspace_bin("backupctl"))
        .args(["--connect-timeout", "3s", "status"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", &nats.url)
        .output()
        .expect("run backupctl status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("backupctl: ") && stderr.contains("NATS"),
        "{stderr}"
    );
}
