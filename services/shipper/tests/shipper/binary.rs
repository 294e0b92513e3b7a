//! The `shipper` binary: its help and one-line refusals, and the benchmark
//! against OpenSSH's `sftp`.

use super::*;

#[test]
fn binary_documents_its_destinations_and_rejects_incomplete_ones_in_one_line() {
    let bin = test_support::process::workspace_bin("shipper");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "SFTP_HOST",
        "SHIP_SFTP2_HOST",
        "SHIP_SFTP2_KEY_PASSPHRASE",
        "SHIP_LOCAL_DIR",
        "SHIP_BANDWIDTH_LIMIT",
        "SHIP_RETRY_HORIZON",
        "SHIP_ALERT_AFTER",
        "SHIP_STALL_TIMEOUT",
        "SHIP_DEADLINE",
    ] {
        assert!(help.contains(variable), "--help lacks {variable}:\n{help}");
    }

    let files = tempfile::tempdir().unwrap();
    let key = files.path().join("key");
    let known_hosts = files.path().join("known_hosts");
    std::fs::write(&key, "not checked before NATS").unwrap();
    std::fs::write(&known_hosts, "").unwrap();
    let run = |extra: &[(&str, &str)]| {
        let output = std::process::Command::new(&bin)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("SFTP_HOST", "127.0.0.1")
            .env("SFTP_USER", "backup")
            .env("SFTP_DIR", "/backups")
            .env("SFTP_KEY_FILE", &key)
            .env("SFTP_KNOWN_HOSTS", &known_hosts)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        // The cause comes as one line, from clap (`error: ...`) or from
        // the binary (`shipper: ...`, after its log line).
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        stderr
            .lines()
            .find(|l| l.starts_with("shipper: ") || l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no one-line cause in:\n{stderr}"))
            .to_owned()
    };
    let error = run(&[("SHIP_SFTP2_HOST", "nas.example")]);
    assert!(error.contains("SHIP_SFTP2_USER"), "{error}");
    let error = run(&[
        ("SHIP_SFTP2_HOST", "nas.example"),
        ("SHIP_SFTP2_USER", "u"),
        ("SHIP_SFTP2_DIR", "/b"),
        ("SHIP_SFTP2_KEY_FILE", key.to_str().unwrap()),
    ]);
    assert!(error.contains("SHIP_SFTP2_KNOWN_HOSTS"), "{error}");
    let error = run(&[("SHIP_ALERT_AFTER", "5m")]);
    assert!(error.contains("SHIP_ALERT_AFTER"), "{error}");
    let error = run(&[("SHIP_BANDWIDTH_LIMIT", "fast")]);
    assert!(error.contains("fast"), "{error}");
    let error = run(&[("SHIP_STALL_TIMEOUT", "0s")]);
    assert!(error.contains("SHIP_STALL_TIMEOUT"), "{error}");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Uploads the same files with the shipper binary (through NATS, like in
/// production) and with OpenSSH's `sftp put` to the same sshd, and prints
/// throughput, ratio and the shipper's peak RSS. Sizes in MB (10^6 bytes)
/// from `SHIP_BENCH_SIZES_MB`, default `250,1200`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: slow, run by hand with --release"]
async fn benchmark_against_openssh_sftp() {
    let sizes: Vec<usize> = std::env::var("SHIP_BENCH_SIZES_MB")
        .unwrap_or_else(|_| "250,1200".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let started = Instant::now();
    let rig = Rig::start().await;
    let sshd = Sshd::start();
    eprintln!("servers up after {:?}", started.elapsed());
    let env: Vec<(String, String)> = [
        ("NATS_URL", rig.nats.url.clone()),
        ("RUST_LOG", "info".into()),
        ("BACKUP_SPOOL_DIR", rig.spool().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(sshd.sftp_env(&sshd.remote_root.join("backups")))
    .collect();
    let service = test_support::ServiceProcess::spawn("shipper", &[], &env);
    assert!(
        service.wait_for_log("waiting for work", Duration::from_secs(60)),
        "{}",
        service.log()
    );

    let openssh_put = |local: &Path, remote: &Path, cipher: Option<&str>| {
        let elapsed = sshd.openssh_sftp(
            &format!("put {} {}", local.display(), remote.display()),
            cipher,
        );
        std::fs::remove_file(remote).unwrap();
        elapsed
    };

    let mut rows = Vec::new();
    for (i, mb) in sizes.iter().enumerate() {
        let created = prepare_artifact(rig.spool(), mb * 1_000_000, 100 + i as u64, i as u32);
        let local = rig
            .spool()
            .join(DB)
            .join(created.artifact.artifact.as_str());
        let name = created.artifact.artifact.to_string();
        rig.publish(&created, &format!("bench-{i}")).await;
        let shipped = rig
            .wait_for(subject::SHIPPED, |e| e["artifact"] == name.as_str())
            .await;
        // Connect, checks, upload, fsync, rename and manifest, as timed by
        // the shipper itself.
        let ours = Duration::from_millis(shipped["duration_ms"].as_u64().unwrap());
        let remote = sshd.remote_root.join("openssh.bin");
        let theirs = openssh_put(&local, &remote, None);
        let theirs_gcm = openssh_put(&local, &remote, Some("aes128-gcm@openssh.com"));
        let rate = |d: Duration| (mb * 1_000_000) as f64 / d.as_secs_f64() / 1e6;
        rows.push(format!(
            "| {mb} MB | {:.0} MB/s | {:.0} MB/s | {:.2} | {:.0} MB/s | {:.2} |",
            rate(ours),
            rate(theirs),
            rate(ours) / rate(theirs),
            rate(theirs_gcm),
            rate(ours) / rate(theirs_gcm),
        ));
        std::fs::remove_file(&local).unwrap();
        std::fs::remove_file(remote_db_dir(&sshd).join(&name)).unwrap();
    }
    let rss = peak_rss_kib(service.pid());
    eprintln!(
        "\n| file | shipper | OpenSSH sftp put (default cipher) | ratio | OpenSSH sftp put (aes128-gcm) | ratio |\n\
         | --- | --- | --- | --- | --- | --- |\n{}\n\nshipper peak RSS (VmHWM): {:.1} MiB",
        rows.join("\n"),
        rss as f64 / 1024.0
    );
}
