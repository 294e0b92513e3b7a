//! The deployment files against the binaries: the compose environment
//! run natively to a verified backup, and the systemd units.

use super::*;

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
const SECRET_VARIABLES: [&str; 13] = [
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
    "S3_SECRET_ACCESS_KEY",
    "PRUNE_S3_SECRET_ACCESS_KEY",
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
        "s3_secret_access_key",
        "prune_s3_secret_access_key",
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
