//! Every binary answers `--help` and refuses a bad configuration in one
//! line.

use super::*;

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
