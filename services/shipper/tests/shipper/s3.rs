//! The S3 destination against moto's S3 server: beside SFTP, refused
//! credentials, an outage (a TCP relay in front of moto that refuses
//! connections for a while), and the benchmark against `rclone copy` and
//! `aws s3 cp`.

use remote_s3::{S3Remote, S3Settings};
use secrecy::SecretString;
use test_support::moto::MotoServer;
use test_support::relay::TcpRelay;

use super::*;

const BUCKET: &str = "backups";

/// Settings of `moto`'s bucket reached at `port` (moto's own, or a relay's).
fn s3_settings(moto: &MotoServer, port: u16) -> S3Settings {
    let mut settings = S3Settings::new(
        Some(format!("http://127.0.0.1:{port}")),
        BUCKET,
        &moto.access_key_id,
        SecretString::from(moto.secret_access_key.clone()),
    );
    settings.prefix = "pg".into();
    settings.part_size = remote_s3::MIN_PART_SIZE;
    settings.connect_timeout = Duration::from_secs(2);
    settings.io_timeout = Duration::from_secs(10);
    settings
}

fn s3_destination(settings: &S3Settings) -> Destination {
    Destination::S3 {
        label: "s3".into(),
        remote: S3Remote::connect(settings).unwrap(),
    }
}

