//! Uploading while the dump is written: on `dump.writing` the shipper
//! follows the spool's growing `.partial` into the remote `.partial`, and
//! the upload `dump.created` starts only finishes it; a dump given up
//! while followed leaves nothing on the server.

use std::io::Write;

use backup_core::events::DumpWriting;
use backup_core::names::PARTIAL_SUFFIX;

use super::*;

/// A shipper following a dump in progress: the artifact of
/// `prepare_artifact` cut back to its first `written` bytes under
/// `<artifact>.partial` (the final name gone), `dump.writing` published,
/// and those bytes, but for the last unfinished 255 KiB write, in the
/// remote `.partial`.
struct DumpInProgress {
    rig: Rig,
    sshd: Sshd,
    created: DumpCreated,
    /// The whole artifact.
    bytes: Vec<u8>,
    /// `<artifact>.partial` in the spool.
    partial: PathBuf,
    /// `<artifact>.partial` on the server.
    on_server: PathBuf,
}

impl DumpInProgress {
    async fn start(size: usize, written: usize, seed: u64, second: u32) -> DumpInProgress {
        let mut rig = Rig::start().await;
        let sshd = Sshd::start();
        let created = prepare_artifact(rig.spool(), size, seed, second);
        let dir = rig.spool().join(DB);
        let final_path = dir.join(created.artifact.artifact.as_str());
        let bytes = std::fs::read(&final_path).unwrap();
        std::fs::remove_file(&final_path).unwrap();
        let partial = dir.join(format!("{}{PARTIAL_SUFFIX}", created.artifact.artifact));
        std::fs::write(&partial, &bytes[..written]).unwrap();
        rig.run_shipper(settings(
            rig.spool(),
            vec![sftp_destination("sftp", &sshd, sftp_settings(&sshd))],
        ))
        .await;

        publish_writing(&rig, &created).await;
        let on_server =
            remote_db_dir(&sshd).join(format!("{}{PARTIAL_SUFFIX}", created.artifact.artifact));
        // Writes go in full 255 KiB blocks: the last block waits for more.
        wait_for("what was written in the remote .partial", || {
            size_of(&on_server) >= (written - 255 * 1024) as u64
        })
        .await;
        DumpInProgress {
            rig,
            sshd,
            created,
            bytes,
            partial,
            on_server,
        }
    }
}

async fn publish_writing(rig: &Rig, created: &DumpCreated) {
    let writing = DumpWriting {
        header: created.header.clone(),
        origin: Origin::default(),
        artifact: created.artifact.artifact.clone(),
    };
    rig.bus
        .publish_json(subject::WRITING, "writing", &writing)
        .await
        .unwrap();
}

/// Polls every 50 ms until `done` holds; panics naming `what` after
/// [`WAIT`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upload_starts_while_the_dump_is_written_and_dump_created_only_finishes_it() {
    const SIZE: usize = 8_000_000;
    let DumpInProgress {
        rig,
        sshd,
        created,
        bytes,
        partial,
        ..
    } = DumpInProgress::start(SIZE, SIZE / 2, 31, 41).await;
    assert!(
        rig.events(subject::SHIPPED).await.is_empty(),
        "shipped before the dump was complete"
    );

    // The dumper writes the rest, renames its file and announces it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .unwrap()
        .write_all(&bytes[SIZE / 2..])
        .unwrap();
    std::fs::rename(
        &partial,
        rig.spool()
            .join(DB)
            .join(created.artifact.artifact.as_str()),
    )
    .unwrap();
    test_support::pipeline::logs::wait_for_line("the follow's end", |line| {
        line.contains("uploaded while the dump was written")
            && line.contains(created.artifact.artifact.as_str())
            && line.contains(&format!("bytes={SIZE}"))
    })
    .await;
    rig.publish(&created, "created").await;
    rig.wait_for(subject::SHIPPED, |_| true).await;

    // Log lines of every test of this binary are captured together: the
    // path names this test's server.
    let final_path = remote_db_dir(&sshd).join(created.artifact.artifact.as_str());
    let finished = test_support::pipeline::logs::wait_for_line("the finishing upload", |line| {
        line.contains("continuing the upload from the acknowledged offset")
            && line.contains(&*final_path.to_string_lossy())
    })
    .await;
    assert!(finished.contains("bytes_left=0"), "{finished}");
    assert_delivered(&remote_db_dir(&sshd), &created, rig.spool());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_given_up_while_followed_leaves_nothing_on_the_server() {
    let DumpInProgress {
        rig,
        sshd,
        created,
        partial,
        on_server,
        ..
    } = DumpInProgress::start(4_000_000, 1_000_000, 32, 42).await;
    // The dump fails: the dumper's guard removes its .partial.
    std::fs::remove_file(&partial).unwrap();
    wait_for("the remote .partial to be removed", || !on_server.exists()).await;
    test_support::pipeline::logs::wait_for_line("the follow's end", |line| {
        line.contains("the dump was given up; its remote .partial was removed")
            && line.contains(created.artifact.artifact.as_str())
    })
    .await;
    assert!(
        names_in(&remote_db_dir(&sshd)).is_empty(),
        "left on the server: {:?}",
        names_in(&remote_db_dir(&sshd))
    );
    assert!(rig.events(subject::FAILED).await.is_empty());
}
