//! An SFTP server that goes away (before or during an upload) or stops
//! answering: one report per incident, retries until the horizon, and the
//! artifact shipped once the server is back.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn outage_is_reported_once_and_ships_when_sshd_returns_without_a_new_trigger() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1 << 20, 5, 0);
    sshd.stop();
    rig.run_shipper(settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    ))
    .await;
    rig.publish(&created, "created").await;
    let failed = rig.wait_for(subject::FAILED, |_| true).await;
    assert_eq!(failed["stage"], "ship");
    assert_eq!(failed["will_retry"], true);
    assert_eq!(failed["artifact"], created.artifact.artifact.as_str());
    let error = failed["error"].as_str().unwrap();
    assert!(
        !error.contains('\n') && error.contains("connect"),
        "{error}"
    );

    // Let two more rounds of retries (at most 2 s apart) fail, as the
    // shipper's log shows: none is reported again. A report of the round
    // after the alert would be stored before the next round begins.
    let again = failed["attempt"].as_u64().unwrap() + 2;
    let address = format!("127.0.0.1:{}", sshd.port);
    test_support::pipeline::logs::wait_for_line(
        &format!("round {again} failing against {address}"),
        |line| {
            line.contains("delivery failed")
                && line.contains(&address)
                && line.contains(&format!("round={again}"))
        },
    )
    .await;
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    sshd.restart();
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_horizon_with_a_final_report() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 1000, 6, 0);
    sshd.stop();
    let mut settings = settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    );
    settings.retry_horizon = Duration::from_secs(6);
    rig.run_shipper(settings).await;
    let seq = rig.publish(&created, "created").await;
    let last = rig
        .wait_for(subject::FAILED, |e| e["will_retry"] == false)
        .await;
    rig.wait_acked(seq).await;
    assert!(
        last["error"].as_str().unwrap().contains("gave up after"),
        "{last}"
    );
    let failed = rig.events(subject::FAILED).await;
    let retrying: Vec<&Value> = failed.iter().filter(|e| e["will_retry"] == true).collect();
    assert_eq!(retrying.len(), 1, "{failed:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_killed_mid_upload_leaves_no_final_name_and_the_upload_is_retried() {
    let mut rig = Rig::start().await;
    let mut sshd = Sshd::start();
    let created = prepare_artifact(rig.spool(), 24 << 20, 7, 0);
    let mut settings = settings(
        rig.spool(),
        vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
    );
    // About 6 s of upload: long enough to be caught in the middle.
    settings.bandwidth_limit = Some("4MiB/s".parse::<Rate>().unwrap());
    rig.run_shipper(settings).await;
    rig.publish(&created, "created").await;

    let remote = remote_db_dir(&sshd);
    let name = created.artifact.artifact.as_str();
    let partial = remote.join(format!("{name}.partial"));
    test_support::wait_until(WAIT, "the upload to start", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > (1 << 20))
    });
    sshd.stop();
    let sent = std::fs::metadata(&partial).unwrap().len();
    assert!(sent < 24 << 20, "caught too late: {sent} bytes");
    assert!(
        !remote.join(name).exists(),
        "a final name before completion"
    );
    // The attempt is over once the shipper reports it (and will retry).
    let failed = rig
        .wait_for(subject::FAILED, |e| e["will_retry"] == true)
        .await;
    assert_eq!(failed["stage"], "ship", "{failed:#}");
    assert!(!remote.join(name).exists(), "a final name after the kill");
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    sshd.restart();
    rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_delivered(&remote, &created, rig.spool());
}

/// Parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pids of the processes running as `user` below `listener`: with
/// privilege separation, the post-authentication half of each sshd session
/// (`sshd: user@...`, which speaks SSH and runs internal-sftp). A process of
/// the user that is not below the listener (reparented after its session
/// ended) is not one of them.
fn session_pids(user: &str, listener: u32) -> Vec<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-u", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| {
            std::iter::successors(parent_of(pid), |&p| parent_of(p))
                .take(8)
                .any(|ancestor| ancestor == listener)
        })
        .collect()
}