/// Every key in the bucket, listed with boto3 (moto's own client).
fn keys_in(moto: &MotoServer) -> Vec<String> {
    moto.python(&format!(
        "for o in s3.list_objects_v2(Bucket={BUCKET:?}).get('Contents', []): print(o['Key'])"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Checks that the bucket holds exactly the artifact and its manifest,
/// the artifact's bytes those of the spool copy.
async fn assert_in_bucket(moto: &MotoServer, created: &DumpCreated, spool: &Path) {
    use tokio::io::AsyncReadExt;
    let remote = S3Remote::connect(&s3_settings(moto, moto.port)).unwrap();
    let name = created.artifact.artifact.as_str();
    let key = remote.key(DB, name);
    let manifest_key = remote.key(DB, &created.artifact.artifact.manifest_name());
    let mut keys = keys_in(moto);
    keys.sort();
    assert_eq!(keys, [key.clone(), manifest_key.clone()]);
    let mut bytes = Vec::new();
    remote
        .open_read(&key)
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes, std::fs::read(spool.join(DB).join(name)).unwrap());
    assert_eq!(
        remote.read_small(&manifest_key, 1 << 20).await.unwrap(),
        std::fs::read(
            spool
                .join(DB)
                .join(created.artifact.artifact.manifest_name())
        )
        .unwrap()
    );
    let head = remote.head(&key).await.unwrap().unwrap();
    assert_eq!(
        head.sha256.as_deref(),
        Some(created.artifact.sha256.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_shipped_to_sftp_and_s3_and_a_redelivery_uploads_nothing() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    // Larger than the 5 MiB part size: a multipart upload.
    let created = prepare_artifact(rig.spool(), 7 << 20, 21, 0);
    let destinations = vec![
        sftp_destination("sftp", &sshd, sftp_settings(&sshd)),
        s3_destination(&s3_settings(&moto, moto.port)),
    ];
    let described: Vec<String> = destinations.iter().map(Destination::describe).collect();
    assert!(
        described[1].starts_with("s3://backups/pg at 127.0.0.1:"),
        "{described:?}"
    );
    rig.run_shipper(settings(rig.spool(), destinations)).await;
    let first = rig.publish(&created, "created-1").await;
    let shipped = rig.wait_for(subject::SHIPPED, |_| true).await;
    rig.wait_acked(first).await;
    let listed: Vec<&str> = shipped["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(listed, described);
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert_in_bucket(&moto, &created, rig.spool()).await;
    let puts = |log: &str| log.matches("PUT /backups/pg/").count();
    let before = puts(&moto.log());

    // Already there, same size and checksum: nothing is written again.
    let again = rig.publish(&created, "created-2").await;
    rig.wait_acked(again).await;
    assert_eq!(puts(&moto.log()), before, "uploaded again");
    assert_eq!(rig.events(subject::SHIPPED).await.len(), 1);
    assert!(rig.events(subject::FAILED).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_s3_credentials_fail_at_once_in_one_line_and_write_nothing() {
    let mut rig = Rig::start().await;
    let mut moto = MotoServer::start_authenticated();
    moto.create_bucket(BUCKET, false);
    let created = prepare_artifact(rig.spool(), 7 << 20, 22, 0);
    let mut wrong = s3_settings(&moto, moto.port);
    wrong.secret_access_key = SecretString::from("not-the-secret");
    let destination = s3_destination(&wrong);
    let described = destination.describe();
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    let seq = rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    rig.wait_acked(seq).await;
    assert_eq!(failed["stage"], "ship", "{failed:#}");
    assert_eq!(failed["will_retry"], false, "{failed:#}");
    assert_eq!(failed["destination"], described.as_str());
    let error = failed["error"].as_str().unwrap();
    assert!(!error.contains('\n'), "{error}");
    assert!(
        error.contains("S3_ACCESS_KEY_ID") && error.contains("S3_SECRET_ACCESS_KEY"),
        "{error}"
    );
    assert!(!error.contains("not-the-secret"), "{error}");
    assert!(keys_in(&moto).is_empty());
    assert!(rig.events(subject::SHIPPED).await.is_empty());
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_unreachable_for_a_while_is_reported_once_and_shipped_once_when_back() {
    let mut rig = Rig::start().await;
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    // Down: every connection is closed as soon as it is accepted.
    let relay = TcpRelay::start(moto.port, false);
    let created = prepare_artifact(rig.spool(), 7 << 20, 23, 0);
    let destination = s3_destination(&s3_settings(&moto, relay.port));
    let described = destination.describe();
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    assert_eq!(failed["stage"], "ship", "{failed:#}");
    assert_eq!(failed["will_retry"], true, "{failed:#}");
    assert_eq!(failed["destination"], described.as_str());
    let error = failed["error"].as_str().unwrap();
    assert!(
        !error.contains('\n') && error.contains("S3_ENDPOINT"),
        "{error}"
    );

    // Two more failing rounds, as the shipper's log shows: none reported.
    let again = failed["attempt"].as_u64().unwrap() + 2;
    test_support::pipeline::logs::wait_for_line(
        &format!("round {again} failing against the relay"),
        |line| {
            line.contains("delivery failed")
                && line.contains(&described)
                && line.contains(&format!("round={again}"))
        },
    )
    .await;
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
    assert!(rig.events(subject::SHIPPED).await.is_empty());
    assert!(keys_in(&moto).is_empty());

    relay.set_up(true);
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_in_bucket(&moto, &created, rig.spool()).await;
    assert_eq!(rig.events(subject::SHIPPED).await.len(), 1);
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

/// Uploads the same file to moto with the shipper binary (through NATS,
/// as in production), with `rclone copy` and, when installed, `aws s3 cp`,
/// and prints throughput, ratios and the shipper's peak RSS. Size in MB
/// (10^6 bytes) from `SHIP_BENCH_S3_MB`, default 1000. The bucket is the
/// shipper's only destination, so its peak RSS is the S3 upload's; the
/// upload is timed from its own log line.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: slow, run by hand with --release"]
async fn benchmark_s3() {
    let mb: usize = std::env::var("SHIP_BENCH_S3_MB")
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(1000);
    let rig = Rig::start().await;
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let env: Vec<(String, String)> = [
        ("NATS_URL", rig.nats.url.clone()),
        ("RUST_LOG", "info".into()),
        ("BACKUP_SPOOL_DIR", rig.spool().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(moto.env(BUCKET, "shipper"))
    .collect();
    let service = test_support::ServiceProcess::spawn("shipper", &[], &env);
    assert!(
        service.wait_for_log("waiting for work", Duration::from_secs(60)),
        "{}",
        service.log()
    );

    let created = prepare_artifact(rig.spool(), mb * 1_000_000, 300, 0);
    let name = created.artifact.artifact.to_string();
    let local = rig.spool().join(DB).join(&name);
    rig.publish(&created, "bench-s3").await;
    rig.wait_for(subject::SHIPPED, |e| e["artifact"] == name.as_str())
        .await;
    // `delivered ... destination=s3://... elapsed_ms=N`: the S3 delivery
    // alone (head, multipart upload, manifest).
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.contains("delivered") && l.contains("s3://"))
        .unwrap_or_else(|| panic!("no S3 delivery line in:\n{log}"));
    let ours = Duration::from_millis(
        line.split("elapsed_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no elapsed_ms in {line}")),
    );
    let rss_kib = super::binary::peak_rss_kib(service.pid());

    let timed = |program: &str, args: &[&str], env: &[(&str, &str)]| {
        let started = Instant::now();
        let output = std::process::Command::new(program)
            .args(args)
            // A CA bundle of the host's AWS set-up makes rclone refuse
            // plain-HTTP endpoints; moto needs none.
            .env_remove("AWS_CA_BUNDLE")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    };
    let local_text = local.to_str().unwrap();
    let rclone = timed(
        "rclone",
        &["copy", local_text, &format!("moto:{BUCKET}/rclone/")],
        &[
            ("RCLONE_CONFIG_MOTO_TYPE", "s3"),
            ("RCLONE_CONFIG_MOTO_PROVIDER", "Other"),
            ("RCLONE_CONFIG_MOTO_ENDPOINT", &moto.endpoint),
            ("RCLONE_CONFIG_MOTO_REGION", test_support::moto::REGION),
            ("RCLONE_CONFIG_MOTO_ACCESS_KEY_ID", &moto.access_key_id),
            (
                "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY",
                &moto.secret_access_key,
            ),
        ],
    );
    let aws_present = std::process::Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let aws = aws_present.then(|| {
        timed(
            "aws",
            &[
                "--endpoint-url",
                &moto.endpoint,
                "s3",
                "cp",
                "--only-show-errors",
                local_text,
                &format!("s3://{BUCKET}/aws/{name}"),
            ],
            &[
                ("AWS_ACCESS_KEY_ID", &moto.access_key_id),
                ("AWS_SECRET_ACCESS_KEY", &moto.secret_access_key),
                ("AWS_DEFAULT_REGION", test_support::moto::REGION),
            ],
        )
    });
    let rate = |d: Duration| (mb * 1_000_000) as f64 / d.as_secs_f64() / 1e6;
    let mut table = format!(
        "\n| file | shipper | rclone copy | ratio |{}\n| --- | --- | --- | --- |{}\n| {mb} MB | {:.0} MB/s | {:.0} MB/s | {:.2} |",
        if aws.is_some() {
            " aws s3 cp | ratio |"
        } else {
            ""
        },
        if aws.is_some() { " --- | --- |" } else { "" },
        rate(ours),
        rate(rclone),
        rate(ours) / rate(rclone),
    );
    if let Some(aws) = aws {
        table.push_str(&format!(
            " {:.0} MB/s | {:.2} |",
            rate(aws),
            rate(ours) / rate(aws)
        ));
    }
    eprintln!(
        "{table}\n\nshipper peak RSS (VmHWM): {:.1} MiB",
        rss_kib as f64 / 1024.0
    );
    std::fs::remove_file(&local).unwrap();
}
