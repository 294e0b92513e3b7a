//! A restore interrupted (Ctrl-C, SIGTERM) while it waits on a lock.

use super::*;

/// Ctrl-C in the operator's terminal (SIGINT to the foreground process
/// group: backupctl and its psql) while the restore waits on a lock: exit
/// 130, a line naming the target as partially restored, and no restore
/// session left on the server.
#[test]
fn an_interrupted_restore_exits_130_and_names_the_partial_target() {
    interrupt_a_blocked_restore("-INT", true);
}

/// SIGTERM to backupctl alone: its psql is killed without a chance to
/// cancel its query, so backupctl must end the server session itself.
#[test]
fn a_terminated_restore_leaves_no_session_waiting_on_the_server() {
    interrupt_a_blocked_restore("-TERM", false);
}

fn interrupt_a_blocked_restore(signal: &str, whole_group: bool) {
    use std::io::Write;
    use std::os::unix::process::CommandExt;

    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);
    let target = TestDatabase::create("bctl_dst");
    // Another session creates schema `extra` and keeps its transaction
    // open: the restore's own CREATE SCHEMA extra waits for it.
    let mut blocker = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .envs(target.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the blocking psql");
    blocker
        .stdin
        .as_mut()
        .expect("blocker stdin")
        .write_all(b"BEGIN;\nCREATE SCHEMA extra;\n")
        .expect("write to the blocking psql");
    let waiting_on_locks = || {
        target.query(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
    };

    let mut restore = Command::new(workspace_bin("backupctl"))
        .args([
            "restore",
            "--latest",
            "--database",
            database.as_str(),
            "--yes",
        ])
        .env_remove("RESTORE_TARGET_URL_FILE")
        .env_remove("AGE_IDENTITY_FILE")
        .envs(rig.env())
        .env("RESTORE_TARGET_URL", target.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, as a shell gives a foreground job.
        .process_group(0)
        .spawn()
        .expect("run backupctl restore");
    let group = i32::try_from(restore.id()).expect("pid fits");
    assert!(group > 1, "never signal pid {group}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while waiting_on_locks() != "1" {
        assert!(
            restore.try_wait().expect("poll backupctl").is_none(),
            "backupctl ended before the restore blocked"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never waited on the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = if whole_group {
        format!("-{group}")
    } else {
        group.to_string()
    };
    run_ok(Command::new("kill").args([signal, "--", &victim]));

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while restore.try_wait().expect("poll backupctl").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "backupctl did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = restore.wait_with_output().expect("backupctl output");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interrupted")
            && stderr.contains(&target.name)
            && stderr.contains("partial restore")
            && stderr.contains("--force"),
        "{}",
        text(&out)
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|line| line.starts_with("backupctl: interrupted: ")),
        "the cause is the last line: {}",
        text(&out)
    );
    // The restore's psql is gone from the server: nothing waits any more.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while waiting_on_locks() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "a restore session still waits on the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(blocker.stdin.take());
    let _ = blocker.wait();
}