fn signal(signal: &str, pid: u32) {
    // `kill -STOP 0` would stop the test's own process group (cargo
    // included): only ever signal a real process.
    assert!(pid > 1, "refusing to send {signal} to pid {pid}");
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_that_stops_reading_mid_upload_is_aborted_by_the_watchdog_then_shipped() {
    let mut rig = Rig::start().await;
    let sshd = Sshd::start();
    let size = 16usize << 20;
    let created = prepare_artifact(rig.spool(), size, 11, 0);
    let mut sftp = sftp_settings(&sshd);
    // Far above the stall interval (keepalives give up after half of it):
    // the abort must come from the watchdog, not from the SFTP client.
    sftp.io_timeout = Duration::from_secs(120);
    let mut settings = settings(rig.spool(), vec![sftp_destination("sftp", &sshd, sftp)]);
    // About 8 s of upload: long enough to be caught in the middle.
    settings.bandwidth_limit = Some("2MiB/s".parse::<Rate>().unwrap());
    settings.limits = Limits::new(Duration::from_secs(3), Duration::from_secs(3600));
    let described = settings.destinations[0].describe();
    rig.run_shipper(settings).await;
    rig.publish(&created, "created").await;

    let remote = remote_db_dir(&sshd);
    let name = created.artifact.artifact.as_str();
    let partial = remote.join(format!("{name}.partial"));
    test_support::wait_until(WAIT, "the upload to start", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > (1 << 20))
    });
    // The session process stops: the TCP connection stays up, nothing is
    // read or answered any more. The listener is stopped too, so that no
    // retry gets through while the test looks at the remote.
    let listener = sshd.listener_pid().expect("sshd is running");
    let stopped = session_pids(&sshd.user, listener);
    assert!(!stopped.is_empty(), "no session process of {}", sshd.user);
    signal("-STOP", listener);
    for &pid in &stopped {
        signal("-STOP", pid);
    }

    let failed = rig
        .wait_for(subject::FAILED, |e| e["aborted"].is_object())
        .await;
    assert_eq!(failed["stage"], "ship", "{failed:#}");
    assert_eq!(failed["will_retry"], true, "{failed:#}");
    assert_eq!(failed["destination"], described.as_str());
    let aborted = &failed["aborted"];
    assert_eq!(aborted["step"], "upload", "{failed:#}");
    assert_eq!(aborted["reason"], "stalled", "{failed:#}");
    assert_eq!(aborted["stall_after_s"], 3, "{failed:#}");
    assert_eq!(aborted["deadline_s"], 3600, "{failed:#}");
    let bytes = aborted["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < size as u64, "{failed:#}");
    assert_eq!(
        failed["error"],
        format!("upload to {described} stalled: no progress for 3s after {bytes} bytes; aborted"),
    );
    // Not renamed: the final name never appears for an incomplete upload.
    assert!(!remote.join(name).exists(), "a final name after the abort");
    let left = std::fs::metadata(&partial).unwrap().len();
    assert!(left < size as u64, "{left} bytes");
    assert!(rig.events(subject::SHIPPED).await.is_empty());

    // The stopped session goes away (as a hung one would be reaped by the
    // server's own timeouts), the listener comes back, and the retry cleans
    // the stale .partial and ships.
    for &pid in &stopped {
        signal("-KILL", pid);
    }
    signal("-CONT", listener);
    let shipped = rig.wait_for(subject::SHIPPED, |_| true).await;
    assert_eq!(
        shipped["limits"],
        serde_json::json!({"stall_after_s": 3, "deadline_s": 3600})
    );
    assert_delivered(&remote, &created, rig.spool());
    // One alert for the incident, however many attempts stalled meanwhile.
    assert_eq!(rig.events(subject::FAILED).await.len(), 1);
}
