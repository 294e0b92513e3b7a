//! The append-only account: a key restricted by `internal-sftp -P` (see
//! `test_support::sshd::APPEND_ONLY_DENIED`) beside the account's
//! unrestricted key.

use super::*;

fn with_key(sshd: &Sshd, key: PathBuf) -> SftpSettings {
    SftpSettings {
        key_file: key,
        ..settings(sshd)
    }
}

async fn write_once(settings: &SftpSettings) -> SftpRemote {
    let mut remote = connect(settings).await;
    remote.set_write_once(true);
    remote
}

#[tokio::test]
async fn the_restricted_key_cannot_remove_and_the_full_key_can() {
    let sshd = Sshd::start();
    let restricted = with_key(&sshd, sshd.generate_append_only_key());
    let writer = write_once(&restricted).await;
    let path = remote(&sshd, "db/dump.sql.gz");
    writer.create_dir_all(&remote(&sshd, "db")).await.unwrap();
    writer.write_file_atomic(&path, b"backup").await.unwrap();
    let on_disk = sshd.remote_root.join("db/dump.sql.gz");
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"backup");
    assert_eq!(mode(&on_disk), 0o400, "write-once files are read-only");
    assert_eq!(entries_under(&sshd.remote_root.join("db")), ["dump.sql.gz"]);

    let error = writer.remove_file(&path).await.unwrap_err();
    assert!(
        matches!(error, RemoteError::PermissionDenied { op: "remove", .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(on_disk.exists());

    let pruner = connect(&settings(&sshd)).await;
    pruner.remove_file(&path).await.unwrap();
    assert!(!on_disk.exists());
}

#[tokio::test]
async fn rename_falls_back_to_plain_rename_when_posix_rename_is_refused() {
    let sshd = Sshd::start();
    let key = sshd.generate_restricted_key("posix-rename");
    let remote_sftp = connect(&with_key(&sshd, key)).await;
    // OpenSSH does not offer an extension it refuses; the fallback also
    // covers servers that offer it and then refuse.
    assert!(!remote_sftp.features().posix_rename);
    let path = remote(&sshd, "manifest.json");
    remote_sftp.write_file_atomic(&path, b"one").await.unwrap();
    // Replacing goes through remove + plain rename.
    remote_sftp.write_file_atomic(&path, b"two").await.unwrap();
    assert_eq!(remote_sftp.read_file(&path, 10).await.unwrap(), b"two");
    assert_eq!(entries_under(&sshd.remote_root), ["manifest.json"]);

    // The append-only key renames with plain rename from the start.
    let writer = write_once(&with_key(&sshd, sshd.generate_append_only_key())).await;
    let other = remote(&sshd, "other");
    writer.write_file_atomic(&other, b"three").await.unwrap();
    assert_eq!(writer.read_file(&other, 10).await.unwrap(), b"three");
    assert_eq!(entries_under(&sshd.remote_root), ["manifest.json", "other"]);
}

#[tokio::test]
async fn an_existing_final_name_is_never_overwritten() {
    let sshd = Sshd::start();
    let key = sshd.generate_append_only_key();
    let writer = write_once(&with_key(&sshd, key.clone())).await;
    let path = remote(&sshd, "dump.sql.gz");
    writer.write_file_atomic(&path, b"original").await.unwrap();

    let error = writer
        .write_file_atomic(&path, b"forged")
        .await
        .expect_err("the final name exists");
    assert!(error.to_string().contains("never replaces"), "{error}");
    assert!(!error.is_transient());
    assert_eq!(writer.read_file(&path, 100).await.unwrap(), b"original");

    // Without write-once mode the key fares no better: chmod (and with it
    // the normal upload) and posix-rename are refused.
    let plain = connect(&with_key(&sshd, key)).await;
    let error = plain.write_file_atomic(&path, b"forged").await.unwrap_err();
    assert!(
        matches!(error, RemoteError::PermissionDenied { .. }),
        "{error:?}"
    );
    assert_eq!(
        std::fs::read(sshd.remote_root.join("dump.sql.gz")).unwrap(),
        b"original"
    );

    // The refused uploads left their .partial files, which this key cannot
    // remove; each names its target for the pruner.
    let leftovers: Vec<String> = entries_under(&sshd.remote_root)
        .into_iter()
        .filter(|n| n != "dump.sql.gz")
        .collect();
    assert!(!leftovers.is_empty());
    for name in &leftovers {
        assert_eq!(
            remote_sftp::partial_target(name),
            Some("dump.sql.gz"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_leftover_partial_does_not_block_the_next_upload() {
    let sshd = Sshd::start();
    let writer = write_once(&with_key(&sshd, sshd.generate_append_only_key())).await;
    let dir = tempfile::tempdir().unwrap();
    let local = local_file(dir.path(), "dump", &pseudo_random(100_000, 3));
    let path = remote(&sshd, "dump.sql.gz");
    // Announce more bytes than the file has: the upload fails after
    // writing, and the key cannot remove its .partial.
    let mut short = tokio::fs::File::open(&local).await.unwrap();
    let error = writer
        .upload_reader(&mut short, &local, 200_000, &path, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::LocalIo { .. }), "{error:?}");
    let leftover = entries_under(&sshd.remote_root);
    assert_eq!(leftover.len(), 1);
    assert!(leftover[0].ends_with(".partial"), "{leftover:?}");

    writer.upload_file(&local, &path, &|_| {}).await.unwrap();
    assert_eq!(
        std::fs::read(sshd.remote_root.join("dump.sql.gz")).unwrap(),
        std::fs::read(&local).unwrap()
    );
    assert_eq!(entries_under(&sshd.remote_root).len(), 2);
}

#[tokio::test]
async fn the_write_posture_tells_the_two_keys_apart() {
    let sshd = Sshd::start();
    let mut writer = connect(&with_key(&sshd, sshd.generate_append_only_key())).await;
    let probe = remote(&sshd, ".probe-append-only");
    let posture = writer.probe_write_posture(&probe).await.unwrap();
    assert!(!posture.can_delete, "{posture:?}");
    assert_eq!(posture.overwrite, None, "{posture:?}");
    assert!(!writer.write_once(), "the mode is restored");
    assert!(posture.left.contains(&probe), "{posture:?}");
    let full = connect(&settings(&sshd)).await;
    for path in &posture.left {
        full.remove_file(path).await.unwrap();
    }

    let mut full = full;
    let probe = remote(&sshd, ".probe-full");
    let posture = full.probe_write_posture(&probe).await.unwrap();
    assert!(posture.can_delete, "{posture:?}");
    assert!(posture.overwrite.is_some(), "{posture:?}");
    assert!(posture.left.is_empty(), "{posture:?}");
    assert!(entries_under(&sshd.remote_root).is_empty());
}
