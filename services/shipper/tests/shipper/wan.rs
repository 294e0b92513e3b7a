//! The emulated WAN of `test_support::wan` (sshd in a network namespace
//! behind 100 Mbit/s, 40 ms round trip, 0.1 % loss): a small artifact
//! ships through it, and the ignored `benchmark_wan` compares the shipper
//! with OpenSSH `sftp put` and `rclone copy` over loopback and over the
//! link. Needs root and network namespaces: without them these fail, they
//! never skip.

use super::*;
use test_support::sftp_peers::SftpEndpoint;
use test_support::wan::{EmulatedWan, WanSpec};

fn wan_destination(wan: &EmulatedWan) -> Destination {
    Destination::Sftp {
        label: "sftp".into(),
        dir: wan.sshd.backups_dir().display().to_string(),
        settings: wan.sftp_settings(),
        append_only: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_artifact_ships_over_the_emulated_wan() {
    let wan = EmulatedWan::start(WanSpec::HOSTED);
    let mut rig = Rig::start().await;
    let created = prepare_artifact(rig.spool(), 4_000_000, 22, 0);
    rig.run_shipper(settings(rig.spool(), vec![wan_destination(&wan)]))
        .await;
    rig.publish(&created, "created").await;
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote_db_dir(&wan.sshd), &created, rig.spool());
    assert!(
        wan.proxy.bytes_up() > 4_000_000,
        "the upload did not go through the link: {} bytes",
        wan.proxy.bytes_up()
    );
}

/// One path of the benchmark: the shipper (library, in this process, with
/// its own NATS) uploading `file`, then `sftp put` and `rclone copy` of the
/// same file to the same server. Returns the three durations.
async fn measure(
    spool_file: &Path,
    created: &DumpCreated,
    manifest: &Path,
    destination: Destination,
    sshd: &Sshd,
    peer: &SftpEndpoint,
) -> [Duration; 3] {
    let mut rig = Rig::start().await;
    let dir = rig.spool().join(DB);
    std::fs::create_dir_all(&dir).unwrap();
    let name = created.artifact.artifact.as_str();
    std::fs::hard_link(spool_file, dir.join(name)).unwrap();
    std::fs::copy(
        manifest,
        dir.join(created.artifact.artifact.manifest_name()),
    )
    .unwrap();
    rig.run_shipper(settings(rig.spool(), vec![destination]))
        .await;
    rig.publish(created, "bench").await;
    let shipped = rig.wait_for(subject::SHIPPED, |_| true).await;
    let ours = Duration::from_millis(shipped["duration_ms"].as_u64().unwrap());
    std::fs::remove_file(remote_db_dir(sshd).join(name)).unwrap();

    let remote = sshd.remote_root.join("openssh.bin");
    let openssh = peer.openssh_put(spool_file, &remote);
    std::fs::remove_file(&remote).unwrap();
    let rclone_dir = sshd.remote_root.join("rclone");
    let rclone = peer.rclone_copy(spool_file, &rclone_dir);
    std::fs::remove_dir_all(&rclone_dir).unwrap();
    [ours, openssh, rclone]
}

/// The same file (`SHIP_BENCH_WAN_MB`, default 250 MB) over loopback and
/// over the emulated WAN, by the shipper, OpenSSH `sftp put` (batch mode)
/// and `rclone copy` (sftp backend); prints MB/s and the shipper's ratios
/// against the link rate and the better of the two peers.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: slow, run by hand"]
async fn benchmark_wan() {
    let mb: u64 = std::env::var("SHIP_BENCH_WAN_MB")
        .map(|v| {
            v.trim()
                .parse()
                .expect("SHIP_BENCH_WAN_MB is a number of MB")
        })
        .unwrap_or(250);
    let size = mb * 1_000_000;
    let source = tempfile::tempdir().unwrap();
    let created = prepare_artifact(source.path(), size as usize, 250, 0);
    let file = source
        .path()
        .join(DB)
        .join(created.artifact.artifact.as_str());
    let manifest = source
        .path()
        .join(DB)
        .join(created.artifact.artifact.manifest_name());

    let sshd = Sshd::start();
    let loopback = measure(
        &file,
        &created,
        &manifest,
        sftp_destination("sftp", &sshd, sftp_settings(&sshd)),
        &sshd,
        &SftpEndpoint::of(&sshd),
    )
    .await;
    drop(sshd);
    let wan = EmulatedWan::start(WanSpec::HOSTED);
    let over_wan = measure(
        &file,
        &created,
        &manifest,
        wan_destination(&wan),
        &wan.sshd,
        &wan.endpoint(),
    )
    .await;

    let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let link = wan.spec.bytes_per_second() / 1e6;
    let row = |path: &str, [ours, openssh, rclone]: [Duration; 3], link: Option<f64>| {
        let best = rate(openssh).max(rate(rclone));
        format!(
            "| {path} | {:.1} MB/s | {:.1} MB/s | {:.1} MB/s | {} | {:.2} |",
            rate(ours),
            rate(openssh),
            rate(rclone),
            link.map_or("n/a".to_owned(), |l| format!("{:.2}", rate(ours) / l)),
            rate(ours) / best,
        )
    };
    eprintln!(
        "\n{mb} MB file; WAN: {} Mbit/s ({link:.1} MB/s), {:?} round trip, {} per mille loss ({})\n\n\
         | path | shipper | OpenSSH sftp put | rclone copy | shipper / link rate | shipper / better peer |\n\
         | --- | --- | --- | --- | --- | --- |\n{}\n{}",
        wan.spec.rate_mbit,
        wan.spec.round_trip,
        wan.spec.loss_per_mille,
        if wan.loss_emulated {
            "emulated"
        } else {
            "NOT emulated"
        },
        row("loopback", loopback, None),
        row("emulated WAN", over_wan, Some(link)),
    );
}
