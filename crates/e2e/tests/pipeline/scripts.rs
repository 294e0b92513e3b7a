//! The operator's scripts. `scripts/install-deps.sh` weakens nothing without
//! `--throwaway-machine`: no server package installed, no `trust` line added
//! to pg_hba.conf; it runs against stub commands (a PATH of shell scripts
//! that record how they were called), so the test changes nothing on this
//! machine. `deploy/scripts/init-secrets.sh` runs on a copy of `deploy/`
//! against a real sshd.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use test_support::process::workspace_root;

/// The commands install-deps.sh looks for, as stubs that succeed, except
/// those in `missing`; `apt-get` and `sed` record their arguments in
/// `calls`, and `psql` answers as a server that asks for a password unless
/// `pg_ready`.
fn stub_path(dir: &Path, missing: &[&str], pg_ready: bool) {
    let calls = dir.join("calls");
    let mut stubs: Vec<(&str, String)> = [
        "nats-server",
        "ssh-keygen",
        "pg_ctlcluster",
        "pg_isready",
        "gzip",
        "zstd",
        "age-keygen",
        "jq",
        "docker-compose",
        "dockerd",
        "debootstrap",
        "systemd-analyze",
        "shellcheck",
        "sudo",
        "cargo",
        "mkdir",
        "find",
        "sort",
        "tail",
        "grep",
        "seq",
        "sleep",
    ]
    .into_iter()
    .map(|name| (name, "exit 0".to_owned()))
    .collect();
    stubs.push(("id", "echo 0".to_owned()));
    stubs.push((
        "psql",
        if pg_ready { "exit 0" } else { "exit 2" }.to_owned(),
    ));
    for recorder in ["apt-get", "sed", "pg_createcluster"] {
        stubs.push((
            recorder,
            format!("echo \"{recorder} $*\" >>'{}'", calls.display()),
        ));
    }
    for (name, body) in stubs {
        if missing.contains(&name) {
            continue;
        }
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn install_deps(dir: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new("/bin/bash")
        .arg(workspace_root().join("scripts/install-deps.sh"))
        .args(args)
        .env_clear()
        .env("PATH", dir)
        .output()
        .expect("run install-deps.sh");
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    (out, calls)
}

#[test]
fn install_deps_installs_no_server_without_the_throwaway_flag() {
    let dir = tempfile::tempdir().unwrap();
    stub_path(dir.path(), &["nats-server"], true);
    let (out, calls) = install_deps(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nats-server") && stderr.contains("--throwaway-machine"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!calls.contains("apt-get"), "installed anyway: {calls}");

    // The same machine with the flag: the server is installed.
    let (_, calls) = install_deps(dir.path(), &["--throwaway-machine"]);
    assert!(
        calls
            .lines()
            .any(|l| l.starts_with("apt-get install") && l.contains("nats-server")),
        "{calls}"
    );
}

#[test]
fn install_deps_leaves_pg_hba_alone_without_the_throwaway_flag() {
    let dir = tempfile::tempdir().unwrap();
    stub_path(dir.path(), &[], false);
    let (out, calls) = install_deps(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:5432") && stderr.contains("--throwaway-machine"),
        "{stderr}"
    );
    assert!(!calls.contains("sed "), "edited pg_hba.conf: {calls}");
}

#[test]
fn install_deps_refuses_an_unknown_argument() {
    let dir = tempfile::tempdir().unwrap();
    stub_path(dir.path(), &[], true);
    let (out, calls) = install_deps(dir.path(), &["--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--throwaway-machine"), "{stderr}");
    assert!(calls.is_empty(), "{calls}");
    // Servers present and PostgreSQL reachable: nothing to weaken, success.
    let (out, calls) = install_deps(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!calls.contains("sed "), "{calls}");
}

/// deploy/ copied to a temporary directory, as an operator's checkout.
fn deploy_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(workspace_root().join("deploy"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn init_secrets(deploy: &Path, env: &[(&str, String)]) -> Output {
    Command::new("/bin/bash")
        .arg(deploy.join("scripts/init-secrets.sh"))
        .env_remove("SFTP_HOST")
        .env_remove("SFTP_PORT")
        .env_remove("SMTP_URL")
        .env_remove("S3_BUCKET")
        .env_remove("S3_SECRET_ACCESS_KEY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run init-secrets.sh")
}

/// S3 as the only destination: no SFTP host to pin, but the bucket's
/// secret key is required until given.
#[test]
fn init_secrets_for_s3_only_asks_for_the_secret_key_not_a_host_pin() {
    let checkout = deploy_copy();
    let deploy = checkout.path().join("deploy");
    let s3_only = [
        ("S3_BUCKET", "korrigo-backups".to_owned()),
        ("SMTP_URL", "smtp://mail.example.org".to_owned()),
        ("SECRETS_UID", "4321".to_owned()),
    ];
    let out = init_secrets(&deploy, &s3_only);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("secrets/s3_secret_access_key: S3_BUCKET is set"),
        "{stderr}"
    );
    assert!(!stderr.contains("sftp_known_hosts"), "{stderr}");

    let with_secret = [
        &s3_only[..],
        &[("S3_SECRET_ACCESS_KEY", "s3cr3t".to_owned())],
    ]
    .concat();
    let out = init_secrets(&deploy, &with_secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(deploy.join("secrets/s3_secret_access_key")).unwrap();
    assert_eq!(secret, "s3cr3t\n");
    assert!(deploy.join("secrets/sftp_known_hosts").exists());
}

/// An SFTP host that cannot be reached leaves no empty pin behind, and every
/// run says so (exit 1, naming the variables and the fix) until a key is
/// pinned; a reachable one gets pinned, and every secret goes to the
/// services' uid with mode 0400.
#[test]
fn init_secrets_never_leaves_an_empty_host_key_pin() {
    let checkout = deploy_copy();
    let deploy = checkout.path().join("deploy");
    let closed = test_support::free_port();
    let unreachable = [
        ("SFTP_HOST", "127.0.0.1".to_owned()),
        ("SFTP_PORT", closed.to_string()),
        ("SMTP_URL", "smtp://mail.example.org".to_owned()),
        ("SECRETS_UID", "4321".to_owned()),
    ];
    for run in 1..=2 {
        let out = init_secrets(&deploy, &unreachable);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "run {run}: {stderr}");
        assert!(
            stderr.contains("secrets/sftp_known_hosts")
                && stderr.contains("SFTP_HOST")
                && stderr.contains(&closed.to_string()),
            "run {run}: {stderr}"
        );
        assert!(
            !deploy.join("secrets/sftp_known_hosts").exists(),
            "run {run} left a pin behind"
        );
    }

    let mut sshd = test_support::sshd::Sshd::start();
    let reachable = [
        ("SFTP_HOST", "127.0.0.1".to_owned()),
        ("SFTP_PORT", sshd.port.to_string()),
        ("SECRETS_UID", "4321".to_owned()),
    ];
    let out = init_secrets(&deploy, &reachable);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&sshd.host_key_fingerprint), "{stderr}");
    let pin = std::fs::read_to_string(deploy.join("secrets/sftp_known_hosts")).unwrap();
    assert!(
        pin.starts_with(&format!("[127.0.0.1]:{} ", sshd.port)),
        "{pin}"
    );
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(deploy.join("secrets")).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        let mode = meta.mode() & 0o777;
        let wanted = if path.extension().is_some_and(|e| e == "pub") {
            0o444
        } else {
            0o400
        };
        assert_eq!((meta.uid(), mode), (4321, wanted), "{}", path.display());
    }
    assert_eq!(
        std::fs::metadata(deploy.join("nats/auth.conf"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    sshd.stop();
}
