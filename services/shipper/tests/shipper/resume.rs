//! Resumable uploads: a connection cut late in an upload costs only what
//! was not acknowledged, not the whole artifact again.

use super::*;
use test_support::delay_proxy::DelayProxy;

/// A 200 MB artifact whose connection a proxy cuts after 80 % of it went
/// upstream: the retry continues from the acknowledged offset, so less
/// than 30 % of the file crosses the proxy again, and the shipped file is
/// byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn upload_cut_at_80_percent_resumes_from_the_acknowledged_offset() {
    const SIZE: u64 = 200_000_000;
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let proxy = DelayProxy::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], sshd.port)),
        Duration::ZERO,
    );
    let created = prepare_artifact(rig.spool(), SIZE as usize, 21, 0);
    let mut through_proxy = sftp_settings(&sshd);
    through_proxy.port = proxy.port;
    // known_hosts names sshd's own port; the proxy's is pinned by
    // fingerprint instead.
    through_proxy.known_hosts = None;
    through_proxy.host_key_fingerprint = Some(sshd.host_key_fingerprint.clone());
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, through_proxy)],
    ))
    .await;

    let cut_at = SIZE * 8 / 10;
    proxy.cut_after(cut_at);
    rig.publish(&created, "created").await;
    rig.wait_for(subject::SHIPPED, |_| true).await;

    assert_eq!(proxy.cuts(), 1, "the proxy never cut the upload");
    assert!(
        proxy.connections() >= 2,
        "no second connection after the cut"
    );
    let final_path = remote_db_dir(&sshd).join(created.artifact.artifact.as_str());
    let resumed = test_support::pipeline::logs::wait_for_line("the resume", |line| {
        line.contains("continuing the upload from the acknowledged offset")
            && line.contains(&*final_path.to_string_lossy())
    })
    .await;
    let sent_again = proxy.bytes_up() - cut_at;
    eprintln!(
        "{resumed}\nsent again after the cut: {sent_again} bytes ({:.1} % of the artifact)",
        sent_again as f64 * 100.0 / SIZE as f64
    );
    assert!(
        sent_again < SIZE * 3 / 10,
        "the retry sent {sent_again} bytes, more than 30 % of {SIZE}"
    );
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
}
