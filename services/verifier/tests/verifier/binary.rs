//! The `verifier` binary: its limits, the sweep at start-up, and the
//! benchmark against `gzip | psql`.

use super::*;

#[test]
fn binary_documents_its_limits_and_rejects_a_zero_stall_timeout() {
    let bin = test_support::process::workspace_bin("verifier");
    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in ["VERIFY_STALL_TIMEOUT", "VERIFY_DEADLINE"] {
        assert!(help.contains(variable), "--help lacks {variable}:\n{help}");
    }
    let output = Command::new(&bin)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("SFTP_HOST", "127.0.0.1")
        .env("SFTP_USER", "backup")
        .env("SFTP_DIR", "/backups")
        .env("SFTP_KEY_FILE", "/nonexistent")
        .env("SFTP_HOST_FINGERPRINT", "SHA256:AAAA")
        .env("VERIFY_STALL_TIMEOUT", "0s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("verifier: ") && l.contains("VERIFY_STALL_TIMEOUT")),
        "{stderr}"
    );
}

#[test]
fn leftover_scratch_databases_are_swept_at_start() {
    let prefix_holder = std::sync::Mutex::new(String::new());
    let rig = Rig::start_with(NO_OPTIONS, |rig| {
        let leftover = format!("{}_{:012x}", rig.prefix, 0xdead_beefu64);
        sh(
            "psql -X -q -d postgres -c \"CREATE DATABASE $NAME\"",
            &[("NAME", &leftover)],
        );
        *prefix_holder.lock().unwrap() = leftover;
    });
    let leftover = prefix_holder.lock().unwrap().clone();
    assert!(!leftover.is_empty());
    test_support::wait_until(Duration::from_secs(60), "the sweep", || {
        databases_with_prefix(&rig.prefix).is_empty()
    });
}

/// Not a test: the benchmark of docs/benchmarks.md ("Verifier"). Run with
/// `BENCH_SCALE=1 cargo test --release -p verifier --test verifier -- --ignored --nocapture benchmark`.
/// The verifier binary verifies one artifact from the SFTP server while
/// `gzip -dc | psql` restores the same artifact from local disk into a
/// fresh database; both are timed, and the verifier's peak RSS is read
/// from /proc.
#[test]
#[ignore = "benchmark; run by hand"]
fn benchmark_verifier_against_gzip_psql() {
    let scale: u32 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rig = Rig::start(Options {
        external: true,
        ..NO_OPTIONS
    });
    let source = TestDatabase::create("vbench");
    // The shared dataset lives beside the checkout (../shared), or where BENCH_DATASET says.
    let dataset = std::env::var("BENCH_DATASET").unwrap_or_else(|_| {
        test_support::process::workspace_root()
            .join("../shared/bench/korrigo-dataset.sql")
            .display()
            .to_string()
    });
    sh(
        "psql -X -q -v ON_ERROR_STOP=1 -v scale=$SCALE -d \"$DB\" -f \"$DATASET\"",
        &[
            ("DB", &source.name),
            ("SCALE", &scale.to_string()),
            ("DATASET", &dataset),
        ],
    );
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip -6 > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let env: Vec<(String, String)> = [
        ("NATS_URL", rig.nats.url.clone()),
        ("RUST_LOG", "info".into()),
        (
            "VERIFY_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres".into(),
        ),
        ("VERIFY_SCRATCH_PREFIX", rig.prefix.clone()),
        ("VERIFY_REVERIFY_EVERY", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(rig.sshd.sftp_env(&rig.remote_base()))
    .collect();
    let verifier = test_support::ServiceProcess::spawn("verifier", &[], &env);
    assert!(
        verifier.wait_for_log("waiting for work", Duration::from_secs(60)),
        "{}",
        verifier.log()
    );

    let baseline = |round: u32| {
        let target = TestDatabase::create("vbase");
        let started = std::time::Instant::now();
        sh(
            "gzip -dc \"$IN\" | psql -X -q -v ON_ERROR_STOP=1 -d \"$DB\" > /dev/null",
            &[("IN", file.to_str().unwrap()), ("DB", &target.name)],
        );
        let took = started.elapsed();
        eprintln!(
            "round {round}: gzip -dc | psql: {:.2} s",
            took.as_secs_f64()
        );
        took
    };
    let mut manifest = manifest;
    let mut verify = |round: u32| {
        manifest["backup_id"] = json!(format!("bench-{round}-{:08x}", rand::random::<u32>()));
        let started = std::time::Instant::now();
        let backup_id = rig.ship(&source.name, &file, &manifest);
        let (subject, event) = rig.verdict(&backup_id);
        let took = started.elapsed();
        assert_eq!(subject, "dump.verified", "{event:#}");
        // The scratch database is dropped after the verdict: let that end
        // before the next baseline runs beside it (untimed).
        rig.assert_no_scratch_left();
        eprintln!(
            "round {round}: verifier: {:.2} s wall (duration_ms {}), steps {}",
            took.as_secs_f64(),
            event["duration_ms"],
            event["steps_ms"]
        );
        took
    };
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let base = baseline(round);
        let ours = verify(round);
        ratios.push(ours.as_secs_f64() / base.as_secs_f64());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", verifier.pid())).unwrap();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_owned();
    eprintln!(
        "artifact {} bytes; ratios verifier/baseline {ratios:.3?}; verifier peak RSS {peak}",
        std::fs::metadata(&file).unwrap().len()
    );
    rig.assert_no_scratch_left();
}
